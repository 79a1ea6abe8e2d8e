"""The one error type for bad user input, reported as a single sentence."""
import re
import sys

_WORKER_MARKER = 'UserError: '


class UserError(Exception):
    """An input problem (file, key, flag) reported to the user as one sentence."""


def first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (its type name when it has none)."""
    lines = str(exc).strip().splitlines()
    return re.split(r'(?<=\.)\s', lines[0], maxsplit=1)[0].rstrip('.') if lines else type(exc).__name__


def user_message(exc: BaseException) -> str:
    """The sentence of a UserError, also when a DataLoader worker re-raised it with its traceback."""
    text = str(exc)
    if 'Original Traceback' in text and _WORKER_MARKER in text:
        return text.rsplit(_WORKER_MARKER, 1)[1].strip()
    return text


def run_cli(main, argv=None) -> int:
    """Run an entry point's main(argv); bad input prints `error: <sentence>` to stderr and gives status 2."""
    try:
        main(argv)
    except UserError as error:
        print(f'error: {user_message(error)}', file=sys.stderr)
        return 2
    return 0
