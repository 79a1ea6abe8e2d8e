"""The experiment folder, $UBNA_DIR_CHECKPOINT/<experiment-class>/<model-name>: its paths, the one atomic writer every
file of the project is written with, opt.json, and the lock that keeps one writer per folder.

The lock is an flock on <folder>/.lock, so the kernel drops it when its process ends in any way (SIGKILL included);
after a reboot the file remains but nobody holds it. The file records who took it (pid, host, start time): for the
message that refuses a second run, and to say whose lock a new run takes over when a run that died left it
non-empty. A run that ends normally empties the file, so rerunning a finished experiment says nothing.
"""
import atexit
import fcntl
import json
import os
import socket
import sys
import tempfile
import time

from errors import UserError

CHECKPOINT_VARIABLE = 'UBNA_DIR_CHECKPOINT'
DATASET_VARIABLE = 'UBNA_DIR_DATASET'
EXPORT_LINES = (f'export {DATASET_VARIABLE}=<folder holding one sub-folder per dataset>\n'
                f'export {CHECKPOINT_VARIABLE}=<folder for all experiment output>')
LOCK_NAME = '.lock'


def folder_error(problem: str) -> UserError:
    """A problem with one of the two folder variables, with the lines that set them."""
    return UserError(f'{problem}; add these lines to your ~/.bashrc (or run them in your shell):\n{EXPORT_LINES}')


def folder_variable(name: str) -> str:
    """The value of a folder variable; a UserError when it is unset or empty."""
    value = os.environ.get(name, '')
    if not value:
        raise folder_error(f'the environment variable {name} is not set')
    return value


def checkpoint_root() -> str:
    """The folder of all experiment output (UBNA_DIR_CHECKPOINT), created when missing."""
    root = folder_variable(CHECKPOINT_VARIABLE)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise folder_error(f'{CHECKPOINT_VARIABLE}={root} cannot be created ({exc.strerror})') from None
    return root


def relative_name_problem(name: str) -> str | None:
    """Why `name` is not a relative path of plain folder names ('a', 'a/b'; a trailing '/' is fine), or None."""
    if not name:
        return 'is empty'
    if '\0' in name:
        return 'holds a NUL character'
    if name.startswith('/'):
        return 'is an absolute path'
    if any(part in ('', '.', '..') for part in name.rstrip('/').split('/')):
        return "has an empty, '.' or '..' part"
    return None


def checkpoint_path(relative: str) -> str:
    """$UBNA_DIR_CHECKPOINT/<relative>; a UserError when `relative` leads outside that folder."""
    root = checkpoint_root()
    path = os.path.join(root, relative)
    if os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) != os.path.abspath(root):
        raise UserError(f'{relative} leads outside {CHECKPOINT_VARIABLE}={root}; give a path relative to it')
    return path


def experiment_dir(experiment_class: str, model_name: str) -> str:
    """$UBNA_DIR_CHECKPOINT/<experiment-class>/<model-name>, created if missing; never a folder outside it."""
    path = checkpoint_path(os.path.join(experiment_class, model_name))
    os.makedirs(path, exist_ok=True)
    return path

# ---------------------------------------------------------------------------------------------
# The one atomic writer.


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only read it by setting it)


def write_atomically(path: str, write) -> None:
    """Call write(temporary_path) in the file's folder (created if missing), then rename over `path`: readers never
    see half a file, and a failed write leaves none."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f'.{name}.', suffix=os.path.splitext(name)[1], dir=folder)
    os.close(descriptor)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path`, atomically."""
    def dump(temporary):
        with open(temporary, 'wb') as file:
            file.write(data)
    write_atomically(path, dump)


def write_json(path: str, data, indent: int | None = 2) -> None:
    """Write `data` as JSON (indented, ending in a newline; indent None: one compact line as json.dump writes it),
    atomically."""
    def dump(temporary):
        with open(temporary, 'w') as file:
            json.dump(data, file, indent=indent)
            if indent is not None:
                file.write('\n')
    write_atomically(path, dump)


def save_options(opt, folder: str) -> None:
    """Store every parsed option as opt.json in the experiment folder."""
    write_json(os.path.join(folder, 'opt.json'), vars(opt))

# ---------------------------------------------------------------------------------------------
# The lock: one writer per experiment folder, until its process exits.


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
