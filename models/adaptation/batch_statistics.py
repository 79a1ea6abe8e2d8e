"""test_batch: normalise with the current batch's own statistics (TENT's "norm" baseline); nothing is kept."""
from models.adaptation.base import OnlineMethod
from models.adaptation.layers import training_mode
from models.adaptation.registry import register


@register
class BatchStatistics(OnlineMethod):
    """The adapted layers use the mean and variance of the batch they normalise; their running statistics stay."""
    name = 'test_batch'

    def adapt_and_predict(self, images):
        with training_mode(self.model, self.layers, track=False):
            return self.predict(images)
