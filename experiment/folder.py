"""The experiment folder, $UBNA_DIR_CHECKPOINT/<experiment-class>/<model-name>: its paths, the one atomic writer every
file of the project is written with, opt.json, the lock that keeps one writer per folder, and the one sentence a failed
write (a full disk, a quota, a read-only or foreign folder) ends a run with.

The lock is an flock on <folder>/.lock, so the kernel drops it when its process ends in any way (SIGKILL included);
after a reboot the file remains but nobody holds it. The file records who took it (pid, host, start time): for the
message that refuses a second run, and to say whose lock a new run takes over when a run that died left it
non-empty. A run that ends normally empties the file, so rerunning a finished experiment says nothing.
"""
import atexit
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time

from errors import UserError
from experiment.staging import STAGING_NAME, tidy_checkpoints

CHECKPOINT_VARIABLE = 'UBNA_DIR_CHECKPOINT'
DATASET_VARIABLE = 'UBNA_DIR_DATASET'
EXPORT_LINES = (f'export {DATASET_VARIABLE}=<folder holding one sub-folder per dataset>\n'
                f'export {CHECKPOINT_VARIABLE}=<folder for all experiment output>')
LOCK_NAME = '.lock'
PARTIAL_MARK = '.partial'  # in the atomic writer's temporary names: .<name>.<random>.partial<ext>
PARTIAL_NAME = re.compile(r'\.(?P<name>.+)\.[a-z0-9_]{8}\.partial(?P<ext>\.[^.]*)?')
WRITE_ERRNOS = {  # a failed write the user can fix: what to do about it
    errno.ENOSPC: 'free some space there',
    errno.EDQUOT: 'free some of your disk quota',
    errno.EFBIG: 'raise the file size limit (ulimit -f)',
    errno.EROFS: 'give a folder on a writable file system',
    errno.EACCES: 'make the folder writable for you',
}


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


_created = {}  # experiment folder -> the folders this process created for it, deepest first


def experiment_dir(experiment_class: str, model_name: str) -> str:
    """$UBNA_DIR_CHECKPOINT/<experiment-class>/<model-name>, created if missing; never a folder outside it. Folders
    created here that the run leaves empty (it failed before writing) are removed again at exit."""
    path = checkpoint_path(os.path.join(experiment_class, model_name))
    missing, parent = [], os.path.abspath(path)
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    with writing('the experiment folder', path):
        os.makedirs(path, exist_ok=True)
    if missing:
        _created[os.path.abspath(path)] = missing
    return path


def _remove_if_unused(folder: str) -> None:
    """Remove an experiment folder this process created if it holds nothing but the lock file, and the parents it
    created with it while they are empty."""
    try:
        if set(os.listdir(folder)) - {LOCK_NAME}:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, LOCK_NAME))
        for created in _created.pop(folder):
            os.rmdir(created)
    except OSError:  # written to meanwhile, or not ours to remove: it stays
        pass

# ---------------------------------------------------------------------------------------------
# A failed write in one sentence.


def failed_write(exc: BaseException) -> OSError | None:
    """The OSError of a failed write behind `exc`, along its chain (torch.save raises a RuntimeError over it; a
    library may only quote it in its message); None for any other error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            return exc
        for number in WRITE_ERRNOS:
            if not isinstance(exc, OSError) and os.strerror(number) in str(exc):
                return OSError(number, os.strerror(number))
        exc = exc.__cause__ or exc.__context__
    return None


def readable_size(size: int) -> str:
    """'165.3 MB', '2.1 kB', '12 bytes'."""
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if size >= scale:
            return f'{size / scale:.1f} {unit}'
    return f'{size} bytes'


def last_checkpoint(experiment: str) -> str:
    """The newest complete checkpoint of an experiment folder, relative to $UBNA_DIR_CHECKPOINT when inside it, or
    'none yet'."""
    checkpoints = os.path.join(experiment, 'checkpoints')
    found = [os.path.join(checkpoints, name) for name in (os.listdir(checkpoints) if os.path.isdir(checkpoints) else ())
             if not name.startswith('.') and os.path.isfile(os.path.join(checkpoints, name, 'model.pth'))]
    if not found:
        return 'none yet'
    newest = max(found, key=os.path.getmtime)
    root = os.path.abspath(os.environ.get(CHECKPOINT_VARIABLE) or '/')
    return os.path.relpath(newest, root) if os.path.commonpath([root, newest]) == root else newest


def _experiment_of(path: str) -> str | None:
    """The experiment folder this process holds the lock of that holds `path`, if any."""
    path = os.path.abspath(path)
    for lock in _held:
        folder = os.path.dirname(lock)
        if os.path.commonpath([folder, path]) == folder:
            return folder
    return None


def write_failure(exc: BaseException, what: str, folder: str, needed=None) -> UserError | None:
    """The one sentence of a failed write of `what` into `folder` (needed: its size in bytes, or a function giving it;
    None if unknown); None when `exc` is no such failure."""
    error = failed_write(exc)
    if error is None:
        return None
    size = needed() if callable(needed) else needed
    parts = [f'could not write {what} to {folder} ({error.strerror}'
             + (f'; it needed about {readable_size(size)})' if size else ')')]
    experiment = _experiment_of(folder)
    if experiment is not None and os.path.isdir(os.path.join(experiment, 'checkpoints')):  # jobs that keep some
        parts.append(f'the last intact checkpoint is {last_checkpoint(experiment)}')
    parts.append(f'{WRITE_ERRNOS[error.errno]} and rerun')
    return UserError('; '.join(parts))


@contextlib.contextmanager
def writing(what: str, folder: str, needed=None):
    """Inside the block, a failed write (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES) becomes the one sentence of
    write_failure; other errors pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        failure = write_failure(exc, what, folder, needed)
        if failure is None:
            raise
        raise failure from exc

# ---------------------------------------------------------------------------------------------
# The one atomic writer.


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only read it by setting it)


def write_atomically(path: str, write, needed: int | None = None) -> None:
    """Call write(temporary_path) in the file's folder (created if missing), then rename over `path`: readers never
    see half a file, and a failed write leaves none. A failed write ends in one sentence (needed: the file's size,
    when known). The temporary name, .<name>.<random>.partial<ext>, tells a stopped run's leftovers apart."""
    folder, name = os.path.split(os.path.abspath(path))
    with writing(name, folder, needed):
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f'.{name}.', suffix=PARTIAL_MARK + os.path.splitext(name)[1],
                                                 dir=folder)
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
    write_atomically(path, dump, needed=len(data))


def write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path`, atomically."""
    write_bytes(path, text.encode())


def write_json(path: str, data, indent: int | None = 2) -> None:
    """Write `data` as JSON (indented, ending in a newline; indent None: one compact line as json.dump writes it),
    atomically."""
    write_text(path, json.dumps(data, indent=indent) + ('\n' if indent is not None else ''))


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
    """At exit: release every lock this process holds; remove the folders it created and left unused."""
    locked = {os.path.dirname(path) for path in _held}
    for path in list(_held):
        _release(path)
    for folder in locked & set(_created):  # only a folder this process held: another may be writing it
        _remove_if_unused(folder)


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies: the lock must end with the process that took it."""
    for descriptor in _held.values():
        os.close(descriptor)
    _held.clear()
    _created.clear()


atexit.register(_release_all)
os.register_at_fork(after_in_child=_forget_in_child)


def lock_folder(folder: str, what: str = 'the experiment folder',
                instead: str = 'another --experiment-class/--model-name') -> None:
    """Take the lock of a folder one run writes (`what`: an experiment folder, a resized copy) until this process
    exits, removing what a stopped run left there; UserError while another live run holds it (`instead`: what to
    choose then)."""
    path = os.path.join(os.path.abspath(folder), LOCK_NAME)
    _release(path)  # this process may take the same folder again (jobs run in-process one after the other)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f'the lock file {path} of {what} cannot be opened ({exc.strerror})') from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise UserError(f'{what} {folder} is in use by another run ({_describe(holder)}), which is still running; '
                        f'wait for it to end or choose {instead}') from None
    previous = _holder(descriptor)
    if previous:
        print(f'note: took over the lock of {what} {folder} left by {_describe(previous)}, which is no longer '
              f'running', file=sys.stderr, flush=True)
    _record_self(descriptor)
    _held[path] = descriptor
    remove_leftovers(folder)


def _partial_files(folder: str) -> list[str]:
    """The atomic writer's temporary files in an experiment folder and its subfolders (not in a nested experiment
    folder, which has a lock of its own, nor in checkpoint staging folders)."""
    found = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not STAGING_NAME.fullmatch(name)
                         and not os.path.exists(os.path.join(parent, name, LOCK_NAME))]
        for name in files:
            match = PARTIAL_NAME.fullmatch(name)
            if match and match['name'].endswith(match['ext'] or ''):
                found.append(os.path.join(parent, name))
    return found


def _plural(count: int, noun: str) -> str:
    return f'{count} {noun}' + ('' if count == 1 else 's')


def remove_leftovers(folder: str) -> None:
    """With the folder's lock: delete the temporary files and checkpoint staging folders a stopped run left, finish
    the checkpoint replacements it interrupted, and say so in a line each."""
    partial = _partial_files(folder)
    for path in partial:
        os.remove(path)
    restored, staging = tidy_checkpoints(os.path.join(folder, 'checkpoints'))
    removed = [_plural(count, noun) for count, noun in ((len(partial), 'temporary file'),
                                                         (staging, 'checkpoint staging folder')) if count]
    if removed:
        print(f'note: removed {" and ".join(removed)} left by a run that stopped in {folder}', file=sys.stderr,
              flush=True)
    for name in restored:
        print(f'note: put the checkpoint {name} back in place in {folder}: a run stopped while replacing it',
              file=sys.stderr, flush=True)
