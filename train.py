#!/usr/bin/env python3
"""Pre-train a segmentation network on a labelled source domain (spec §6).

Runs as one process, or under `torchrun --nproc_per_node=K train.py ...` with DistributedDataParallel.
"""
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from arguments import parse_training_arguments, run_seed
from dataloader import loaders
from dataloader.transforms import to_network_input
from errors import UserError, run_cli
from evaluation.pictures import strip
from evaluation.scoring import evaluate_model
from evaluation.tables import summary_table
from experiment.events import EventWriter
from experiment.runtime import LoopTimer, exit_process, teardown_runtime
from jobs import open_job, record_options, training_state, validation_loaders_from
from losses.segmentation import segmentation_loss
from state_manager import StateManager


def training_batches(opt, runtime) -> loaders.CyclingLoaders:
    """--train-batches-per-epoch batches per epoch from every training loader, each cycled."""
    data_loaders, on_gpu = [], runtime.device.type == 'cuda'
    for name in opt.segmentation_training_loaders.split(','):
        dataset = loaders.training_dataset(
            name, (opt.segmentation_resize_height, opt.segmentation_resize_width),
            (opt.segmentation_crop_height, opt.segmentation_crop_width))
        sampler = (DistributedSampler(dataset, runtime.world_size, runtime.rank, shuffle=True, drop_last=True)
                   if runtime.distributed else None)
        data_loaders.append(loaders.make_loader(dataset, opt.segmentation_training_batch_size, shuffle=True,
                                                drop_last=True, num_workers=opt.sys_num_workers,
                                                on_gpu=on_gpu, sampler=sampler))
    return loaders.CyclingLoaders(data_loaders, opt.train_batches_per_epoch)


def distributed_model(model, runtime, sync_batchnorm: bool):
    """Wrap for DistributedDataParallel under torchrun; the plain model otherwise."""
    if not runtime.distributed:
        return model
    if sync_batchnorm and runtime.device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
    return DistributedDataParallel(model, device_ids=device_ids)


class DivergenceCheck:
    """Stops training when a loss is not finite on some process (all stop together). Each step's check is read one
    step late: reading a GPU value waits for the GPU, and by then the next step is queued, so the GPU never idles
    for it (a diverged step's update is never saved: no checkpoint is written before the last check)."""

    def __init__(self, runtime, last_checkpoint: str | None):
        self.runtime, self.last_checkpoint = runtime, last_checkpoint
        self.unread = None

    def add(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Check the step before, then queue the check of this step's loss."""
        self.read()
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if self.runtime.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.unread = (finite, loss.detach(), epoch, step)

    def read(self) -> None:
        """Raise if the last queued check failed."""
        if self.unread is None:
            return
        finite, loss, epoch, step = self.unread
        self.unread = None
        if not finite.item():
            raise UserError(f'the loss became {loss.item()} at epoch {epoch}, step {step}; training stopped, the '
                            f'last good checkpoint is {self.last_checkpoint or "(none yet)"}')


def train_epoch(model, batches, loss_fn, scaler, state, runtime, opt, writers, last_checkpoint):
    """One epoch of weighted cross-entropy steps; logs every --train-tb/print-frequency steps."""
    model.train()
    device = runtime.device
    started, seen = time.time(), 0
    timer = LoopTimer(runtime)
    divergence = DivergenceCheck(runtime, last_checkpoint)
    progress = tqdm(timer.wrap(batches, count=lambda loader_batches: sum(len(b['input']) for b in loader_batches)),
                    desc=f'epoch {state.epoch + 1}/{opt.train_num_epochs}', total=len(batches),
                    disable=not runtime.is_main)
    for loader_batches in progress:
        images = to_network_input(loaders.joined(loader_batches, 'input'), device, runtime.memory_format)
        labels = loaders.joined(loader_batches, 'label').to(device, non_blocking=True).long()
        state.optimizer.zero_grad(set_to_none=True)  # before the forward pass, so as not to keep the old gradients
        with runtime.autocast():
            logits = model(images)
            loss = loss_fn(logits, labels)
        scaler.scale(loss).backward()
        scaler.step(state.optimizer)
        scaler.update()
        state.step += 1
        divergence.add(loss, state.epoch + 1, state.step)
        seen += len(images) * runtime.world_size
        if not runtime.is_main:
            continue
        if state.step % opt.train_tb_frequency == 0:
            writers['train'].add_scalar('loss', loss.item(), state.step)
            writers['train'].add_scalar('learning_rate', state.optimizer.param_groups[0]['lr'], state.step)
            picture = strip(loader_batches[0]['image'][0], logits[0].detach().argmax(0), labels[0])
            writers['images'].add_image('train/image_prediction_label', picture, state.step)
        if state.step % opt.train_print_frequency == 0:
            progress.write(f'epoch {state.epoch + 1} step {state.step}: loss {loss.item():.4f}, '
                           f'{seen / (time.time() - started):.1f} images/s')
    divergence.read()
    if runtime.is_main:
        print(timer.summary(f'train epoch {state.epoch + 1}'), flush=True)


def validate(model, validation, remaps, state, runtime, opt, writer) -> None:
    """mIoU on every validation loader, printed and sent to tensorboard."""
    scores, _ = evaluate_model(model, validation, remaps, runtime,
                               skip_unused_class=opt.segmentation_eval_skip_unused_class)
    print(summary_table(opt.model_name, scores), flush=True)
    for domain, matrices in scores.items():
        for remap, matrix in matrices.items():
            writer.add_scalar(f'{domain}/{remap}/miou', matrix.miou(), state.epoch)
            writer.add_scalar(f'{domain}/{remap}/accuracy', matrix.mean_accuracy(), state.epoch)


def main(argv=None) -> StateManager:
    opt = parse_training_arguments(argv)
    runtime, folder = open_job(opt, run_seed(opt), training=True)
    # data first: its errors are the common ones, and its workers decode while the network is built
    batches = training_batches(opt, runtime).start()
    validation = validation_loaders_from(opt, runtime.device) if runtime.is_main else []
    state = training_state(opt, runtime)
    state.build_optimizer()  # while the workers decode the first batches, not inside the first step
    model = distributed_model(state.model, runtime, opt.sys_sync_batchnorm)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=opt.sys_precision == 'fp16')  # fp16 gradients underflow
    remaps = opt.segmentation_eval_remaps.split(',')
    loss_fn = segmentation_loss().to(runtime.device)
    record_options(opt, runtime, folder)  # the checks that can fail have passed: the folder's first output
    writers = ({part: EventWriter(os.path.join(folder, part)) for part in ('train', 'validation', 'images')}
               if runtime.is_main else {})
    last_checkpoint = None
    while state.epoch < opt.train_num_epochs:
        train_epoch(model, batches, loss_fn, scaler, state, runtime, opt, writers, last_checkpoint)
        state.scheduler.step()
        state.epoch += 1
        if runtime.is_main:
            validate(state.model, validation, remaps, state, runtime, opt, writers['validation'])
            for writer in writers.values():  # a failed event write ends the run here, not in the logger thread
                writer.check()
            if state.epoch % opt.train_checkpoint_frequency == 0 or state.epoch == opt.train_num_epochs:
                last_checkpoint = state.save(folder, f'epoch_{state.epoch}')
                print(f'stored {last_checkpoint}', flush=True)
        if runtime.distributed:
            dist.barrier()
    for writer in writers.values():
        writer.close()
    teardown_runtime(runtime)
    return state


if __name__ == '__main__':
    exit_process(run_cli(main))
