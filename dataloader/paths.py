"""Where datasets live: the UBNA_DIR_DATASET variable."""
import os

from experiment.folder import DATASET_VARIABLE, folder_error, folder_variable


def dataset_root() -> str:
    """The folder of all datasets (UBNA_DIR_DATASET); it must exist."""
    root = folder_variable(DATASET_VARIABLE)
    if not os.path.isdir(root):
        raise folder_error(f'{DATASET_VARIABLE}={root} is not an existing folder')
    return root
