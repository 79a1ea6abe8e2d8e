"""rotta (Yuan et al. CVPR 2023, BIT-DA/RoTTA): robust BatchNorm, a category-balanced memory and a mean teacher.
The teacher predicts every image in eval mode; the image enters the memory under its category (the class that most
of its pixels are predicted as) with its uncertainty (the mean per-pixel entropy of that prediction). Every
`update_frequency` images the student trains on strongly augmented copies of the memory's images against the
teacher's probabilities on the images themselves, each image weighted by its age a (in memory sizes) as
e^−a / (1 + e^−a); then teacher ← ema·teacher + (1 − ema)·student on the trained parameters. In those update passes
each adapted layer is a robust BatchNorm: μ ← (1 − α)·μ + α·μ_batch and σ² ← (1 − α)·σ² + α·σ²_batch (biased), then
it normalises with the updated statistics, the gradient flowing through the batch's share.

The authors' code fixes α = 0.05, the teacher's weight 1 − ν = 0.999, a memory of 64, an update every 64 images, Adam
(lr 1e-3, betas (0.9, 0.999)) on the normalisation layers' scale and shift, and the memory's rules: at most
capacity / classes images per category; a full category (or, with the memory full, the most occupied ones) gives up
its item of highest score 1 / (1 + e^(−age / capacity)) + entropy / ln(classes) if that beats the newcomer's.
Its strong augmentation also turns, shifts and scales the image; for per-pixel targets we keep what leaves the pixels
in place (contrast, brightness, blur, noise) and a left-right flip that is undone on the student's output."""
import copy
import math

import torch
import torch.nn.functional as F

from models.adaptation.base import (OnlineMethod, Setting, below_one, in_unit_interval, logits_of, positive,
                                    whole_at_least_one)
from models.adaptation.cotta import probabilities, twin_layers
from models.adaptation.layers import class_logits, restore_layer_state
from models.adaptation.registry import register
from models.adaptation.tent import gradients_only_for, pixel_entropies


class Memory:
    """RoTTA's category-balanced memory with timeliness and uncertainty (its CSTU); an item is [image, uncertainty,
    age], kept per category."""

    def __init__(self, capacity: int, classes: int):
        self.capacity, self.classes = capacity, classes
        self.items = [[] for _ in range(classes)]

    def score(self, age: int, uncertainty: float) -> float:
        """Higher is evicted first: older and less certain."""
        return 1 / (1 + math.exp(-age / self.capacity)) + uncertainty / math.log(self.classes)

    def add(self, image: torch.Tensor, category: int, uncertainty: float) -> None:
        if self.make_room(category, self.score(0, uncertainty)):
            self.items[category].append([image, uncertainty, 0])
        for items in self.items:
            for item in items:
                item[2] += 1

    def make_room(self, category: int, score: float) -> bool:
        """Whether the newcomer may enter, after evicting an item for it where the memory asks for that."""
        counts = [len(items) for items in self.items]
        if counts[category] < self.capacity / self.classes:
            if sum(counts) < self.capacity:
                return True
            candidates = [c for c, count in enumerate(counts) if count == max(counts)]
        else:
            candidates = [category]
        worst = None
        for c in candidates:
            for index, (_, uncertainty, age) in enumerate(self.items[c]):
                if worst is None or self.score(age, uncertainty) >= worst[0]:
                    worst = (self.score(age, uncertainty), c, index)
        if worst is None:
            return True
        if worst[0] > score:
            self.items[worst[1]].pop(worst[2])
            return True
        return False

    def contents(self) -> list:
        """(image, age in memory sizes) of every item."""
        return [(image, age / self.capacity) for items in self.items for image, _, age in items]


def strong_augmentation(images: torch.Tensor) -> tuple:
    """Per image: contrast, brightness, a 5×5 Gaussian blur and noise, then a flip with probability ½; returns the
    copies and the flip mask. The draws come from torch's global generator."""
    n = len(images)
    draw = lambda low, high: torch.empty(n, 1, 1, 1, device=images.device).uniform_(low, high)
    spread, mean = torch.std_mean(images, dim=(1, 2, 3), keepdim=True)
    x = (images - mean) * draw(0.7, 1.3) + mean + draw(-0.2, 0.2) * spread
    sigma = draw(0.001, 0.5).view(n, 1, 1)
    offsets = torch.arange(-2, 3, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-offsets.view(1, 1, 5) ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # n×1×5, separable
    channels = x.shape[1]
    rows = kernel.repeat_interleave(channels, 0).unsqueeze(2)  # (n·C)×1×1×5
    x = F.conv2d(F.pad(x.reshape(1, -1, *x.shape[-2:]), (2, 2, 0, 0), mode='replicate'), rows, groups=n * channels)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode='replicate'), rows.transpose(2, 3), groups=n * channels)
    x = x.view_as(images) + 0.02 * spread * torch.randn_like(images)
    flips = torch.rand(n, device=images.device) < 0.5
    return torch.where(flips.view(n, 1, 1, 1), x.flip(-1), x), flips


@register
class Rotta(OnlineMethod):
    """Robust test-time adaptation: robust BatchNorm, a category-balanced memory, a timeliness-weighted teacher."""
    name = 'rotta'
    SETTINGS = {'learning_rate': Setting(1e-3, positive, 'Adam learning rate'),
                'momentum': Setting(0.05, in_unit_interval, 'α of robust BatchNorm, μ ← (1 − α)·μ + α·μ_batch'),
                'ema': Setting(0.999, below_one, 'teacher ← ema·teacher + (1 − ema)·student, 1 − ν'),
                'memory_size': Setting(64, whole_at_least_one, 'images in the memory'),
                'update_frequency': Setting(64, whole_at_least_one, 'images between two updates')}

    def configure(self) -> None:
        super().configure()
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher_layers = twin_layers(self.model, self.teacher, self.layers)
        self.parameters = [p for _, layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        self.teacher_parameters = [p for _, layer in self.teacher_layers for p in (layer.weight, layer.bias)
                                   if p is not None]
        if not self.parameters:
            raise ValueError('rotta needs BatchNorm layers with affine parameters')
        self.optimizer = self.new_optimizer()
        self.memory = None  # its number of categories comes with the first prediction
        self.updates = 0  # along the whole stream, for reports

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters, lr=self.settings['learning_rate'], betas=(0.9, 0.999))

    def reset(self) -> None:
        super().reset()
        restore_layer_state(self.teacher_layers, self.source_state)
        self.optimizer = self.new_optimizer()
        self.memory = None

    def robust_batchnorm(self, layer, inputs, output) -> torch.Tensor:
        """Forward hook: the layer's output replaced by normalisation with its updated running statistics."""
        x, alpha = inputs[0], self.settings['momentum']
        variance, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
        mean = (1 - alpha) * layer.running_mean + alpha * mean
        variance = (1 - alpha) * layer.running_var + alpha * variance
        with torch.no_grad():
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(variance)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - mean.view(shape)) * torch.rsqrt(variance.view(shape) + layer.eps)
        return x * layer.weight.view(shape) + layer.bias.view(shape) if layer.affine else x

    def robust_pass(self, model, layers, images) -> torch.Tensor:
        """The model's class probabilities with robust BatchNorm in `layers` (eval mode otherwise)."""
        hooks = [layer.register_forward_hook(self.robust_batchnorm) for _, layer in layers]
        try:
            return class_logits(model, logits_of(model(images))).float()
        finally:
            for hook in hooks:
                hook.remove()

    def diagnostics(self) -> dict:
        """How many updates (student steps on the memory) the stream gave."""
        return {'updates': self.updates}

    def update(self) -> None:
        """One Adam step of the student on the memory, then the teacher's update."""
        self.updates += 1
        contents = self.memory.contents()
        by_size = {}
        for image, age in contents:  # images of one size share a pass (a stream may change sizes)
            by_size.setdefault(tuple(image.shape), []).append((image, age))
        with torch.enable_grad(), gradients_only_for(self.model, self.parameters):
            for group in by_size.values():
                images = torch.stack([image for image, _ in group])
                ages = torch.tensor([age for _, age in group], device=images.device)
                with torch.no_grad():
                    target = self.robust_pass(self.teacher, self.teacher_layers, images).softmax(1)
                augmented, flips = strong_augmentation(images)
                log_p = self.robust_pass(self.model, self.layers, augmented).log_softmax(1)
                log_p = torch.where(flips.view(-1, 1, 1, 1), log_p.flip(-1), log_p)
                loss = -(target * log_p).sum(1).flatten(1).mean(1)  # per image
                ((loss * torch.sigmoid(-ages)).sum() / len(contents)).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            ema = self.settings['ema']
            for teacher, student in zip(self.teacher_parameters, self.parameters):
                teacher.mul_(ema).add_(student, alpha=1 - ema)

    def adapt_and_predict(self, images):
        with torch.no_grad():
            logits = logits_of(self.teacher(images))
            classes = class_logits(self.teacher, logits).float()
        if self.memory is None:
            self.memory = Memory(self.settings['memory_size'], classes.shape[1])
        categories = [int(torch.bincount(labels.flatten(), minlength=classes.shape[1]).argmax())  # most pixels
                      for labels in classes.argmax(1)]
        uncertainties = pixel_entropies(classes).flatten(1).mean(1).tolist()
        updated = False
        for i, (category, uncertainty) in enumerate(zip(categories, uncertainties)):
            self.memory.add(images[i].detach(), category, uncertainty)
            if (self.images_seen + i + 1) % self.settings['update_frequency'] == 0:
                self.update()
                updated = True
        if updated:  # predict with the teacher as it is after the update
            with torch.no_grad():
                logits = logits_of(self.teacher(images))
        return logits
