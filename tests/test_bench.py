"""bench/: its measurements and data writers on tiny sizes, in this process (the benchmarks themselves take
minutes; these check that their code runs and measures what it says)."""
import os

import numpy as np
import pytest
import torch

from bench import bench, bench_jobs, bench_loaders
from dataloader.loaders import adaptation_dataset, training_dataset
from data_download.tiny_datasets import id_label, palette_label, write_dataset
from experiment.runtime import Runtime

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py


class ListQueue(list):
    """What bench._measure puts its result into (a multiprocessing queue in bench.measure)."""

    def put(self, item) -> None:
        self.append(item)


@pytest.mark.parametrize('case', ['adaptation', 'training', 'evaluation', 'evaluation_naive', 'stream'])
def test_each_network_case_measures_a_rate_and_a_peak_memory(case):
    queue = ListQueue()
    bench._measure(case, 'resnet18', (64, 64), 2, 'cpu', 'fp32', 1, queue)
    [(rate, memory)] = queue
    assert rate > 0 and memory > 100  # MiB: this process holds torch and a network


def test_timed_gives_the_median_of_the_repeats_after_a_warm_up():
    calls = []
    seconds = bench._timed(lambda: calls.append(1), Runtime(torch.device('cpu')), 3)
    assert len(calls) == 4 and 0 <= seconds < 1


def test_the_loader_benchmark_reads_samples_of_photo_like_images(ubna_env):
    rng = np.random.default_rng(0)
    image = bench_loaders.photo_like(rng, 64, 128)
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8 and image.std() > 10
    indices = range(bench_loaders.FILES_PER_CATEGORY)
    write_dataset(ubna_env, 'gta5', {'color': {i: bench_loaders.photo_like(rng, 64, 128) for i in indices},
                                     'segmentation': {i: palette_label(rng, 64, 128) for i in indices}},
                  labels='gta5', labels_mode='fromrgb', split='full_split')
    dataset = training_dataset('gta5_train', (64, 128), (32, 64))
    assert bench_loaders.samples_per_second(dataset, 2, 0, 4) > 0
    assert bench_loaders.reading_milliseconds(dataset) > 0
    decoding = bench_loaders.decode_milliseconds(os.path.join(ubna_env, 'gta5', 'color', 'train_00000.png'), 1)
    assert sorted(decoding) == ['OpenCV', 'PIL', 'torchvision.io'] and all(v > 0 for v in decoding.values())


def test_the_jobs_benchmark_indexes_few_files_as_many_samples(ubna_env):
    rng = np.random.default_rng(0)
    bench_jobs.write_indexed(ubna_env, 'kitti', {camera: [bench_loaders.photo_like(rng, 64, 128) for _ in range(2)]
                                                 for camera in ('color', 'color_right')}, 6, split='kitti_split',
                             labels='other')
    dataset = adaptation_dataset('kitti_kitti_train', (64, 128), (64, 128))
    assert len(dataset) == 2 * 6 and dataset[0]['input'].shape == (3, 64, 128)  # left and right images
    assert dataset.files['color'][0] == dataset.files['color'][2]  # 2 files a camera, 6 samples
    bench_jobs.write_indexed(ubna_env, 'cityscapes', {'color': [bench_loaders.photo_like(rng, 64, 128)],
                                                      'segmentation': [id_label(rng, 64, 128)]}, 3,
                             split_file='validation')
    assert bench_jobs.size('64X128') == (64, 128)
    assert bench_jobs.reference_flags(['--a', '1', '--sys-precision', 'bf16', '--b']) == ['--a', '1', '--b']
    assert (bench_jobs._cell(1.234, 6), bench_jobs._cell(None, 3)) == ('   1.2', '  -')


def test_a_job_s_timing_line_and_memory_are_read(tmp_path, capsys):
    (tmp_path / 'job.py').write_text(
        'print("adapt: first batch 1.5 s after start; then 12 images in 3.0 s (4.0 images/s; 5.0 in the second '
        'half)")\n')
    result = bench_jobs.run_job('job.py', [], str(tmp_path), str(tmp_path), cwd=str(tmp_path))
    assert (result['first'], result['rate'], result['steady']) == (1.5, 4.0, 5.0)
    assert result['wall'] > 0 and result['rss'] > 1 and result['gpu'] is None
    (tmp_path / 'fails.py').write_text('import sys; sys.exit("broken")\n')
    failed = bench_jobs.run_job('fails.py', [], str(tmp_path), str(tmp_path), cwd=str(tmp_path))
    assert set(failed.values()) == {None} and 'fails.py failed' in capsys.readouterr().err
