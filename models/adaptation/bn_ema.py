"""bn_ema: the rule of cbna carried along the whole stream (continual) instead of restarting at every image."""
from models.adaptation.cbna import Cbna
from models.adaptation.registry import register


@register
class BnEma(Cbna):
    """An exponential moving average of the test statistics, updated inside each layer before it normalises."""
    name = 'bn_ema'
    DEFAULT_RESET = 'continual'
