"""ubna_online (ours, unpublished): UBNA+ one batch at a time. Before batch k (an image at batch size 1) layer l moves
its running statistics towards the batch's statistics with momentum m0·exp(−α_batch·k)·exp(−α_layer·l), as adapt.py
does offline; then the batch is predicted in eval mode."""
import torch

from models.adaptation.base import OnlineMethod, Setting, in_unit_interval, non_negative
from models.adaptation.layers import statistics_pass, training_mode
from models.adaptation.offline import layer_momenta
from models.adaptation.registry import register


@register
class UbnaOnline(OnlineMethod):
    """A train-mode pass with UBNA+'s momenta (the paper's GTA-5 → Cityscapes settings), then eval mode."""
    name = 'ubna_online'
    SETTINGS = {'momentum': Setting(0.1, in_unit_interval, 'm0 in m_kl = m0·exp(−α_batch·k)·exp(−α_layer·l)'),
                'alpha_batch': Setting(0.08, non_negative, 'α_batch in m_kl'),
                'alpha_layer': Setting(0.03, non_negative, 'α_layer in m_kl')}

    def adapt_and_predict(self, images):
        s = self.settings
        momenta = layer_momenta('layer_shrinking', self.batches_seen, len(self.layers), s['momentum'],
                                s['alpha_batch'], s['alpha_layer'])
        with torch.no_grad(), training_mode(self.model, self.layers, momenta):
            statistics_pass(self.model)(images)
        return self.predict(images)
