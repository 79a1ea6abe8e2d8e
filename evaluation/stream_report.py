"""What a stream reports: the papers' table (rounds × domains of mIoU, the mean per round, the stream's mIoU),
results.json's 'online' entries, and stream.png (each cell's mIoU over the rounds)."""
import math
import os

from experiment.folder import write_atomically

PLOT_FILE = 'stream.png'


def _number(value: float):
    return None if math.isnan(value) else value


def _columns(plan) -> list[str]:
    """A heading per position of the list: '1 cityscapes_validation', ..."""
    return [f'{position} {name}' for position, name in enumerate(plan.names, 1)]


def _miou_grid(scores, remap: str) -> list[list[float]]:
    """mIoU per round (rows) and position (columns)."""
    width = len(scores.plan.names)
    values = [matrices[remap].miou() for matrices in scores.cells]
    return [values[start:start + width] for start in range(0, len(values), width)]


def stream_table(scores) -> str:
    """Per remap: rounds × positions of mIoU with the mean per round, then the mIoU of the whole stream."""
    whole = scores.whole()
    blocks = []
    for remap, matrix in whole.items():
        columns = _columns(scores.plan)
        lines = [f'stream, remap {remap}: mIoU per round and domain',
                 'round | ' + ' | '.join(f'{column:>{max(len(column), 6)}}' for column in columns) + ' |   mean']
        for round_number, row in enumerate(_miou_grid(scores, remap), 1):
            cells = ' | '.join(f'{value:>{max(len(column), 6)}.3f}' for column, value in zip(columns, row))
            lines.append(f'{round_number:5} | {cells} | {sum(row) / len(row):6.3f}')
        lines.append(f'stream mIoU (one confusion matrix over every cell): {matrix.miou():.3f}')
        blocks.append('\n'.join(lines))
    return '\n\n'.join(blocks)


def stream_results(scores) -> dict:
    """results.json's 'stream' (a cell per round, position and remap) and 'stream_miou' ({remap: mIoU})."""
    entries = []
    for cell, matrices, images in zip(scores.plan.cells, scores.cells, scores.images):
        for remap, matrix in matrices.items():
            entries.append({'round': cell.round, 'position': cell.position, 'domain': cell.name, 'remap': remap,
                            'miou': _number(matrix.miou()), 'mean_accuracy': _number(matrix.mean_accuracy()),
                            'images': images})
    return {'stream': entries, 'stream_miou': {remap: _number(m.miou()) for remap, m in scores.whole().items()}}


def write_stream_plot(folder: str, scores) -> str:
    """stream.png in `folder`: one panel per remap, a line per position of the list over the rounds; its path."""
    import matplotlib  # imported when needed: it adds most of a second to every start
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt
    remaps = list(scores.whole())
    figure, axes = plt.subplots(1, len(remaps), figsize=(6 * len(remaps) + 3, 4), dpi=100, squeeze=False)
    for axis, remap in zip(axes[0], remaps):
        grid = _miou_grid(scores, remap)
        rounds = range(1, len(grid) + 1)
        for position, column in enumerate(_columns(scores.plan)):
            axis.plot(rounds, [row[position] for row in grid], marker='o', label=column)
        axis.set_xticks(list(rounds))
        axis.set_xlabel('round')
        axis.set_ylabel('mIoU')
        axis.set_title(f'remap {remap}')
        axis.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    path = os.path.join(folder, PLOT_FILE)
    write_atomically(path, lambda temporary: figure.savefig(temporary, format='png', bbox_inches='tight'))
    plt.close(figure)
    return path
