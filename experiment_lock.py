"""One writer per experiment folder: an advisory lock on <experiment folder>/.lock, held until the process exits.

The lock is an flock on an open file, so the kernel drops it when its process ends in any way (SIGKILL included);
after a reboot the file remains but nobody holds it. The file records who took it (pid, host, start time): for
the message that refuses a second run, and to say whose lock a new run takes over when the file is left non-empty
by a run that died. A run that ends normally empties the file, so rerunning a finished experiment says nothing.
"""
import atexit
import fcntl
import json
import os
import socket
import sys
import time

from errors import UserError

LOCK_NAME = '.lock'
_held = {}  # lock file path -> open descriptor holding its flock, for the life of this process


def _holder(descriptor: int) -> dict:
    """What the lock file says about the run that took it last ({} when empty or unreadable)."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    text = os.read(descriptor, 4096).decode('utf-8', 'replace')
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {'pid': text.strip()[:40]}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    """'process <pid> on host <host>, started <time>' for the messages."""
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _record_self(descriptor: int) -> None:
    """Replace the file's content by this process's pid, host and start time."""
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(me) + '\n').encode(), 0)


def _release(path: str) -> None:
    """Empty the lock file (a clean end) and drop the flock."""
    descriptor = _held.pop(path, None)
    if descriptor is not None:
        os.ftruncate(descriptor, 0)
        os.close(descriptor)


def _release_all() -> None:
    """At exit: release every lock this process holds."""
    for path in list(_held):
        _release(path)


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies: the lock must end with the process that took it."""
    for descriptor in _held.values():
        os.close(descriptor)
    _held.clear()


atexit.register(_release_all)
os.register_at_fork(after_in_child=_forget_in_child)


def lock_experiment(folder: str) -> None:
    """Take the lock of an experiment folder until this process exits; UserError while another live run holds it."""
    path = os.path.join(os.path.abspath(folder), LOCK_NAME)
    _release(path)  # this process may take the same folder again (jobs run in-process one after the other)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f'the lock file {path} of the experiment folder cannot be opened ({exc.strerror})') from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise UserError(f'the experiment folder {folder} is in use by another run ({_describe(holder)}), which is '
                        f'still running; wait for it to end or choose another --experiment-class/--model-name') \
            from None
    previous = _holder(descriptor)
    if previous:
        print(f'note: took over the lock of the experiment folder {folder} left by {_describe(previous)}, '
              f'which is no longer running', file=sys.stderr, flush=True)
    _record_self(descriptor)
    _held[path] = descriptor
