"""build_index.py: JSON formats of spec §2 for every dataset, written from tiny trees."""
import json
import os

import cv2
import numpy as np
import pytest

from data_download import build_index as bi
from dataloader.datasets import DATASETS
from dataloader.datasets.cityscapes import build_cityscapes
from dataloader.datasets.cityscapes_sequence import build_cityscapes_sequence
from dataloader.datasets.gta5 import build_gta5
from dataloader.datasets.kitti import build_kitti, kitti_drive_rule
from dataloader.datasets.kitti_2015 import build_kitti_2015
from dataloader.datasets.synthia import build_synthia
from dataloader.index import Frame
from errors import UserError, run_cli

HEIGHT, WIDTH = 8, 16


def png(path, value=0, channels=3):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (HEIGHT, WIDTH, channels) if channels > 1 else (HEIGHT, WIDTH)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))


def load(path):
    with open(path) as file:
        return json.load(file)


def make_cityscapes(root, right=True):
    """train: aachen seq 0 frame 19, seq 1 frame 19; val: lindau seq 0 frame 19; test: bonn seq 0 (no labels)."""
    base = os.path.join(root, 'cityscapes')
    for split, city, seq in (('train', 'aachen', 0), ('train', 'aachen', 1), ('val', 'lindau', 0),
                             ('test', 'bonn', 0)):
        stem = f'{city}_{seq:06d}_000019'
        png(os.path.join(base, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'), 50)
        if right:
            png(os.path.join(base, 'rightImg8bit', split, city, f'{stem}_rightImg8bit.png'), 60)
        if split != 'test':
            png(os.path.join(base, 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'), 7, channels=1)
            png(os.path.join(base, 'gtFine', split, city, f'{stem}_gtFine_color.png'), 9)


def make_cityscapes_sequence(root):
    """train: aachen seq 0 frames 17-19 (a run of three) and seq 1 frame 5; val: lindau seq 0 frames 0-1."""
    base = os.path.join(root, 'cityscapes_sequence')
    for split, city, seq, frames in (('train', 'aachen', 0, (17, 18, 19)), ('train', 'aachen', 1, (5,)),
                                     ('val', 'lindau', 0, (0, 1))):
        for frame in frames:
            stem = f'{city}_{seq:06d}_{frame:06d}'
            png(os.path.join(base, 'leftImg8bit_sequence', split, city, f'{stem}_leftImg8bit.png'), 50)
            png(os.path.join(base, 'rightImg8bit_sequence', split, city, f'{stem}_rightImg8bit.png'), 60)


def make_gta5(root, count=3):
    for index in range(count):
        png(os.path.join(root, 'gta5', 'images', f'{index:05d}.png'), 80)
        label = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        label[:] = (128, 64, 128)[::-1]  # road, BGR
        label[: HEIGHT // 2] = (70, 130, 180)[::-1]  # sky
        os.makedirs(os.path.join(root, 'gta5', 'labels'), exist_ok=True)
        cv2.imwrite(os.path.join(root, 'gta5', 'labels', f'{index:05d}.png'), label)


def make_synthia(root, converted=True, count=2):
    base = os.path.join(root, 'synthia', 'RAND_CITYSCAPES')
    for index in range(count):
        png(os.path.join(base, 'RGB', f'{index:07d}.png'), 90)
        png(os.path.join(base, 'GT', 'LABELS', f'{index:07d}.png'), 3)
        if converted:
            png(os.path.join(base, 'GT_1_channel', 'LABELS', f'{index:07d}.png'), 3, channels=1)


KITTI_DRIVES = {('2011_09_26', '2011_09_26_drive_0001_sync'): 4, ('2011_09_26', '2011_09_26_drive_0002_sync'): 2,
                ('2011_09_30', '2011_09_30_drive_0016_sync'): 3}


def make_kitti(root):
    for (date, drive), count in KITTI_DRIVES.items():
        for frame in range(count):
            for camera in ('image_02', 'image_03'):
                png(os.path.join(root, 'kitti', 'Raw_data', date, drive, camera, 'data', f'{frame:010d}.png'), 70)
        png(os.path.join(root, 'kitti', 'Raw_data', date, drive, 'image_00', 'data', '0000000000.png'), 1, 1)
    with open(os.path.join(root, 'kitti', 'Raw_data', '2011_09_26', 'calib_cam_to_cam.txt'), 'w') as file:
        file.write('calib')


def make_kitti_2015(root, count=3):
    for index in range(count):
        png(os.path.join(root, 'kitti_2015', 'training', 'image_2', f'{index:06d}_10.png'), 40)
        png(os.path.join(root, 'kitti_2015', 'training', 'semantic', f'{index:06d}_10.png'), 26, channels=1)
    png(os.path.join(root, 'kitti_2015', 'training', 'image_2', f'{count:06d}_10.png'), 40)  # no label


def check_split_format(dataset_dir, split_path):
    """Split files follow spec §2 and agree with basic_files.json; returns the split content."""
    basic = load(os.path.join(dataset_dir, 'basic_files.json'))
    split = load(split_path)
    assert set(basic) >= {'names', 'types', 'folders', 'files', 'numerical_values'}
    assert set(split) == {'names', 'types', 'folders', 'files', 'positions'}
    assert split['names'] == basic['names'] and split['types'] == ['.png'] * len(split['names'])
    assert basic['numerical_values'] == [None] * len(basic['names'])
    for files, positions, folders, basic_files in zip(split['files'], split['positions'], split['folders'],
                                                     basic['files']):
        assert len(files) == len(positions)
        for path, (_, before, after, basic_index) in zip(files, positions):
            assert os.path.isfile(os.path.join(dataset_dir, path)) and not os.path.isabs(path)
            assert basic_files[basic_index] == path and before >= 0 and after >= 0
            assert path.rsplit('/', 1)[0] in folders
    main = dict((p[0], f) for f, p in zip(split['files'][0], split['positions'][0]))
    return split, main


def test_parameters_json_has_the_spec_keys(tmp_path):
    make_gta5(tmp_path)
    build_gta5(str(tmp_path))
    params = load(tmp_path / 'gta5' / 'parameters.json')
    assert params == {'K': None, 'stereo_T': None, 'labels': 'gta5', 'labels_mode': 'fromrgb',
                      'depth_mode': None, 'flow_mode': None, 'splits': ['full_split']}


def test_cityscapes_index(tmp_path):
    make_cityscapes(tmp_path)
    counts = build_cityscapes(str(tmp_path))
    assert counts == {'train': 2, 'validation': 1, 'test': 1}
    dataset_dir = str(tmp_path / 'cityscapes')
    params = load(os.path.join(dataset_dir, 'parameters.json'))
    assert (params['labels'], params['labels_mode']) == ('cityscapes', 'fromid')
    split, main = check_split_format(dataset_dir, os.path.join(dataset_dir, 'train.json'))
    assert split['names'] == ['color', 'color_right', 'segmentation']
    # every segmentation file shares its global index with the colour image of the same frame
    for path, position in zip(split['files'][2], split['positions'][2]):
        assert main[position[0]].split('/')[-1].replace('leftImg8bit', 'gtFine_labelIds') == path.split('/')[-1]
    assert all(not f.endswith('_gtFine_color.png') for f in split['files'][2])
    assert split['files'][0] == ['leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png',
                                 'leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png']
    assert all(p[1:3] == [0, 0] for p in split['positions'][0])
    test = load(os.path.join(dataset_dir, 'test.json'))
    assert [len(files) for files in test['files']] == [1, 1, 0]


def test_cityscapes_without_right_images(tmp_path):
    make_cityscapes(tmp_path, right=False)
    build_cityscapes(str(tmp_path))
    assert load(tmp_path / 'cityscapes' / 'validation.json')['names'] == ['color', 'segmentation']


def test_cityscapes_sequence_neighbours(tmp_path):
    make_cityscapes_sequence(tmp_path)
    assert build_cityscapes_sequence(str(tmp_path)) == {'train': 4, 'validation': 2}
    dataset_dir = str(tmp_path / 'cityscapes_sequence')
    split, _ = check_split_format(dataset_dir, os.path.join(dataset_dir, 'train.json'))
    assert split['names'] == ['color', 'color_right']
    assert [p[1:3] for p in split['positions'][0]] == [[0, 2], [1, 1], [2, 0], [0, 0]]
    assert split['positions'][0] == split['positions'][1]
    validation, _ = check_split_format(dataset_dir, os.path.join(dataset_dir, 'validation.json'))
    assert [p[0] for p in validation['positions'][0]] == [4, 5]


def test_gta5_full_split(tmp_path):
    make_gta5(tmp_path)
    assert build_gta5(str(tmp_path)) == {'train': 3}
    split, main = check_split_format(str(tmp_path / 'gta5'), str(tmp_path / 'gta5_full_split' / 'train.json'))
    assert split['names'] == ['color', 'segmentation'] and sorted(main) == [0, 1, 2]
    assert split['files'][1] == ['labels/00000.png', 'labels/00001.png', 'labels/00002.png']
    assert not (tmp_path / 'gta5' / 'train.json').exists()


def test_synthia_needs_the_converted_labels(tmp_path):
    make_synthia(tmp_path, converted=False)
    with pytest.raises(UserError, match='convert_segmentation_synthia'):
        build_synthia(str(tmp_path))
    make_synthia(tmp_path)
    assert build_synthia(str(tmp_path)) == {'train': 2}
    split, _ = check_split_format(str(tmp_path / 'synthia'), str(tmp_path / 'synthia' / 'train.json'))
    assert split['files'][1] == ['RAND_CITYSCAPES/GT_1_channel/LABELS/0000000.png',
                                 'RAND_CITYSCAPES/GT_1_channel/LABELS/0000001.png']
    params = load(tmp_path / 'synthia' / 'parameters.json')
    assert (params['labels'], params['labels_mode']) == ('synthia', 'fromid')


def test_kitti_default_rule_and_neighbours(tmp_path):
    make_kitti(tmp_path)
    assert build_kitti(str(tmp_path)) == {'train': 9}
    split, _ = check_split_format(str(tmp_path / 'kitti'), str(tmp_path / 'kitti_kitti_split' / 'train.json'))
    assert split['names'] == ['color', 'color_right']
    assert [p[1:3] for p in split['positions'][0]] == [[0, 3], [1, 2], [2, 1], [3, 0], [0, 1], [1, 0],
                                                       [0, 2], [1, 1], [2, 0]]
    assert split['files'][1][0] == 'Raw_data/2011_09_26/2011_09_26_drive_0001_sync/image_03/data/0000000000.png'
    params = load(tmp_path / 'kitti' / 'parameters.json')
    assert params['splits'] == ['kitti_split'] and params['stereo_T'] == 0.54


def test_kitti_drive_rule_keeps_drives_whole():
    frames = [Frame(f'2011_09_26/drive_{d:04d}', n, f'x/{d}/{n}.png') for d in range(20) for n in range(2)]
    split_of = kitti_drive_rule(frames)
    splits = [split_of(f) for f in frames]
    assert splits.count('validation') == splits.count('test') == 4 and splits.count('train') == 32
    assert all(split_of(frames[2 * d]) == split_of(frames[2 * d + 1]) for d in range(20))


def test_kitti_split_files(tmp_path):
    make_kitti(tmp_path)
    train = tmp_path / 'train_files.txt'
    train.write_text('2011_09_26/2011_09_26_drive_0001_sync 1 l\n2011_09_26/2011_09_26_drive_0001_sync 2 r\n')
    test = tmp_path / 'test_files.txt'
    test.write_text('2011_09_30/2011_09_30_drive_0016_sync 0000000002 l\n\n')
    counts = build_kitti(str(tmp_path), {'train': str(train), 'test': str(test)})
    assert counts == {'train': 2, 'test': 1}
    split, _ = check_split_format(str(tmp_path / 'kitti'), str(tmp_path / 'kitti_kitti_split' / 'train.json'))
    assert [p[1:3] for p in split['positions'][0]] == [[1, 2], [2, 1]]  # neighbours counted in the whole drive
    train.write_text('2011_09_26 one\n')
    with pytest.raises(UserError, match='line 1 of KITTI split file'):
        build_kitti(str(tmp_path), {'train': str(train)})


def test_kitti_2015_train(tmp_path):
    make_kitti_2015(tmp_path)
    assert build_kitti_2015(str(tmp_path)) == {'train': 4}
    split, main = check_split_format(str(tmp_path / 'kitti_2015'), str(tmp_path / 'kitti_2015' / 'train.json'))
    assert [len(f) for f in split['files']] == [4, 3]
    assert split['files'][1][0] == 'training/semantic/000000_10.png'


@pytest.mark.parametrize('dataset, folder', [
    ('cityscapes', os.path.join('cityscapes', 'leftImg8bit')),
    ('cityscapes_sequence', os.path.join('cityscapes_sequence', 'leftImg8bit_sequence')),
    ('gta5', os.path.join('gta5', 'images')),
    ('synthia', os.path.join('synthia', 'RAND_CITYSCAPES', 'RGB')),
    ('kitti', os.path.join('kitti', 'Raw_data')),
    ('kitti_2015', os.path.join('kitti_2015', 'training', 'image_2'))])
def test_missing_folder_is_a_user_error_naming_it(tmp_path, dataset, folder):
    with pytest.raises(UserError, match=f'expected folder .*{folder}'):
        DATASETS[dataset].build_index(str(tmp_path))


def test_misnamed_cityscapes_file_is_a_user_error(tmp_path):
    make_cityscapes(tmp_path)
    png(tmp_path / 'cityscapes' / 'leftImg8bit' / 'train' / 'aachen' / 'aachen_odd_leftImg8bit.png')
    with pytest.raises(UserError, match='aachen_odd_leftImg8bit.png'):
        build_cityscapes(str(tmp_path))


def test_two_files_of_one_frame_are_a_user_error(tmp_path):
    make_gta5(tmp_path)
    png(tmp_path / 'gta5' / 'images' / 'extra' / '00001.png')
    with pytest.raises(UserError, match='same frame'):
        build_gta5(str(tmp_path))


def test_empty_image_folder_is_a_user_error(tmp_path):
    (tmp_path / 'gta5' / 'images').mkdir(parents=True)
    (tmp_path / 'gta5' / 'labels').mkdir()
    with pytest.raises(UserError, match='no image files'):
        build_gta5(str(tmp_path))


def test_cli(tmp_path, capsys):
    make_kitti_2015(tmp_path)
    assert run_cli(bi.main, ['kitti_2015', '--root', str(tmp_path)]) == 0
    assert 'train split with 4 samples' in capsys.readouterr().out
    assert run_cli(bi.main, ['gta5', '--root', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('error: expected folder')
    assert run_cli(bi.main, ['kitti_2015', '--root', str(tmp_path), '--kitti-split-train', 'x.txt']) == 2
    assert 'apply to the dataset kitti only' in capsys.readouterr().err
    assert run_cli(bi.main, ['gta5', '--root', str(tmp_path), '--kitti-split-test', 'x.txt']) == 2
    assert capsys.readouterr().err == 'error: --kitti-split-* options apply to the dataset kitti only, not to gta5.\n'


def test_index_files_are_one_line_of_json_dump(tmp_path):
    make_gta5(tmp_path)
    build_gta5(str(tmp_path))
    for path in (tmp_path / 'gta5' / 'parameters.json', tmp_path / 'gta5' / 'basic_files.json',
                 tmp_path / 'gta5_full_split' / 'train.json'):
        assert path.read_text() == json.dumps(load(path))


def test_cli_kitti_split_files(tmp_path):
    make_kitti(tmp_path)
    train = tmp_path / 'train_files.txt'
    train.write_text('2011_09_26/2011_09_26_drive_0002_sync 0 l\n')
    assert run_cli(bi.main, ['kitti', '--root', str(tmp_path), '--kitti-split-train', str(train)]) == 0
    assert load(tmp_path / 'kitti_kitti_split' / 'train.json')['files'][0] == [
        'Raw_data/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000000.png']


# Read-back through the dataset layer: the named loaders of spec §4 find and decode what the builders wrote.

ROAD, SKY, CAR = 0, 10, 13  # train ids


@pytest.fixture
def dataset_root(tmp_path, monkeypatch):
    monkeypatch.setenv('UBNA_DIR_DATASET', str(tmp_path))
    return tmp_path


def test_training_loaders_read_the_built_indices(dataset_root):
    from dataloader.loaders import training_dataset
    make_gta5(dataset_root)
    make_synthia(dataset_root)
    make_cityscapes(dataset_root)
    build_gta5(str(dataset_root))
    build_synthia(str(dataset_root))
    build_cityscapes(str(dataset_root))
    expected = {'gta5_train': (3, {ROAD, SKY}), 'synthia_train': (2, {ROAD}), 'cityscapes_train': (2, {ROAD})}
    for name, (length, train_ids) in expected.items():
        dataset = training_dataset(name, (HEIGHT, WIDTH), (4, 8))
        assert len(dataset) == length
        sample = dataset[0]
        assert tuple(sample['input'].shape) == (3, 4, 8) and tuple(sample['label'].shape) == (4, 8)
        assert set(sample['label'].unique().tolist()) <= train_ids
        assert sample['purposes'] == ('segmentation',)


def test_validation_loaders_read_the_built_indices(dataset_root):
    from dataloader.loaders import validation_dataset
    make_cityscapes(dataset_root)
    make_kitti_2015(dataset_root)
    build_cityscapes(str(dataset_root))
    build_kitti_2015(str(dataset_root))
    cityscapes = validation_dataset('cityscapes_validation', (32, 64))
    assert len(cityscapes) == 1
    sample = cityscapes[0]
    assert tuple(sample['input'].shape) == (3, 32, 64) and (sample['label'] == ROAD).all()
    kitti_2015 = validation_dataset('kitti_2015_train', (32, 64))
    assert len(kitti_2015) == 3  # the image without a semantic label is left out
    assert (kitti_2015[2]['label'] == CAR).all() and kitti_2015[2]['domain'] == 'kitti_2015'


def test_adaptation_loaders_read_left_and_right_images(dataset_root):
    from dataloader.loaders import adaptation_dataset
    make_cityscapes_sequence(dataset_root)
    make_kitti(dataset_root)
    build_cityscapes_sequence(str(dataset_root))
    build_kitti(str(dataset_root))
    sequence = adaptation_dataset('cityscapes_sequence_train', (64, 128), (64, 128))
    assert len(sequence) == 2 * 4
    assert tuple(sequence[0]['input'].shape) == (3, 40, 128) and 'label' not in sequence[0]
    kitti = adaptation_dataset('kitti_kitti_train', (32, 64), (32, 64))
    assert len(kitti) == 2 * 9
    assert tuple(kitti[9]['input'].shape) == (3, 32, 64) and kitti[9]['purposes'] == ('adaptation',)
