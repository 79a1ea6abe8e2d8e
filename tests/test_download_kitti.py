"""download_kitti.py: archive list, unpacking and the download loop, without network access."""
import os
import re
import zipfile

import pytest

from data_download import download_kitti as dk
from errors import UserError, run_cli

# drives per recording date as enumerated in spec §11 (151 in all; the spec's summary says 150)
DRIVES_PER_DATE = {'2011_09_26': 45, '2011_09_28': 92, '2011_09_29': 3, '2011_09_30': 7, '2011_10_03': 4}
DRIVE_LINE = re.compile(r'^raw_data/(\d{4}_\d\d_\d\d)_drive_(\d{4})/\1_drive_\2_sync\.zip$')
CALIB_LINE = re.compile(r'^raw_data/(\d{4}_\d\d_\d\d)_calib\.zip$')


def make_zip(path, members):
    with zipfile.ZipFile(path, 'w') as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def test_archive_list_holds_the_calibrations_and_drives_of_the_five_dates():
    archives = dk.read_archive_list(dk.DEFAULT_LIST)
    calibs = [a for a in archives if CALIB_LINE.match(a)]
    drives = [DRIVE_LINE.match(a).groups() for a in archives if DRIVE_LINE.match(a)]
    assert len(calibs) + len(drives) == len(archives) == len(set(archives))
    assert sorted(CALIB_LINE.match(a).group(1) for a in calibs) == sorted(DRIVES_PER_DATE)
    assert {date: sum(d == date for d, _ in drives) for date in DRIVES_PER_DATE} == DRIVES_PER_DATE
    assert ('2011_09_28', '0222') in drives and ('2011_10_03', '0047') in drives
    assert len(archives) == 5 + 151


def test_archive_url_joins_base_and_relative_path():
    assert dk.archive_url('https://host/avg-kitti/', 'raw_data/x.zip') == 'https://host/avg-kitti/raw_data/x.zip'
    assert dk.DEFAULT_BASE_URL == 'https://s3.eu-central-1.amazonaws.com/avg-kitti'


def test_read_archive_list_skips_blank_and_comment_lines(tmp_path):
    listing = tmp_path / 'list.txt'
    listing.write_text('# comment\n\nraw_data/2011_09_26_calib.zip\n')
    assert dk.read_archive_list(str(listing)) == ['raw_data/2011_09_26_calib.zip']


@pytest.mark.parametrize('content', ['', 'raw_data/notes.txt\n', '../evil.zip\n'])
def test_bad_archive_list_is_a_user_error(tmp_path, content):
    listing = tmp_path / 'list.txt'
    listing.write_text(content)
    with pytest.raises(UserError, match='list.txt'):
        dk.read_archive_list(str(listing))


def test_missing_archive_list_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        dk.read_archive_list(str(tmp_path / 'missing.txt'))


def test_unpack_arranges_the_tree_and_removes_the_zip(tmp_path):
    raw_dir = tmp_path / 'kitti_download' / 'Raw_data'
    raw_dir.mkdir(parents=True)
    drive = '2011_09_26/2011_09_26_drive_0001_sync'
    zip_path = make_zip(raw_dir / '2011_09_26_drive_0001_sync.zip', {
        f'{drive}/image_02/data/0000000000.png': b'left', f'{drive}/image_03/data/0000000000.png': b'right'})
    members = dk.unpack_archive(zip_path, str(raw_dir))
    assert len(members) == 2
    assert (raw_dir / drive / 'image_02' / 'data' / '0000000000.png').read_bytes() == b'left'
    assert (raw_dir / drive / 'image_03' / 'data' / '0000000000.png').read_bytes() == b'right'
    assert not os.path.exists(zip_path)
    assert os.path.isdir(dk.unpacked_marker(str(raw_dir), 'raw_data/2011_09_26_drive_0001/'
                                                          '2011_09_26_drive_0001_sync.zip'))


def test_unpack_rejects_broken_and_escaping_archives(tmp_path):
    broken = tmp_path / 'broken.zip'
    broken.write_bytes(b'not a zip')
    with pytest.raises(UserError, match='broken.zip'):
        dk.unpack_archive(str(broken), str(tmp_path))
    escaping = make_zip(tmp_path / 'escaping.zip', {'../outside.txt': b'x'})
    with pytest.raises(UserError, match='outside the target folder'):
        dk.unpack_archive(escaping, str(tmp_path / 'raw'))


def test_failed_download_names_the_url(tmp_path):
    url = (tmp_path / 'missing' / 'x.zip').as_uri()
    with pytest.raises(UserError, match=re.escape(url)):
        dk.download_archive(url, str(tmp_path))


def test_download_kitti_fetches_unpacks_and_skips_done_archives(tmp_path, monkeypatch):
    listing = tmp_path / 'list.txt'
    listing.write_text('raw_data/2011_09_26_calib.zip\n'
                       'raw_data/2011_09_26_drive_0001/2011_09_26_drive_0001_sync.zip\n')
    contents = {'2011_09_26_calib.zip': {'2011_09_26/calib_cam_to_cam.txt': b'K'},
                '2011_09_26_drive_0001_sync.zip': {
                    '2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png': b'png'}}
    fetched = []

    def fake_download(url, out_dir):
        fetched.append(url)
        name = url.rsplit('/', 1)[-1]
        return make_zip(os.path.join(out_dir, name), contents[name])

    monkeypatch.setattr(dk, 'download_archive', fake_download)
    raw_dir = dk.download_kitti(str(tmp_path), str(listing), 'https://server/base')
    assert raw_dir == str(tmp_path / 'kitti_download' / 'Raw_data')
    assert fetched == ['https://server/base/raw_data/2011_09_26_calib.zip',
                       'https://server/base/raw_data/2011_09_26_drive_0001/2011_09_26_drive_0001_sync.zip']
    assert (tmp_path / 'kitti_download' / 'Raw_data' / '2011_09_26' / 'calib_cam_to_cam.txt').exists()
    assert not list((tmp_path / 'kitti_download' / 'Raw_data').glob('*.zip'))
    dk.download_kitti(str(tmp_path), str(listing), 'https://server/base')
    assert len(fetched) == 2


def test_download_archive_fetches_a_file_url(tmp_path):
    source = make_zip(tmp_path / 'source.zip', {'a.txt': b'a'})
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    path = dk.download_archive((tmp_path / 'source.zip').as_uri(), str(out_dir))
    assert path == str(out_dir / 'source.zip') and open(path, 'rb').read() == open(source, 'rb').read()
    assert os.listdir(out_dir) == ['source.zip']


def test_cli_reports_a_missing_list_with_exit_status_2(tmp_path, capsys):
    assert run_cli(dk.main, ['--root', str(tmp_path), '--list', str(tmp_path / 'none.txt')]) == 2
    assert capsys.readouterr().err.startswith('error: KITTI archive list')
