"""Scoring a network on validation loaders (spec §8): each batch predicted (or adapted on online, then predicted),
counted into confusion matrices per domain and remap, with strips of the first images."""
import copy
import math

import torch
from tqdm import tqdm

from dataloader.transforms import to_network_input
from evaluation.metrics import REMAPS, ConfusionMatrix, remapped_label, remapped_prediction, upsample_labels
from evaluation.pictures import strip
from models.adaptation import build_online_method


def score_batch(predict, batch: dict, matrices: dict, runtime, skip_unused_class: bool, strips: list,
               num_images: int) -> None:
    """Count one batch into `matrices` ({remap: ConfusionMatrix}) and add strips until there are `num_images`.
    A function of its own so that the batch's device tensors (logits, labels) are freed before the next forward
    pass instead of living through it (a lower peak of memory)."""
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
            score_batch(model if online is None else online, batch, scores[domain], runtime, skip_unused_class,
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

    def reset(self) -> None:
        """The method back to its source state (a stream's domain and round resets)."""
        self.method.reset()

    def report(self) -> dict:
        """results.json's 'online': the method, its settings, milliseconds per image (null if unmeasured) and the
        method's diagnostics."""
        def number(value):
            return None if math.isnan(value) else value

        return {'method': self.method.name, 'settings': self.method.settings,
                'ms_per_image_adapting': number(self.method.ms_per_image - self.none.ms_per_image),
                'ms_per_image_none': number(self.none.ms_per_image), 'diagnostics': self.method.diagnostics()}

    def summary(self) -> str:
        """One log line with the method, its settings, its cost and its diagnostics."""
        def shown(value):
            return f'{value:.4g}' if isinstance(value, float) else str(value)

        settings = ', '.join(f'{name}={value}' for name, value in self.method.settings.items())
        diagnostics = ''.join(f'; {name.replace("_", " ")} {shown(value)}'
                              for name, value in self.method.diagnostics().items())
        return (f'online {self.method.name} ({settings}): {self.method.ms_per_image - self.none.ms_per_image:.1f} '
                f'ms per image adapting, {self.none.ms_per_image:.1f} for none{diagnostics}')
