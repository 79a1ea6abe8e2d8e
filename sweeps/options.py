"""The sweep's flags: adapt.py's and evaluate.py's (arguments.py), and its comma-separated lists, which replace their
single-valued twins; checked once, before any work."""
import argparse
import math
import re

from arguments import (DEFAULT_SEED, MAX_ADAPTATION_BATCHES, MAX_SEED, add_adaptation_flags, add_model_flags,
                       add_online_adaptation_flags, add_segmentation_validation_flags, add_system_flags,
                       add_training_flags, build_parser, check_options, check_stream, online_flag,
                       online_settings_given, online_settings_of)
from evaluation.stream import method_reset
from models.adaptation import MODES, SettingError, check_online_settings, online_settings
from sweeps.grid import METHODS, NO_ADAPTATION, ONLINE

# A sweep's list flags: the single-valued job flag each replaces, the type of its items, why an item is refused
_SWEEP_LISTS = {
    '--methods': ('--adaptation-mode-sequential', str,
                  lambda value: None if value in METHODS else f'lists an unknown method {value!r}; choose from '
                                                                f'{", ".join(METHODS)}'),
    '--num-batches': ('--adaptation-num-batches', int,
                      lambda value: f'must be at least 1, got {value}' if value < 1 else
                      f'must be at most {MAX_ADAPTATION_BATCHES}, got {value}' if value > MAX_ADAPTATION_BATCHES
                      else None),
    '--alpha-batch': ('--adaptation-alpha-batch', float,
                      lambda value: None if math.isfinite(value) and value >= 0 else f'must be 0 or more, got {value}'),
    '--alpha-layer': ('--adaptation-alpha-layer', float,
                      lambda value: None if math.isfinite(value) and value >= 0 else f'must be 0 or more, got {value}'),
    '--seeds': ('--sys-seed', int,
                lambda value: None if 0 <= value <= MAX_SEED else f'must be from 0 to {MAX_SEED}, got {value}'),
}


def _add_sweep(parser):
    group = parser.add_argument_group(
        'sweep', 'comma-separated lists; the runs are their cross product. Each list replaces the job flag in '
                 'brackets, which a sweep also takes as a one-value list (give one of the two); unset, the list is '
                 f'that flag\'s default ({DEFAULT_SEED} for the seeds)')
    group.add_argument('--methods', help=f'[--adaptation-mode-sequential] any of {", ".join(METHODS)}: '
                                         f'{NO_ADAPTATION} is the loaded model as it is (the baseline), '
                                         f'{", ".join(MODES)} the modes of adapt.py, the others the online methods '
                                         f'of evaluate.py, which take the --online-* settings')
    group.add_argument('--num-batches', help='[--adaptation-num-batches] each method adapts once, to the largest, '
                                             'and is evaluated at every value on the way')
    group.add_argument('--alpha-batch', help='[--adaptation-alpha-batch] used by UBNA and UBNA+')
    group.add_argument('--alpha-layer', help='[--adaptation-alpha-layer] used by UBNA+')
    group.add_argument('--seeds', help='[--sys-seed] every run is repeated with each seed')


LAUNCHERS = ('serial', 'local', 'slurm')
SLURM_CLUSTERS = ('slurm', 'local', 'debug')  # submitit's: a cluster, its local processes, this process
SLURM_TIME = re.compile(r'(?:(?P<days>\d+)-(?P<d_hours>\d+)(?::(?P<d_minutes>\d+)(?::(?P<d_seconds>\d+))?)?'
                        r'|(?P<hours>\d+):(?P<h_minutes>\d+):(?P<h_seconds>\d+)'
                        r'|(?P<m_minutes>\d+)(?::(?P<m_seconds>\d+))?)')
SLURM_FLAGS = ('--slurm-partition', '--slurm-time', '--slurm-gpus-per-task', '--slurm-cpus-per-task', '--slurm-mem',
               '--slurm-array-parallelism', '--slurm-extra', '--slurm-cluster')


def _add_launcher(parser):
    group = parser.add_argument_group('launcher', 'where the tasks run (a task: one method and seed over all its '
                                                   'N); docs/sweeps.md, "Launchers"')
    group.add_argument('--launcher', choices=LAUNCHERS, default='serial',
                       help='serial: one after another in this process; local: --jobs worker processes here (one '
                            'GPU each); slurm: one Slurm job array through submitit')
    group.add_argument('--jobs', type=int, help='[local] worker processes (default: the GPU count; 1 on a CPU)')
    group.add_argument('--report', action='store_true', help='only write summary.md and the plots from runs.csv')
    group.add_argument('--slurm-partition', help='[slurm] the partition')
    group.add_argument('--slurm-time', help='[slurm] time limit per task: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM '
                                            'or D-HH:MM:SS')
    group.add_argument('--slurm-gpus-per-task', type=int, help='[slurm] GPUs per task')
    group.add_argument('--slurm-cpus-per-task', type=int, help='[slurm] CPU cores per task (its torch threads)')
    group.add_argument('--slurm-mem', help='[slurm] memory per task, as sbatch --mem takes it (e.g. 32G)')
    group.add_argument('--slurm-array-parallelism', type=int, help='[slurm] most tasks running at once')
    group.add_argument('--slurm-extra', action='append', metavar='KEY=VALUE',
                       help='[slurm] any other sbatch option (repeatable), e.g. account=abc')
    group.add_argument('--slurm-cluster', choices=SLURM_CLUSTERS,
                       help="[slurm] submitit's AutoExecutor cluster (default slurm; local and debug need no cluster)")


def slurm_minutes(text: str) -> int | None:
    """A Slurm time as whole minutes (seconds round up); None when it is not in a format Slurm takes."""
    match = SLURM_TIME.fullmatch(text.strip())
    if match is None:
        return None
    part = {key: int(value) for key, value in match.groupdict().items() if value is not None}
    days, hours = part.get('days', 0), part.get('d_hours', part.get('hours', 0))
    minutes = part.get('d_minutes', part.get('h_minutes', part.get('m_minutes', 0)))
    seconds = part.get('d_seconds', part.get('h_seconds', part.get('m_seconds', 0)))
    return -(-(((days * 24 + hours) * 60 + minutes) * 60 + seconds) // 60)


def _check_launcher(parser, opt) -> None:
    """The launcher's flags: each for its launcher only, and in range; submitit present for --launcher slurm."""
    if opt.jobs is not None and opt.launcher != 'local':
        parser.error('--jobs applies to --launcher local only')
    if opt.jobs is not None and opt.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {opt.jobs}')
    given = [flag for flag in SLURM_FLAGS if getattr(opt, _dest(flag)) is not None]
    if given and opt.launcher != 'slurm':
        parser.error(f'{given[0]} applies to --launcher slurm only')
    if opt.launcher != 'slurm':
        return
    opt.slurm_cluster = opt.slurm_cluster or 'slurm'
    if opt.slurm_time is not None and not slurm_minutes(opt.slurm_time):
        parser.error(f'--slurm-time {opt.slurm_time!r} is not a Slurm time: give minutes, MM:SS, HH:MM:SS, D-HH, '
                     f'D-HH:MM or D-HH:MM:SS (at least a minute)')
    for flag, least in (('--slurm-gpus-per-task', 0), ('--slurm-cpus-per-task', 1), ('--slurm-array-parallelism', 1)):
        value = getattr(opt, _dest(flag))
        if value is not None and value < least:
            parser.error(f'{flag} must be at least {least}, got {value}')
    for item in opt.slurm_extra or ():
        if not re.fullmatch(r'[a-z][a-z0-9_-]*=.+', item):
            parser.error(f'--slurm-extra {item!r} is not KEY=VALUE (an sbatch option without its dashes, e.g. '
                         f'account=abc)')
    try:
        import submitit  # noqa: F401  (only here: an optional dependency)
    except ImportError:
        parser.error('--launcher slurm needs submitit, which is not installed; install it with '
                     '`pip install submitit`')


def _dest(flag: str) -> str:
    return flag[2:].replace('-', '_')


def _list_items(parser, flag: str, text: str, item_type) -> list:
    """The values of a comma-separated list flag; an empty list or item, a wrong type or a repeat is refused."""
    if not text.strip():
        parser.error(f'{flag} is an empty list; give comma-separated values')
    values = []
    for item in (item.strip() for item in text.split(',')):
        if not item:
            parser.error(f'{flag} {text!r} has an empty item')
        try:
            value = item_type(item)
        except ValueError:
            parser.error(f'{flag}: {item!r} is not {"an integer" if item_type is int else "a number"}')
        if value in values:
            parser.error(f'{flag} lists {item} twice; give each setting once')
        values.append(value)
    return values


def _resolve_sweep_lists(parser, opt, twin_defaults: dict) -> None:
    """Each sweep list as checked values: from its flag, else its twin's one value, else its twin's default."""
    for flag, (twin, item_type, problem) in _SWEEP_LISTS.items():
        text, single = getattr(opt, _dest(flag)), getattr(opt, _dest(twin))
        if text is not None and single is not None:
            parser.error(f'give {flag} or {twin}, not both')
        if text is not None:
            values = _list_items(parser, flag, text, item_type)
        else:
            default = twin_defaults[_dest(twin)]
            values = [single if single is not None else DEFAULT_SEED if default is None else default]
        for value in values:
            if problem(value):
                parser.error(f'{flag if text is not None else twin} {problem(value)}')
        setattr(opt, _dest(flag), values)
        setattr(opt, _dest(twin), None)  # the list holds it: two spellings of one sweep are one command


def _check_sweep_online(parser, opt) -> None:
    """A sweep's --online-* settings: each taken by a listed online method, and within range for each taking it."""
    if opt.online_method is not None:
        parser.error('--online-method names one method; list the online methods of a sweep in --methods')
    listed = [method for method in opt.methods if method in ONLINE]
    for setting in online_settings_given(opt):
        if not any(setting in online_settings(method) for method in listed):
            parser.error(f'{online_flag(setting)} applies to none of the methods in --methods')
    if opt.online_reset is not None and not listed:
        parser.error('--online-reset applies to none of the methods in --methods (no online method)')
    if opt.online_fisher_loaders is not None:  # evaluate.py's alone: a sweep's eata runs take the first test batch
        parser.error('--online-fisher-loaders is an evaluate.py flag; a sweep\'s eata runs take their Fisher '
                     'information from the first test batch')
    for method in listed:
        try:
            check_online_settings(method, method_reset(opt.online_reset), **online_settings_of(opt, method))
        except SettingError as error:
            parser.error(f'{online_flag(error.setting)} {error.problem} (for {method})')


def _sweep_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The sweep's parser, and the defaults of the single-valued twins of its lists (set to None: not given)."""
    parser = build_parser('sweep', 'Adapt and evaluate over the cross product of methods, settings and seeds; '
                                   'tabulate the mean and standard deviation over the seeds.',
                          (add_system_flags, add_model_flags, add_segmentation_validation_flags, add_training_flags,
                           add_adaptation_flags, add_online_adaptation_flags, _add_sweep, _add_launcher))
    twins = {_dest(twin): parser.get_default(_dest(twin)) for twin, _, _ in _SWEEP_LISTS.values()}
    parser.set_defaults(model_name='sweep', online_method=None, **dict.fromkeys(twins))
    return parser, twins


def sweep_defaults() -> dict:
    """Every sweep option's default value, by its name in the parsed options."""
    return vars(_sweep_parser()[0].parse_args([]))


def parse_sweep_arguments(argv=None) -> argparse.Namespace:
    """adapt.py's flags, evaluate.py's too, and the sweep's lists (which replace their single-valued twins)."""
    parser, twins = _sweep_parser()
    opt = parser.parse_args(argv)
    _resolve_sweep_lists(parser, opt, twins)
    _check_sweep_online(parser, opt)
    _check_launcher(parser, opt)
    check_options(parser, opt, 'sweep')
    check_stream(parser, opt, argv, any(method in ONLINE for method in opt.methods),
                 'applies to none of the methods in --methods (no online method)')
    return opt
