"""tent (Wang et al. ICLR 2021, DequanWang/tent): the BatchNorm layers normalise with the test batch's statistics,
and one optimiser step per batch on the affine parameters (scale and shift) of the normalisation layers lowers the
mean per-pixel softmax entropy over the classes. The optimiser is the reference's (cfgs/tent.yaml): Adam, lr 1e-3,
betas (0.9, 0.999), no weight decay; continual, as its default. As the protocol asks, the batch is predicted after
the step (the reference scores the outputs of the forward pass that computed the loss); only the adapted layers
leave eval mode. BatchNorm, GroupNorm and LayerNorm layers are adapted (the network's adaptable_layers() if it
offers them); GroupNorm and LayerNorm have no running statistics to bypass."""
import contextlib

import torch

from models.adaptation.base import OnlineMethod, Setting, logits_of, positive
from models.adaptation.layers import affine_layers, batchnorm_only, class_logits, training_mode
from models.adaptation.registry import register


def pixel_entropies(logits: torch.Tensor) -> torch.Tensor:
    """The softmax entropy over the channels (dim 1) of every image and pixel: N×H×W for N×C×H×W logits."""
    log_probabilities = logits.float().log_softmax(1)
    return -(log_probabilities.exp() * log_probabilities).sum(1)


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The softmax entropy over the channels (dim 1), averaged over every image and pixel."""
    return pixel_entropies(logits).mean()


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


class AffineMethod(OnlineMethod):
    """Base of the methods that change the normalisation layers' scale and shift by gradient steps (tent, eta,
    eata, sar): the BatchNorm layers among them normalise with the test batch's statistics."""
    layers_of = staticmethod(affine_layers)

    def configure(self) -> None:
        super().configure()
        self.parameters = [p for _, layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        if not self.parameters:
            raise ValueError(f'{self.name} needs normalisation layers (BatchNorm, GroupNorm, LayerNorm) with affine '
                             f'parameters, and the network has none to adapt')
        self.batchnorms = batchnorm_only(self.layers)
        self.optimizer = self.new_optimizer()

    def new_optimizer(self) -> torch.optim.Optimizer:
        """SGD with momentum 0.9, as the EATA and SAR authors' code (tent overrides it)."""
        return torch.optim.SGD(self.parameters, lr=self.settings['learning_rate'], momentum=0.9)

    def reset(self) -> None:
        super().reset()
        self.optimizer = self.new_optimizer()  # the optimiser's state starts afresh, as the references reload it

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The class logits of a forward pass with gradients (call inside `adapting`)."""
        return class_logits(self.model, logits_of(self.model(images)))

    @contextlib.contextmanager
    def adapting(self):
        """BatchNorm layers on batch statistics (running statistics untouched), gradients for the parameters."""
        with training_mode(self.model, self.batchnorms, track=False):
            with torch.enable_grad(), gradients_only_for(self.model, self.parameters):
                yield

    def predict_adapted(self, images: torch.Tensor) -> torch.Tensor:
        """The logits after the step, the BatchNorm layers still on batch statistics."""
        with training_mode(self.model, self.batchnorms, track=False):
            return self.predict(images)


@register
class Tent(AffineMethod):
    """Test entropy minimisation on the normalisation affine parameters, with test-batch statistics."""
    name = 'tent'
    SETTINGS = {'learning_rate': Setting(1e-3, positive, 'Adam learning rate')}

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters, lr=self.settings['learning_rate'], betas=(0.9, 0.999))

    def adapt_and_predict(self, images):
        with self.adapting():
            mean_entropy(self.class_logits(images)).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.predict_adapted(images)
