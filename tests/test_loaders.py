"""The named loaders, batching, cycling and error reporting from workers (spec §4, CONTRACT loader API)."""
import os
import threading
import traceback

import cv2
import numpy as np
import pytest
import torch

from dataloader.datasets import loader, loader_names
from dataloader.loaders import (CyclingLoaders, adaptation_dataset, adaptation_input_size, check_loader_names,
                                collate, make_loader, training_dataset, validation_dataset, validation_loaders)
from errors import UserError, user_message
from experiment.runtime import seed_everything
from data_download.tiny_datasets import write_dataset



def test_check_loader_names():
    check_loader_names(list(loader_names('training')), 'training')
    check_loader_names(list(loader_names('adaptation')), 'adaptation')
    check_loader_names(list(loader_names('validation')), 'validation')
    with pytest.raises(UserError, match="unknown validation loader 'gta5_train'; valid names: acdc_fog_train, "
                                        ".*, cityscapes_validation, .*, kitti_2015_train$"):
        check_loader_names(['cityscapes_validation', 'gta5_train'], 'validation')


TARGET_DATASETS = ('acdc', 'bdd100k', 'dark_zurich', 'foggy_cityscapes')  # tests/test_target_datasets.py


def source_names(kind):
    """The loader names of a kind, but those of the target datasets."""
    return tuple(name for name in loader_names(kind) if loader(name, kind)[0].name not in TARGET_DATASETS)


def test_registered_loader_names_sizes_and_folders():
    """The loaders the datasets register, in the order help texts and errors list them, with their folders."""
    assert source_names('training') == ('cityscapes_train', 'gta5_train', 'synthia_train')
    assert source_names('adaptation') == ('cityscapes_sequence_train', 'kitti_kitti_train')
    assert source_names('validation') == ('cityscapes_validation', 'kitti_2015_train')
    assert {name: loader(name)[1].size for name in source_names('validation')} == {
        'cityscapes_validation': (512, 1024), 'kitti_2015_train': (320, 1024)}
    sources = {name: (entry.name, found.split, found.split_file, entry.labels)
               for name, (entry, found) in ((name, loader(name)) for kind in ('training', 'adaptation', 'validation')
                                            for name in source_names(kind))}
    assert sources == {
        'cityscapes_train': ('cityscapes', None, 'train', 'cityscapes'),
        'gta5_train': ('gta5', 'full_split', 'train', 'gta5'),
        'synthia_train': ('synthia', None, 'train', 'synthia'),
        'cityscapes_sequence_train': ('cityscapes_sequence', None, 'train', None),
        'kitti_kitti_train': ('kitti', 'kitti_split', 'train', None),
        'cityscapes_validation': ('cityscapes', None, 'validation', 'cityscapes'),
        'kitti_2015_train': ('kitti_2015', None, 'train', 'cityscapes')}


@pytest.mark.parametrize('name, domain', [('cityscapes_train', 'cityscapes'), ('gta5_train', 'gta5'),
                                          ('synthia_train', 'synthia')])
def test_training_loaders(named_datasets, name, domain):
    dataset = training_dataset(name, (64, 128), (32, 80))
    assert len(dataset) == 4
    batch = next(iter(make_loader(dataset, 2, shuffle=True, drop_last=True, num_workers=0, on_gpu=False)))
    assert batch['input'].shape == batch['image'].shape == (2, 3, 32, 80)
    assert batch['label'].shape == (2, 32, 80) and batch['label'].dtype == torch.uint8
    assert batch['domain'] == [domain, domain] and batch['purposes'] == [('segmentation',)] * 2
    labels = set(batch['label'].unique().tolist())
    assert labels <= set(range(19)) | {255} and len(labels) > 3
    assert batch['image'].dtype == batch['input'].dtype == torch.uint8  # normalised on the device


def test_gta5_reads_full_split_with_palette_labels(named_datasets):
    files = training_dataset('gta5_train', (64, 128), (32, 80)).files
    assert files['color'][0].startswith(os.path.join(named_datasets, 'gta5', 'color'))
    assert training_dataset('gta5_train', (64, 128), (32, 80)).transform.convert_label.labels_mode == 'fromrgb'


def test_training_crop_must_fit_smallest_rescale(named_datasets):
    with pytest.raises(UserError, match='crop 48x80 does not fit into the smallest random rescale 42x85'):
        training_dataset('cityscapes_train', (64, 128), (48, 80))


def test_adaptation_geometry(named_datasets):
    """cityscapes_sequence_train resizes to (h*568//512, w*1092//1024) and crops (h*320//512, w), at the offsets
    (h*32//512, w*33//1024) only with crop_at_offsets; kitti_kitti_train only resizes."""
    def geometry(name, crop_at_offsets):
        transform = adaptation_dataset(name, (512, 1024), (64, 64), crop_at_offsets).transform
        return transform.resize_hw, transform.crop_hw, transform.crop_offset

    assert geometry('cityscapes_sequence_train', False) == ((568, 1092), (320, 1024), (0, 0))
    assert geometry('cityscapes_sequence_train', True) == ((568, 1092), (320, 1024), (32, 33))
    assert geometry('kitti_kitti_train', True) == ((512, 1024), None, (0, 0))
    assert adaptation_input_size('cityscapes_sequence_train', (103, 128)) == (64, 128)
    assert adaptation_input_size('kitti_kitti_train', (103, 128)) == (103, 128)


@pytest.mark.parametrize('name, hw', [('cityscapes_sequence_train', (40, 128)), ('kitti_kitti_train', (64, 128))])
def test_adaptation_loaders_use_left_and_right(named_datasets, name, hw):
    dataset = adaptation_dataset(name, (64, 128), (32, 80))
    assert len(dataset) == 8
    files = dataset.files['color']  # the left camera's, then the right camera's
    assert files[0].endswith(os.path.join('color', 'train_00000.png'))
    assert files[4].endswith(os.path.join('color_right', 'train_00000.png'))
    sample = dataset[5]
    assert set(sample) == {'input', 'domain', 'purposes'}
    assert sample['input'].shape == (3, *hw) and sample['purposes'] == ('adaptation',)
    assert sample['domain'] == name.rsplit('_', 1)[0].replace('kitti_kitti', 'kitti')


def test_validation_labels_fromid_at_native_size(ubna_env):
    ids = np.full((48, 96), 26, np.uint8)
    write_dataset(ubna_env, 'cityscapes', {'color': {0: np.zeros((48, 96, 3), np.uint8)},
                                           'segmentation': {0: ids}},
                  labels_mode='fromtrainid', split_file='validation')
    sample = validation_dataset('cityscapes_validation', (32, 64))[0]
    assert sample['input'].shape == (3, 32, 64) and sample['label'].shape == (48, 96)
    assert (sample['label'] == 13).all()  # fromid although parameters.json says fromtrainid
    assert sample['domain'] == 'cityscapes' and sample['purposes'] == ('segmentation',)


def test_validation_loaders_sizes(named_datasets):
    [(name, loader)] = validation_loaders(['kitti_2015_train'], 1, (32, 64), num_workers=0, on_gpu=False)
    batch = next(iter(loader))
    assert name == 'kitti_2015_train' and batch['input'].shape == (1, 3, 32, 64)
    assert batch['label'].shape == (1, 48, 160) and len(loader) == 4
    both = validation_loaders(['cityscapes_validation', 'kitti_2015_train'], 1, (32, 64), 0, False)
    assert [name for name, _ in both] == ['cityscapes_validation', 'kitti_2015_train']
    assert [loader.dataset.transform.resize_hw for _, loader in both] == [(512, 1024), (320, 1024)]
    assert not both[0][1].pin_memory


def test_collate_lists_and_size_errors():
    samples = [{'label': torch.zeros(2, 3), 'domain': 'a', 'purposes': ('adaptation',)},
               {'label': torch.ones(2, 3), 'domain': 'b', 'purposes': ('adaptation',)}]
    batch = collate(samples)
    assert batch['label'].shape == (2, 2, 3)
    assert batch['domain'] == ['a', 'b'] and batch['purposes'] == [('adaptation',)] * 2
    samples[1]['label'] = torch.ones(3, 3)
    with pytest.raises(UserError, match="cannot batch 'label' tensors of different sizes"):
        collate(samples)


def test_make_loader_rejects_batch_larger_than_dataset(named_datasets):
    dataset = training_dataset('synthia_train', (64, 128), (32, 80))
    with pytest.raises(UserError, match='4 samples, fewer than its batch size 6'):
        make_loader(dataset, 6, shuffle=True, drop_last=True, num_workers=0, on_gpu=False)


class CountingSampler(torch.utils.data.Sampler):
    def __init__(self, size):
        self.size, self.epochs = size, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self):
        return self.size


def test_cycling_loaders_restart_exhausted_loaders():
    sampler = CountingSampler(3)
    short = torch.utils.data.DataLoader(list(range(3)), batch_size=1, sampler=sampler)
    long = torch.utils.data.DataLoader(list(range(100, 110)), batch_size=2)
    cycling = CyclingLoaders([short, long], num_batches=7)
    assert len(cycling) == 7
    items = list(cycling)
    assert len(items) == 7 and all(len(item) == 2 for item in items)
    assert [int(item[0]) for item in items] == [0, 1, 2, 0, 1, 2, 0]
    assert [item[1].tolist() for item in items][4:6] == [[108, 109], [100, 101]]
    assert sampler.epochs == [0, 1, 2]
    list(cycling)
    assert sampler.epochs[-1] == 5


def batches(loader):
    return [batch['input'] for batch in loader]


@pytest.mark.parametrize('workers', [0, 2])
def test_loaders_reproducible_after_seeding(named_datasets, workers):
    dataset = training_dataset('cityscapes_train', (64, 128), (32, 80))
    runs = []
    for _ in range(2):
        seed_everything(5)
        runs.append(batches(make_loader(dataset, 2, True, True, workers, False)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    seed_everything(6)
    assert not torch.equal(batches(make_loader(dataset, 2, True, True, workers, False))[0], runs[0][0])


def test_bad_image_in_worker_gives_one_sentence(named_datasets):
    dataset = training_dataset('cityscapes_train', (64, 128), (32, 80))
    broken = dataset.files['color'][2]
    with open(broken, 'wb') as file:
        file.write(b'\x89PNG truncated')
    loader = make_loader(dataset, 2, shuffle=False, drop_last=True, num_workers=2, on_gpu=False)
    with pytest.raises(UserError) as error:
        list(loader)
    message = user_message(error.value)
    # Free the loader and its iterator now, not when the cyclic GC finds them: the GC closes the workers' queues
    # before the iterator's shutdown, which then waits 5 s for each worker. They are held by the frames of the
    # exception chain (the worker's error re-raised) and by this frame, which holds the traceback that holds it.
    exception = error.value
    while exception is not None:
        traceback.clear_frames(exception.__traceback__)
        exception = exception.__cause__ or exception.__context__
    del error, loader
    assert message == (f'the image file {broken} (sample 2) cannot be read '
                       f'(missing, empty, truncated or not an image)')


def test_missing_files_fail_before_workers(named_datasets):
    os.remove(os.path.join(named_datasets, 'kitti', 'color_right', 'train_00003.png'))
    with pytest.raises(UserError, match=r'color_right/train_00003\.png does not exist'):
        adaptation_dataset('kitti_kitti_train', (64, 128), (32, 80))


def test_workers_start_after_opencv_ran_in_parent(ubna_env):
    """A forked worker hangs in cv2.setNumThreads once the parent has used OpenCV's pool: no such worker setup."""
    big = {i: np.zeros((768, 1024, 3), np.uint8) for i in range(2)}
    write_dataset(ubna_env, 'kitti', {'color': big, 'color_right': big}, split='kitti_split')
    loader = make_loader(adaptation_dataset('kitti_kitti_train', (32, 64), (32, 64)), 2, False, True, 2, False)
    cv2.cvtColor(big[0], cv2.COLOR_BGR2RGB)  # runs OpenCV's thread pool in this (parent) process
    batches = []
    thread = threading.Thread(target=lambda: batches.extend(loader), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert len(batches) == 2
