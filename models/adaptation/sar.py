"""sar (Niu et al. ICLR 2023, mr-eggplant/SAR): entropy minimisation over the reliable samples (H < E0) with
sharpness-aware minimisation. The gradient g of the mean entropy of the reliable samples moves the parameters to
θ + ρ·g/‖g‖; a second pass there takes the entropies of the same samples, keeps those still below E0, and the gradient
of their mean, applied at θ, is the step. The recovery: when the moving average (0.9) of that second loss falls below
0.2, the adapted parameters and the optimiser go back to their source state (the average itself is kept, as its code
keeps it; a reset of the stream clears it). Only normalisation affine parameters change (BatchNorm on test-batch
statistics, as tent), and the last stage is left out: names with `layer4`, `blocks.9`-`blocks.11` or `norm.`, and
`norm`, as its collect_params skips.

The authors' code fixes E0 = 0.4·ln C, ρ = 0.05, SGD with lr 2.5e-4 and momentum 0.9 (doubled at batch 1), the
threshold 0.2, continual. Here a sample is a pixel, as its code does on N×C×H×W logits; a batch without a reliable
pixel leaves the parameters as they are."""
import torch

from models.adaptation.base import Setting, in_unit_interval, non_negative, positive
from models.adaptation.eata import entropy_margin, mean_fraction
from models.adaptation.layers import affine_layers
from models.adaptation.registry import register
from models.adaptation.tent import AffineMethod, pixel_entropies

SKIPPED = ('layer4', 'blocks.9', 'blocks.10', 'blocks.11', 'norm.')
EMA_MOMENTUM = 0.9


def without_last_stage(model: torch.nn.Module) -> list:
    """The affine layers (affine_layers) but those of the last stage, by SAR's names."""
    return [(name, layer) for name, layer in affine_layers(model)
            if name != 'norm' and not any(part in name for part in SKIPPED)]


@register
class Sar(AffineMethod):
    """Sharpness-aware, reliable entropy minimisation with a reset when the loss's moving average collapses."""
    name = 'sar'
    SETTINGS = {'learning_rate': Setting(2.5e-4, positive, 'SGD learning rate (momentum 0.9)'),
                'rho': Setting(0.05, positive, 'ρ: the radius of the sharpness-aware perturbation'),
                'entropy_margin': Setting(0.4, in_unit_interval, 'E0 as a fraction of ln C: reliable if H < E0'),
                'reset_threshold': Setting(0.2, non_negative, 'back to the source when the loss EMA falls below')}
    layers_of = staticmethod(without_last_stage)

    def configure(self) -> None:
        super().configure()
        self.ema = None  # of the second pass's loss
        self.recoveries = 0
        self.reliable_fraction = []  # per batch, for reports

    def reset(self) -> None:
        super().reset()
        self.ema = None

    def adapt_and_predict(self, images):
        with self.adapting():
            logits = self.class_logits(images)
            margin = entropy_margin(self.settings['entropy_margin'], logits.shape[1])
            entropies = pixel_entropies(logits)
            reliable = entropies < margin
            self.reliable_fraction.append(reliable.float().mean().item())
            if self.reliable_fraction[-1] > 0:  # any reliable pixel, read with the fraction
                self.sharpness_aware_step(images, entropies[reliable].mean(), reliable, margin)
        if self.ema is not None and self.ema < self.settings['reset_threshold']:
            ema = self.ema
            self.reset()
            self.ema, self.recoveries = ema, self.recoveries + 1
        return self.predict_adapted(images)

    def diagnostics(self) -> dict:
        """The mean fraction of reliable pixels per batch, and how often the parameters went back to the source."""
        return {'reliable_pixel_fraction': mean_fraction(self.reliable_fraction), 'recoveries': self.recoveries}

    def sharpness_aware_step(self, images, loss, reliable, margin) -> None:
        """The first loss's gradient sets the perturbation; the gradient at θ + ε, applied at θ, is the step."""
        loss.backward()
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients]))
        shifts = [g * (self.settings['rho'] / (norm + 1e-12)) for g in gradients]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, shift in zip(self.parameters, shifts):
                p.add_(shift)
        entropies = pixel_entropies(self.class_logits(images))[reliable]
        kept = entropies < margin
        if kept.any():
            second = entropies[kept].mean()
            value = second.item()
            self.ema = value if self.ema is None else EMA_MOMENTUM * self.ema + (1 - EMA_MOMENTUM) * value
            second.backward()
        with torch.no_grad():
            for p, shift in zip(self.parameters, shifts):
                p.sub_(shift)
        if kept.any():
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
