"""cbna (Klingner et al. 2022, ifnspaml/CBNA): each BatchNorm layer first moves its running statistics towards the
statistics of the input it is given, then normalises that input with them, in eval mode. Its code reloads the source
checkpoint before every image (batch 1), hence episodic; BN-α (Schneider et al. 2020) with α = η is the same rule."""
import torch

from models.adaptation.base import OnlineMethod, Setting, in_unit_interval
from models.adaptation.registry import register


@register
class Cbna(OnlineMethod):
    """running ← (1 − η)·running + η·batch, with mean and unbiased variance over N, H, W of the layer's input."""
    name = 'cbna'
    SETTINGS = {'momentum': Setting(0.2, in_unit_interval, 'η in running ← (1 − η)·running + η·batch')}
    DEFAULT_RESET = 'episodic'

    def adapt_and_predict(self, images):
        hooks = [layer.register_forward_pre_hook(self.update_statistics) for _, layer in self.layers]
        try:
            return self.predict(images)
        finally:
            for hook in hooks:
                hook.remove()

    def update_statistics(self, layer, inputs) -> None:
        """Forward pre-hook: the update, before the layer normalises its input with the running statistics."""
        x = inputs[0].detach().float()
        variance, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())])  # unbiased, as the reference's input.var
        eta = self.settings['momentum']
        layer.running_mean.mul_(1 - eta).add_(mean, alpha=eta)
        layer.running_var.mul_(1 - eta).add_(variance, alpha=eta)
