"""The target datasets of the continual test-time protocols (ACDC, Foggy Cityscapes, Dark Zurich, BDD100K): index
builders on their official layouts, their loaders (validation and adaptation), the names refused, resized copies
and make_synthetic's ACDC conditions."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from data_download import build_index as bi
from data_download import make_synthetic as ms
from data_download.resize_dataset import main as resize_main
from dataloader.datasets import DATASETS, DatasetEntry, Loader, loader, loader_kinds, loader_names, register
from dataloader.loaders import adaptation_dataset, check_loader_names, validation_dataset, validation_loaders
from errors import UserError, run_cli

HEIGHT, WIDTH = 40, 72  # native size of the tiny images
CONDITIONS = ('fog', 'night', 'rain', 'snow')
BETAS = ('0.005', '0.01', '0.02')
CAR_ID, CAR, FENCE = 26, 13, 4  # Cityscapes label id and train id of car; train id of label id 13 (fence)


def write(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def colour(value=90):
    return np.full((HEIGHT, WIDTH, 3), value, np.uint8)


def label(value):
    return np.full((HEIGHT, WIDTH), value, np.uint8)


def load(path):
    with open(path) as file:
        return json.load(file)


def make_acdc(root):
    """Per condition: train frames 41 and 42 of one sequence, val frame 7, test frame 3 (no label); plus a daytime
    reference and a colour label, which are not indexed."""
    for condition in CONDITIONS:
        for split, sequence, frames in (('train', 'GOPR0475', (41, 42)), ('val', 'GOPR0476', (7,)),
                                        ('test', 'GOPR0477', (3,))):
            for frame in frames:
                name = f'{sequence}_frame_{frame:06d}'
                write(os.path.join(root, 'acdc', 'rgb_anon', condition, split, sequence, f'{name}_rgb_anon.png'),
                      colour())
                if split != 'test':
                    folder = os.path.join(root, 'acdc', 'gt', condition, split, sequence)
                    write(os.path.join(folder, f'{name}_gt_labelIds.png'), label(CAR_ID))
                    write(os.path.join(folder, f'{name}_gt_labelColor.png'), colour(10))
        write(os.path.join(root, 'acdc', 'rgb_anon', condition, 'train_ref', 'GOPR0475',
                           'GOPR0475_frame_000041_rgb_ref_anon.png'), colour())


def make_foggy_cityscapes(root):
    for split, city, count in (('train', 'aachen', 2), ('val', 'frankfurt', 1)):
        for index in range(count):
            name = f'{city}_{index:06d}_000019'
            for beta in BETAS:
                write(os.path.join(root, 'foggy_cityscapes', 'leftImg8bit_foggy', split, city,
                                   f'{name}_leftImg8bit_foggy_beta_{beta}.png'), colour())
            folder = os.path.join(root, 'foggy_cityscapes', 'gtFine', split, city)
            write(os.path.join(folder, f'{name}_gtFine_labelIds.png'), label(CAR_ID))
            write(os.path.join(folder, f'{name}_gtFine_color.png'), colour(10))


def make_dark_zurich(root):
    for frame in (321, 400):
        name = f'GOPR0356_frame_{frame:06d}'
        write(os.path.join(root, 'dark_zurich', 'rgb_anon', 'val', 'night', 'GOPR0356', f'{name}_rgb_anon.png'),
              colour())
        write(os.path.join(root, 'dark_zurich', 'gt', 'val', 'night', 'GOPR0356', f'{name}_gt_labelIds.png'),
              label(CAR_ID))
    write(os.path.join(root, 'dark_zurich', 'rgb_anon', 'train', 'night', 'GOPR0001',
                       'GOPR0001_frame_000001_rgb_anon.png'), colour())


def make_bdd100k(root):
    for split, count in (('train', 2), ('val', 2), ('test', 1)):
        for index in range(count):
            name = f'{split[0]}{index:03d}-7c39d841'
            write(os.path.join(root, 'bdd100k', 'images', '10k', split, f'{name}.jpg'), colour())
            if split != 'test':
                mask = label(CAR)  # train ids
                mask[:4] = 255
                write(os.path.join(root, 'bdd100k', 'labels', 'sem_seg', 'masks', split, f'{name}.png'), mask)


MAKERS = {'acdc': make_acdc, 'foggy_cityscapes': make_foggy_cityscapes, 'dark_zurich': make_dark_zurich,
          'bdd100k': make_bdd100k}


@pytest.fixture
def targets(tmp_path, monkeypatch):
    """All four datasets in their official layouts, indexed, as UBNA_DIR_DATASET."""
    root = str(tmp_path / 'datasets')
    for name, make in MAKERS.items():
        make(root)
        DATASETS[name].build_index(root)
    monkeypatch.setenv('UBNA_DIR_DATASET', root)
    return root


def check_split(dataset_dir, split_file, names, types, counts):
    """The split file's categories, file types and files per category; every listed file exists."""
    split = load(os.path.join(dataset_dir, f'{split_file}.json'))
    assert (split['names'], split['types'], [len(files) for files in split['files']]) == (names, types, counts)
    assert all(os.path.isfile(os.path.join(dataset_dir, path)) for files in split['files'] for path in files)
    return split


def test_acdc_index(tmp_path, capsys):
    make_acdc(str(tmp_path))
    assert run_cli(bi.main, ['acdc', '--root', str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == ['acdc: fog_test split with 1 samples',
                                                        'acdc: fog_train split with 2 samples',
                                                        'acdc: fog_validation split with 1 samples']
    dataset_dir = str(tmp_path / 'acdc')
    params = load(os.path.join(dataset_dir, 'parameters.json'))
    assert (params['labels'], params['labels_mode'], params['splits']) == ('cityscapes', 'fromid', [])
    assert sorted(os.listdir(dataset_dir)) == sorted(
        ['basic_files.json', 'gt', 'parameters.json', 'rgb_anon'] +
        [f'{condition}_{split}.json' for condition in CONDITIONS for split in ('train', 'validation', 'test')])
    for condition in CONDITIONS:
        train = check_split(dataset_dir, f'{condition}_train', ['color', 'segmentation'], ['.png', '.png'], [2, 2])
        assert train['files'][1][0] == f'gt/{condition}/train/GOPR0475/GOPR0475_frame_000041_gt_labelIds.png'
        assert [position[1:3] for position in train['positions'][0]] == [[0, 1], [1, 0]]  # neighbouring frames
        check_split(dataset_dir, f'{condition}_validation', ['color', 'segmentation'], ['.png', '.png'], [1, 1])
        check_split(dataset_dir, f'{condition}_test', ['color', 'segmentation'], ['.png', '.png'], [1, 0])
    assert len(load(os.path.join(dataset_dir, 'basic_files.json'))['files'][0]) == 4 * 4  # references left out


def test_acdc_misnamed_file_is_a_user_error(tmp_path):
    make_acdc(str(tmp_path))
    write(os.path.join(tmp_path, 'acdc', 'rgb_anon', 'fog', 'train', 'GOPR0475', 'odd_rgb_anon.png'), colour())
    with pytest.raises(UserError, match='odd_rgb_anon.png is not named <seq>_frame_<number>_rgb_anon.png'):
        DATASETS['acdc'].build_index(str(tmp_path))


def test_foggy_cityscapes_index(tmp_path):
    make_foggy_cityscapes(str(tmp_path))
    counts = DATASETS['foggy_cityscapes'].build_index(str(tmp_path))
    assert counts == {f'beta_{beta}_{split}': count for beta in BETAS for split, count in (('train', 2),
                                                                                           ('validation', 1))}
    dataset_dir = str(tmp_path / 'foggy_cityscapes')
    validation = check_split(dataset_dir, 'beta_0.01_validation', ['color', 'segmentation'], ['.png', '.png'],
                             [1, 1])
    assert validation['files'] == [
        ['leftImg8bit_foggy/val/frankfurt/frankfurt_000000_000019_leftImg8bit_foggy_beta_0.01.png'],
        ['gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png']]
    assert load(os.path.join(dataset_dir, 'parameters.json'))['labels_mode'] == 'fromid'


def test_dark_zurich_index(tmp_path):
    make_dark_zurich(str(tmp_path))
    assert DATASETS['dark_zurich'].build_index(str(tmp_path)) == {'night_train': 1, 'validation': 2}
    dataset_dir = str(tmp_path / 'dark_zurich')
    split = check_split(dataset_dir, 'validation', ['color', 'segmentation'], ['.png', '.png'], [2, 2])
    assert split['files'][0][0] == 'rgb_anon/val/night/GOPR0356/GOPR0356_frame_000321_rgb_anon.png'
    train = check_split(dataset_dir, 'night_train', ['color', 'segmentation'], ['.png', '.png'], [1, 0])
    assert train['files'][0] == ['rgb_anon/train/night/GOPR0001/GOPR0001_frame_000001_rgb_anon.png']
    shutil.rmtree(os.path.join(dataset_dir, 'gt'))
    shutil.rmtree(os.path.join(dataset_dir, 'rgb_anon', 'val'))
    assert DATASETS['dark_zurich'].build_index(str(tmp_path)) == {'night_train': 1}  # the train archive alone
    assert load(os.path.join(dataset_dir, 'parameters.json'))['labels'] == 'cityscapes'


def test_bdd100k_index_of_jpeg_images(tmp_path):
    make_bdd100k(str(tmp_path))
    assert DATASETS['bdd100k'].build_index(str(tmp_path)) == {'test': 1, 'train': 2, 'validation': 2}
    dataset_dir = str(tmp_path / 'bdd100k')
    split = check_split(dataset_dir, 'validation', ['color', 'segmentation'], ['.jpg', '.png'], [2, 2])
    assert split['files'][0][0] == 'images/10k/val/v000-7c39d841.jpg'
    assert load(os.path.join(dataset_dir, 'basic_files.json'))['types'] == ['.jpg', '.png']
    params = load(os.path.join(dataset_dir, 'parameters.json'))
    assert (params['labels'], params['labels_mode']) == ('cityscapes', 'fromtrainid')


@pytest.mark.parametrize('dataset, folder', [('acdc', 'acdc/rgb_anon'),
                                             ('foggy_cityscapes', 'foggy_cityscapes/leftImg8bit_foggy'),
                                             ('dark_zurich', 'dark_zurich/rgb_anon'),
                                             ('bdd100k', 'bdd100k/images/10k')])
def test_missing_folder_is_a_user_error_naming_it(tmp_path, dataset, folder):
    with pytest.raises(UserError, match=f'expected folder .*{folder}'):
        DATASETS[dataset].build_index(str(tmp_path))


def test_registered_names_kinds_and_sizes():
    acdc = tuple(f'acdc_{condition}_{split}' for condition in CONDITIONS for split in ('train', 'validation'))
    foggy = tuple(f'foggy_cityscapes_{beta}' for beta in BETAS)
    assert loader_names('validation') == acdc + ('bdd100k_train', 'bdd100k_validation', 'cityscapes_validation',
                                                 'dark_zurich_validation') + \
        tuple(f'{name}_validation' for name in foggy) + ('kitti_2015_train',)
    assert loader_names('adaptation') == acdc + ('bdd100k_train', 'bdd100k_validation', 'cityscapes_sequence_train',
                                                 'dark_zurich_day_train', 'dark_zurich_twilight_train',
                                                 'dark_zurich_night_train') \
        + tuple(f'{name}_train' for name in foggy) + ('kitti_kitti_train',)
    assert loader_names('training') == ('cityscapes_train', 'gta5_train', 'synthia_train')
    assert loader_kinds('acdc_rain_validation') == ('validation', 'adaptation')
    assert loader_kinds('dark_zurich_validation') == ('validation',) and loader_kinds('nothing') == ()
    sizes = {name: loader(name, 'validation')[1].size for name in loader_names('validation')}
    assert {sizes[name] for name in acdc + ('bdd100k_train', 'dark_zurich_validation')} == {(544, 960)}
    assert sizes['foggy_cityscapes_0.02_validation'] == (512, 1024)
    assert loader('bdd100k_validation', 'validation')[1].labels_mode == 'fromtrainid'
    assert loader('acdc_fog_train', 'adaptation')[1].cameras == ('color',)
    assert loader('kitti_kitti_train')[1].cameras == ('color', 'color_right')
    assert loader('acdc_snow_train', 'validation')[1].split_file == 'snow_train'
    with pytest.raises(ValueError, match='acdc_fog_train is registered for the kinds validation, adaptation'):
        loader('acdc_fog_train')
    with pytest.raises(KeyError):
        loader('dark_zurich_validation', 'adaptation')


def test_register_keys_loaders_by_name_and_kind():
    build = DATASETS['gta5'].build_index
    with pytest.raises(ValueError, match='loader acdc_fog_train of dataset other is registered twice'):
        register(DatasetEntry('other', 'cityscapes', (Loader('acdc_fog_train', 'adaptation', 'x'),), build))
    with pytest.raises(ValueError, match='only validation loaders have a labels mode'):
        register(DatasetEntry('other', 'cityscapes', (Loader('other_train', 'training', 'x',
                                                             labels_mode='fromtrainid'),), build))
    with pytest.raises(ValueError, match="labels mode 'raw'"):
        register(DatasetEntry('other', 'cityscapes', (Loader('other_val', 'validation', 'x', size=(32, 64),
                                                             labels_mode='raw'),), build))
    assert 'other' not in DATASETS


@pytest.mark.parametrize('name', ['acdc_hail_validation', 'foggy_cityscapes_0.03_validation', 'acdc_fog_test'])
def test_unknown_condition_or_beta_is_refused_with_the_sentence(name):
    sentence = f"unknown validation loader '{name}'; valid names: {', '.join(loader_names('validation'))}"
    with pytest.raises(UserError) as refused:
        check_loader_names([name], 'validation')
    assert str(refused.value) == sentence
    with pytest.raises(UserError) as refused:
        validation_loaders(['acdc_fog_validation', name], 1, (32, 64), 0, False)
    assert str(refused.value) == sentence
    with pytest.raises(UserError, match="unknown adaptation loader 'dark_zurich_validation'; valid names: "):
        check_loader_names(['dark_zurich_validation'], 'adaptation')


@pytest.mark.parametrize('name, count, train_ids', [
    ('acdc_fog_train', 2, {CAR}), ('acdc_night_validation', 1, {CAR}), ('dark_zurich_validation', 2, {CAR}),
    ('foggy_cityscapes_0.005_validation', 1, {CAR}), ('bdd100k_validation', 2, {CAR, 255}),
    ('bdd100k_train', 2, {CAR, 255})])
def test_validation_loaders_resize_images_and_convert_labels(targets, name, count, train_ids):
    """Images resized to the network size, labels native: Cityscapes ids converted, BDD100K train ids kept (read
    fromid, train id 13 would become fence)."""
    dataset = validation_dataset(name, (32, 64))
    assert len(dataset) == count
    sample = dataset[0]
    assert tuple(sample['input'].shape) == (3, 32, 64) and tuple(sample['label'].shape) == (HEIGHT, WIDTH)
    assert set(sample['label'].unique().tolist()) == train_ids != {FENCE}
    entry, registered = loader(name, 'validation')
    assert sample['domain'] == (registered.domain or entry.name) == {
        'acdc_fog_train': 'acdc_fog', 'acdc_night_validation': 'acdc_night', 'dark_zurich_validation': 'dark_zurich',
        'foggy_cityscapes_0.005_validation': 'foggy_cityscapes_0.005', 'bdd100k_validation': 'bdd100k',
        'bdd100k_train': 'bdd100k'}[name]


@pytest.mark.parametrize('name, count', [('acdc_fog_train', 2), ('acdc_snow_validation', 1),
                                         ('foggy_cityscapes_0.02_train', 2), ('bdd100k_train', 2),
                                         ('dark_zurich_night_train', 1)])
def test_adaptation_loaders_read_images_only(targets, name, count):
    dataset = adaptation_dataset(name, (32, 64), (32, 64))
    assert len(dataset) == count and list(dataset.files) == ['color']
    sample = dataset[0]
    assert tuple(sample['input'].shape) == (3, 32, 64) and 'label' not in sample
    assert sample['purposes'] == ('adaptation',)


def test_several_validation_loaders_use_their_default_sizes(targets):
    names = ['acdc_fog_validation', 'foggy_cityscapes_0.01_validation', 'dark_zurich_validation',
             'bdd100k_validation']
    sizes = [found.dataset.transform.resize_hw for _, found in validation_loaders(names, 1, (32, 64), 0, False)]
    assert sizes == [(544, 960), (512, 1024), (544, 960), (544, 960)]


def test_resized_copies_of_a_name_of_two_kinds(targets, tmp_path, monkeypatch, capsys):
    unchanged, resized = str(tmp_path / 'unchanged'), str(tmp_path / 'resized')
    assert run_cli(resize_main, ['acdc_fog_train', '--output', unchanged, '--workers', '1']) == 2
    assert capsys.readouterr().err == ('error: acdc_fog_train is both a validation and an adaptation loader; give '
                                       '--kind validation or --kind adaptation\n')
    assert run_cli(resize_main, ['dark_zurich_validation', '--kind', 'adaptation', '--output', unchanged]) == 2
    assert 'dark_zurich_validation is not an adaptation loader but a validation loader' in capsys.readouterr().err
    assert run_cli(resize_main, ['acdc_fog_train', '--kind', 'validation', '--output', unchanged,
                                 '--workers', '1']) == 0
    assert run_cli(resize_main, ['acdc_fog_train', '--kind', 'adaptation', '--resize-height', '16',
                                 '--resize-width', '32', '--output', resized, '--workers', '1']) == 0
    source = os.path.join(targets, 'acdc', 'rgb_anon', 'fog', 'train', 'GOPR0475', 'GOPR0475_frame_000041_rgb_anon.png')
    copied = os.path.join(unchanged, os.path.relpath(source, targets))
    assert open(copied, 'rb').read() == open(source, 'rb').read()  # a validation loader copies unchanged
    assert cv2.imread(os.path.join(resized, os.path.relpath(source, targets))).shape == (16, 32, 3)
    monkeypatch.setenv('UBNA_DIR_DATASET', unchanged)
    assert len(validation_dataset('acdc_fog_train', (32, 64))) == 2
    assert len(adaptation_dataset('acdc_fog_train', (16, 32), (16, 32))) == 2  # an unchanged copy serves any size
    monkeypatch.setenv('UBNA_DIR_DATASET', resized)
    assert len(adaptation_dataset('acdc_fog_train', (16, 32), (16, 32))) == 2
    with pytest.raises(UserError, match=r'holds acdc_fog_train resized for 16x32, but as a validation loader it reads '
                                        r'its files unchanged; write an unchanged copy: .* acdc_fog_train --kind '
                                        r'validation --output'):
        validation_dataset('acdc_fog_train', (32, 64))


def test_resize_dataset_lists_every_name_once():
    from data_download.resize_dataset import parse_args
    for name in ('acdc_rain_train', 'foggy_cityscapes_0.005_train', 'bdd100k_validation', 'gta5_train'):
        assert parse_args([name, '--output', 'x']).loader == name


def test_make_synthetic_writes_the_acdc_conditions(synthetic_root, monkeypatch):
    """The session's synthetic data (8 target train and 4 val images) holds every condition in ACDC's layout,
    labelled as the target, and visibly changed: fog is lower in contrast, night darker, rain and snow brighter
    in places."""
    monkeypatch.setenv('UBNA_DIR_DATASET', synthetic_root)
    target = validation_dataset('cityscapes_validation', (64, 128))
    target_image = target[0]['input'].float()
    for condition in CONDITIONS:
        assert len(adaptation_dataset(f'acdc_{condition}_train', (64, 128), (64, 128))) == 8
        validation = validation_dataset(f'acdc_{condition}_validation', (64, 128))
        assert len(validation) == 4
        assert (validation[0]['label'] == target[0]['label']).all()
        image = validation[0]['input'].float()
        change = {'fog': image.std() < 0.6 * target_image.std(), 'night': image.mean() < 0.4 * target_image.mean(),
                  'rain': (image - target_image).max() > 60, 'snow': (image == 255).float().mean() > 0.01}
        assert change[condition], condition
    assert os.path.isfile(os.path.join(synthetic_root, 'acdc', 'gt', 'night', 'val', 'GOPR0002',
                                       'GOPR0002_frame_000003_gt_labelIds.png'))


def test_make_synthetic_cli_conditions(tmp_path, capsys):
    size = ['--height', '32', '--width', '64', '--num-source', '1', '--num-target-train', '2', '--num-target-val', '1']
    assert run_cli(ms.main, ['--out', str(tmp_path / 'with'), *size]) == 0
    assert 'acdc: fog_train 2, fog_validation 1, night_train 2' in capsys.readouterr().out
    assert run_cli(ms.main, ['--out', str(tmp_path / 'without'), '--no-conditions', *size]) == 0
    assert 'acdc' not in capsys.readouterr().out and not (tmp_path / 'without' / 'acdc').exists()


def test_each_condition_is_scored_as_a_domain_of_its_own():
    """Two conditions of one dataset folder are two domains of a table, not one: acdc_fog, foggy_cityscapes_0.01."""
    from dataloader.datasets import loader
    assert loader('acdc_fog_validation', 'validation')[1].domain == 'acdc_fog'
    assert loader('acdc_night_train', 'validation')[1].domain == 'acdc_night'
    assert loader('foggy_cityscapes_0.01_validation', 'validation')[1].domain == 'foggy_cityscapes_0.01'
    assert loader('dark_zurich_validation', 'validation')[1].domain is None  # the dataset's name
