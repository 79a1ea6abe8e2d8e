"""Every command-line flag of the three jobs (spec §9), grouped as the reference groups them.

train.py:    system, model, segmentation validation + training, training
adapt.py:    system, model, segmentation validation, training, adaptation
evaluate.py: system, model, segmentation validation, online adaptation
sweep.py:    those of adapt.py and evaluate.py, and the sweep's lists (sweeps/options.py)
Values are checked once, here, before any work starts.
"""
import argparse
import math

from dataloader import loaders
from dataloader.datasets import loader_names
from dataloader.stream import ORDERS
from evaluation.metrics import REMAPS
from evaluation.stream import STREAM_RESETS, method_reset
from experiment.folder import relative_name_problem
from experiment.runtime import MEMORY_FORMATS, PRECISIONS
from models.adaptation import (MODES, ONLINE_METHODS, RESETS, SCHEDULES, SettingError, check_online_settings,
                               online_settings, setting_flags)
from models.backbones import BACKBONES

DEFAULT_BATCHES_PER_EPOCH = 57874 // 6  # KITTI training images // batch size, as in the reference
MAX_SEED = 2 ** 32 - 1  # NumPy's seeds are 32-bit
DEFAULT_SEED = 1  # the seed of --sys-best-effort-determinism, as in the reference
DEFAULT_MODEL_TYPE = 'resnet'
# Upper bounds of the counts: generous, so that a value past one can only be a mistake (a typo, an extra digit)
MAX_WORKERS = 256
MAX_BATCH_SIZE = 4096
MAX_ADAPTATION_BATCHES = 100_000  # the paper adapts on 50
MAX_EVAL_IMAGES = 100_000  # one picture file each
MAX_EPOCHS = 100_000  # also the checkpoint frequency and the scheduler step size, in epochs
MAX_STEPS = 1_000_000_000  # batches per epoch, and the tensorboard and print frequencies, in steps
COUNT_BOUNDS = {  # flag -> (least, most)
    '--sys-num-workers': (0, MAX_WORKERS),
    '--segmentation-validation-batch-size': (1, MAX_BATCH_SIZE),
    '--segmentation-eval-num-images': (0, MAX_EVAL_IMAGES),
    '--segmentation-training-batch-size': (1, MAX_BATCH_SIZE),
    '--adaptation-training-batch-size': (1, MAX_BATCH_SIZE),
    '--adaptation-num-batches': (1, MAX_ADAPTATION_BATCHES),
    '--train-batches-per-epoch': (1, MAX_STEPS),
    '--train-num-epochs': (1, MAX_EPOCHS),
    '--train-checkpoint-frequency': (1, MAX_EPOCHS),
    '--train-tb-frequency': (1, MAX_STEPS),
    '--train-print-frequency': (1, MAX_STEPS),
    '--train-scheduler-step-size': (1, MAX_EPOCHS),
}
RESIZE_DESTS = ('segmentation_validation_resize_height', 'segmentation_validation_resize_width')


def add_system_flags(parser):
    group = parser.add_argument_group('system')
    group.add_argument('--sys-cpu', action='store_true', help='run on the CPU even when a GPU is available')
    group.add_argument('--sys-num-workers', type=int, default=3, help='DataLoader worker processes per loader')
    group.add_argument('--sys-best-effort-determinism', action='store_true',
                       help='seed every generator with 1 and make cuDNN deterministic')
    group.add_argument('--sys-seed', type=int, default=None, metavar='S',
                       help='(ours) as --sys-best-effort-determinism, with seed S for every generator, the DataLoader '
                            'workers included: runs with the same S (and worker count) give the same numbers')
    group.add_argument('--sys-sync-batchnorm', action='store_true',
                       help='(ours) synchronise BatchNorm across GPUs when run under torchrun')
    group.add_argument('--sys-precision', default='fp32', choices=tuple(PRECISIONS),
                       help='(ours) bf16/fp16: mixed-precision autocast; parameters and '
                            'BatchNorm statistics stay fp32. fp32 reproduces the reference\'s numbers')
    group.add_argument('--sys-memory-format', default='auto', choices=MEMORY_FORMATS,
                       help='(ours) layout of the network\'s tensors. auto: channels_last where it was measured faster '
                            '(adaptation and evaluation; training in bf16/fp16 on a GPU), else contiguous, the '
                            'reference\'s layout (the numbers differ only by float rounding)')


def add_model_flags(parser):
    group = parser.add_argument_group('model')
    group.add_argument('--model-type', default=DEFAULT_MODEL_TYPE, choices=tuple(BACKBONES), help='encoder family')
    for entry in BACKBONES.values():  # one depth flag per family, in registration order
        group.add_argument(entry.depth_flag, type=int, default=entry.default_depth, choices=entry.depths,
                           help=entry.depth_help)
    group.add_argument('--experiment-class', default='iccv_experiments',
                       help='folder under $UBNA_DIR_CHECKPOINT that holds this series of experiments')
    group.add_argument('--model-name', default='ubna', help='name of this experiment (its folder)')
    group.add_argument('--model-load', default=None,
                       help='checkpoint folder to load, relative to $UBNA_DIR_CHECKPOINT')
    group.add_argument('--model-disable-lr-loading', action='store_true',
                       help='load only model.pth, not the optimiser, scheduler and step counters')


def add_segmentation_validation_flags(parser):
    group = parser.add_argument_group('segmentation validation')
    group.add_argument('--segmentation-validation-resize-height', type=int, default=512)
    group.add_argument('--segmentation-validation-resize-width', type=int, default=1024)
    group.add_argument('--segmentation-validation-loaders', default='cityscapes_validation',
                       help='comma separated; one of ' + ', '.join(loader_names('validation')))
    group.add_argument('--segmentation-validation-batch-size', type=int, default=1)
    group.add_argument('--segmentation-eval-num-images', type=int, default=20,
                       help='number of image / prediction / label strips written by evaluate.py')
    group.add_argument('--segmentation-eval-remaps', default='none',
                       help='comma separated; any of ' + ', '.join(REMAPS))
    group.add_argument('--segmentation-eval-skip-unused-class', action='store_true',
                       help='(ours) never predict the unused 20th class, so every labelled pixel is counted; '
                            'by default such pixels drop out of the metric, as in the reference')


def add_segmentation_training_flags(parser):
    group = parser.add_argument_group('segmentation training')
    group.add_argument('--segmentation-training-loaders', default='cityscapes_train',
                       help='comma separated; any of ' + ', '.join(loader_names('training')))
    group.add_argument('--segmentation-training-batch-size', type=int, default=6)
    group.add_argument('--segmentation-resize-height', type=int, default=512)
    group.add_argument('--segmentation-resize-width', type=int, default=1024)
    group.add_argument('--segmentation-crop-height', type=int, default=192)
    group.add_argument('--segmentation-crop-width', type=int, default=640)


def add_training_flags(parser):
    group = parser.add_argument_group('training')
    group.add_argument('--train-batches-per-epoch', type=int, default=DEFAULT_BATCHES_PER_EPOCH)
    group.add_argument('--train-num-epochs', type=int, default=20)
    group.add_argument('--train-checkpoint-frequency', type=int, default=5, help='epochs between checkpoints')
    group.add_argument('--train-tb-frequency', type=int, default=500, help='steps between tensorboard logs')
    group.add_argument('--train-print-frequency', type=int, default=2500, help='steps between printed losses')
    group.add_argument('--train-learning-rate', type=float, default=1e-4)
    group.add_argument('--train-scheduler-step-size', type=int, default=15, help='epochs between lr decays')
    group.add_argument('--train-scheduler-gamma', type=float, default=None,
                       help='(ours) lr decay factor; unset reproduces the reference quirk gamma = learning rate')
    group.add_argument('--train-weight-decay', type=float, default=0.0)
    group.add_argument('--train-weights-init', default='pretrained', choices=('pretrained', 'scratch'),
                       help='ImageNet weights for the encoder, or random initialisation')


def add_adaptation_flags(parser):
    group = parser.add_argument_group('adaptation')
    group.add_argument('--adaptation-training-loaders', default='kitti_kitti_train',
                       help='comma separated; any of ' + ', '.join(loader_names('adaptation')))
    group.add_argument('--adaptation-training-batch-size', type=int, default=6)
    group.add_argument('--adaptation-num-batches', type=int, default=50)
    group.add_argument('--adaptation-resize-height', type=int, default=192)
    group.add_argument('--adaptation-resize-width', type=int, default=640)
    group.add_argument('--adaptation-crop-height', type=int, default=192)
    group.add_argument('--adaptation-crop-width', type=int, default=640)
    group.add_argument('--adaptation-crop-at-offsets', action='store_true',
                       help='(ours) cityscapes_sequence_train crops at the offsets (h*32//512, w*33//1024) the '
                            'reference passes; by default at the top-left corner, as the reference does')
    group.add_argument('--adaptation-pixel-work', default='auto', choices=loaders.PIXEL_WORK,
                       help='(ours) where images are resized and colour-jittered: in the loader workers, or on the '
                            'device (the workers only decode); auto: the device on a GPU, the workers on the CPU, '
                            'the faster of the two on each. Either way the main process draws the '
                            'flips and jitters, the same for any worker count. Both compute what PIL computes, but for '
                            'the hue shift: on the device PIL\'s HSV round trip, as in the reference; in the workers '
                            'OpenCV\'s HSV, which rounds differently by a level or two')
    group.add_argument('--adaptation-mode-sequential', default='none', choices=MODES,
                       help='; '.join(f'{name}: {schedule.help}' for name, schedule in SCHEDULES.items()))
    group.add_argument('--adaptation-alpha-batch', type=float, default=0.1)
    group.add_argument('--adaptation-alpha-layer', type=float, default=0.1)
    group.add_argument('--adaptation-batchnorm-momentum', type=float, default=0.1)
    group.add_argument('--adaptation-xlsx-frequency', type=int, default=1,
                       help='accepted for old command lines; unused, as in the reference')


def add_online_adaptation_flags(parser):
    group = parser.add_argument_group('online adaptation (ours): adapt on each validation batch, then predict it')
    group.add_argument('--online-method', default='none', choices=ONLINE_METHODS,
                       help='none: the model as loaded; test_batch: batch statistics; cbna, bn_ema: statistics updated '
                            'inside each BatchNorm layer; ubna_online: UBNA+ one batch at a time; dua: decaying '
                            'momentum over augmented copies; tent: entropy minimisation on normalisation scale and '
                            'shift; eta, eata: the same over reliable, non-redundant pixels (eata: a Fisher penalty); '
                            'sar: reliable pixels, sharpness-aware, with recovery')
    group.add_argument('--online-reset', default=None, choices=RESETS + STREAM_RESETS,
                       help="episodic: back to the loaded checkpoint's state before every batch; domain: at the "
                            "start of each domain's pass; round: at the start of each round; continual: never; "
                            "default: the method's (episodic for cbna, else continual)")
    group.add_argument('--online-rounds', type=int, default=1,
                       help='stream the --segmentation-validation-loaders list (in its order, repeats allowed) this '
                            'many times; each round and position is scored on its own')
    group.add_argument('--online-order', default='sequential', choices=ORDERS,
                       help='sequential: domain after domain; mixed: every round shuffles the batches of all its '
                            'domains into one stream (seeded by --sys-seed), each scored under its own domain')
    group.add_argument('--online-fisher-loaders', default=None,
                       help="eata only: validation loaders (comma-separated) whose images, with the model's own "
                            'pseudo-labels, give the Fisher information of its penalty; unset: the first test batch')
    for setting, (kind, help_text) in setting_flags().items():
        group.add_argument(online_flag(setting), type=kind, default=None,
                           help=f"{help_text}; unset: the method's default")


def online_flag(setting: str) -> str:
    return '--online-' + setting.replace('_', '-')


def online_settings_given(opt) -> dict:
    """The --online-* settings set on the command line; the others take the method's default."""
    values = {setting: getattr(opt, f'online_{setting}') for setting in setting_flags()}
    return {setting: value for setting, value in values.items() if value is not None}


def online_settings_of(opt, method: str) -> dict:
    """The --online-* settings given that `method` takes (a sweep lists several online methods)."""
    return {setting: value for setting, value in online_settings_given(opt).items()
            if setting in online_settings(method)}


def _check_online(parser, opt) -> None:
    """Only the settings of --online-method, each within its range."""
    accepted = online_settings(opt.online_method)
    for setting in online_settings_given(opt):
        if setting not in accepted:
            takes = ', '.join(map(online_flag, accepted)) or 'no setting but --online-reset'
            parser.error(f'{online_flag(setting)} does not apply to --online-method {opt.online_method} '
                         f'(it takes {takes})')
    if opt.online_method == 'none' and opt.online_reset is not None:
        parser.error('--online-reset does not apply to --online-method none, which never adapts')
    try:
        check_online_settings(opt.online_method, method_reset(opt.online_reset), **online_settings_given(opt))
    except SettingError as error:
        parser.error(f'{online_flag(error.setting)} {error.problem}')
    if opt.online_fisher_loaders is not None:
        if opt.online_method != 'eata':
            parser.error(f'--online-fisher-loaders applies only to --online-method eata, got {opt.online_method}')
        names = _split(opt.online_fisher_loaders)
        if not names:
            parser.error('--online-fisher-loaders names no loader')
        try:
            loaders.check_loader_names(names, 'validation')
        except Exception as error:
            parser.error(f'--online-fisher-loaders: {error}')


def _given_resize(parser, argv) -> list | None:
    """[height, width] when either validation resize flag is on the command line (the other its default), else
    None: the command line parsed again with both defaults unset."""
    defaults = {dest: parser.get_default(dest) for dest in RESIZE_DESTS}
    parser.set_defaults(**dict.fromkeys(RESIZE_DESTS))
    try:
        given = vars(parser.parse_known_args(argv)[0])
    finally:
        parser.set_defaults(**defaults)
    if all(given[dest] is None for dest in RESIZE_DESTS):
        return None
    return [defaults[dest] if given[dest] is None else given[dest] for dest in RESIZE_DESTS]


def check_stream(parser, opt, argv, streaming: bool, not_streaming: str) -> None:
    """--online-rounds and --online-order; when an online method streams, record the one network input size of
    every domain (opt.online_stream_resize: the resize flags if given, else None, each loader's default).
    not_streaming: why they apply to nothing, after the flag's name."""
    if opt.online_rounds < 1:
        parser.error(f'--online-rounds must be at least 1, got {opt.online_rounds}')
    if not streaming:
        for flag, value, default in (('--online-rounds', opt.online_rounds, 1),
                                     ('--online-order', opt.online_order, 'sequential')):
            if value != default:
                parser.error(f'{flag} {not_streaming}')
        return
    if opt.online_order == 'mixed' and len(set(_split(opt.segmentation_validation_loaders))) < 2:
        parser.error('--online-order mixed needs two domains or more in --segmentation-validation-loaders, got '
                     f'{opt.segmentation_validation_loaders}')
    opt.online_stream_resize = _given_resize(parser, argv)


def _split(names: str) -> list:
    return [name for name in names.split(',') if name]


def _check_finite(parser, opt) -> None:
    """Every float flag of the job must be a finite number (nan and inf slip through range comparisons)."""
    for action in parser._actions:
        value = getattr(opt, action.dest, None)
        if action.type is float and value is not None and not math.isfinite(value):
            parser.error(f'{action.option_strings[0]} must be a finite number, got {value}')


def _check_names(parser, opt) -> None:
    """Experiment folder names and --model-load: relative paths of plain names, so they stay inside the base."""
    for flag in ('--experiment-class', '--model-name', '--model-load'):
        value = getattr(opt, flag[2:].replace('-', '_'))
        problem = None if value is None else relative_name_problem(value)  # --model-load may be unset
        if problem:
            parser.error(f'{flag} {value!r} {problem}; give folder names joined by / that stay inside '
                         f'$UBNA_DIR_CHECKPOINT')


def _check_count(parser, opt, flag: str) -> None:
    """A count flag within COUNT_BOUNDS (a sweep's list replaces its twin, then None)."""
    value = getattr(opt, flag[2:].replace('-', '_'))
    least, most = COUNT_BOUNDS[flag]
    if value is None:
        return
    if value < least:
        parser.error(f'{flag} must be {"at least 1" if least == 1 else "0 or more"}, got {value}')
    if value > most:
        parser.error(f'{flag} must be at most {most}, got {value}')


def check_options(parser, opt, job: str) -> None:
    """One clear message per bad value, before any work starts."""
    def positive(flag):
        if flag in COUNT_BOUNDS:
            _check_count(parser, opt, flag)
            return
        value = getattr(opt, flag.lstrip('-').replace('-', '_'))
        if value < 1:
            parser.error(f'{flag} must be at least 1, got {value}')

    def network_side(flag):  # sizes that reach the network: multiples of its stride, a 2x2 coarsest map
        value = getattr(opt, flag.lstrip('-').replace('-', '_'))
        if value < 64 or value % 32:
            parser.error(f'{flag} must be a multiple of 32 and at least 64, got {value}')

    def loader_names(flag, kind):
        names = _split(getattr(opt, flag.lstrip('-').replace('-', '_')))
        if not names:
            parser.error(f'{flag} names no loader')
        try:
            loaders.check_loader_names(names, kind)
        except Exception as error:
            parser.error(f'{flag}: {error}')

    _check_finite(parser, opt)
    _check_names(parser, opt)
    _check_count(parser, opt, '--sys-num-workers')
    if opt.sys_seed is not None and not 0 <= opt.sys_seed <= MAX_SEED:
        parser.error(f'--sys-seed must be an integer from 0 to {MAX_SEED}, got {opt.sys_seed}')
    network_side('--segmentation-validation-resize-height')
    network_side('--segmentation-validation-resize-width')
    positive('--segmentation-validation-batch-size')
    _check_count(parser, opt, '--segmentation-eval-num-images')
    loader_names('--segmentation-validation-loaders', 'validation')
    unknown = [remap for remap in _split(opt.segmentation_eval_remaps) if remap not in REMAPS]
    if unknown or not _split(opt.segmentation_eval_remaps):
        parser.error(f'--segmentation-eval-remaps: unknown remap {",".join(unknown) or "(empty)"}; '
                     f'choose from {", ".join(REMAPS)}')
    if job in ('evaluate', 'sweep') and not opt.model_load:
        parser.error('--model-load is required: name a checkpoint folder relative to $UBNA_DIR_CHECKPOINT')
    if job == 'evaluate':
        _check_online(parser, opt)
        return
    for flag in ('--train-batches-per-epoch', '--train-num-epochs', '--train-checkpoint-frequency',
                 '--train-tb-frequency', '--train-print-frequency', '--train-scheduler-step-size'):
        positive(flag)
    if not opt.train_learning_rate > 0:
        parser.error(f'--train-learning-rate must be positive, got {opt.train_learning_rate}')
    if opt.train_weight_decay < 0:
        parser.error(f'--train-weight-decay must be 0 or more, got {opt.train_weight_decay}')
    if opt.train_scheduler_gamma is not None and not 0 < opt.train_scheduler_gamma <= 1:
        parser.error(f'--train-scheduler-gamma must be in (0, 1], got {opt.train_scheduler_gamma}')
    if job == 'train':
        loader_names('--segmentation-training-loaders', 'training')
        positive('--segmentation-training-batch-size')
        positive('--segmentation-resize-height')
        positive('--segmentation-resize-width')
        network_side('--segmentation-crop-height')
        network_side('--segmentation-crop-width')
        if (opt.segmentation_crop_height > opt.segmentation_resize_height
                or opt.segmentation_crop_width > opt.segmentation_resize_width):
            parser.error('--segmentation-crop-height/-width must not exceed --segmentation-resize-height/-width')
    if job in ('adapt', 'sweep'):
        loader_names('--adaptation-training-loaders', 'adaptation')
        for flag in ('--adaptation-training-batch-size', '--adaptation-resize-height', '--adaptation-resize-width',
                     '--adaptation-crop-height', '--adaptation-crop-width', '--adaptation-xlsx-frequency'):
            positive(flag)
        sizes = {}
        for name in _split(opt.adaptation_training_loaders):
            height, width = sizes[name] = loaders.adaptation_input_size(
                name, (opt.adaptation_resize_height, opt.adaptation_resize_width))
            if min(height, width) < 64 or height % 32 or width % 32:
                parser.error(f'--adaptation-resize-height/-width {opt.adaptation_resize_height}x'
                             f'{opt.adaptation_resize_width} give {name} network inputs of {height}x{width}, '
                             f'which must be multiples of 32 and at least 64')
        if len(set(sizes.values())) > 1:
            parser.error(f'--adaptation-training-loaders {opt.adaptation_training_loaders} give network inputs of '
                         f'{" and ".join(f"{h}x{w} ({name})" for name, (h, w) in sizes.items())}; their batches are '
                         f'joined into one, so adapt on loaders of one input size')
        if not 0 < opt.adaptation_batchnorm_momentum <= 1:
            parser.error(f'--adaptation-batchnorm-momentum must be in (0, 1], got {opt.adaptation_batchnorm_momentum}')
    if job == 'adapt':  # a sweep checks its lists of these settings instead
        positive('--adaptation-num-batches')
        for flag in ('--adaptation-alpha-batch', '--adaptation-alpha-layer'):
            if getattr(opt, flag[2:].replace('-', '_')) < 0:
                parser.error(f'{flag} must be 0 or more')


def run_seed(opt) -> int | None:
    """The seed of every generator: --sys-seed, else 1 with --sys-best-effort-determinism, else None (unseeded)."""
    if opt.sys_seed is not None:
        return opt.sys_seed
    return DEFAULT_SEED if opt.sys_best_effort_determinism else None


def encoder_depth(opt) -> int:
    """The depth flag that applies to --model-type."""
    return getattr(opt, BACKBONES[opt.model_type].depth_dest)


def build_parser(job: str, description: str, groups) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f'{job}.py', description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add_group in groups:
        add_group(parser)
    return parser


def _parse(job: str, description: str, groups, argv):
    parser = build_parser(job, description, groups)
    opt = parser.parse_args(argv)
    check_options(parser, opt, job)
    if job == 'evaluate':
        check_stream(parser, opt, argv, opt.online_method != 'none',
                     'does not apply to --online-method none, which never adapts')
    return opt


def parse_training_arguments(argv=None) -> argparse.Namespace:
    return _parse('train', 'Pre-train a segmentation network on a labelled source domain.',
                  (add_system_flags, add_model_flags, add_segmentation_validation_flags,
                   add_segmentation_training_flags, add_training_flags), argv)


def parse_adaptation_arguments(argv=None) -> argparse.Namespace:
    return _parse('adapt', "Adapt the encoder's BatchNorm statistics on unlabelled target images (UBNA).",
                  (add_system_flags, add_model_flags, add_segmentation_validation_flags, add_training_flags,
                   add_adaptation_flags), argv)


def parse_evaluation_arguments(argv=None) -> argparse.Namespace:
    return _parse('evaluate', 'Report mIoU of a checkpoint on the segmentation validation sets.',
                  (add_system_flags, add_model_flags, add_segmentation_validation_flags,
                   add_online_adaptation_flags), argv)
