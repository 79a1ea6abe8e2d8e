"""Tensorboard event files whose failed writes end the run in one sentence.

tensorboardX writes from a background thread: a failed write there prints a thread traceback, stops the thread, and
later logging blocks once its queue is full. EventWriter keeps the thread's first failure for the main thread, which
raises it at the next check() or close().
"""
import contextlib
import os

from experiment.folder import write_failure, writing


class EventWriter:
    """A tensorboardX SummaryWriter for one folder; add_scalar, add_image, ... pass through."""

    def __init__(self, folder: str):
        from tensorboardX import SummaryWriter  # imported when needed: it adds a second to every start
        self.folder = os.path.abspath(folder)
        self.failure = None
        with writing('the tensorboard events', self.folder):  # the file and its first event are written here
            self.writer = SummaryWriter(folder)
        events = self.writer.file_writer.event_writer._ev_writer
        events.write_event = self._kept(events.write_event)
        events.flush = self._kept(events.flush)
        events.close = self._closed_anyway(events.close)  # also what tensorboardX's atexit clean-up calls

    def _kept(self, write):
        """`write` that records its first failure instead of raising it in the logger thread; nothing after it."""
        def checked(*args):
            if self.failure is None:
                try:
                    return write(*args)
                except Exception as exc:  # raised again, as a sentence, in the main thread
                    self.failure = exc
            return None
        return checked

    def _closed_anyway(self, close):
        """`close` that always closes the file, recording (not raising) a failure of its last flush."""
        def checked():
            try:
                close()
            except Exception as exc:  # a run ending on another failed write closes its events at exit, quietly
                self.failure = self.failure or exc
        return checked

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def _raise_failure(self) -> None:
        """Close the file without writing more, then raise the failure's sentence (or the error itself)."""
        failure = self.failure
        with contextlib.suppress(Exception):
            self.writer.close()
        raise write_failure(failure, 'the tensorboard events', self.folder) or failure

    def check(self) -> None:
        """Flush what the thread wrote so far; raise the sentence of a write that failed."""
        self.writer.flush()
        if self.failure is not None:
            self._raise_failure()

    def close(self) -> None:
        """Write everything queued and close the file; raise the sentence of a write that failed."""
        try:
            self.writer.close()
        except Exception as exc:
            self.failure = self.failure or exc
        if self.failure is not None:
            self._raise_failure()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if exc_info[0] is None:
            self.close()
