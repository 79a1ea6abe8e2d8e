"""tent (Wang et al. ICLR 2021, DequanWang/tent): the BatchNorm layers normalise with the test batch's statistics,
and one optimiser step per batch on their affine parameters (scale and shift) lowers the mean per-pixel softmax
entropy over the classes. The optimiser is the reference's (cfgs/tent.yaml): Adam, lr 1e-3, betas (0.9, 0.999), no
weight decay; continual, as its default. As the protocol asks, the batch is predicted after the step (the reference
scores the outputs of the forward pass that computed the loss); only the adapted layers leave eval mode."""
import contextlib

import torch

from models.adaptation.base import OnlineMethod, Setting, logits_of, positive
from models.adaptation.layers import class_logits, training_mode
from models.adaptation.registry import register


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The softmax entropy over the channels (dim 1), averaged over every image and pixel."""
    log_probabilities = logits.float().log_softmax(1)
    return -(log_probabilities.exp() * log_probabilities).sum(1).mean()


@contextlib.contextmanager
def gradients_only_for(model: torch.nn.Module, parameters: list):
    """Within the block, only `parameters` of the model require gradients; the flags are restored after."""
    saved = {parameter: parameter.requires_grad for parameter in model.parameters()}
    chosen = {id(parameter) for parameter in parameters}
    for parameter in saved:
        parameter.requires_grad_(id(parameter) in chosen)
    try:
        yield
    finally:
        for parameter, requires_grad in saved.items():
            parameter.requires_grad_(requires_grad)


@register
class Tent(OnlineMethod):
    """Test entropy minimisation on the BatchNorm affine parameters, with test-batch statistics."""
    name = 'tent'
    SETTINGS = {'learning_rate': Setting(1e-3, positive, 'Adam learning rate')}

    def configure(self) -> None:
        super().configure()
        self.parameters = [p for _, layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        if not self.parameters:
            raise ValueError('tent needs BatchNorm layers with affine parameters')
        self.optimizer = self.new_optimizer()

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters, lr=self.settings['learning_rate'], betas=(0.9, 0.999))

    def reset(self) -> None:
        super().reset()
        self.optimizer = self.new_optimizer()  # Adam's moments start afresh, as the reference reloads its state

    def adapt_and_predict(self, images):
        with training_mode(self.model, self.layers, track=False):
            with torch.enable_grad(), gradients_only_for(self.model, self.parameters):
                mean_entropy(class_logits(self.model, logits_of(self.model(images)))).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return self.predict(images)
