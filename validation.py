"""Scoring a network on the segmentation validation loaders (spec §8): predictions, confusion matrices, strips of
image | prediction | label, and the reference's tables; shared by evaluate.py and train.py."""
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataloader import loaders
from dataloader.labels import CLASS_NAMES, TRAIN_ID_COLORS
from dataloader.metrics import REMAPS, ConfusionMatrix, remapped_label, remapped_prediction
from dataloader.transforms import to_network_input
from models.adaptation import build_online_method


def validation_loaders_from(opt, device: torch.device) -> list:
    """The --segmentation-validation-* loaders of a job's options, for a network on `device`."""
    return loaders.validation_loaders(
        opt.segmentation_validation_loaders.split(','), opt.segmentation_validation_batch_size,
        (opt.segmentation_validation_resize_height, opt.segmentation_validation_resize_width),
        opt.sys_num_workers, on_gpu=device.type == 'cuda')


def upsample_labels(prediction: torch.Tensor, size) -> torch.Tensor:
    """Nearest upsampling of an N×h×w map of class indices (argmax first: 1 channel instead of 20)."""
    if tuple(prediction.shape[-2:]) == tuple(size):
        return prediction
    return F.interpolate(prediction[:, None].float(), size=size, mode='nearest')[:, 0].long()


def colorize(train_ids: torch.Tensor) -> torch.Tensor:
    """N×H×W train ids → N×3×H×W uint8 colours (Cityscapes palette)."""
    palette = torch.as_tensor(TRAIN_ID_COLORS, device=train_ids.device)
    return palette[train_ids.long().clamp(0, 255)].permute(0, 3, 1, 2)  # long: a uint8 index would be a mask


def strip(image: torch.Tensor, prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """One 3×H×3W uint8 picture: image | prediction | label, at the network input size (uint8 as the PNG it
    becomes: the 20 strips that evaluate.py keeps by default take 90 MiB instead of 360 in float at 512x1024)."""
    label = upsample_labels(label[None], image.shape[-2:])[0]
    return torch.cat((image.to(prediction.device), colorize(prediction[None])[0], colorize(label[None])[0]), dim=2)


def _score_batch(predict, batch: dict, matrices: dict, runtime, skip_unused_class: bool, strips: list,
                num_images: int) -> None:
    """Count one batch into `matrices` ({remap: ConfusionMatrix}) and add strips until there are `num_images`.
    A function of its own so that the batch's device tensors (logits, labels) are freed before the next forward
    pass instead of living through it (VGG16 at 512x1024: 72 MiB of the evaluation's peak)."""
    device = runtime.device
    with runtime.autocast():
        logits = predict(to_network_input(batch['input'], device, runtime.memory_format))
    label = batch['label'].to(device, non_blocking=True).long()
    for remap, matrix in matrices.items():
        prediction = upsample_labels(remapped_prediction(logits, remap, skip_unused_class), label.shape[-2:])
        matrix.update(remapped_label(label, remap), prediction)
    for i in range(min(len(label), num_images - len(strips))):
        strips.append(strip(batch['input'][i], logits[i].argmax(0), label[i]).cpu())


@torch.no_grad()
def evaluate_model(model, validation_loaders, remaps, runtime, num_images=0, show_progress=True,
                   skip_unused_class=False, timer=None, online=None):
    """Run the model in eval mode over each validation loader, on runtime's device and in its precision.

    validation_loaders: (name, iterable of batch dicts) pairs, e.g. loaders or cached batches.
    skip_unused_class: never predict the unused class 19, so that every labelled pixel counts.
    timer: a runtime.LoopTimer that times the batches.
    online: an online method (models.adaptation) that adapts on each batch's images before it returns their logits;
    it may enable gradients itself. None: the model's own forward.
    Returns ({domain: {remap: ConfusionMatrix}}, {domain: [strip, ...]}) with at most
    `num_images` strips per domain.
    """
    device = runtime.device
    was_training = model.training
    model.eval()
    scores, strips = {}, {}
    for name, loader in validation_loaders:
        batches = loader if timer is None else timer.wrap(loader, count=lambda batch: len(batch['input']))
        for batch in tqdm(batches, desc=f'evaluate {name}', total=len(loader), leave=False,
                          disable=not show_progress):
            domain = batch['domain'][0]
            if domain not in scores:
                scores[domain] = {remap: ConfusionMatrix(len(REMAPS[remap]), device) for remap in remaps}
            _score_batch(model if online is None else online, batch, scores[domain], runtime, skip_unused_class,
                        strips.setdefault(domain, []), num_images)
    model.train(was_training)
    return scores, strips


class AgainstNone:
    """An online method for evaluate_model that times `none` on the same batches: each batch first goes through
    a copy of the model as it was given (eval mode, logits dropped), then through the method."""

    def __init__(self, method_name: str, model, reset: str | None = None, **settings):
        self.none = build_online_method('none', copy.deepcopy(model))
        self.method = build_online_method(method_name, model, reset=reset, **settings)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.none(inputs)
        return self.method(inputs)

    def report(self) -> dict:
        """results.json's 'online': the method, its settings, and milliseconds per image (null if unmeasured)."""
        def number(value):
            return None if math.isnan(value) else value

        return {'method': self.method.name, 'settings': self.method.settings,
                'ms_per_image_adapting': number(self.method.ms_per_image - self.none.ms_per_image),
                'ms_per_image_none': number(self.none.ms_per_image)}

    def summary(self) -> str:
        """One log line with the method, its settings and its cost."""
        settings = ', '.join(f'{name}={value}' for name, value in self.method.settings.items())
        return (f'online {self.method.name} ({settings}): {self.method.ms_per_image - self.none.ms_per_image:.1f} '
                f'ms per image adapting, {self.none.ms_per_image:.1f} for none')


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
