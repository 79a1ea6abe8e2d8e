"""cotta (Wang et al. CVPR 2022, qinenergy/cotta): a student learns from an exponential-moving-average teacher.
Per pixel, where a frozen copy of the source model (the anchor) is at least `anchor_threshold` confident, the
target is the teacher's plain prediction; elsewhere it is the teacher's prediction averaged over the image at scales
0.5 … 2.0, each with its left-right flip (14 views). One Adam step on every parameter of the student lowers the
cross-entropy to the teacher's probabilities; then teacher ← ema·teacher + (1 − ema)·student, and each weight of the
student returns to its source value with probability `restore_probability`. The batch is predicted by the teacher.

The authors' segmentation setup fixes the scales and flips, the threshold 0.69, ema 0.999, restore 0.01 and Adam on
every parameter; as in their code (and the port mariodoebler/test-time-adaptation) the adapted BatchNorm layers of
student, teacher and anchor normalise with the batch's statistics and their running statistics stay. Continual."""
import copy

import torch
import torch.nn.functional as F

from models.adaptation.base import OnlineMethod, Setting, below_one, closed_unit_interval, logits_of, positive
from models.adaptation.layers import class_logits, training_mode
from models.adaptation.registry import register
from models.adaptation.tent import gradients_only_for

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
STRIDE, SMALLEST = 32, 64  # a UBNA network takes sides that are multiples of 32 and at least 64


def scaled_side(side: int, scale: float) -> int:
    """side·scale rounded to a multiple of STRIDE, at least SMALLEST."""
    return max(SMALLEST, STRIDE * round(side * scale / STRIDE))


def twin_layers(model: torch.nn.Module, twin: torch.nn.Module, layers: list) -> list:
    """The (name, layer) pairs of `twin` (a deep copy of `model`) that stand where `layers` stand in `model`."""
    paths = {id(module): path for path, module in model.named_modules()}
    modules = dict(twin.named_modules())
    return [(name, modules[paths[id(layer)]]) for name, layer in layers]


def probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax over the network's classes."""
    return class_logits(model, logits_of(model(images))).float().softmax(1)


@register
class Cotta(OnlineMethod):
    """Continual test-time adaptation: a mean teacher, anchor-gated augmentation averaging and stochastic restore."""
    name = 'cotta'
    SETTINGS = {'learning_rate': Setting(1.7e-5, positive, 'Adam learning rate of every student parameter'),
                'ema': Setting(0.999, below_one, 'teacher ← ema·teacher + (1 − ema)·student'),
                'restore_probability': Setting(0.01, closed_unit_interval,
                                               'chance that a weight returns to its source value after each step'),
                'anchor_threshold': Setting(0.69, closed_unit_interval,
                                            'anchor confidence below which a pixel takes the augmented average')}

    def configure(self) -> None:
        super().configure()
        self.teacher = copy.deepcopy(self.model)
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher.requires_grad_(False)
        self.teacher_layers = twin_layers(self.model, self.teacher, self.layers)
        self.anchor_layers = twin_layers(self.model, self.anchor, self.layers)
        self.parameters = [p for p in self.model.parameters() if p.is_floating_point()]
        self.teacher_parameters = [p for p in self.teacher.parameters() if p.is_floating_point()]
        self.source_parameters = [p for p in self.anchor.parameters() if p.is_floating_point()]
        self.optimizer = self.new_optimizer()

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters, lr=self.settings['learning_rate'], betas=(0.9, 0.999))

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            for student, teacher, source in zip(self.parameters, self.teacher_parameters, self.source_parameters):
                student.copy_(source)
                teacher.copy_(source)
        self.optimizer = self.new_optimizer()

    def teacher_target(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's probabilities, the augmented average where the anchor is not confident."""
        with torch.no_grad(), training_mode(self.teacher, self.teacher_layers, track=False), \
                training_mode(self.anchor, self.anchor_layers, track=False):
            plain = probabilities(self.teacher, images)
            unsure = probabilities(self.anchor, images).amax(1, keepdim=True) < self.settings['anchor_threshold']
            if not unsure.any():  # the 14 views only when some pixel needs them
                return plain
            return torch.where(unsure, self.augmented_average(images, plain.shape[-2:]), plain)

    def augmented_average(self, images: torch.Tensor, size) -> torch.Tensor:
        """The teacher's probabilities averaged over SCALES × (plain, flipped), at `size`: one pass per scale."""
        height, width = images.shape[-2:]
        total = 0
        for scale in SCALES:
            scaled = (scaled_side(height, scale), scaled_side(width, scale))
            views = images if scaled == (height, width) else F.interpolate(images, scaled, mode='bilinear',
                                                                           align_corners=False)
            # a scale and its flip share one pass: the batch statistics of both are those of that scale
            plain, flipped = probabilities(self.teacher, torch.cat([views, views.flip(-1)])).chunk(2)
            both = torch.cat([plain, flipped.flip(-1)])
            if both.shape[-2:] != size:
                both = F.interpolate(both, size, mode='bilinear', align_corners=False)
            total = total + both[:len(images)] + both[len(images):]
        return total / (2 * len(SCALES))

    def adapt_and_predict(self, images):
        target = self.teacher_target(images)
        with training_mode(self.model, self.layers, track=False):
            with torch.enable_grad(), gradients_only_for(self.model, self.parameters):
                log_p = class_logits(self.model, logits_of(self.model(images))).float().log_softmax(1)
                (-(target * log_p).sum(1).mean()).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            ema, chance = self.settings['ema'], self.settings['restore_probability']
            for teacher, student in zip(self.teacher_parameters, self.parameters):
                teacher.mul_(ema).add_(student, alpha=1 - ema)
            if chance > 0:  # after the teacher's update, as the authors' code
                for student, source in zip(self.parameters, self.source_parameters):
                    student.copy_(torch.where(torch.rand(student.shape, device=student.device) < chance,
                                              source, student))
        with torch.no_grad(), training_mode(self.teacher, self.teacher_layers, track=False):
            return logits_of(self.teacher(images))
