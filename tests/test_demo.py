"""The demo's whole path (data, train, evaluate, adapt three ways, online methods, curve, figures), --quick."""
import os
import subprocess
import sys

import cv2

from tests.conftest import REPO


def test_quick_demo_writes_the_table_and_both_figures(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, 'experiments/demo/run_demo.py', '--quick', '--out', str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / 'summary.md').read_text()
    for row in ('| source model | source |', '| no adaptation | target |', '| target_only | target |',
                '| UBNA | target |', '| UBNA+ | target |'):
        assert row in summary and row in result.stdout
    for method, reset in (('none', '-'), ('test_batch', 'continual'), ('cbna', 'episodic'), ('bn_ema', 'continual'),
                          ('ubna_online', 'continual'), ('dua', 'continual'), ('tent', 'continual')):
        assert f'| {method} | {reset} |' in summary  # the online methods' table
    for figure in ('miou_vs_batches.png', 'predictions.png'):
        image = cv2.imread(str(tmp_path / figure))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 300
