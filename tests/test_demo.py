"""The demo's whole path (data, train, evaluate, adapt three ways, online methods, curve, figures), --quick, and its
mIoUs against the values it gave when measured; and the demo's own steps in this process, on tiny data."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import cv2
import pytest

from state_manager import StateManager
from tests.support import REPO

# The quick demo's mIoUs (printed to 3 decimals), measured on the 2-core CPU machine (fp32, OMP_NUM_THREADS=1; the
# demo is seeded and its jobs run with --sys-best-effort-determinism). Full precision, from results.json:
# source 0.04035, no adaptation 0.03271, target_only 0.06243, UBNA 0.04286, UBNA+ 0.04274; online bn_ema 0.03106,
# cbna 0.03602, dua 0.03388, tent 0.06201, test_batch 0.06454, ubna_online 0.03747.
QUICK_TABLE = {('source model', 'source'): 0.040, ('no adaptation', 'target'): 0.033,
               ('target_only', 'target'): 0.062, ('UBNA', 'target'): 0.043, ('UBNA+', 'target'): 0.043}
QUICK_ONLINE = {('none', '-'): 0.033, ('bn_ema', 'continual'): 0.031, ('cbna', 'episodic'): 0.036,
                ('cotta', 'continual'): 0.065, ('dua', 'continual'): 0.034, ('eata', 'continual'): 0.065,
                ('eta', 'continual'): 0.065, ('rotta', 'continual'): 0.033, ('sar', 'continual'): 0.050,
                ('tent', 'continual'): 0.062, ('test_batch', 'continual'): 0.065, ('ubna_online', 'continual'): 0.037}
# the stream mIoU of each method over fog, night, rain, snow x 3 rounds
QUICK_CONTINUAL = {'bn_ema': 0.029, 'cbna': 0.040, 'cotta': 0.036, 'dua': 0.049, 'eata': 0.035, 'eta': 0.035,
                   'rotta': 0.036, 'sar': 0.033, 'tent': 0.034, 'test_batch': 0.035, 'ubna_online': 0.055}
QUICK_CURVES = {'constant momentum 0.1': {0: 0.033, 1: 0.038, 3: 0.038},
                'target_only (AdaBN)': {0: 0.033, 1: 0.058, 3: 0.050},
                'UBNA': {0: 0.033, 1: 0.041, 3: 0.046}, 'UBNA+': {0: 0.033, 1: 0.038, 3: 0.040}}
# Another CPU (other SIMD kernels, another summation order) may round the float32 network's logits differently and
# flip the argmax of a few of the 6 x 64 x 128 validation pixels; each flip moves an mIoU by about 1e-4 at these
# sizes, so 0.005 absolute allows dozens of flips, yet is under the gaps between methods that the table shows
# (target_only 0.062 against no adaptation 0.033).
MIOU_TOLERANCE = 0.005
# Two printings of one value (3 decimals) differ by at most their rounding: 0.001, plus float noise where the two
# come from different code (evaluate.py's channels-last network against the curve's contiguous one).
ROUNDING = 0.001 + 1e-9

ROW = re.compile(r'^\| (.+?) \| (source|target) \| (\d+\.\d{3}) \| \d+ \| \d+ \|$', re.M)
# a cheap method's cost, measured as a difference with `none`, may fall below zero within the timing noise
ONLINE_ROW = re.compile(r'^\| (\w+) \| (-|continual|episodic) \| (\d+\.\d{3}) \| -?[\d.]+ \| (?:[\d.]+|-) \|$', re.M)
CONTINUAL_ROW = re.compile(r'^\| (\w+) \| (\d) \| ((?:\d\.\d{3} \| ){4})(\d\.\d{3}) \| (\d\.\d{3})? \|$', re.M)
CURVE = re.compile(r'^curve (.+): (\d+: \d+\.\d{3}(?:, \d+: \d+\.\d{3})*)$', re.M)


def table_mious(text: str) -> tuple[dict, dict]:
    """({(model, domain): mIoU}, {(online method, reset): mIoU}) of the demo's summary."""
    return ({(model, domain): float(v) for model, domain, v in ROW.findall(text)},
            {(method, reset): float(v) for method, reset, v in ONLINE_ROW.findall(text)})


def continual_mious(text: str) -> dict:
    """{(method, round): ([mIoU per domain], mean, stream mIoU or None)} of the demo's continual table."""
    return {(method, int(r)): ([float(v) for v in values.split(' | ') if v.strip()], float(mean),
                               float(whole) if whole else None)
            for method, r, values, mean, whole in CONTINUAL_ROW.findall(text)}


def curve_mious(text: str) -> dict:
    """{curve label: {batches: mIoU}} of the demo's 'curve ...' lines."""
    return {label: {int(k): float(v) for k, v in (point.split(': ') for point in points.split(', '))}
            for label, points in CURVE.findall(text)}


def assert_near(found: dict, expected: dict, tolerance: float, what: str) -> None:
    assert found.keys() == expected.keys(), what
    far = {key: (found[key], expected[key]) for key in found if abs(found[key] - expected[key]) > tolerance}
    assert not far, f'{what}: (found, expected) beyond {tolerance}: {far}'


@pytest.mark.slow  # the whole demo: a minute or two
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
    for figure in ('miou_vs_batches.png', 'continual.png', 'predictions.png'):
        image = cv2.imread(str(tmp_path / figure))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 300

    # the continual table: every online method over the four conditions, 3 rounds, as results.json holds it
    continual = continual_mious(summary)
    assert continual == continual_mious(result.stdout)
    assert sorted(continual) == [(method, r) for method in sorted(QUICK_CONTINUAL) for r in (1, 2, 3)]
    for (method, r), (values, mean, whole) in continual.items():
        stream = json.loads((tmp_path / 'checkpoints' / 'demo' / f'continual_{method}' / 'results.json').read_text())
        cells = [cell for cell in stream['online']['stream'] if cell['round'] == r]
        assert [cell['domain'] for cell in cells] == [f'acdc_{c}_validation' for c in ('fog', 'night', 'rain', 'snow')]
        assert all(abs(cell['miou'] - value) <= 0.0005 + 1e-9 for cell, value in zip(cells, values))
        assert abs(mean - sum(values) / 4) <= ROUNDING
        assert (whole is None) == (r != 3)
    assert_near({method: continual[method, 3][2] for method in QUICK_CONTINUAL}, QUICK_CONTINUAL, MIOU_TOLERANCE,
                'continual stream mIoU')

    # the mIoUs: printed and in summary.md alike, consistent with each other and with results.json, and as measured
    printed, online_printed = table_mious(result.stdout)
    table, online = table_mious(summary)
    assert (printed, online_printed) == (table, online)
    curves = curve_mious(result.stdout)
    no_adaptation = table['no adaptation', 'target']
    assert abs(online['none', '-'] - no_adaptation) <= ROUNDING  # the same evaluation, listed twice
    for label, points in curves.items():  # every curve starts from the source model on the target images
        assert abs(points[0] - no_adaptation) <= ROUNDING, label
    stored = {**{row: f'eval_{name}' for row, name in zip(QUICK_TABLE, ('source_on_source', 'no_adaptation',
                                                                        'target_only', 'ubna', 'ubna_plus'))},
              **{row: f'online_{row[0]}' for row in QUICK_ONLINE if row[0] != 'none'}}
    for row, name in stored.items():  # the full-precision values the tables print to 3 decimals
        results = json.loads((tmp_path / 'checkpoints' / 'demo' / name / 'results.json').read_text())
        value = table[row] if row in table else online[row]
        assert abs(results['domains']['cityscapes']['none']['miou'] - value) <= 0.0005 + 1e-9, row
    assert_near(table, QUICK_TABLE, MIOU_TOLERANCE, 'model table')
    assert_near(online, QUICK_ONLINE, MIOU_TOLERANCE, 'online table')
    assert curves.keys() == QUICK_CURVES.keys()
    for label, points in curves.items():
        assert_near(points, QUICK_CURVES[label], MIOU_TOLERANCE, f'curve {label}')


def test_the_readme_quotes_the_quick_demo_s_mious():
    readme = open(os.path.join(REPO, 'README.md')).read()
    quoted = re.search(r'its mIoUs: source model (\d\.\d{3}), no adaptation (\d\.\d{3}), target_only (\d\.\d{3}), '
                       r'UBNA (\d\.\d{3}), UBNA\+ (\d\.\d{3})\.', ' '.join(readme.split()))
    assert quoted, 'README.md quotes no quick-demo mIoUs'
    assert dict(zip(QUICK_TABLE, map(float, quoted.groups()))) == QUICK_TABLE


def load_demo():
    """experiments/demo/run_demo.py as a module (it is a script, in no package)."""
    spec = importlib.util.spec_from_file_location('run_demo', os.path.join(REPO, 'experiments', 'demo', 'run_demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_s_curves_figures_and_tables_in_this_process(synthetic_root, tmp_path, monkeypatch, one_thread,
                                                               capsys):
    """The steps of run_demo.py after its jobs (curve, plot, predictions figure, tables), from scratch networks
    saved where the jobs would have saved theirs, on the tests' synthetic data: one adaptation batch."""
    demo = load_demo()
    monkeypatch.setenv('UBNA_DIR_DATASET', synthetic_root)
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path))
    s = {**demo.settings(quick=True), 'adaptation_batches': 1, 'curve_points': (0, 1)}
    network = StateManager('resnet', 18, 'scratch')
    for name, checkpoint in (('source', f'epoch_{s["epochs"]}'), ('ubna', 'batch_1'), ('ubna_plus', 'batch_1')):
        network.save(str(tmp_path / demo.CLASS / name), checkpoint)

    curves = demo.curve(s)
    assert list(curves) == [label for label, *_ in demo.CURVE_MODES]
    assert all(list(points) == [0, 1] and all(0 <= v <= 1 for v in points.values()) for points in curves.values())
    assert len({points[0] for points in curves.values()}) == 1  # all from the same source model
    assert curve_mious(capsys.readouterr().out) == {label: {k: round(v, 3) for k, v in points.items()}
                                                    for label, points in curves.items()}
    demo.plot_curves(curves, str(tmp_path / 'curves.png'))
    demo.predictions_figure(s, str(tmp_path / 'predictions.png'))
    for figure in ('curves.png', 'predictions.png'):
        image = cv2.imread(str(tmp_path / figure))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 300

    results = {'domains': {'cityscapes': {'none': {'miou': 0.25}}},
               'online': {'method': 'cbna', 'settings': {'momentum': 0.2, 'reset': 'episodic'},
                          'ms_per_image_adapting': 1.25, 'ms_per_image_none': 3.5}}
    os.makedirs(tmp_path / demo.CLASS / 'online_cbna')
    (tmp_path / demo.CLASS / 'online_cbna' / 'results.json').write_text(json.dumps(results))
    assert demo.miou(str(tmp_path), 'online_cbna') == 0.25
    row = demo.online_row(str(tmp_path), 'online_cbna')
    assert row == ('cbna', 'episodic', 0.25, 1.25, 3.5)
    lines = demo.online_table([('none', '-', 0.125, 0.0, None), row])
    assert table_mious('\n'.join(lines))[1] == {('none', '-'): 0.125, ('cbna', 'episodic'): 0.25}
    assert lines[-1] == '| cbna | episodic | 0.250 | 1.2 | 3.5 |'

    continual = [('tent', 1, [0.25, 0.5, 0.125, 0.0], None), ('tent', 2, [0.5, 0.5, 0.25, 0.25], 0.375)]
    text = '\n'.join(demo.continual_table(continual))
    assert continual_mious(text) == {('tent', 1): ([0.25, 0.5, 0.125, 0.0], 0.219, None),
                                     ('tent', 2): ([0.5, 0.5, 0.25, 0.25], 0.375, 0.375)}
    demo.plot_continual(continual + [('cbna', r, [0.1] * 4, None) for r in (1, 2)], str(tmp_path / 'c.png'))
    image = cv2.imread(str(tmp_path / 'c.png'))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 300
