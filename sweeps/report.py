"""A sweep's runs in the paper's shape: summary.md (mean ± std of the mIoU over seeds, one row per method and
setting, one column per validation domain and remap) and plots of the mIoU against the number of batches and
against α_batch / α_layer where those vary."""
import io
import itertools
import os
import statistics

from experiment.folder import write_bytes, write_text
from sweeps.grid import LABELS, METHODS, NO_ADAPTATION
from sweeps.records import row_key

SUMMARY_FILE = 'summary.md'
BATCHES_PLOT = 'miou_vs_batches.png'
ALPHA_PLOT = 'miou_vs_{}.png'
GROUPING = ('method', 'num_batches', 'alpha_batch', 'alpha_layer')  # a row of the summary: all but the seed
STREAM = 'stream'  # the column of an online run's mIoU over its whole stream
SYMBOLS = {'num_batches': 'N', 'alpha_batch': 'α_batch', 'alpha_layer': 'α_layer'}


def _setting_order(setting: tuple) -> tuple:
    """Methods in METHODS order (others after, by name), then numerically by batches and alphas."""
    method, *numbers = setting
    rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return rank, method, *(float(number) if number else -1.0 for number in numbers)


def collect(rows: list[dict]) -> tuple[list[tuple], dict]:
    """The (domain, remap, classes) columns in order of appearance, then the (STREAM, remap, classes) ones of online
    runs, and {setting: {column: [mIoU per seed]}}."""
    columns, streams, scores, counted = [], [], {}, set()
    for row in rows:
        column = (row['domain'], row['remap'], row['classes'])
        if column not in columns:
            columns.append(column)
        setting = tuple(row[name] for name in GROUPING)
        if row['miou']:
            scores.setdefault(setting, {}).setdefault(column, []).append(float(row['miou']))
        stream = (STREAM, row['remap'], row['classes'])
        if row.get('stream_miou') and (row_key(row), stream) not in counted:  # every domain row of a run holds it
            counted.add((row_key(row), stream))
            streams += [stream] if stream not in streams else []
            scores.setdefault(setting, {}).setdefault(stream, []).append(float(row['stream_miou']))
    return columns + streams, dict(sorted(scores.items(), key=lambda item: _setting_order(item[0])))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float] | None) -> str:
    """'45.3 ± 0.4': the mIoU in %, mean ± std over the seeds; '45.3' for one seed, '–' for none."""
    if not values:
        return '–'
    mean, std = mean_std(values)
    return f'{100 * mean:.1f} ± {100 * std:.1f}' if len(values) > 1 else f'{100 * mean:.1f}'


def summary_table(rows: list[dict]) -> str:
    """Markdown: one row per method and setting, mIoU in % as mean ± std over the seeds, per domain and remap."""
    columns, scores = collect(rows)
    header = ['method', 'batches', 'α_batch', 'α_layer', 'seeds'] + [f'{d} {c} classes' for d, _, c in columns]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for (method, num_batches, alpha_batch, alpha_layer), by_column in scores.items():
        cells = [LABELS.get(method, method), num_batches, alpha_batch or '–', alpha_layer or '–',
                 str(max(map(len, by_column.values())))]
        cells += [_cell(by_column.get(column)) for column in columns]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_summary(folder: str, rows: list[dict], title: str) -> str:
    """summary.md in `folder` (atomically); returns its text."""
    streams = any(row.get('stream_miou') for row in rows)
    text = (f'# {title}\n\nmIoU in %, mean ± sample standard deviation over the seeds (`seeds`: how many); every '
            f'run, with per-class IoU and seconds, is in runs.csv.'
            + (' An online run\'s domain columns are its stream\'s last round; `stream` is its mIoU over the whole '
               'stream.' if streams else '') + f'\n\n{summary_table(rows)}\n')
    write_text(os.path.join(folder, SUMMARY_FILE), text)
    return text


def _series(scores: dict, column: tuple, x_name: str) -> dict:
    """{label: ([x], [mean], [std])} of the adapted settings that have x_name, sorted by x; against an alpha, only
    each method's largest number of batches."""
    largest = {}
    for method, num_batches, *_ in scores:
        largest[method] = max(largest.get(method, 0), int(num_batches))
    series = {}
    for setting, by_column in scores.items():
        named = dict(zip(GROUPING, setting))
        num_batches = int(named['num_batches'])
        if (column not in by_column or not named[x_name] or num_batches == 0
                or (x_name != 'num_batches' and num_batches != largest[named['method']])):
            continue
        label = LABELS.get(named['method'], named['method']) + ''.join(
            f', {SYMBOLS[name]}={named[name]}' for name in GROUPING[1:] if name != x_name and named[name])
        series.setdefault(label, []).append((float(named[x_name]), *mean_std(by_column[column])))
    return {label: tuple(zip(*sorted(points))) for label, points in series.items()}


def _plot(scores: dict, columns: list, x_name: str, path: str) -> None:
    """One panel per domain and remap: a line per series (mean) with a band (± std over the seeds); the baseline
    (dashed) and the online methods (dotted), which take no offline batches, as horizontal lines with their bands."""
    import matplotlib  # imported when needed: it adds most of a second to every start
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns) + 3, 4), dpi=100, squeeze=False)
    for axis, column in zip(axes[0], columns):
        colors = (f'C{index % 10}' for index in itertools.count())
        xticks = set()
        for label, (xs, means, stds) in _series(scores, column, x_name).items():
            color = next(colors)
            axis.plot(xs, means, marker='o', color=color, label=label)
            axis.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                              color=color, alpha=0.2)
            xticks.update(xs)
        for setting, by_column in scores.items():  # no offline batches: the baseline and the online methods
            if int(setting[1]) == 0 and column in by_column:
                mean, std = mean_std(by_column[column])
                color, style = ('gray', '--') if setting[0] == NO_ADAPTATION else (next(colors), ':')
                axis.axhline(mean, color=color, linestyle=style, label=LABELS.get(setting[0], setting[0]))
                axis.axhspan(mean - std, mean + std, color=color, alpha=0.15)
        if x_name == 'num_batches':  # 1, 2, 4, ... 50 spread evenly, labelled as they are
            axis.set_xscale('log')
            axis.set_xticks(sorted(xticks), [f'{x:g}' for x in sorted(xticks)])
            axis.minorticks_off()
        axis.set_xlabel('adaptation batches' if x_name == 'num_batches' else SYMBOLS[x_name])
        axis.set_ylabel('mIoU')
        axis.set_title(f'{column[0]}, {column[2]} classes')
        axis.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1))  # beside the last panel: no overlap
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format='png', bbox_inches='tight')
    write_bytes(path, png.getvalue())
    plt.close(figure)


def write_plots(folder: str, rows: list[dict]) -> list[str]:
    """mIoU against the number of batches, and against each alpha that takes several values; returns the paths."""
    columns, scores = collect(rows)
    adapted = [setting for setting in scores if int(setting[1]) > 0]
    if not adapted:
        return []
    paths = [os.path.join(folder, BATCHES_PLOT)]
    _plot(scores, columns, 'num_batches', paths[0])
    for alpha in ('alpha_batch', 'alpha_layer'):
        position = GROUPING.index(alpha)
        if len({setting[position] for setting in adapted if setting[position]}) > 1:
            paths.append(os.path.join(folder, ALPHA_PLOT.format(alpha)))
            _plot(scores, columns, alpha, paths[-1])
    return paths
