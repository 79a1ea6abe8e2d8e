#!/usr/bin/env python3
"""The whole UBNA story on synthetic data, on a CPU in minutes, through the real command lines.

1. make a labelled source domain (GTA-5 layout) and a shifted, unlabelled target domain (Cityscapes layout)
2. train.py: pre-train ResNet-18 from scratch on the source
3. evaluate.py: the source model on the source domain and on the target domain (no adaptation)
4. adapt.py + evaluate.py: target_only (AdaBN), UBNA and UBNA+ on 50 target batches
5. evaluate.py --online-method: every online method on the target validation stream, from the source model
6. the continual protocol: every online method over fog → night → rain → snow (ACDC's layout), 3 rounds
7. target mIoU against the number of adaptation batches (plot), and predictions before / after (image)
Output goes to demo_output/ (datasets, checkpoints, summary.md, miou_vs_batches.png, continual.png,
predictions.png).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from data_download.make_synthetic import make_synthetic  # noqa: E402
from dataloader import loaders  # noqa: E402
from dataloader.transforms import to_network_input  # noqa: E402
from models.adaptation import ONLINE_METHODS, adapt_batchnorm  # noqa: E402
from experiment.runtime import Runtime, seed_everything  # noqa: E402
from state_manager import StateManager  # noqa: E402
from evaluation.pictures import colorize  # noqa: E402
from evaluation.scoring import evaluate_model  # noqa: E402

CLASS = 'demo'
CPU = Runtime(torch.device('cpu'))
SOURCE_CHECKPOINT = f'{CLASS}/source/checkpoints/epoch_{{epochs}}'
# (name, mode, alpha_batch, alpha_layer): the paper's GTA→Cityscapes settings for UBNA and UBNA+
ADAPTATIONS = (('target_only', 'target_only', 0.0, 0.0), ('ubna', 'batch_shrinking', 0.08, 0.0),
               ('ubna_plus', 'layer_shrinking', 0.08, 0.03))
STREAM = tuple(f'acdc_{condition}_validation' for condition in ('fog', 'night', 'rain', 'snow'))
STREAM_ROUNDS = 3
CURVE_MODES = (('constant momentum 0.1', 'none', 0.0, 0.0), ('target_only (AdaBN)', 'target_only', 0.0, 0.0),
               ('UBNA', 'batch_shrinking', 0.08, 0.0), ('UBNA+', 'layer_shrinking', 0.08, 0.03))


def settings(quick: bool) -> dict:
    """Sizes of the demo; --quick is a smoke test of the same path."""
    if quick:
        return dict(num_source=12, num_target_train=12, num_target_val=6, epochs=1, batches_per_epoch=2,
                    batch=4, adaptation_batches=3, curve_points=(0, 1, 3), images=2, workers=0, stream_images=2)
    return dict(num_source=400, num_target_train=200, num_target_val=100, epochs=5, batches_per_epoch=90,
                batch=12, adaptation_batches=50, curve_points=(0, 1, 2, 4, 8, 16, 32, 50), images=4, workers=2,
                stream_images=5)


def run(script: str, args: list, dataset_root: str, checkpoint_root: str) -> float:
    """Run one of the framework's command lines; returns its wall time in seconds."""
    env = {**os.environ, 'UBNA_DIR_DATASET': dataset_root, 'UBNA_DIR_CHECKPOINT': checkpoint_root}
    command = [sys.executable, os.path.join(REPO, script), *map(str, args)]
    print('$ ' + ' '.join(command[1:]), flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if result.returncode:
        sys.exit(f'{script} failed with status {result.returncode}:\n{result.stdout}')
    return time.time() - started


def common_flags(s: dict) -> list:
    return ['--model-type', 'resnet', '--model-num-layers', '18', '--sys-num-workers', s['workers'],
            '--sys-best-effort-determinism', '--experiment-class', CLASS,
            '--segmentation-validation-resize-height', 64, '--segmentation-validation-resize-width', 128]


def adaptation_flags(s: dict) -> list:
    # cityscapes_sequence_train crops (h*320//512, w) from a (h*568//512, w*1092//1024) resize: h = 103 → 64 rows
    return ['--adaptation-training-loaders', 'cityscapes_sequence_train', '--adaptation-training-batch-size', 6,
            '--adaptation-num-batches', s['adaptation_batches'], '--adaptation-resize-height', 103,
            '--adaptation-resize-width', 128]


def miou(checkpoint_root: str, name: str) -> float:
    results = json.load(open(os.path.join(checkpoint_root, CLASS, name, 'results.json')))
    return results['domains']['cityscapes']['none']['miou']


def online_row(checkpoint_root: str, name: str) -> tuple:
    """(method, reset, target mIoU, ms per image adapting, ms per image for none) of an --online-method run."""
    results = json.load(open(os.path.join(checkpoint_root, CLASS, name, 'results.json')))
    online = results['online']
    return (online['method'], online['settings']['reset'], results['domains']['cityscapes']['none']['miou'],
            online['ms_per_image_adapting'], online['ms_per_image_none'])


def online_table(rows: list) -> list:
    """The markdown lines of the online methods' table (None: not measured)."""
    def ms(value):
        return '-' if value is None else f'{value:.1f}'

    table = ['| online method | reset | target mIoU | ms/image adapting | ms/image none |', '|---|---|---|---|---|']
    return table + [f'| {m} | {r} | {v:.3f} | {ms(a)} | {ms(n)} |' for m, r, v, a, n in rows]


def continual_rows(checkpoint_root: str, method: str) -> list:
    """(method, round, [mIoU per domain of the stream], stream mIoU or None) per round of a continual run."""
    online = json.load(open(os.path.join(checkpoint_root, CLASS, f'continual_{method}', 'results.json')))['online']
    cells = [cell for cell in online['stream'] if cell['remap'] == 'none']
    rounds = sorted({cell['round'] for cell in cells})
    return [(method, r, [cell['miou'] for cell in sorted(cells, key=lambda c: c['position']) if cell['round'] == r],
             online['stream_miou']['none'] if r == rounds[-1] else None) for r in rounds]


def continual_table(rows: list) -> list:
    """The markdown lines of the continual table: a row per method and round, the stream mIoU on its last."""
    domains = [name.split('_')[1] for name in STREAM]
    table = ['| online method | round | ' + ' | '.join(domains) + ' | mean | stream mIoU |',
             '|---|---|' + '---|' * (len(domains) + 2)]
    return table + [f'| {m} | {r} | ' + ' | '.join(f'{v:.3f}' for v in values) +
                    f' | {sum(values) / len(values):.3f} | {"" if whole is None else f"{whole:.3f}"} |'
                    for m, r, values, whole in rows]


def plot_continual(rows: list, path: str) -> None:
    """mIoU of each method along the stream: round after round, fog → night → rain → snow."""
    figure, axis = plt.subplots(figsize=(8, 4), dpi=100)
    for method in dict.fromkeys(m for m, *_ in rows):
        values = [v for m, _, domain_values, _ in rows if m == method for v in domain_values]
        axis.plot(range(1, len(values) + 1), values, marker='o', markersize=3, label=method)
    rounds = sorted({r for _, r, _, _ in rows})
    ticks = [f'{r}:{name.split("_")[1]}' for r in rounds for name in STREAM]
    axis.set_xticks(range(1, len(ticks) + 1), ticks, rotation=60, fontsize=7)
    axis.set_ylabel('mIoU')
    axis.set_title(f'Continual: {" → ".join(name.split("_")[1] for name in STREAM)}, {len(rounds)} rounds')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def load_source(s: dict) -> StateManager:
    state = StateManager('resnet', 18, 'checkpoint')
    state.load(SOURCE_CHECKPOINT.format(epochs=s['epochs']), weights_only=True)
    return state


def target_validation(s: dict):
    return loaders.validation_loaders(['cityscapes_validation'], 10, (64, 128), s['workers'], False)


def curve(s: dict) -> dict:
    """Target mIoU after k adaptation batches, for each schedule (in-process, same code as adapt.py)."""
    seed_everything(1)  # torch, python and the loaders: the curves repeat
    validation = target_validation(s)
    curves = {}
    for label, mode, alpha_batch, alpha_layer in CURVE_MODES:
        model = load_source(s).model
        points = {}

        def measure(k, model=model, points=points):
            if k + 1 in s['curve_points']:
                scores, _ = evaluate_model(model, validation, ['none'], CPU, show_progress=False)
                points[k + 1] = scores['cityscapes']['none'].miou()

        measure(-1)  # k = 0: the source model
        batches = loaders.adaptation_batches(['cityscapes_sequence_train'], 6, s['adaptation_batches'], (103, 128),
                                             (103, 128), s['workers'], 'cpu')
        adapt_batchnorm(model, batches, mode, 0.1, alpha_batch, alpha_layer, show_progress=False, after_batch=measure)
        curves[label] = points
        print(f'curve {label}: ' + ', '.join(f'{k}: {v:.3f}' for k, v in points.items()), flush=True)
    return curves


def plot_curves(curves: dict, path: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for label, points in curves.items():
        axis.plot(list(points), list(points.values()), marker='o', label=label)
    axis.set_xlabel('adaptation batches (6 target images each)')
    axis.set_ylabel('target mIoU')
    axis.set_title('Synthetic target domain: BatchNorm adaptation')
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


@torch.no_grad()
def predictions_figure(s: dict, path: str) -> None:
    """Rows: target image | no adaptation | UBNA | UBNA+ | label, for the first few validation images."""
    models = {'no adaptation': load_source(s).model}
    for title, name in (('UBNA', 'ubna'), ('UBNA+', 'ubna_plus')):
        state = StateManager('resnet', 18, 'checkpoint')
        state.load(f'{CLASS}/{name}/checkpoints/batch_{s["adaptation_batches"]}', weights_only=True)
        models[title] = state.model
    batch = next(iter(target_validation(s)[0][1]))
    n = s['images']
    columns = {'target image': batch['input'][:n]}
    inputs = to_network_input(batch['input'][:n], 'cpu')
    columns.update((title, colorize(model.eval()(inputs).argmax(1))) for title, model in models.items())
    columns['label'] = colorize(batch['label'][:n])
    figure, axes = plt.subplots(n, len(columns), figsize=(2.4 * len(columns), 1.35 * n), dpi=100, squeeze=False)
    for column, (title, pictures) in enumerate(columns.items()):
        axes[0, column].set_title(title, fontsize=10)
        for row in range(n):
            axes[row, column].imshow(pictures[row].permute(1, 2, 0).numpy(), interpolation='nearest')
            axes[row, column].axis('off')
    figure.tight_layout(pad=0.3)
    figure.savefig(path)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.path.join(REPO, 'demo_output'))
    parser.add_argument('--quick', action='store_true', help='a tiny smoke run of the same steps')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'),
                        help='--sys-precision of adapt.py and evaluate.py (the source model trains in fp32, so that '
                             'a comparison sees adaptation and evaluation alone; the curves stay fp32)')
    args = parser.parse_args()
    s = {**settings(args.quick), 'precision': args.precision}
    target_root, source_root = os.path.join(args.out, 'datasets'), os.path.join(args.out, 'source_domain')
    checkpoint_root = os.path.join(args.out, 'checkpoints')
    os.environ.update(UBNA_DIR_DATASET=target_root, UBNA_DIR_CHECKPOINT=checkpoint_root)
    rows, started = [], time.time()

    t = time.time()
    make_synthetic(target_root, 64, 128, s['num_source'], s['num_target_train'], s['num_target_val'], seed=0)
    make_synthetic(source_root, 64, 128, 1, 1, s['num_target_val'], seed=1, shifted=False)
    stream_root = os.path.join(args.out, 'stream_domains')  # the four conditions of a few target images
    make_synthetic(stream_root, 64, 128, 1, 1, s['stream_images'], seed=2)
    print(f'synthetic data written in {time.time() - t:.1f} s', flush=True)

    seconds = run('train.py', common_flags(s) + [
        '--model-name', 'source', '--train-weights-init', 'scratch', '--segmentation-training-loaders', 'gta5_train',
        '--segmentation-training-batch-size', s['batch'], '--segmentation-resize-height', 96,
        '--segmentation-resize-width', 192, '--segmentation-crop-height', 64, '--segmentation-crop-width', 128,
        '--train-learning-rate', 1e-3, '--train-scheduler-step-size', 100, '--train-num-epochs', s['epochs'],
        '--train-batches-per-epoch', s['batches_per_epoch'], '--train-checkpoint-frequency', s['epochs'],
        '--train-tb-frequency', 50, '--train-print-frequency', 50], target_root, checkpoint_root)
    source = SOURCE_CHECKPOINT.format(epochs=s['epochs'])
    evaluate = common_flags(s) + ['--segmentation-eval-num-images', s['images'], '--sys-precision', s['precision']]
    t = run('evaluate.py', evaluate + ['--model-name', 'eval_source_on_source', '--model-load', source],
            source_root, checkpoint_root)
    rows.append(('source model', 'source', miou(checkpoint_root, 'eval_source_on_source'), seconds, t))
    t = run('evaluate.py', evaluate + ['--model-name', 'eval_no_adaptation', '--model-load', source],
            target_root, checkpoint_root)
    rows.append(('no adaptation', 'target', miou(checkpoint_root, 'eval_no_adaptation'), 0.0, t))
    for name, mode, alpha_batch, alpha_layer in ADAPTATIONS:
        adapt_seconds = run('adapt.py', common_flags(s) + adaptation_flags(s) + ['--sys-precision', s['precision'],
            '--model-name', name, '--model-load', source, '--adaptation-mode-sequential', mode,
            '--adaptation-alpha-batch', alpha_batch, '--adaptation-alpha-layer', alpha_layer],
            target_root, checkpoint_root)
        t = run('evaluate.py', evaluate + ['--model-name', f'eval_{name}', '--model-load',
                                           f'{CLASS}/{name}/checkpoints/batch_{s["adaptation_batches"]}'],
                target_root, checkpoint_root)
        rows.append((name.replace('_plus', '+').replace('ubna', 'UBNA'), 'target',
                     miou(checkpoint_root, f'eval_{name}'), adapt_seconds, t))

    online_rows = [('none', '-', miou(checkpoint_root, 'eval_no_adaptation'), 0.0, None)]
    for method in (name for name in ONLINE_METHODS if name != 'none'):  # each streams the target images once
        run('evaluate.py', evaluate + ['--model-name', f'online_{method}', '--model-load', source,
                                       '--online-method', method], target_root, checkpoint_root)
        online_rows.append(online_row(checkpoint_root, f'online_{method}'))

    continual = []
    for method in (name for name in ONLINE_METHODS if name != 'none'):  # each over the stream, 3 rounds, no reset
        run('evaluate.py', evaluate + ['--model-name', f'continual_{method}', '--model-load', source,
                                       '--online-method', method, '--segmentation-validation-loaders',
                                       ','.join(STREAM), '--online-rounds', STREAM_ROUNDS], stream_root,
            checkpoint_root)
        continual += continual_rows(checkpoint_root, method)
    plot_continual(continual, os.path.join(args.out, 'continual.png'))

    plot_curves(curve(s), os.path.join(args.out, 'miou_vs_batches.png'))
    predictions_figure(s, os.path.join(args.out, 'predictions.png'))

    table = ['| model | evaluated on | mIoU | train / adapt s | evaluate s |', '|---|---|---|---|---|']
    table += [f'| {m} | {d} | {v:.3f} | {a:.0f} | {e:.0f} |' for m, d, v, a, e in rows]
    table += [''] + online_table(online_rows)
    table += ['', f'Continual: {" → ".join(STREAM)}, {STREAM_ROUNDS} rounds, batch 1', ''] + continual_table(continual)
    summary = '\n'.join(table) + f'\n\ntotal {time.time() - started:.0f} s, {torch.get_num_threads()} threads\n'
    with open(os.path.join(args.out, 'summary.md'), 'w') as file:
        file.write(summary)
    print('\n' + summary)
    print('figures: ' + ', '.join(os.path.join(args.out, name)
                                  for name in ('miou_vs_batches.png', 'continual.png', 'predictions.png')))


if __name__ == '__main__':
    main()
