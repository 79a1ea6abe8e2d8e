"""The runs of a sweep: the cross product of its lists, each run reduced to the settings its method uses."""
import itertools
from dataclasses import dataclass

from models.adaptation import MODES, ONLINE_METHODS, SCHEDULES

NO_ADAPTATION = 'no_adaptation'  # the source model as it is: the paper's baseline (online method 'none')
ONLINE = tuple(name for name in ONLINE_METHODS if name != 'none')  # adapt while evaluating (evaluate.py)
METHODS = (NO_ADAPTATION, *MODES, *ONLINE)  # offline 'none' is adapt.py's constant momentum
LABELS = {NO_ADAPTATION: 'no adaptation', **{name: schedule.label for name, schedule in SCHEDULES.items()}}
_USES = {NO_ADAPTATION: (), **{name: schedule.uses for name, schedule in SCHEDULES.items()}}
SETTINGS = ('method', 'num_batches', 'alpha_batch', 'alpha_layer', 'seed')  # what keys a run in runs.csv


@dataclass(frozen=True)
class Run:
    """One adapt + evaluate: num_batches counts the offline adaptation batches (0: none); an alpha the method does
    not use is None."""
    method: str
    num_batches: int
    alpha_batch: float | None
    alpha_layer: float | None
    seed: int

    @property
    def key(self) -> tuple:
        """The settings as runs.csv holds them ('' for an unused alpha)."""
        return tuple('' if value is None else str(value) for value in (
            self.method, self.num_batches, self.alpha_batch, self.alpha_layer, self.seed))

    def describe(self) -> str:
        """'UBNA+ N=50 α_batch=0.08 α_layer=0.03 seed 1' for logs and the progress bar."""
        alphas = ''.join(f' α_{name}={value}' for name, value in (('batch', self.alpha_batch),
                                                                   ('layer', self.alpha_layer)) if value is not None)
        return f'{LABELS.get(self.method, self.method)} N={self.num_batches}{alphas} seed {self.seed}'


def make_run(method: str, num_batches: int, alpha_batch: float, alpha_layer: float, seed: int) -> Run:
    """The run of these settings, with those its method ignores dropped (so they do not multiply its runs)."""
    uses = _USES.get(method, ())  # an online method takes its settings from the --online-* flags
    return Run(method, num_batches if 'num_batches' in uses else 0,
               alpha_batch if 'alpha_batch' in uses else None, alpha_layer if 'alpha_layer' in uses else None, seed)


def sweep_runs(methods, num_batches, alpha_batch, alpha_layer, seeds) -> list[Run]:
    """The distinct runs of the cross product, seed by seed, in the order of the lists."""
    product = itertools.product(seeds, methods, alpha_batch, alpha_layer, num_batches)
    return list(dict.fromkeys(make_run(method, n, a_batch, a_layer, seed)
                              for seed, method, a_batch, a_layer, n in product))


def chains(runs: list[Run]) -> list[list[Run]]:
    """Runs that differ only in num_batches, by increasing num_batches: one adaptation to the last serves them all."""
    groups = {}
    for run in runs:
        groups.setdefault((run.seed, run.method, run.alpha_batch, run.alpha_layer), []).append(run)
    return [sorted(group, key=lambda run: run.num_batches) for group in groups.values()]
