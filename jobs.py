"""What every job does first (train.py, adapt.py, evaluate.py and the sweep): check the folder variables, set up the
runtime, take the experiment folder; then build the network and fill it from its checkpoint."""
from arguments import encoder_depth, run_seed
from dataloader import loaders, stream
from dataloader.paths import dataset_root
from experiment.folder import checkpoint_root, experiment_dir, lock_folder, save_options
from experiment.runtime import Runtime, setup_runtime
from state_manager import StateManager


def check_environment() -> None:
    """Fail before any work when either folder variable is missing or wrong."""
    dataset_root()
    checkpoint_root()


def open_job(opt, seed: int | None, training: bool = False) -> tuple[Runtime, str]:
    """The runtime and the experiment folder of a job; the main process locks the folder (which removes what a
    stopped run left there). opt.json waits for record_options, once every check that can fail has passed."""
    check_environment()
    runtime = setup_runtime(opt.sys_cpu, seed, opt.sys_precision, opt.sys_memory_format, training=training)
    folder = experiment_dir(opt.experiment_class, opt.model_name)
    if runtime.is_main:
        lock_folder(folder)
    return runtime, folder


def record_options(opt, runtime: Runtime, folder: str) -> None:
    """opt.json, written by the main process just before a job's first output: a run that fails its checks leaves
    the folder as it was."""
    if runtime.is_main:
        save_options(opt, folder)


def training_state(opt, runtime: Runtime) -> StateManager:
    """The network with Adam and StepLR as the training flags say (train.py, adapt.py); --model-load fills it, and
    its optimiser and schedule too unless --model-disable-lr-loading."""
    weights_init = 'checkpoint' if opt.model_load else opt.train_weights_init  # loaded weights replace any init
    state = StateManager(opt.model_type, encoder_depth(opt), weights_init, opt.train_learning_rate,
                         opt.train_weight_decay, opt.train_scheduler_step_size, opt.train_scheduler_gamma,
                         device=runtime.device, memory_format=runtime.memory_format)
    if opt.model_load:
        state.load(opt.model_load, weights_only=opt.model_disable_lr_loading)
    return state


def loaded_model(opt, runtime: Runtime):
    """The network of --model-load, weights only (evaluate.py, the sweep)."""
    state = StateManager(opt.model_type, encoder_depth(opt), 'checkpoint', device=runtime.device,
                         memory_format=runtime.memory_format)
    state.load(opt.model_load, weights_only=True)
    return state.model


def validation_loaders_from(opt, device) -> list:
    """The --segmentation-validation-* loaders of a job's options, for a network on `device`."""
    return loaders.validation_loaders(
        opt.segmentation_validation_loaders.split(','), opt.segmentation_validation_batch_size,
        (opt.segmentation_validation_resize_height, opt.segmentation_validation_resize_width),
        opt.sys_num_workers, on_gpu=device.type == 'cuda')


def stream_from(opt, device) -> tuple:
    """The plan and loader of the --online-* stream over the --segmentation-validation-loaders list."""
    return stream.stream_loader(
        opt.segmentation_validation_loaders.split(','), opt.segmentation_validation_batch_size,
        opt.online_stream_resize, opt.sys_num_workers, device.type == 'cuda', opt.online_rounds, opt.online_order,
        run_seed(opt))
