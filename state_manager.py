"""The state of a run: model, Adam and StepLR, saved to and restored from checkpoint folders (spec §1, §6)."""
import os
import pickle
import re
import shutil
import sys
import zipfile

import torch
import torch.nn as nn

from errors import UserError, first_line
from experiment.folder import checkpoint_path, writing
from experiment.staging import interrupted_swap, staging_folder, tidy_checkpoints
from models import backbones
from models.ubna import build_model

ENCODER_PREFIX = 'common.encoder.encoder.'
MAX_LISTED_KEYS = 3
PICKLED_CODE_ERRORS = r'GLOBAL|unrecognized function|Can only create new object'  # torch's weights_only refusals


def read_torch_file(path: str, mmap: bool = False) -> object:
    """torch.load(weights_only=True) onto the CPU; unreadable files and pickled code become a UserError.
    mmap: tensors are mapped from the file, read when used (old non-zip files are read whole)."""
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(PICKLED_CODE_ERRORS, str(exc)):
            raise UserError(f'{path} holds pickled code besides tensors, which is refused for safety') from exc
        raise UserError(f'{path} is not a readable PyTorch file ({first_line(exc)})') from exc
    except Exception as exc:  # a corrupt file fails in many ways (EOFError, KeyError, RuntimeError, ...)
        raise UserError(f'{path} is not a readable PyTorch file ({first_line(exc)})') from exc


def load_model_state(path: str) -> dict:
    """The state_dict stored in `path` (published layouts included), checked to map names to tensors; its tensors
    are mapped from the file (copied into the model, they never take heap memory of their own)."""
    state = read_torch_file(path, mmap=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f'{path} does not hold a model state_dict (a mapping of names to tensors)')
    return state


def describe_architecture(state: dict) -> str | None:
    """'vgg16', 'resnet50', ... as read from the encoder keys of a state_dict; None when unrecognisable."""
    return backbones.describe_architecture(state, ENCODER_PREFIX)


def _listing(kind: str, items: list) -> str:
    shown = ', '.join(items[:MAX_LISTED_KEYS]) + (', ...' if len(items) > MAX_LISTED_KEYS else '')
    return f'{len(items)} {kind} ({shown})'


def restore_model(model: nn.Module, state: dict, path: str) -> None:
    """Copy `state` into the UBNA model; aliased VGG keys may appear once or twice, ImageNet heads are ignored."""
    expected = f'{model.model_type}{model.num_layers}'
    found = backbones.checkpoint_architecture(state, ENCODER_PREFIX)
    if found is not None and found != (model.model_type, model.num_layers):
        family, depth = found
        if family != model.model_type:
            raise UserError(f'{path} holds a {family}{depth}, but --model-type is {model.model_type}')
        depth_flag = backbones.BACKBONES[model.model_type].depth_flag
        raise UserError(f'{path} holds a {family}{depth}, but {depth_flag} is {model.num_layers}')
    targets = model.state_dict(keep_vars=True)
    aliases = {}  # one entry per tensor, listing every key that names it
    for key, tensor in targets.items():
        aliases.setdefault(id(tensor), []).append(key)
    to_load, missing, mismatched = {}, [], []
    for keys in aliases.values():
        source = next((key for key in keys if key in state), None)
        if source is None:
            missing.append(keys[0])
        elif state[source].shape != targets[keys[0]].shape:
            mismatched.append(f'{source} {list(state[source].shape)} vs {list(targets[keys[0]].shape)}')
        else:
            to_load.update((key, state[source]) for key in keys)
    unused_heads = tuple(ENCODER_PREFIX + head for head in backbones.imagenet_heads())  # ImageNet heads, never used
    unknown = [key for key in state if key not in targets and not key.startswith(unused_heads)]
    if missing or mismatched or unknown:
        problems = [_listing(kind, items) for kind, items in
                    (('missing keys', missing), ('shape mismatches (file vs model)', mismatched),
                     ('unknown keys', unknown)) if items]
        raise UserError(f'{path} does not fit the {expected} network: {"; ".join(problems)}')
    model.load_state_dict(to_load)


def _warn(message: str) -> None:
    print(f'warning: {message}', file=sys.stderr)


def contiguous_state(model: nn.Module) -> dict:
    """The state_dict in the usual layout (a channels_last run's conv weights are copied back), as any reader
    of model.pth expects."""
    state = model.state_dict()  # an OrderedDict with the modules' versions in _metadata, kept
    for key, value in state.items():
        state[key] = value.contiguous()
    return state


def fresh_optimizer_state(num_parameters: int, learning_rate: float, weight_decay: float) -> dict:
    """What a new Adam (with StepLR attached) saves: one group's hyperparameters and no moments. Adam's
    load_state_dict adds the keys that newer torch versions save."""
    return {'state': {}, 'param_groups': [{
        'lr': learning_rate, 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': weight_decay, 'amsgrad': False,
        'initial_lr': learning_rate, 'params': list(range(num_parameters))}]}


def fresh_scheduler_state(learning_rate: float, step_size: int, gamma: float) -> dict:
    """What a new StepLR saves."""
    return {'step_size': step_size, 'gamma': gamma, 'base_lrs': [learning_rate], 'last_epoch': 0, '_step_count': 1,
            '_last_lr': [learning_rate]}


def optimizer_state_misfit(state: object, num_parameters: int) -> str | None:
    """Why Adam.load_state_dict would refuse `state` for a model with `num_parameters` (one group); None if it fits."""
    if not isinstance(state, dict) or not isinstance(state.get('state'), dict) \
            or not isinstance(state.get('param_groups'), list):
        return 'not an optimiser state'
    groups = state['param_groups']
    if len(groups) != 1 or not isinstance(groups[0], dict) or not isinstance(groups[0].get('params'), list):
        return f'{len(groups)} parameter groups instead of 1'
    if len(groups[0]['params']) != num_parameters:
        return f'{len(groups[0]["params"])} parameters instead of {num_parameters}'
    return None


def _save_synced(obj: object, path: str) -> None:
    with open(path, 'wb') as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())


def _copy_synced(origin, path: str) -> None:
    origin.seek(0)
    with open(path, 'wb') as file:
        shutil.copyfileobj(origin, file)
        file.flush()
        os.fsync(file.fileno())


def _fsync_folder(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _tensor_bytes(state: object) -> int:
    """The bytes of the tensors in a nested state (what torch.save writes, but for a little framing)."""
    if isinstance(state, torch.Tensor):
        return state.nbytes
    if isinstance(state, dict):
        return sum(map(_tensor_bytes, state.values()))
    if isinstance(state, (list, tuple)):
        return sum(map(_tensor_bytes, state))
    return 0


def _swap_into_place(staging: str, target: str) -> None:
    """Rename a complete staging folder to `target`; an existing one is deleted only once the new one is in place.
    A kill between the two renames leaves no `target` but two complete copies, the retired one and the staged one:
    load() then reads the staged one and the next save() renames it into place."""
    if os.path.isdir(target):
        retired = staging + '.old'
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired)
    else:
        os.replace(staging, target)


class StateManager:
    """Builds the model, Adam and StepLR; keeps step and epoch; saves and loads checkpoint folders.

    Adam and StepLR are built when first used (training): adaptation and evaluation never step them, and building
    an optimiser imports torch._dynamo (about 2 s). Until then, what a loaded checkpoint held for them is carried
    unchanged to the next save (its optim.pth copied, never held in memory).
    """

    def __init__(self, model_type: str, num_layers: int, weights_init: str, learning_rate: float = 1e-4,
                 weight_decay: float = 0.0, scheduler_step_size: int = 15, scheduler_gamma: float | None = None,
                 device: str | torch.device = 'cpu', memory_format: torch.memory_format = torch.contiguous_format):
        self.device = torch.device(device)
        self.model = build_model(model_type, num_layers, weights_init, self.device, memory_format)
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.scheduler_step_size = scheduler_step_size
        self.scheduler_gamma = learning_rate if scheduler_gamma is None else scheduler_gamma  # spec §6 quirk
        self._optimizer = self._scheduler = None
        self._carried_optimizer = None  # (path, open file) of a loaded optim.pth that fits, until it is used
        self._carried_scheduler = None  # a loaded scheduler state, until a scheduler takes it
        self.step = 0
        self.epoch = 0

    @property
    def optimizer(self) -> torch.optim.Adam:
        self.build_optimizer()
        return self._optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.StepLR:
        self.build_optimizer()
        return self._scheduler

    def build_optimizer(self) -> None:
        """Adam and StepLR, then the carried states (in the reference's order: optimiser, then scheduler), unless
        built already. Called before a timed loop, since the first optimiser imports torch._dynamo (seconds);
        otherwise at first use."""
        if self._optimizer is not None:
            return
        self._optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate,
                                           weight_decay=self.weight_decay)
        self._scheduler = torch.optim.lr_scheduler.StepLR(self._optimizer, self.scheduler_step_size,
                                                          self.scheduler_gamma)
        if self._carried_optimizer is not None:
            path, file = self._carried_optimizer
            self._carried_optimizer = None
            with file:
                self._take_optimizer_state(path)
        if self._carried_scheduler is not None:
            self._scheduler.load_state_dict(self._carried_scheduler)
            self._carried_scheduler = None

    def _take_optimizer_state(self, path: str) -> None:
        try:
            self._optimizer.load_state_dict(read_torch_file(path))
        except (ValueError, KeyError, TypeError) as exc:  # as the reference: a misfit optimiser is skipped
            _warn(f'{path} does not fit this model ({first_line(exc)}), the optimiser starts afresh')

    def _optimizer_file(self, path: str) -> None:
        """Write optim.pth: the optimiser's state, else the carried file, else a new optimiser's state."""
        if self._optimizer is not None:
            _save_synced(self._optimizer.state_dict(), path)
        elif self._carried_optimizer is not None:  # copied from the file opened at load: a later swap may move it
            _copy_synced(self._carried_optimizer[1], path)
        else:
            _save_synced(fresh_optimizer_state(len(list(self.model.parameters())), self.learning_rate,
                                               self.weight_decay), path)

    def _scheduler_state(self) -> dict:
        if self._scheduler is not None:
            return self._scheduler.state_dict()
        if self._carried_scheduler is not None:
            return self._carried_scheduler
        return fresh_scheduler_state(self.learning_rate, self.scheduler_step_size, self.scheduler_gamma)

    def save(self, experiment_dir: str, name: str) -> str:
        """Write experiment_dir/checkpoints/<name>/{model,optim,scheduler,train}.pth as a whole; return the folder.
        A failed write (a full disk, a quota) leaves no trace of it and ends the run in one sentence."""
        checkpoints = os.path.join(experiment_dir, 'checkpoints')
        with writing(f'the checkpoint {name}', checkpoints, self._checkpoint_bytes):
            os.makedirs(checkpoints, exist_ok=True)
            tidy_checkpoints(checkpoints)
            target = os.path.join(checkpoints, name)
            staging = staging_folder(checkpoints, name)  # renamed into place when complete
            try:
                os.mkdir(staging)
                _save_synced(contiguous_state(self.model), os.path.join(staging, 'model.pth'))
                self._optimizer_file(os.path.join(staging, 'optim.pth'))
                _save_synced(self._scheduler_state(), os.path.join(staging, 'scheduler.pth'))
                _save_synced({'step': self.step, 'epoch': self.epoch}, os.path.join(staging, 'train.pth'))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _swap_into_place(staging, target)
            _fsync_folder(checkpoints)
        return target

    def _checkpoint_bytes(self) -> int:
        """About the size of a checkpoint of this state: its tensors (the carried optim.pth as its file)."""
        if self._optimizer is not None:
            optimizer = _tensor_bytes(self._optimizer.state_dict())
        elif self._carried_optimizer is not None:
            optimizer = os.fstat(self._carried_optimizer[1].fileno()).st_size
        else:
            optimizer = 0
        return _tensor_bytes(self.model.state_dict()) + optimizer

    def load(self, folder: str, weights_only: bool = False) -> None:
        """Restore from a checkpoint folder relative to UBNA_DIR_CHECKPOINT; weights_only loads model.pth alone."""
        full = checkpoint_path(folder)
        complete = interrupted_swap(full)
        if complete is not None:
            _warn(f'the checkpoint {folder} was being replaced when its writer stopped; loading its copy {complete}')
            full = complete
        if not os.path.isdir(full):
            raise UserError(f'the checkpoint folder {folder} does not exist in UBNA_DIR_CHECKPOINT ({full})')
        model_path = os.path.join(full, 'model.pth')
        if not os.path.isfile(model_path):
            raise UserError(f'the checkpoint folder {folder} holds no model.pth ({model_path})')
        restore_model(self.model, load_model_state(model_path), model_path)
        if weights_only:
            return
        self._load_optimizer(os.path.join(full, 'optim.pth'))
        self._load_scheduler(os.path.join(full, 'scheduler.pth'))
        self._load_training(os.path.join(full, 'train.pth'))

    def _load_optimizer(self, path: str) -> None:
        """Check optim.pth now (its tensors stay on disk) and carry it to the optimiser or the next save."""
        if not os.path.isfile(path):
            _warn(f'{path} not found, the optimiser starts afresh')
            return
        misfit = optimizer_state_misfit(read_torch_file(path, mmap=True), len(list(self.model.parameters())))
        if misfit:  # as the reference: an optimiser of another setup is skipped
            _warn(f'{path} does not fit this model ({misfit}), the optimiser starts afresh')
            return
        if self._optimizer is None:
            self._carried_optimizer = (path, open(path, 'rb'))
        else:
            self._take_optimizer_state(path)

    def _load_scheduler(self, path: str) -> None:
        if not os.path.isfile(path):
            _warn(f'{path} not found, the learning-rate schedule starts afresh')
            return
        state = read_torch_file(path)
        if not isinstance(state, dict):
            raise UserError(f'{path} does not hold a learning-rate scheduler state')
        if self._scheduler is None:
            self._carried_scheduler = state
        else:
            self._scheduler.load_state_dict(state)

    def _load_training(self, path: str) -> None:
        if not os.path.isfile(path):
            _warn(f'{path} not found, step and epoch start at 0')
            return
        state = read_torch_file(path)
        if not (isinstance(state, dict) and isinstance(state.get('step'), int) and isinstance(state.get('epoch'), int)):
            raise UserError(f"{path} does not hold {{'step': int, 'epoch': int}}")
        self.step, self.epoch = state['step'], state['epoch']
