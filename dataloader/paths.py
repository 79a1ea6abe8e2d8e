"""Where datasets and experiment output live: the UBNA_DIR_DATASET and UBNA_DIR_CHECKPOINT variables."""
import os

from errors import UserError

DATASET_VARIABLE = 'UBNA_DIR_DATASET'
CHECKPOINT_VARIABLE = 'UBNA_DIR_CHECKPOINT'
EXPORT_LINES = (f'export {DATASET_VARIABLE}=<folder holding one sub-folder per dataset>\n'
                f'export {CHECKPOINT_VARIABLE}=<folder for all experiment output>')


def _folder_error(problem: str) -> UserError:
    return UserError(f'{problem}; add these lines to your ~/.bashrc (or run them in your shell):\n{EXPORT_LINES}')


def _variable(name: str) -> str:
    value = os.environ.get(name, '')
    if not value:
        raise _folder_error(f'the environment variable {name} is not set')
    return value


def dataset_root() -> str:
    """The folder of all datasets (UBNA_DIR_DATASET); it must exist."""
    root = _variable(DATASET_VARIABLE)
    if not os.path.isdir(root):
        raise _folder_error(f'{DATASET_VARIABLE}={root} is not an existing folder')
    return root


def checkpoint_root() -> str:
    """The folder of all experiment output (UBNA_DIR_CHECKPOINT), created when missing."""
    root = _variable(CHECKPOINT_VARIABLE)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise _folder_error(f'{CHECKPOINT_VARIABLE}={root} cannot be created ({exc.strerror})') from None
    return root


def check_environment() -> None:
    """Fail before any work when either folder variable is missing or wrong."""
    dataset_root()
    checkpoint_root()


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
