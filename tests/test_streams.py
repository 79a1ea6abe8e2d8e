"""Online adaptation over a stream of domains (dataloader/stream.py, evaluation/stream.py): `none` equals plain
evaluation per domain, bn_ema's closed form carried across domains and rounds, the domain and round resets, the
mixed order, the reports, sweep.py's stream columns, plain evaluation unchanged, and the bad inputs."""
import csv
import json
import os

import pytest
import torch
import torch.nn as nn

import evaluate
import sweep
from arguments import parse_evaluation_arguments
from dataloader.loaders import validation_loaders
from dataloader.stream import Cell, StreamPlan, stream_loader, stream_size
from dataloader.transforms import to_network_input
from evaluation.scoring import evaluate_model
from evaluation.stream import score_stream
from evaluation.stream_report import stream_results, stream_table
from evaluation.tables import results_dict
from experiment.folder import write_json
from experiment.runtime import Runtime
from models.adaptation import build_online_method
from state_manager import StateManager
from sweeps import records, report
from sweeps.options import parse_sweep_arguments

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py

CS, KITTI = 'cityscapes_validation', 'kitti_2015_train'  # 4 images each in the tiny datasets
SIZE = (64, 128)
RUNTIME = Runtime(torch.device('cpu'))
SOURCE = 'tiny/source/checkpoints/epoch_0'
JOB = ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-cpu', '--sys-num-workers', '0',
       '--experiment-class', 'tiny', '--model-load', SOURCE, '--segmentation-eval-num-images', '0']
RESIZE = ['--segmentation-validation-resize-height', '64', '--segmentation-validation-resize-width', '128']


class TinyNet(nn.Module):
    """conv-BN-ReLU and a 1×1 conv to 20 logits: the first BatchNorm's input does not depend on any statistics."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 20, 1))
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
        self.eval()

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))



def decoded(names, rounds=1, order='sequential', seed=None, batch_size=1):
    """The plan of a stream at SIZE and its batches, decoded in stream order."""
    plan, loader = stream_loader(names, batch_size, SIZE, 0, False, rounds, order, seed)
    return plan, list(loader)


def scored(plan, batches, online=None, reset=None, model=None):
    return score_stream(model or TinyNet(), plan, batches, ['none'], RUNTIME, online, reset, show_progress=False)


def matrices(scores) -> list:
    return [cell['none'].matrix for cell in scores.cells]


def test_none_over_a_stream_equals_plain_evaluation_per_domain(untrained_roots):
    plan, batches = decoded([CS, KITTI, CS], rounds=2)
    scores = scored(plan, batches)
    for cell, matrix in zip(plan.cells, matrices(scores)):
        plain, _ = evaluate_model(TinyNet(), validation_loaders([cell.name], 1, SIZE, 0, False), ['none'], RUNTIME,
                                  show_progress=False)
        assert torch.equal(matrix, next(iter(plain.values()))['none'].matrix), cell
    assert scores.domains == ['cityscapes', 'kitti_2015', 'cityscapes'] * 2 and scores.images == [4] * 6


def test_bn_ema_equals_its_closed_form_carried_across_domains_and_rounds(untrained_roots):
    plan, batches = decoded([CS, KITTI], rounds=2, batch_size=2)
    model = TinyNet()
    mean, variance = model.bn.running_mean.double().clone(), model.bn.running_var.double().clone()
    with torch.no_grad():
        for batch in batches:  # by hand, over the stream's images in its order
            x = model.conv(to_network_input(batch['input'], 'cpu')).double()
            mean = 0.8 * mean + 0.2 * x.mean((0, 2, 3))
            variance = 0.8 * variance + 0.2 * x.var((0, 2, 3))
    scored(plan, batches, build_online_method('bn_ema', model, momentum=0.2), model=model)
    torch.testing.assert_close(model.bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var.double(), variance, rtol=1e-5, atol=1e-6)


class Seen:
    """An online method that records, at each batch, how many batches it has seen since its last reset."""

    def __init__(self, method):
        self.method, self.seen = method, []

    def __call__(self, images):
        self.seen.append(self.method.batches_seen)
        return self.method(images)

    def reset(self):
        self.method.reset()


@pytest.mark.parametrize('reset, seen', [('domain', [0, 1, 0, 1, 0, 1, 0, 1]), ('round', [0, 1, 2, 3, 0, 1, 2, 3]),
                                         (None, list(range(8))), ('episodic', [0] + [1] * 7)])
def test_domain_and_round_resets_restart_where_they_should(untrained_roots, reset, seen):
    plan, batches = decoded([CS, KITTI], rounds=2, batch_size=2)
    model = TinyNet()
    online = Seen(build_online_method('bn_ema', model, reset='episodic' if reset == 'episodic' else 'continual'))
    scored(plan, batches, online, reset, model)
    assert online.seen == seen


def test_a_reset_restarts_the_method_from_its_source_state(untrained_roots):
    plan, batches = decoded([CS, KITTI, CS], rounds=2)

    def cells(reset):
        model = TinyNet()
        return matrices(scored(plan, batches, build_online_method('bn_ema', model), reset, model))

    by_domain, by_round, continual = cells('domain'), cells('round'), cells(None)
    assert torch.equal(by_domain[0], by_domain[2]) and torch.equal(by_domain[0], by_domain[3])  # each pass anew
    assert all(torch.equal(by_round[i], by_round[i + 3]) for i in range(3))  # round 2 repeats round 1
    assert torch.equal(continual[0], by_round[0]) and not torch.equal(continual[0], continual[3])


def test_a_mixed_plan_is_seeded_and_holds_each_rounds_batches_once_each_of_one_domain():
    def plan(seed, order='mixed'):
        return StreamPlan([CS, KITTI, CS], {CS: 5, KITTI: 3}, batch_size=2, rounds=2, order=order, seed=seed)

    sequential, mixed = plan(None, 'sequential'), plan(7)
    assert mixed.batches == plan(7).batches and mixed.batches != plan(8).batches
    assert mixed.cells == sequential.cells and mixed.cells[3] == Cell(2, 1, CS)
    half = len(sequential.batches) // 2
    for part in (slice(None, half), slice(half, None)):  # every round: the same batches, in another order
        assert sorted(map(str, mixed.batches[part])) == sorted(map(str, sequential.batches[part]))
    assert mixed.batches[:half] != sequential.batches[:half]
    for index, indices in mixed.batches:  # a batch holds one domain's samples: its cell's dataset
        start = mixed.offsets[mixed.cells[index].name]
        assert all(start <= i < start + {CS: 5, KITTI: 3}[mixed.cells[index].name] for i in indices)


def test_a_mixed_stream_scores_each_sample_under_its_own_domain(untrained_roots):
    sequential = scored(*decoded([CS, KITTI], rounds=2))
    plan, batches = decoded([CS, KITTI], rounds=2, order='mixed', seed=3)
    assert [batch['domain'][0] for batch in batches] != [batch['domain'][0] for batch in decoded([CS, KITTI])[1] * 2]
    mixed = scored(plan, batches)
    assert mixed.domains == sequential.domains == ['cityscapes', 'kitti_2015'] * 2
    assert all(torch.equal(a, b) for a, b in zip(matrices(mixed), matrices(sequential)))
    assert [b['domain'] for b in decoded([CS, KITTI], rounds=2, order='mixed', seed=3)[1]] == \
        [b['domain'] for b in batches]


def test_stream_results_and_table_hold_every_cell_and_the_whole_stream(untrained_roots):
    plan, batches = decoded([CS, KITTI, CS], rounds=2)
    scores = scored(plan, batches)
    results = stream_results(scores)
    assert [(e['round'], e['position'], e['domain'], e['remap'], e['images']) for e in results['stream']] == [
        (r, p, name, 'none', 4) for r in (1, 2) for p, name in enumerate([CS, KITTI, CS], 1)]
    whole = scores.cells[0]['none'].matrix * 0
    for cell in scores.cells:
        whole = whole + cell['none'].matrix
    assert torch.equal(scores.whole()['none'].matrix, whole)
    assert results['stream_miou'] == {'none': scores.whole()['none'].miou()}
    last = scores.last_round()  # the last round, its two cityscapes passes merged
    assert list(last) == ['cityscapes', 'kitti_2015']
    assert torch.equal(last['cityscapes']['none'].matrix, scores.cells[3]['none'].matrix * 2)
    table = stream_table(scores)
    assert '1 cityscapes_validation | 2 kitti_2015_train | 3 cityscapes_validation |   mean' in table
    assert table.splitlines()[-1] == f'stream mIoU (one confusion matrix over every cell): {whole_miou(scores):.3f}'


def whole_miou(scores) -> float:
    return scores.whole()['none'].miou()


@pytest.mark.slow  # evaluate.main over a stream: a few seconds
def test_evaluate_writes_the_stream_to_results_json_the_table_and_the_plot(untrained_roots, capsys):
    results = evaluate.main(JOB + RESIZE + ['--model-name', 'stream', '--segmentation-validation-loaders',
                                            f'{CS},{KITTI}', '--online-method', 'bn_ema', '--online-rounds', '2',
                                            '--online-reset', 'round', '--sys-seed', '1'])
    out = capsys.readouterr().out
    folder = os.path.join(untrained_roots, 'tiny', 'stream')
    assert json.load(open(os.path.join(folder, 'results.json'))) == results
    online = results['online']
    assert online['settings'] == {'momentum': 0.2, 'reset': 'round'} and online['rounds'] == 2
    assert [(e['round'], e['position'], e['domain']) for e in online['stream']] == [
        (1, 1, CS), (1, 2, KITTI), (2, 1, CS), (2, 2, KITTI)]
    assert [e['miou'] for e in online['stream'][:2]] == [e['miou'] for e in online['stream'][2:]]  # round resets
    assert set(online['stream_miou']) == {'none'} and sorted(results['domains']) == ['cityscapes', 'kitti_2015']
    assert results['domains']['kitti_2015']['none']['miou'] == online['stream'][3]['miou']
    assert 'adapting online with bn_ema (2 rounds, sequential order)' in out and 'stream mIoU (one' in out
    assert os.path.isfile(os.path.join(folder, 'stream.png'))
    assert json.load(open(os.path.join(folder, 'opt.json')))['online_stream_resize'] == [64, 128]


def test_plain_evaluation_writes_the_same_results_and_options_as_before(untrained_roots):
    argv = JOB + RESIZE + ['--model-name', 'plain']
    evaluate.main(argv)
    folder = os.path.join(untrained_roots, 'tiny', 'plain')
    opt = parse_evaluation_arguments(argv)
    assert 'online_stream_resize' not in json.load(open(os.path.join(folder, 'opt.json')))
    model = StateManager('resnet', 18, 'checkpoint')
    model.load(SOURCE, weights_only=True)
    scores, _ = evaluate_model(model.model, validation_loaders([CS], 1, SIZE, 0, False), ['none'], RUNTIME,
                               show_progress=False)
    expected = os.path.join(untrained_roots, 'expected.json')
    write_json(expected, results_dict(opt.model_name, scores))  # what evaluate.py wrote
    assert open(os.path.join(folder, 'results.json'), 'rb').read() == open(expected, 'rb').read()


def test_given_resize_flags_size_every_domain_of_a_stream_else_each_its_default(untrained_roots):
    def resize(*flags):
        return parse_evaluation_arguments(['--model-load', SOURCE, '--segmentation-validation-loaders',
                                           f'{CS},{KITTI}', '--online-method', 'tent', *flags]).online_stream_resize

    assert resize(*RESIZE) == [64, 128] and resize('--segmentation-validation-resize-height=256') == [256, 1024]
    assert resize() is None and [stream_size(name, None) for name in (CS, KITTI)] == [(512, 1024), (320, 1024)]
    assert not hasattr(parse_evaluation_arguments(['--model-load', SOURCE, *RESIZE]), 'online_stream_resize')


def test_a_stream_of_acdc_conditions_takes_their_default_size(synthetic_root, monkeypatch):
    """ACDC's names are validation and adaptation loaders at once: the stream looks up the validation one (544x960)
    and scores each condition as a domain of its own."""
    monkeypatch.setenv('UBNA_DIR_DATASET', synthetic_root)
    names = ['acdc_fog_validation', 'acdc_night_validation']
    plan, loader = stream_loader(names, 1, None, 0, False)
    assert [stream_size(name, None) for name in names] == [(544, 960), (544, 960)]
    batch = next(iter(loader))
    assert tuple(batch['input'].shape[-2:]) == (544, 960) and batch['domain'] == ['acdc_fog']
    assert [cell.name for cell in plan.cells] == names


@pytest.mark.parametrize('flags, message', [
    (['--online-method', 'tent', '--online-rounds', '0'], '--online-rounds must be at least 1, got 0'),
    (['--online-reset', 'domain'], '--online-reset does not apply to --online-method none, which never adapts'),
    (['--online-reset', 'round'], '--online-reset does not apply to --online-method none, which never adapts'),
    (['--online-rounds', '2'], '--online-rounds does not apply to --online-method none, which never adapts'),
    (['--online-method', 'tent', '--online-order', 'mixed', '--segmentation-validation-loaders', f'{CS},{CS}'],
     f'--online-order mixed needs two domains or more in --segmentation-validation-loaders, got {CS},{CS}'),
    (['--online-method', 'tent', '--segmentation-validation-loaders', f'{CS},nope'],
     "--segmentation-validation-loaders: unknown validation loader 'nope'"),
])
def test_bad_stream_flags_get_one_sentence_naming_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_evaluation_arguments(['--model-load', SOURCE, *flags])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f'evaluate.py: error: {message}')


@pytest.mark.parametrize('flags, message', [
    (['--methods', 'tent', '--online-rounds', '0'], '--online-rounds must be at least 1, got 0'),
    (['--methods', 'no_adaptation', '--online-order', 'mixed'],
     '--online-order applies to none of the methods in --methods (no online method)'),
    (['--methods', 'tent', '--online-order', 'mixed'],
     f'--online-order mixed needs two domains or more in --segmentation-validation-loaders, got {CS}'),
])
def test_bad_sweep_stream_flags_get_one_sentence_naming_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_sweep_arguments(['--model-load', SOURCE, *flags])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f'sweep.py: error: {message}')


@pytest.mark.slow  # sweep.main and evaluate.main over a stream: several seconds
def test_a_sweep_streams_its_online_runs_as_evaluate_does_and_reads_an_old_runs_csv(untrained_roots, capsys):
    stream = RESIZE + ['--segmentation-validation-loaders', f'{CS},{KITTI},{CS}', '--online-rounds', '2',
                       '--online-order', 'mixed']
    folder = sweep.main(JOB + stream + ['--model-name', 'swept', '--methods', 'bn_ema', '--seeds', '2'])
    by_hand = evaluate.main(JOB + stream + ['--model-name', 'by_hand', '--online-method', 'bn_ema', '--sys-seed', '2'])
    capsys.readouterr()
    with open(os.path.join(folder, 'runs.csv'), newline='') as file:
        rows = list(csv.DictReader(file))
    online = [row for row in rows if row['method'] == 'bn_ema']
    assert len(rows) == len(online) == 2
    assert [row['domain'] for row in online] == ['cityscapes', 'kitti_2015']  # the last round's domains
    assert {float(row['stream_miou']) for row in online} == {by_hand['online']['stream_miou']['none']}
    assert float(online[1]['miou']) == by_hand['domains']['kitti_2015']['none']['miou']
    assert '| stream 19 classes |' in open(os.path.join(folder, 'summary.md')).read()
    with open(os.path.join(folder, 'runs.csv'), 'w', newline='') as file:  # as a sweep wrote it before streams
        writer = csv.DictWriter(file, records.OLD_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    table = records.RunsTable(os.path.join(folder, 'runs.csv'), 2)
    assert len(table.finished()) == 1 and '| stream' not in report.summary_table(table.rows)
