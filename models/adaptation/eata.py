"""eta and eata (Niu et al. ICML 2022, mr-eggplant/EATA): entropy minimisation on the normalisation affine
parameters (BatchNorm on test-batch statistics, as tent) over the samples that pass two filters. A sample is reliable
if its entropy H < E0; it is kept if it is also not redundant: |cos(p, m)| < ε between its softmax p and m, the
running mean of the kept softmaxes (m ← 0.9·m + 0.1·mean of the batch's kept p; the first batch sets m and is only
filtered by entropy). Each kept sample's entropy is weighted by exp(E0 − H) (no gradient through the weight) and the
loss is their mean; no kept sample, no step. eata adds β·Σ F·(θ − θ0)² with F the diagonal Fisher information of
the source parameters θ0, from the model's own pseudo-labels (the argmax), as its code computes it.

The authors' code fixes: E0 = 0.4·ln C, ε = 0.05, the mean's momentum 0.1, β = 2000, F over 2,000 clean images (the
mean over batches of the squared gradient of the cross-entropy), SGD with lr 2.5e-4 and momentum 0.9, continual.
Here a sample is a pixel (docs/methods.md says why) and F comes from `fisher_batches` (evaluate.py
--online-fisher-loaders); without them from the first batch of the stream, before its step."""
import math

import torch
import torch.nn.functional as F

from models.adaptation.base import Setting, in_unit_interval, non_negative, positive
from models.adaptation.registry import register
from models.adaptation.tent import AffineMethod, pixel_entropies

RUNNING_MEAN_MOMENTUM = 0.1


def pixel_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The softmax of every pixel as a row: (N·H·W)×C for N×C×H×W logits."""
    return logits.float().softmax(1).movedim(1, -1).reshape(-1, logits.shape[1])


def mean_fraction(fractions: list) -> float | None:
    """The mean of per-batch fractions; None before the first batch."""
    return sum(fractions) / len(fractions) if fractions else None


def entropy_margin(fraction: float, classes: int) -> float:
    """E0 = fraction · ln C."""
    return fraction * math.log(classes)


def eata_loss(logits: torch.Tensor, margin: float, redundancy: float, running_mean: torch.Tensor | None) -> tuple:
    """EATA's loss over the pixels of N×C×H×W logits: (loss or None if no pixel is kept, the kept mask over the
    N·H·W pixels, the weights exp(E0 − H) of every pixel, the new running mean of the kept softmaxes)."""
    entropies = pixel_entropies(logits).reshape(-1)
    probabilities = pixel_probabilities(logits).detach()
    kept = entropies < margin
    if running_mean is not None:
        kept &= F.cosine_similarity(probabilities, running_mean[None], dim=1).abs() < redundancy
    weights = torch.exp(margin - entropies.detach())
    if not kept.any():  # one wait for the device decides both
        return None, kept, weights, running_mean
    batch_mean = probabilities[kept].mean(0)
    new_mean = batch_mean if running_mean is None else \
        (1 - RUNNING_MEAN_MOMENTUM) * running_mean + RUNNING_MEAN_MOMENTUM * batch_mean
    return (entropies * weights)[kept].mean(), kept, weights, new_mean


@register
class Eta(AffineMethod):
    """Entropy minimisation over reliable, non-redundant pixels, each weighted by exp(E0 − H)."""
    name = 'eta'
    SETTINGS = {'learning_rate': Setting(2.5e-4, positive, 'SGD learning rate (momentum 0.9)'),
                'entropy_margin': Setting(0.4, in_unit_interval, 'E0 as a fraction of ln C: reliable if H < E0'),
                'redundancy_margin': Setting(0.05, in_unit_interval,
                                             'ε: kept if |cos| to the running mean of kept softmaxes < ε')}

    def configure(self) -> None:
        super().configure()
        self.running_mean = None  # of the kept softmaxes
        self.kept_fraction = []  # per batch, for reports and tests

    def reset(self) -> None:
        super().reset()
        self.running_mean = None

    def diagnostics(self) -> dict:
        """The mean fraction of a batch's pixels that passed both filters, i.e. that were trained on."""
        return {'kept_pixel_fraction': mean_fraction(self.kept_fraction)}

    def penalty(self) -> torch.Tensor | None:
        """A term added to the loss (none for eta)."""
        return None

    def adapt_and_predict(self, images):
        with self.adapting():
            logits = self.class_logits(images)
            margin = entropy_margin(self.settings['entropy_margin'], logits.shape[1])
            loss, kept, _, self.running_mean = eata_loss(logits, margin, self.settings['redundancy_margin'],
                                                         self.running_mean)
            self.kept_fraction.append(kept.float().mean().item())
            if loss is not None:
                penalty = self.penalty()
                (loss if penalty is None else loss + penalty).backward()
        if loss is not None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.predict_adapted(images)


@register
class Eata(Eta):
    """eta plus the Fisher penalty β·Σ F·(θ − θ0)² that holds important parameters near the source."""
    name = 'eata'
    SETTINGS = Eta.SETTINGS | {'fisher_weight': Setting(2000.0, non_negative, 'β of the Fisher penalty')}

    def __init__(self, model, layers=None, reset=None, fisher_batches=None, **settings):
        self.fisher_batches = fisher_batches  # network inputs; their labels are never needed
        super().__init__(model, layers, reset, **settings)

    def configure(self) -> None:
        super().configure()
        self.anchors = [p.detach().clone() for p in self.parameters]
        self.fisher = None if self.fisher_batches is None else self.fisher_information(self.fisher_batches)
        self.fisher_batches = None

    def fisher_information(self, batches) -> list:
        """Per parameter, the mean over batches of the squared gradient of the cross-entropy against the model's
        own argmax, with the BatchNorm layers on batch statistics."""
        sums, count = [torch.zeros_like(p) for p in self.parameters], 0
        for images in batches:
            with self.adapting():
                logits = self.class_logits(images)
                F.cross_entropy(logits.float(), logits.argmax(1)).backward()
            for total, p in zip(sums, self.parameters):
                total.add_(p.grad.float().square() if p.grad is not None else 0)
            self.optimizer.zero_grad(set_to_none=True)
            count += 1
        if not count:
            raise ValueError('eata got no Fisher batches: its fisher_batches (--online-fisher-loaders) hold no image')
        return [total / count for total in sums]

    def penalty(self) -> torch.Tensor:
        return self.settings['fisher_weight'] * sum(
            (f * (p - anchor).square()).sum() for f, p, anchor in zip(self.fisher, self.parameters, self.anchors))

    def adapt_and_predict(self, images):
        if self.fisher is None:  # no source data: the first test batch, before any step
            self.fisher = self.fisher_information([images])
        return super().adapt_and_predict(images)
