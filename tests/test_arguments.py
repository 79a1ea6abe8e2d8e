"""Flags of spec §9: names, defaults, and one clear message per bad value."""
import pytest

from arguments import (encoder_depth, parse_adaptation_arguments, parse_evaluation_arguments,
                       parse_training_arguments)


def test_training_defaults_match_the_spec():
    opt = parse_training_arguments([])
    assert (opt.sys_cpu, opt.sys_num_workers, opt.sys_best_effort_determinism) == (False, 3, False)
    assert (opt.model_type, opt.model_num_layers, opt.model_num_layers_vgg) == ('resnet', 18, 16)
    assert (opt.experiment_class, opt.model_name, opt.model_load) == ('iccv_experiments', 'ubna', None)
    assert (opt.segmentation_validation_resize_height, opt.segmentation_validation_resize_width) == (512, 1024)
    assert opt.segmentation_validation_loaders == 'cityscapes_validation'
    assert (opt.segmentation_validation_batch_size, opt.segmentation_eval_num_images) == (1, 20)
    assert opt.segmentation_eval_remaps == 'none'
    assert (opt.segmentation_training_loaders, opt.segmentation_training_batch_size) == ('cityscapes_train', 6)
    assert (opt.segmentation_resize_height, opt.segmentation_resize_width) == (512, 1024)
    assert (opt.segmentation_crop_height, opt.segmentation_crop_width) == (192, 640)
    assert (opt.train_batches_per_epoch, opt.train_num_epochs, opt.train_checkpoint_frequency) == (9645, 20, 5)
    assert (opt.train_tb_frequency, opt.train_print_frequency) == (500, 2500)
    assert (opt.train_learning_rate, opt.train_scheduler_step_size, opt.train_weight_decay) == (1e-4, 15, 0)
    assert opt.train_scheduler_gamma is None and opt.train_weights_init == 'pretrained'


def test_adaptation_defaults_match_the_spec():
    opt = parse_adaptation_arguments([])
    assert opt.adaptation_training_loaders == 'kitti_kitti_train'
    assert (opt.adaptation_training_batch_size, opt.adaptation_num_batches) == (6, 50)
    assert (opt.adaptation_resize_height, opt.adaptation_resize_width) == (192, 640)
    assert (opt.adaptation_crop_height, opt.adaptation_crop_width) == (192, 640)
    assert opt.adaptation_mode_sequential == 'none'
    assert opt.adaptation_alpha_batch == opt.adaptation_alpha_layer == opt.adaptation_batchnorm_momentum == 0.1
    assert opt.adaptation_xlsx_frequency == 1
    assert not hasattr(opt, 'segmentation_training_loaders')  # adapt.py has no segmentation training group


def test_evaluation_accepts_only_its_groups_and_needs_model_load(capsys):
    opt = parse_evaluation_arguments(['--model-load', 'a/checkpoints/epoch_1', '--model-type', 'vgg'])
    assert encoder_depth(opt) == 16 and not hasattr(opt, 'train_learning_rate')
    with pytest.raises(SystemExit):
        parse_evaluation_arguments([])
    assert '--model-load is required' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_evaluation_arguments(['--model-load', 'x', '--adaptation-num-batches', '3'])


@pytest.mark.parametrize('parse, argv, message', [
    (parse_training_arguments, ['--segmentation-crop-height', '100'],
     '--segmentation-crop-height must be a multiple of 32 and at least 64, got 100'),
    (parse_training_arguments, ['--segmentation-crop-height', '32'], 'at least 64, got 32'),
    (parse_adaptation_arguments, ['--adaptation-training-loaders', 'cityscapes_sequence_train',
                                  '--adaptation-resize-height', '200', '--adaptation-resize-width', '512'],
     'give cityscapes_sequence_train network inputs of 125x512'),
    (parse_adaptation_arguments, ['--adaptation-resize-height', '100'], 'network inputs of 100x640'),
    (parse_adaptation_arguments, ['--adaptation-training-loaders', 'kitti_kitti_train,cityscapes_sequence_train',
                                  '--adaptation-resize-height', '512', '--adaptation-resize-width', '1024'],
     'give network inputs of 512x1024 (kitti_kitti_train) and 320x1024 (cityscapes_sequence_train); their batches '
     'are joined into one'),
    (parse_training_arguments, ['--segmentation-crop-width', '2048'], 'must not exceed'),
    (parse_training_arguments, ['--segmentation-training-batch-size', '0'],
     '--segmentation-training-batch-size must be at least 1, got 0'),
    (parse_training_arguments, ['--segmentation-training-loaders', 'gta6_train'], 'gta6_train'),
    (parse_training_arguments, ['--segmentation-validation-resize-height', '500'], 'multiple of 32'),
    (parse_training_arguments, ['--train-scheduler-gamma', '2'], '--train-scheduler-gamma must be in (0, 1]'),
    (parse_adaptation_arguments, ['--adaptation-batchnorm-momentum', '0'],
     '--adaptation-batchnorm-momentum must be in (0, 1]'),
    (parse_adaptation_arguments, ['--adaptation-batchnorm-momentum', '1.5'], 'must be in (0, 1]'),
    (parse_adaptation_arguments, ['--adaptation-alpha-batch', '-0.1'], '--adaptation-alpha-batch must be 0 or more'),
    (parse_adaptation_arguments, ['--adaptation-alpha-layer', '-1'], '--adaptation-alpha-layer must be 0 or more'),
    (parse_adaptation_arguments, ['--adaptation-num-batches', '0'], '--adaptation-num-batches must be at least 1'),
    (parse_adaptation_arguments, ['--adaptation-training-loaders', 'kitti_train'], 'kitti_kitti_train'),
    (parse_evaluation_arguments, ['--model-load', 'x', '--segmentation-eval-remaps', 'synthia_12'],
     'unknown remap synthia_12'),
    (parse_evaluation_arguments, ['--model-load', 'x', '--segmentation-validation-loaders', 'kitti'],
     'cityscapes_validation'),
])
def test_bad_values_end_with_one_clear_message(parse, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_target_only_and_gamma_are_our_additions():
    opt = parse_adaptation_arguments(['--adaptation-mode-sequential', 'target_only'])
    assert opt.adaptation_mode_sequential == 'target_only'
    assert parse_training_arguments(['--train-scheduler-gamma', '0.1']).train_scheduler_gamma == 0.1


FLOAT_FLAGS = {parse_training_arguments: ('--train-learning-rate', '--train-weight-decay', '--train-scheduler-gamma'),
               parse_adaptation_arguments: ('--adaptation-alpha-batch', '--adaptation-alpha-layer',
                                            '--adaptation-batchnorm-momentum', '--train-learning-rate')}


@pytest.mark.parametrize('parse, flag', [(parse, flag) for parse, flags in FLOAT_FLAGS.items() for flag in flags])
@pytest.mark.parametrize('value', ['nan', 'inf', '-inf'])
def test_every_float_flag_must_be_finite(parse, flag, value, capsys):
    with pytest.raises(SystemExit):
        parse([f'{flag}={value}'])  # '=' lets argparse take '-inf' as a value
    assert f'error: {flag} must be a finite number, got {float(value)}' in capsys.readouterr().err


@pytest.mark.parametrize('flag', ['--experiment-class', '--model-name', '--model-load'])
@pytest.mark.parametrize('value, problem', [
    ('', 'is empty'), ('/abs/path', 'is an absolute path'), ('a\0b', 'holds a NUL character'),
    ('..', "has an empty, '.' or '..' part"), ('a/../../b', "'..' part"), ('a//b', "'..' part"), ('.', "'..' part"),
])
def test_folder_names_must_stay_inside_the_checkpoint_root(flag, value, problem, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_evaluation_arguments(['--model-load', 'x/checkpoints/epoch_1', flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f'evaluate.py: error: {flag} {value!r} ') and problem in error


def test_nested_folder_names_and_a_trailing_slash_are_fine():
    opt = parse_evaluation_arguments(['--experiment-class', 'paper/gta_to_cs', '--model-name', 'ubna_plus',
                                      '--model-load', 'paper/source/checkpoints/epoch_20/'])
    assert (opt.experiment_class, opt.model_load) == ('paper/gta_to_cs', 'paper/source/checkpoints/epoch_20/')


def test_unused_xlsx_frequency_is_still_a_count(capsys):
    with pytest.raises(SystemExit):
        parse_adaptation_arguments(['--adaptation-xlsx-frequency', '0'])
    assert '--adaptation-xlsx-frequency must be at least 1, got 0' in capsys.readouterr().err
