"""BatchNorm synchronised across DDP processes on any device (``trainer.sync_batchnorm=true``).

torch's ``SyncBatchNorm`` takes CUDA (XPU, HPU) tensors only, so CPU processes over gloo
(``trainer=ddp_cpu``) would each normalise with the statistics of their own share of the batch
and train another network than one process given the whole batch. ``SyncBatchNorm`` here sums a
batch's statistics over the processes with all-reduces that autograd differentiates (the
gradient of every process's loss reaches every process's inputs, as in torch's CUDA kernels).
``SyncBatchNormPlugin`` is Lightning's ``sync_batchnorm`` with it for gloo processes and torch's
otherwise (``configs/trainer/default.yaml``). It is no ``nn.SyncBatchNorm`` subclass: DDP refuses
those in a CPU model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """The sum over the processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(_BatchNorm):
    """A BatchNorm layer (of class ``unsynced``: 1d, 2d, 3d) whose training statistics are
    those of every process's samples: mean and (biased) variance in two passes, as one process
    computes them over the whole batch; the running statistics take the unbiased variance of all
    the samples. Unsynchronised (``_BatchNorm``'s forward) in eval mode and in one process."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        unsynced: type[_BatchNorm] = nn.BatchNorm2d,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.unsynced = unsynced

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized()
        if not (self.training and distributed and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        shape = (1, -1) + (1,) * (input.dim() - 2)  # per channel, broadcast over N, H, W
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = x.new_full((1,), x.numel() / x.shape[1])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum
                if factor is None:  # a cumulative average, as nn.BatchNorm
                    factor = 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1), factor)
        return out.to(input.dtype)


def _moved(source: _BatchNorm, kind: type[_BatchNorm], **kwargs: Any) -> _BatchNorm:
    """A ``kind`` BatchNorm holding ``source``'s parameters and statistics (the same tensors)."""
    target = kind(
        source.num_features,
        source.eps,
        source.momentum,
        source.affine,
        source.track_running_stats,
        **kwargs,
    )
    names = ["weight", "bias"] if source.affine else []
    if source.track_running_stats:
        names += ["running_mean", "running_var", "num_batches_tracked"]
    for name in names:
        setattr(target, name, getattr(source, name))
    return target.train(source.training)


def _replaced(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` with every submodule that ``replace`` maps to a module (not None) swapped."""
    new = replace(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        module.add_module(name, _replaced(child, replace))
    return module


class SyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning's layer sync with ``SyncBatchNorm`` above for processes over gloo (CPU) and
    torch's ``nn.SyncBatchNorm`` otherwise (NCCL: GPUs), when ``enabled``
    (``trainer.sync_batchnorm``): Lightning applies a LayerSync plugin whenever one is given, so
    ``enabled=false`` leaves the model as it is. Applied once the processes are connected."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def apply(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        if not (dist.is_initialized() and dist.get_backend() == "gloo"):
            return super().apply(model)

        def synced(m: nn.Module) -> nn.Module | None:
            if isinstance(m, SyncBatchNorm | nn.SyncBatchNorm) or not isinstance(m, _BatchNorm):
                return None
            return _moved(m, SyncBatchNorm, unsynced=type(m))

        return _replaced(model, synced)

    def revert(self, model: nn.Module) -> nn.Module:
        def unsynced(m: nn.Module) -> nn.Module | None:
            return _moved(m, m.unsynced) if isinstance(m, SyncBatchNorm) else None

        return super().revert(_replaced(model, unsynced))
