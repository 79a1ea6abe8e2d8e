"""StateManager: optimiser and schedule set-up, checkpoint save/load, published layouts and clear errors."""
import os

import pytest
import torch

from errors import UserError
from models.ubna import build_model
from models.backbones import BACKBONES  # noqa: E402
from state_manager import StateManager, describe_architecture
from experiment.folder import experiment_dir
from tests.support import ALL_BACKBONES, published_shapes

pytestmark = pytest.mark.usefixtures('one_thread', 'no_network')  # conftest.py

RUN = dict(weights_init='scratch', learning_rate=1e-4, weight_decay=0.0, scheduler_step_size=15)


class NotATensor:
    """Pickled as code, which weights_only loading refuses."""


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A temporary UBNA_DIR_CHECKPOINT."""
    monkeypatch.setenv('UBNA_DIR_CHECKPOINT', str(tmp_path))
    return tmp_path


def published_state(name: str) -> dict:
    """Random tensors with exactly the published keys and shapes; VGG aliases share tensors as in the reference."""
    torch.manual_seed(3)
    state = {}
    for key, shape in published_shapes(name).items():
        if key.endswith('num_batches_tracked'):
            state[key] = torch.randint(1, 1000, shape)
        elif '.classifier.' in key:  # ~120 M unused values: an expanded scalar keeps the file small
            state[key] = torch.randn(()).expand(shape)
        else:
            state[key] = torch.randn(shape)
    if name.startswith('vgg'):
        ends = (7, 14, 24, 34, 44)
        for stage, (start, end) in enumerate(zip((0,) + ends[:-1], ends), start=1):
            for index in range(end - start):
                for key in [k for k in state if k.startswith(f'common.encoder.encoder.conv{stage}.{index}.')]:
                    state[key] = state[key.replace(f'conv{stage}.{index}.', f'features.{start + index}.')]
    return state


def write_model_file(root, folder: str, state: dict) -> str:
    """Save `state` as <root>/<folder>/model.pth and return that path."""
    os.makedirs(root / folder, exist_ok=True)
    path = str(root / folder / 'model.pth')
    torch.save(state, path)
    return path


def nested_equal(a, b) -> bool:
    """Equality of nested dicts/lists holding tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(nested_equal(x, y) for x, y in zip(a, b))
    return a == b


def train_one_step(manager: StateManager) -> None:
    """One Adam step and one scheduler step, so that every state is non-trivial."""
    manager.model.train()
    loss = manager.model(torch.randn(2, 3, 64, 64)).square().mean()
    manager.optimizer.zero_grad()
    loss.backward()
    manager.optimizer.step()
    manager.scheduler.step()
    manager.step, manager.epoch = 7, 3


@pytest.mark.parametrize('model_type,num_layers,name', [('vgg', 16, 'vgg16'), ('resnet', 18, 'resnet18')])
def test_loads_published_layout(root, model_type, num_layers, name):
    state = published_state(name)
    write_model_file(root, 'published/checkpoints/epoch_20', state)
    manager = StateManager(model_type, num_layers, **RUN)
    manager.load('published/checkpoints/epoch_20', weights_only=True)
    loaded = manager.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


@pytest.mark.parametrize('model_type,num_layers', [('resnet', 18), ('vgg', 11)])
def test_save_load_round_trip(root, model_type, num_layers):
    torch.manual_seed(4)
    saved = StateManager(model_type, num_layers, **RUN)
    train_one_step(saved)
    folder = saved.save(str(root / 'class' / 'run'), 'epoch_3')
    assert sorted(os.listdir(folder)) == ['model.pth', 'optim.pth', 'scheduler.pth', 'train.pth']
    assert os.listdir(root / 'class' / 'run' / 'checkpoints') == ['epoch_3']
    assert torch.load(os.path.join(folder, 'train.pth'), weights_only=True) == {'step': 7, 'epoch': 3}

    torch.manual_seed(5)
    loaded = StateManager(model_type, num_layers, **RUN)
    loaded.load('class/run/checkpoints/epoch_3', weights_only=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(saved.model.eval()(x), loaded.model.eval()(x))
    assert nested_equal(loaded.optimizer.state_dict(), saved.optimizer.state_dict())
    assert nested_equal(loaded.scheduler.state_dict(), saved.scheduler.state_dict())
    assert (loaded.step, loaded.epoch) == (7, 3)


def test_saved_vgg_keys_are_the_published_ones_without_classifier(root):
    folder = StateManager('vgg', 16, **RUN).save(str(root / 'run'), 'epoch_0')
    saved = torch.load(os.path.join(folder, 'model.pth'), weights_only=True)
    expected = {k: v for k, v in published_shapes('vgg16').items() if '.classifier.' not in k}
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected


def test_gamma_is_learning_rate_unless_given():
    assert StateManager('resnet', 18, **RUN).scheduler.gamma == 1e-4
    manager = StateManager('resnet', 18, **RUN, scheduler_gamma=0.5)
    assert (manager.scheduler.gamma, manager.scheduler.step_size) == (0.5, 15)
    assert manager.optimizer.defaults['lr'] == 1e-4 and manager.optimizer.defaults['weight_decay'] == 0.0


def test_weights_only_loads_model_alone(root):
    saved = StateManager('resnet', 18, **RUN)
    train_one_step(saved)
    saved.save(str(root / 'run'), 'epoch_3')
    loaded = StateManager('resnet', 18, **RUN)
    loaded.load('run/checkpoints/epoch_3', weights_only=True)
    assert (loaded.step, loaded.epoch, loaded.scheduler.last_epoch) == (0, 0, 0)
    assert loaded.optimizer.state_dict()['state'] == {}
    assert torch.equal(loaded.model.seg.multires.convs[0].weight, saved.model.seg.multires.convs[0].weight)


def test_missing_optimizer_and_scheduler_are_warned_and_skipped(root, capsys):
    saved = StateManager('resnet', 18, **RUN)
    train_one_step(saved)
    folder = saved.save(str(root / 'run'), 'epoch_3')
    os.remove(os.path.join(folder, 'optim.pth'))
    os.remove(os.path.join(folder, 'scheduler.pth'))
    loaded = StateManager('resnet', 18, **RUN)
    loaded.load('run/checkpoints/epoch_3', weights_only=False)
    warnings = capsys.readouterr().err
    assert 'optim.pth not found' in warnings and 'scheduler.pth not found' in warnings
    assert (loaded.step, loaded.epoch) == (7, 3)


def test_an_unused_optimiser_is_carried_to_the_next_save_unchanged(root):
    """Adaptation never steps Adam: it is not built (no torch._dynamo import) and optim.pth is copied as loaded."""
    saved = StateManager('resnet', 18, **RUN)
    train_one_step(saved)
    source = saved.save(str(root / 'source'), 'epoch_3')
    adapted = StateManager('resnet', 18, 'checkpoint')
    adapted.load('source/checkpoints/epoch_3')
    target = adapted.save(str(root / 'adapted'), 'batch_50')
    assert adapted._optimizer is None
    with open(os.path.join(source, 'optim.pth'), 'rb') as a, open(os.path.join(target, 'optim.pth'), 'rb') as b:
        assert a.read() == b.read()
    for name in ('scheduler.pth', 'train.pth'):
        assert nested_equal(torch.load(os.path.join(target, name), weights_only=True),
                            torch.load(os.path.join(source, name), weights_only=True))
    resumed = StateManager('resnet', 18, **RUN)
    resumed.load('adapted/checkpoints/batch_50')
    assert nested_equal(resumed.optimizer.state_dict(), saved.optimizer.state_dict())
    assert nested_equal(resumed.scheduler.state_dict(), saved.scheduler.state_dict())


@pytest.mark.parametrize('learning_rate,weight_decay,gamma', [(1e-4, 0.0, None), (3e-3, 1e-5, 0.5)])
def test_the_states_of_an_optimiser_never_built_load_as_new_ones(root, learning_rate, weight_decay, gamma):
    options = dict(learning_rate=learning_rate, weight_decay=weight_decay, scheduler_step_size=7,
                   scheduler_gamma=gamma)
    StateManager('resnet', 18, 'scratch', **options).save(str(root / 'run'), 'batch_1')
    loaded = StateManager('resnet', 18, 'scratch', **options)
    loaded.load('run/checkpoints/batch_1')
    new = StateManager('resnet', 18, 'scratch', **options)
    assert nested_equal(loaded.optimizer.state_dict(), new.optimizer.state_dict())
    assert nested_equal(loaded.scheduler.state_dict(), new.scheduler.state_dict())


def test_an_optimiser_state_of_another_model_is_warned_and_a_new_one_saved(root, capsys):
    saved = StateManager('resnet', 18, **RUN)
    train_one_step(saved)
    folder = saved.save(str(root / 'run'), 'epoch_3')
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    torch.save(other, os.path.join(folder, 'optim.pth'))
    loaded = StateManager('resnet', 18, **RUN)
    loaded.load('run/checkpoints/epoch_3')
    assert 'optim.pth does not fit this model (1 parameters instead of' in capsys.readouterr().err
    again = loaded.save(str(root / 'again'), 'epoch_3')
    assert torch.load(os.path.join(again, 'optim.pth'), weights_only=True)['state'] == {}


@pytest.mark.parametrize('model_type,num_layers', ALL_BACKBONES)
def test_architecture_is_read_from_keys(model_type, num_layers):
    state = build_model(model_type, num_layers, 'scratch').state_dict()
    assert describe_architecture(state) == f'{model_type}{num_layers}'


def test_other_architecture_is_named(root):
    path = write_model_file(root, 'r18', published_state('resnet18'))
    with pytest.raises(UserError, match=f'^{path} holds a resnet18, but --model-type is vgg$'):
        StateManager('vgg', 16, **RUN).load('r18', weights_only=True)
    with pytest.raises(UserError, match=f'^{path} holds a resnet18, but --model-num-layers is 34$'):
        StateManager('resnet', 34, **RUN).load('r18', weights_only=True)


def test_missing_unknown_and_misshaped_keys_are_listed(root):
    state = published_state('resnet18')
    del state['seg.multires.convs.0.bias']
    state['seg.decoder.blocks.step_9.conv.weight'] = torch.zeros(16, 8, 3, 3)
    state['extra.weight'] = torch.zeros(1)
    path = write_model_file(root, 'bad', state)
    with pytest.raises(UserError) as error:
        StateManager('resnet', 18, **RUN).load('bad', weights_only=True)
    message = str(error.value)
    assert message.startswith(f'{path} does not fit the resnet18 network')
    assert 'seg.multires.convs.0.bias' in message and 'extra.weight' in message
    assert 'seg.decoder.blocks.step_9.conv.weight [16, 8, 3, 3] vs [16, 16, 3, 3]' in message


@pytest.mark.parametrize('content,reason', [(b'', 'not a readable PyTorch file'),
                                            (b'garbage' * 10, 'not a readable PyTorch file')])
def test_corrupt_model_file(root, content, reason):
    (root / 'corrupt').mkdir()
    (root / 'corrupt' / 'model.pth').write_bytes(content)
    with pytest.raises(UserError, match=f'{root}/corrupt/model.pth is {reason}'):
        StateManager('resnet', 18, **RUN).load('corrupt', weights_only=True)


def test_pickled_code_is_refused(root):
    path = write_model_file(root, 'code', {'x': NotATensor()})
    with pytest.raises(UserError, match=f'^{path} holds pickled code'):
        StateManager('resnet', 18, **RUN).load('code', weights_only=True)


def test_missing_folder_and_model_file_name_both_paths(root):
    manager = StateManager('resnet', 18, **RUN)
    with pytest.raises(UserError, match=f'folder nowhere/epoch_1 does not exist .*\\({root}/nowhere/epoch_1\\)'):
        manager.load('nowhere/epoch_1', weights_only=True)
    (root / 'empty').mkdir()
    with pytest.raises(UserError, match=f'folder empty holds no model.pth \\({root}/empty/model.pth\\)'):
        manager.load('empty', weights_only=True)


def test_save_replaces_whole_checkpoints_and_failures_keep_the_old_one(root, monkeypatch):
    manager = StateManager('resnet', 18, **RUN)
    manager.step = 1
    folder = manager.save(str(root / 'run'), 'batch_50')
    real_save = torch.save

    def fail_on_scheduler(obj, file, *args, **kwargs):
        if file.name.endswith('scheduler.pth'):
            raise OSError('disk full')
        real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', fail_on_scheduler)
    manager.step = 2
    with pytest.raises(OSError, match='disk full'):
        manager.save(str(root / 'run'), 'batch_50')
    assert os.listdir(root / 'run' / 'checkpoints') == ['batch_50']
    assert torch.load(os.path.join(folder, 'train.pth'), weights_only=True)['step'] == 1

    monkeypatch.setattr(torch, 'save', real_save)
    manager.save(str(root / 'run'), 'batch_50')
    assert os.listdir(root / 'run' / 'checkpoints') == ['batch_50']
    assert torch.load(os.path.join(folder, 'train.pth'), weights_only=True)['step'] == 2


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after the point where it is raised runs."""


def test_a_kill_between_the_two_renames_of_a_replacement_leaves_a_loadable_checkpoint(root, monkeypatch, capsys):
    manager = StateManager('resnet', 18, **RUN)
    manager.step = 1
    manager.save(str(root / 'run'), 'batch_50')
    real_replace, calls = os.replace, []

    def killed_on_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise Killed
        real_replace(source, target)

    monkeypatch.setattr(os, 'replace', killed_on_second_rename)
    manager.step = 2
    with pytest.raises(Killed):
        manager.save(str(root / 'run'), 'batch_50')
    monkeypatch.setattr(os, 'replace', real_replace)
    checkpoints = root / 'run' / 'checkpoints'
    assert not (checkpoints / 'batch_50').exists()  # the old copy is retired, the new one not yet in place
    (checkpoints / f'.epoch_1.{"0" * 32}.tmp').mkdir()  # and a save killed while it wrote its staging folder

    loaded = StateManager('resnet', 18, **RUN)
    loaded.load('run/checkpoints/batch_50')
    assert loaded.step == 2 and 'was being replaced when its writer stopped' in capsys.readouterr().err
    manager.save(str(root / 'run'), 'epoch_1')  # the next save finishes the swap and removes the leftovers
    assert sorted(os.listdir(checkpoints)) == ['batch_50', 'epoch_1']
    loaded.load('run/checkpoints/batch_50')
    assert loaded.step == 2 and capsys.readouterr().err == ''


def test_load_and_experiment_folder_stay_inside_the_checkpoint_root(root):
    with pytest.raises(UserError, match=r'\.\./outside leads outside UBNA_DIR_CHECKPOINT='):
        StateManager('resnet', 18, **RUN).load('../outside', weights_only=True)
    with pytest.raises(UserError, match='leads outside'):
        experiment_dir('/elsewhere', 'run')
    assert experiment_dir('series/2024', 'run') == os.path.join(str(root), 'series/2024', 'run')
