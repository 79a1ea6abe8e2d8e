"""data_download/resize_dataset.py: a resized copy gives the loaders' samples, and a copy that is partial, stale or
made for another loader or size is refused (dataloader/resized_copy.py)."""
import json
import os
import random
import shutil
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from data_download.resize_dataset import FileTask, encoded
from data_download.resize_dataset import main as resize_main
from dataloader.dataset import read_image
from dataloader.loaders import adaptation_dataset, make_loader, training_dataset, validation_dataset
from dataloader.resized_copy import MANIFEST, read_manifest
from dataloader.transforms import Jitter, nearest_indices
from errors import UserError, run_cli
from tests.support import lock_held_elsewhere, run_script
from data_download.tiny_datasets import id_label, noise_image, palette_label, write_dataset

NATIVE_HW = (150, 300)
RESIZE_HW = (64, 128)
CROP_HW = (32, 80)
SEEDS = range(6)


def write_sources(root: str) -> None:
    """gta5 (palette labels, one label of another size, as in real GTA-5), cityscapes_sequence (one 16-bit and one
    grey colour image) and cityscapes train + validation (id labels), 4 samples each."""
    rng = np.random.default_rng(0)
    height, width = NATIVE_HW
    gta5_labels = {i: palette_label(rng, height - 2 * (i == 3), width) for i in range(4)}
    write_dataset(root, 'gta5', {'color': {i: noise_image(rng, height, width) for i in range(4)},
                                 'segmentation': gta5_labels}, labels='gta5', labels_mode='fromrgb', split='full_split')
    left = {i: noise_image(rng, height, width) for i in range(4)}
    left[1] = left[1].astype(np.uint16) * 257 + 100
    right = {i: noise_image(rng, height, width) for i in range(4)}
    right[2] = right[2][..., 0]
    write_dataset(root, 'cityscapes_sequence', {'color': left, 'color_right': right})
    for split_file in ('train', 'validation'):
        write_dataset(root, 'cityscapes', {'color': {i: noise_image(rng, 128, 256) for i in range(4)},
                                           'segmentation': {i: id_label(rng, 128, 256) for i in range(4)}},
                      split_file=split_file)


@pytest.fixture(scope='module')
def roots(tmp_path_factory) -> tuple[str, str]:
    """(source root, copy root): four loaders written into one copy root by the real command line."""
    source, copy = str(tmp_path_factory.mktemp('source')), str(tmp_path_factory.mktemp('copy'))
    write_sources(source)
    size = ['--resize-height', RESIZE_HW[0], '--resize-width', RESIZE_HW[1]]
    for loader, flags in (('gta5_train', size), ('cityscapes_sequence_train', size), ('cityscapes_train', size),
                          ('cityscapes_validation', [])):
        run_script('data_download/resize_dataset.py', [loader, *flags, '--output', copy, '--workers', 2], source,
                   str(tmp_path_factory.mktemp('checkpoints')))
    return source, copy


def both(monkeypatch, roots, make_dataset):
    """The same loader's dataset on the source root and on the copy root."""
    datasets = []
    for root in roots:
        monkeypatch.setenv('UBNA_DIR_DATASET', root)
        datasets.append(make_dataset())
    return datasets


def level_differences(native, copied, keys=('input',)) -> dict[str, list[torch.Tensor]]:
    """|copy - native| of each of `keys` in levels, per sample and seed, in one pass; labels must be equal."""
    assert len(native) == len(copied)
    found = {key: [] for key in keys}
    for index in range(len(native)):
        for seed in SEEDS:
            random.seed(seed)
            expected = native[index]
            random.seed(seed)
            sample = copied[index]
            if 'label' in expected:
                assert torch.equal(sample['label'], expected['label']), (index, seed)
            for key in keys:
                found[key].append((sample[key].int() - expected[key].int()).abs())
    return found


def unjittered(monkeypatch) -> None:
    """Make every colour jitter the identity (its factors are still drawn), so 'input' is the plain image."""
    monkeypatch.setattr(Jitter, 'apply', lambda self, image: np.asarray(image))


@pytest.mark.slow  # roots: data_download/resize_dataset.py run four times
def test_training_copy_gives_the_same_samples(monkeypatch, roots):
    for loader in ('gta5_train', 'cityscapes_train'):
        native, copied = both(monkeypatch, roots, lambda name=loader: training_dataset(name, RESIZE_HW, CROP_HW))
        for key, differences in level_differences(native, copied, ('image', 'input')).items():
            assert not any(found.any() for found in differences), (loader, key)


@pytest.mark.slow  # roots: data_download/resize_dataset.py run four times
def test_adaptation_copy_gives_the_same_samples(monkeypatch, roots):
    """The native path crops with float32 PIL box coordinates, so a few of its pixels are one level off the exact
    resize-then-crop that the copy gives; the 8-bit jitter chain turns such a level into a few."""
    native, copied = both(monkeypatch, roots, lambda: adaptation_dataset('cityscapes_sequence_train', RESIZE_HW,
                                                                         CROP_HW))
    jittered = level_differences(native, copied)['input']
    with monkeypatch.context() as patch:
        unjittered(patch)
        plain = level_differences(native, copied)['input']
        random.seed(0)
        flip = copied.transform.draw().flip
        random.seed(0)
        image = copied[0]['input'].permute(1, 2, 0).numpy()
    assert max(found.max().item() for found in plain) <= 1
    assert max((found > 0).float().mean().item() for found in plain) < 0.02
    assert max(found.max().item() for found in jittered) <= 8
    assert all(plain_found.any() or not jitter_found.any()  # equal plain images stay equal when jittered
               for plain_found, jitter_found in zip(plain, jittered))
    resized = read_image(copied.files['color'][0], 'color')  # 71x136: the crop at (0, 0) of a scale-1 box is exact
    assert np.array_equal(image, resized[:40, 8:][:, ::-1] if flip else resized[:40, :128])


@pytest.mark.slow  # roots: data_download/resize_dataset.py run four times
def test_validation_copy_serves_every_size(monkeypatch, roots):
    for size in (RESIZE_HW, (32, 64)):
        native, copied = both(monkeypatch, roots, lambda hw=size: validation_dataset('cityscapes_validation', hw))
        assert not any(found.any() for found in level_differences(native, copied)['input'])
        assert copied[0]['label'].shape == (128, 256)


@pytest.mark.slow  # roots: data_download/resize_dataset.py run four times
def test_copy_holds_the_loaders_first_resize(roots):
    source, copy = roots

    def shape(*path):
        return cv2.imread(os.path.join(copy, *path), cv2.IMREAD_UNCHANGED).shape

    assert shape('gta5', 'color', 'train_00000.png') == (*RESIZE_HW, 3)
    assert shape('gta5', 'segmentation', 'train_00003.png') == (*RESIZE_HW, 3)  # palette labels read as colours
    with Image.open(os.path.join(copy, 'gta5', 'segmentation', 'train_00003.png')) as label:
        assert label.mode == 'P'  # and written with their palette
    assert shape('cityscapes_sequence', 'color', 'train_00001.png') == (71, 136, 3)  # 8-bit from 16-bit
    assert shape('cityscapes', 'segmentation', 'train_00000.png') == RESIZE_HW
    for category in ('color', 'segmentation'):  # validation loaders are copied unchanged
        with open(os.path.join(source, 'cityscapes', category, 'validation_00002.png'), 'rb') as native, \
                open(os.path.join(copy, 'cityscapes', category, 'validation_00002.png'), 'rb') as copied:
            assert native.read() == copied.read()
    assert os.path.isfile(os.path.join(copy, 'gta5_full_split', 'train.json'))
    with open(os.path.join(copy, 'cityscapes', MANIFEST), encoding='utf-8') as file:
        entries = json.load(file)['loaders']
    assert sorted(entries) == ['cityscapes_train', 'cityscapes_validation']
    assert all(entry['complete'] and entry['num_files'] == 11 for entry in entries.values())


def deflate_block_and_row_filters(png: bytes, row_bytes: int) -> tuple[int, set[int]]:
    """The type of the first deflate block of a PNG's image data (0: stored) and the row filters it uses."""
    data, position = b'', 8
    while position < len(png):
        length, kind = int.from_bytes(png[position:position + 4], 'big'), png[position + 4:position + 8]
        if kind == b'IDAT':
            data += png[position + 8:position + 8 + length]
        position += 12 + length
    rows = zlib.decompress(data)
    return (data[2] >> 1) & 3, set(rows[::row_bytes + 1])


def test_copy_stores_colour_images_unless_compressed(tmp_path):
    y, x = np.mgrid[0:40, 0:96]
    smooth = np.stack([x * 2, y * 5, x + y], -1).astype(np.uint8)
    source = str(tmp_path / 'source.png')
    cv2.imwrite(source, smooth)
    stored = encoded(FileTask('a.png', 'color', (20, 48)), source, compress=False)
    compressed = encoded(FileTask('a.png', 'color', (20, 48)), source, compress=True)
    decode = lambda png: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)  # noqa: E731
    np.testing.assert_array_equal(decode(stored), decode(compressed))
    assert decode(stored).shape == (20, 48, 3)
    block_type, filters = deflate_block_and_row_filters(stored, 48 * 3)
    assert block_type == 0 and len(compressed) < len(stored) / 2
    if hasattr(cv2, 'IMWRITE_PNG_FILTER'):
        assert filters == {0}  # no row filter to undo
    label = encoded(FileTask('b.png', 'label', (20, 48)), source, compress=False)
    np.testing.assert_array_equal(decode(label), smooth[nearest_indices(40, 20)][:, nearest_indices(96, 48)])
    assert deflate_block_and_row_filters(label, 48 * 3)[0] != 0


@pytest.mark.slow  # roots: data_download/resize_dataset.py run four times
def test_loader_reads_the_copy(monkeypatch, roots):
    monkeypatch.setenv('UBNA_DIR_DATASET', roots[1])
    loader = make_loader(training_dataset('gta5_train', RESIZE_HW, CROP_HW), 2, shuffle=True, drop_last=True,
                         num_workers=0, on_gpu=False)
    batch = next(iter(loader))
    assert batch['input'].shape == (2, 3, *CROP_HW) and batch['label'].shape == (2, *CROP_HW)


@pytest.fixture
def copy_of(named_datasets, tmp_path, monkeypatch):
    """A function that writes the copy of a loader (in-process, one worker) to tmp_path/copy; returns the root."""
    copy_root = str(tmp_path / 'copy')

    def write(loader: str, height: int = 32, width: int = 64) -> str:
        monkeypatch.setenv('UBNA_DIR_DATASET', named_datasets)
        size = [] if 'validation' in loader else ['--resize-height', str(height), '--resize-width', str(width)]
        resize_main([loader, *size, '--output', copy_root, '--workers', '1'])
        monkeypatch.setenv('UBNA_DIR_DATASET', copy_root)
        return copy_root

    return write


def test_partial_copy_is_refused(copy_of, named_datasets, monkeypatch):
    copy = copy_of('cityscapes_train')
    with open(os.path.join(named_datasets, 'cityscapes', 'color', 'train_00003.png'), 'wb') as file:
        file.write(b'not a png')
    with pytest.raises(UserError, match='train_00003.png cannot be read'):
        copy_of('cityscapes_train')  # the rerun stops at the broken file
    monkeypatch.setenv('UBNA_DIR_DATASET', copy)
    with pytest.raises(UserError, match=r'the resized copy of cityscapes_train in \S+ is partial \(its writing '
                                        r'did not finish\); rerun: UBNA_DIR_DATASET=\S+ python data_download/resize_'
                                        r'dataset.py cityscapes_train --resize-height 32 --resize-width 64 --output '
                                        r'\S+$'):
        training_dataset('cityscapes_train', (32, 64), (16, 32))


@pytest.mark.parametrize('change', ['touch an image', 'edit the split file', 'remove a label'])
def test_stale_copy_is_refused(copy_of, named_datasets, change):
    copy_of('gta5_train')
    training_dataset('gta5_train', (32, 64), (16, 32))
    if change == 'touch an image':
        path = os.path.join(named_datasets, 'gta5', 'color', 'train_00001.png')
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1000))
    elif change == 'edit the split file':
        with open(os.path.join(named_datasets, 'gta5_full_split', 'train.json'), 'a', encoding='utf-8') as file:
            file.write(' ')
    else:
        os.remove(os.path.join(named_datasets, 'gta5', 'segmentation', 'train_00002.png'))
    reason = 'the source file .*train_00002.png was removed' if change == 'remove a label' else 'its source .*changed'
    with pytest.raises(UserError, match=f'the resized copy of gta5_train in .* is stale: {reason} since it was '
                                        f'written; rebuild it: UBNA_DIR_DATASET='):
        training_dataset('gta5_train', (32, 64), (16, 32))


def test_other_resize_size_is_refused(copy_of):
    copy_of('cityscapes_sequence_train')
    assert len(adaptation_dataset('cityscapes_sequence_train', (32, 64), (32, 64))) == 8
    with pytest.raises(UserError, match=r'holds cityscapes_sequence_train resized for 32x64, but this job resizes to '
                                        r'64x128 \(--adaptation-resize-height/-width\); use 32x64 there or write a '
                                        r'copy for this size: .*--resize-height 64 --resize-width 128'):
        adaptation_dataset('cityscapes_sequence_train', (64, 128), (32, 64))


def test_other_loader_is_refused(copy_of):
    copy_of('cityscapes_validation')
    with pytest.raises(UserError, match=r'is a resized copy made for cityscapes_validation, not for cityscapes_train; '
                                        r'add it with: UBNA_DIR_DATASET=<datasets> python data_download/resize_'
                                        r'dataset.py cityscapes_train --resize-height 64'):
        training_dataset('cityscapes_train', (64, 128), (32, 80))


def test_rerun_replaces_the_entry(copy_of):
    copy_of('kitti_kitti_train')
    copy_of('kitti_kitti_train', 64, 96)
    assert adaptation_dataset('kitti_kitti_train', (64, 96), (64, 96))[0]['input'].shape == (3, 64, 96)
    with pytest.raises(UserError, match='resized for 64x96, but this job resizes to 32x64'):
        adaptation_dataset('kitti_kitti_train', (32, 64), (32, 64))


def test_vanished_source_is_only_a_warning(copy_of, named_datasets, capsys):
    copy_of('cityscapes_validation')
    shutil.move(os.path.join(named_datasets, 'cityscapes'), os.path.join(named_datasets, 'moved'))
    capsys.readouterr()
    assert validation_dataset('cityscapes_validation', (32, 64))[0]['input'].shape == (3, 32, 64)
    assert capsys.readouterr().err.startswith('warning: the resized copy ')


def test_loaders_sharing_files_do_not_share_a_copy(copy_of, named_datasets, capsys):
    shutil.copy(os.path.join(named_datasets, 'cityscapes', 'train.json'),
                os.path.join(named_datasets, 'cityscapes', 'validation.json'))
    copy_of('cityscapes_train')
    copy_of('cityscapes_validation')  # rewrites the training labels at native size
    assert 'note: cityscapes_train is dropped from' in capsys.readouterr().err
    with pytest.raises(UserError, match='made for cityscapes_validation, not for cityscapes_train'):
        training_dataset('cityscapes_train', (32, 64), (16, 32))


def test_tool_refuses_to_overwrite_datasets(named_datasets, tmp_path, capsys):
    other = str(tmp_path / 'other')
    write_dataset(other, 'gta5', {'color': {0: noise_image(np.random.default_rng(0), 8, 8)}})
    assert run_cli(resize_main, ['gta5_train', '--output', other, '--workers', '1']) == 2
    assert capsys.readouterr().err == (f'error: {os.path.join(other, "gta5")} exists and is not a resized copy (it '
                                       f'has no {MANIFEST}); give another --output\n')
    assert run_cli(resize_main, ['gta5_train', '--output', named_datasets, '--workers', '1']) == 2
    assert capsys.readouterr().err == (f'error: --output {named_datasets} is the source UBNA_DIR_DATASET; give '
                                       f'another folder for the copy\n')


def test_tool_reports_bad_input_in_one_sentence(ubna_env, tmp_path, capsys):
    assert run_cli(resize_main, ['synthia_train', '--output', str(tmp_path / 'copy')]) == 2
    assert capsys.readouterr().err == (f"error: the dataset folder {os.path.join(ubna_env, 'synthia')} of dataset "
                                       f"'synthia' does not exist\n")
    assert run_cli(resize_main, ['kitti_2015_train', '--resize-height', '64', '--output', str(tmp_path)]) == 2
    assert capsys.readouterr().err == ('error: kitti_2015_train is a validation loader, copied unchanged (its labels '
                                       'stay native and its image and label must have one size), so '
                                       '--resize-height/-width do not apply\n')


def test_a_live_run_keeps_its_copy_and_a_rerun_removes_what_a_killed_one_left(copy_of, tmp_path, capsys):
    folder = str(tmp_path / 'copy' / 'gta5')
    os.makedirs(folder)
    with lock_held_elsewhere(folder) as holder:  # another run of the tool writing the same copy
        with pytest.raises(UserError, match=rf'^the resized copy {folder} is in use by another run \(process '
                                            rf'{holder.pid} on host .*\), which is still running; wait for it to end '
                                            rf'or choose another --output$'):
            copy_of('gta5_train')
    assert os.listdir(folder) == ['.lock']
    copy_of('gta5_train')
    assert f'took over the lock of the resized copy {folder} left by process {holder.pid}' in capsys.readouterr().err
    image = read_manifest(folder)['gta5_train']['images'][0]
    left = os.path.join(tmp_path, 'copy', os.path.dirname(image), f'.{os.path.basename(image)}.k2x_9q7w.partial.png')
    with open(left, 'wb') as file:  # a write that a kill stopped
        file.write(b'half a png')
    copy_of('gta5_train')
    assert f'note: removed 1 temporary file left by a run that stopped in {folder}' in capsys.readouterr().err
    assert not os.path.exists(left) and read_manifest(folder)['gta5_train']['complete']


def test_workers_are_bounded(ubna_env, tmp_path, capsys):
    with pytest.raises(SystemExit):
        resize_main(['gta5_train', '--output', str(tmp_path), '--workers', '1000'])
    assert capsys.readouterr().err.endswith('error: argument --workers: must be at most 256, got 1000\n')
