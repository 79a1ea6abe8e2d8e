"""The reference's tables of a scoring (summary and per class) and results.json's content."""
import numpy as np

from dataloader.labels import CLASS_NAMES
from evaluation.metrics import REMAPS


def summary_table(eval_name: str, scores) -> str:
    """The reference's table: eval_name | domain | remap | miou | accuracy."""
    lines = ['eval_name    | domain               | remap    |     miou | accuracy']
    for domain, matrices in scores.items():
        for remap, matrix in matrices.items():
            lines.append(f'{eval_name:12} | {domain:20} | {remap:8} | {matrix.miou():8.3f} | '
                         f'{matrix.mean_accuracy():8.3f}')
    return '\n'.join(lines)


def class_table(scores) -> str:
    """IoU per class (rows) for every domain and remap (columns); '-' where a remap drops the class."""
    columns = [(domain, remap) for domain, matrices in scores.items() for remap in matrices]
    header = f'{"class":14}' + ''.join(f' | {f"{d}/{r}":>22}' for d, r in columns)
    lines = [header]
    for train_id, class_name in enumerate(CLASS_NAMES):
        cells = []
        for domain, remap in columns:
            kept = REMAPS[remap]
            iou = scores[domain][remap].iou()[kept.index(train_id)].item() if train_id in kept else None
            cells.append(f' | {"-" if iou is None else f"{iou:.3f}":>22}')
        lines.append(f'{class_name:14}' + ''.join(cells))
    return '\n'.join(lines)


def results_dict(eval_name: str, scores) -> dict:
    """Everything measured, per domain and remap, with IoU and accuracy per class (null = NaN)."""
    def number(value):
        return None if np.isnan(value) else value

    results = {'eval_name': eval_name, 'domains': {}}
    for domain, matrices in scores.items():
        for remap, matrix in matrices.items():
            names = [CLASS_NAMES[i] for i in REMAPS[remap]]
            results['domains'].setdefault(domain, {})[remap] = {
                'miou': number(matrix.miou()),
                'mean_accuracy': number(matrix.mean_accuracy()),
                'iou': {n: number(v) for n, v in zip(names, matrix.iou().tolist())},
                'accuracy': {n: number(v) for n, v in zip(names, matrix.class_accuracy().tolist())},
                'confusion_matrix': matrix.matrix.tolist(),
            }
    return results
