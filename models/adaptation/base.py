"""What every online method shares: its settings, its reset, its timing, and the call that adapts, then predicts.

An online method wraps a model. `method(images)` sees a batch of network inputs before anything is predicted, may
update the model (only the BatchNorm layers it adapts), then returns the logits to score for that batch. With reset
'episodic' the adapted layers go back to the state they had when the method was built before every batch; with
'continual' the state is carried along the stream.
"""
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from models.adaptation.layers import default_layers, layer_state, restore_layer_state

RESETS = ('episodic', 'continual')


@dataclass(frozen=True)
class Setting:
    """One setting of a method: its default (the publication's), a check of a value, and a line of help."""
    default: int | float
    check: object  # value -> a problem in words, or None
    help: str


def in_unit_interval(value) -> str | None:
    return None if 0 < value <= 1 else f'must be in (0, 1], got {value}'


def closed_unit_interval(value) -> str | None:
    return None if 0 <= value <= 1 else f'must be in [0, 1], got {value}'


def below_one(value) -> str | None:
    return None if 0 <= value < 1 else f'must be in [0, 1), got {value}'


def non_negative(value) -> str | None:
    return None if 0 <= value < math.inf else f'must be a finite number of 0 or more, got {value}'


def positive(value) -> str | None:
    return None if 0 < value < math.inf else f'must be a positive finite number, got {value}'


def whole_at_least_one(value) -> str | None:
    return None if value >= 1 and value == int(value) else f'must be a whole number of at least 1, got {value}'


class SettingError(ValueError):
    """A setting that a method cannot take: `setting` names it, `problem` says what is wrong."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f'{setting} {problem}')
        self.setting, self.problem = setting, problem


def logits_of(output) -> torch.Tensor:
    """The logits of a network's output: the tensor itself, or 'out' of torchvision's segmentation models' dict."""
    return output['out'] if isinstance(output, Mapping) else output


def _clock(tensor: torch.Tensor) -> float:
    """Seconds, after the queued work of the tensor's GPU is done."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()


class OnlineMethod:
    """Base of the online methods: subclasses set `name`, `SETTINGS`, `DEFAULT_RESET` and `adapt_and_predict`."""
    name = ''
    SETTINGS: dict = {}  # setting name -> Setting
    DEFAULT_RESET = 'continual'
    layers_of = staticmethod(default_layers)  # the layers adapted when none are given

    def __init__(self, model: torch.nn.Module, layers: list | None = None, reset: str | None = None, **settings):
        self.settings = self.resolve(reset, settings)
        self.model = model
        self.layers = self.layers_of(model) if layers is None else list(layers)
        if not {id(layer) for _, layer in self.layers} <= {id(module) for module in model.modules()}:
            raise ValueError('layers must be (name, normalisation layer) pairs of the model itself, e.g. '
                             'batchnorm_layers(model)')
        self.source_state = layer_state(self.layers)
        self.batches_seen = self.images_seen = 0  # since the last reset: k of the momentum schedules
        self.calls, self.timed_seconds, self.timed_images = 0, 0.0, 0
        self.configure()

    @classmethod
    def resolve(cls, reset: str | None, settings: dict) -> dict:
        """The publication's defaults overridden by `settings`, and the reset; SettingError for a bad one."""
        for name, value in settings.items():
            if name not in cls.SETTINGS:
                raise SettingError(name, f'is not a setting of {cls.name} (its settings: '
                                         f'{", ".join(cls.SETTINGS) or "none"})')
            problem = cls.SETTINGS[name].check(value)
            if problem:
                raise SettingError(name, problem)
        if reset is not None and reset not in RESETS:
            raise SettingError('reset', f'must be one of {", ".join(RESETS)}, got {reset!r}')
        resolved = {name: setting.default for name, setting in cls.SETTINGS.items()} | settings
        cls.check_together(resolved)
        return resolved | {'reset': reset or cls.DEFAULT_RESET}

    @classmethod
    def check_together(cls, settings: dict) -> None:
        """SettingError when settings that are fine alone do not fit together (none by default)."""

    def configure(self) -> None:
        """Put the model into the state the method starts from: eval mode."""
        self.model.eval()

    def adapt_and_predict(self, images: torch.Tensor) -> torch.Tensor:
        """Adapt on the images (the labels are never seen), then return their logits."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of the model in its present modes (eval mode unless a method switched layers), no gradients."""
        with torch.no_grad():
            return logits_of(self.model(images))

    def reset(self) -> None:
        """Back to the state the adapted layers had when the method was built."""
        restore_layer_state(self.layers, self.source_state)
        self.batches_seen = self.images_seen = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        started = _clock(images)
        if self.settings['reset'] == 'episodic':
            self.reset()
        logits = self.adapt_and_predict(images)
        self.batches_seen += 1
        self.images_seen += len(images)
        seconds = _clock(logits) - started
        self.calls += 1
        if self.calls > 1:  # the first call pays for allocations and kernel choices
            self.timed_seconds += seconds
            self.timed_images += len(images)
        return logits

    def diagnostics(self) -> dict:
        """What the method did along the whole stream (its filters, recoveries, updates), for results.json and the
        log line; nothing by default."""
        return {}

    @property
    def ms_per_image(self) -> float:
        """Milliseconds per image spent in the calls after the first (adapting and predicting); nan before."""
        return 1000 * self.timed_seconds / self.timed_images if self.timed_images else math.nan
