"""Download the KITTI raw archives named in a list file and unpack them into <root>/<folder>/Raw_data.

Each line of the list is an archive path relative to the KITTI server (spec §11), e.g.
`raw_data/2011_09_26_drive_0001/2011_09_26_drive_0001_sync.zip`. Every archive is downloaded with
the python `wget` package, unpacked, and deleted. Archives whose unpacked result already exists are
skipped, so an interrupted run can simply be started again.
Usage: python data_download/download_kitti.py --root $UBNA_DIR_DATASET
"""
import argparse
import contextlib
import os
import sys
import zipfile

if __package__ in (None, ''):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloader.paths import dataset_root  # noqa: E402
from errors import UserError, run_cli  # noqa: E402

DEFAULT_BASE_URL = 'https://s3.eu-central-1.amazonaws.com/avg-kitti'
DEFAULT_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kitti_archives.txt')
DEFAULT_FOLDER = 'kitti_download'


def read_archive_list(path: str) -> list:
    """Archive paths (relative to the server) from a list file, one per line; blank and '#' lines skipped."""
    if not os.path.isfile(path):
        raise UserError(f"KITTI archive list {path} does not exist.")
    with open(path) as file:
        archives = [line.strip() for line in file if line.strip() and not line.lstrip().startswith('#')]
    if not archives:
        raise UserError(f"KITTI archive list {path} names no archives.")
    for archive in archives:
        if not archive.endswith('.zip') or archive.startswith('/') or '..' in archive.split('/'):
            raise UserError(f"line '{archive}' of KITTI archive list {path} is not a relative .zip path.")
    return archives


def archive_url(base_url: str, archive: str) -> str:
    return f"{base_url.rstrip('/')}/{archive}"


def unpacked_marker(raw_dir: str, archive: str) -> str:
    """The path whose existence shows that `archive` was unpacked into raw_dir.

    `<date>_calib.zip` holds `<date>/calib_cam_to_cam.txt`; a drive archive holds `<date>/<drive>_sync/`.
    """
    name = os.path.basename(archive)[:-len('.zip')]
    date = name[:10]
    if name.endswith('_calib'):
        return os.path.join(raw_dir, date, 'calib_cam_to_cam.txt')
    return os.path.join(raw_dir, date, name)


def download_archive(url: str, out_dir: str) -> str:
    """Download `url` into out_dir with the python wget package; returns the local file path."""
    import wget  # only needed when downloading
    target = os.path.abspath(os.path.join(out_dir, url.rsplit('/', 1)[-1]))
    if os.path.exists(target):  # a leftover of an interrupted run
        os.remove(target)
    try:
        with contextlib.chdir(out_dir):  # wget writes its temporary file into the working folder
            return wget.download(url, out=target, bar=None)
    except (OSError, ValueError) as exc:
        raise UserError(f"download of {url} failed ({exc}).") from exc


def unpack_archive(zip_path: str, raw_dir: str) -> list:
    """Extract zip_path into raw_dir, delete the zip, and return the extracted member names."""
    raw_root = os.path.realpath(raw_dir)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.namelist()
            for member in members:
                destination = os.path.realpath(os.path.join(raw_root, member))
                if os.path.commonpath([raw_root, destination]) != raw_root:
                    raise UserError(f"archive {zip_path} holds a path outside the target folder: {member}.")
            archive.extractall(raw_root)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"archive {zip_path} could not be unpacked ({exc}).") from exc
    os.remove(zip_path)
    return members


def download_kitti(root: str, list_file: str = DEFAULT_LIST, base_url: str = DEFAULT_BASE_URL,
                   folder: str = DEFAULT_FOLDER) -> str:
    """Download and unpack every archive of list_file into <root>/<folder>/Raw_data; returns that folder."""
    if not os.path.isdir(root):
        raise UserError(f"dataset folder {root} does not exist.")
    archives = read_archive_list(list_file)
    raw_dir = os.path.join(root, folder, 'Raw_data')
    os.makedirs(raw_dir, exist_ok=True)
    for number, archive in enumerate(archives, 1):
        if os.path.exists(unpacked_marker(raw_dir, archive)):
            print(f'[{number}/{len(archives)}] {archive}: already unpacked, skipped', flush=True)
            continue
        print(f'[{number}/{len(archives)}] {archive}', flush=True)
        unpack_archive(download_archive(archive_url(base_url, archive), raw_dir), raw_dir)
    return raw_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Download and unpack the KITTI raw archives (spec §11).')
    parser.add_argument('--root', default=None, help='dataset folder (default: $UBNA_DIR_DATASET)')
    parser.add_argument('--list', default=DEFAULT_LIST, help='archive list, one relative archive path a line')
    parser.add_argument('--base-url', default=DEFAULT_BASE_URL, help='KITTI download server')
    parser.add_argument('--folder', default=DEFAULT_FOLDER,
                        help='sub-folder of --root that receives Raw_data (build_index.py kitti reads <root>/kitti)')
    args = parser.parse_args(argv)
    if args.root is None:
        args.root = dataset_root()
    raw_dir = download_kitti(args.root, args.list, args.base_url, args.folder)
    print(f'KITTI raw data unpacked into {raw_dir}')


if __name__ == '__main__':
    sys.exit(run_cli(main))
