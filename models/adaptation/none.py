"""none: today's evaluation, eval mode with the source statistics."""
from models.adaptation.base import OnlineMethod
from models.adaptation.registry import register


@register
class NoAdaptation(OnlineMethod):
    """Predict with the model as loaded."""
    name = 'none'

    def adapt_and_predict(self, images):
        return self.predict(images)
