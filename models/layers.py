"""Building blocks that every backbone family shares: our BatchNorm2d and the five-stage encoder (spec §5)."""
import itertools

import torch
import torch.nn as nn


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that may write its output over its input: set `overwrite_input` for passes where nothing else
    reads that input, as in the encoders' statistics pass (each one's input is a convolution's fresh output). It
    does so on the CPU in float32 without autograd, through the kernel nn.BatchNorm2d runs there: the same numbers
    and running statistics, one feature map less to allocate and fill."""
    overwrite_input = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.overwrite_input and x.device.type == 'cpu' and x.dtype == torch.float32
                and not torch.is_grad_enabled()):
            return super().forward(x)
        momentum = 0.0  # as nn.BatchNorm2d: the running statistics move in training mode only, when tracked
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        tracked = not self.training or self.track_running_stats
        torch.ops.aten.native_batch_norm.out(
            x, self.weight, self.bias, self.running_mean if tracked else None, self.running_var if tracked else None,
            self.training, momentum, self.eps, out=x, save_mean=x.new_empty(0), save_invstd=x.new_empty(0))
        return x


class StagedEncoder(nn.Module):
    """An encoder as five stages of modules, each stage ending at one of the strides 2, 4, 8, 16, 32; `channels`
    holds the five stages' output channels, finest first."""
    channels: tuple

    def stages(self) -> tuple:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list:
        """The output of every stage, finest first."""
        features = []
        for stage in self.stages():
            for module in stage:
                x = module(x)
            features.append(x)
        return features

    def statistics_pass(self, x: torch.Tensor) -> None:
        """Every module for the BatchNorm layers' sake, one after the other so that each output is freed once the
        next module has read it; on the CPU without autograd the BatchNorm layers write over their inputs (see
        BatchNorm2d: nothing else reads them here)."""
        layers = [module for module in self.modules() if isinstance(module, BatchNorm2d)]
        for layer in layers:
            layer.overwrite_input = True
        try:
            for module in itertools.chain.from_iterable(self.stages()):
                x = module(x)
        finally:
            for layer in layers:
                layer.overwrite_input = False
