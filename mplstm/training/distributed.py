"""Data-parallel training under `torchrun`: process group, sharding, reductions, rank-0 I/O.

`torchrun` (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) starts one process per device; `init_world` joins them (NCCL on CUDA, gloo on
the CPU) and returns a `World`, the only object through which training talks to the other
ranks. Without those variables it returns a one-process `World` whose collectives are
no-ops, so `mplstm train` runs unchanged either way.

Conventions (docs/training.md):
- ``train.batch_size`` is the global batch: each of W ranks takes batch_size / W clips per
  step, and the loss of a step is the mean over the global batch, so the same config gives
  the same steps whatever W (within floating-point tolerance).
- `GlobalBatchSampler` deals an epoch's permutation (which depends on seed and epoch only)
  round-robin over the ranks, so global batch k of W ranks holds exactly the clips of
  batch k of one process.
- BatchNorm statistics are taken over the global batch (`sync_batchnorm`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data.distributed import DistributedSampler

# The variables torchrun sets for every worker; WORLD_SIZE alone decides whether we join.
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 600.0
_CPU = torch.device("cpu")


class DistributedError(RuntimeError):
    """A distributed launch that cannot work (missing torchrun variables, bad device split)."""


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The clip order of one epoch: a permutation depending only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and the collectives training uses.

    Every method that communicates must be called by every rank, in the same order.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and plots."""
        return self.rank == 0

    def log(self, message: str) -> None:
        """Print on rank 0 only (the other ranks' lines would repeat it)."""
        if self.is_main:
            print(message, flush=True)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum over ranks."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (e.g. a time limit: all stop together)."""
        return self.max([float(flag)])[0] > 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def rng_states(self) -> list[dict[str, Tensor | None]]:
        """Every rank's torch RNG states (CPU, and CUDA when used), for a checkpoint."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return self.gather({"cpu": torch.get_rng_state(), "cuda": cuda})

    def restore_rng(
        self, states: Sequence[dict[str, Tensor | None]] | None, seed: int, step: int = 0
    ) -> None:
        """Set this rank's RNG: its state from a checkpoint (`states`, one per rank), or,
        for a new run or a run saved with another number of ranks, a seed of its own.

        Rank 0 of a new run keeps the stream the model was initialised from, as one
        process does; the other ranks draw their own dropout masks.
        """
        if states and (len(states) == self.size or self.is_main):
            state = states[self.rank]
            torch.set_rng_state(state["cpu"])
            if self.device.type == "cuda" and state.get("cuda") is not None:
                torch.cuda.set_rng_state(state["cuda"], self.device)
        elif not self.is_main:
            torch.manual_seed(rank_seed(seed, self.rank, step))

    def _reduce(self, values: Sequence[float], op: dist.ReduceOp) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def _object_device(self) -> torch.device | None:
        # NCCL moves objects through the GPU; gloo through the CPU.
        return self.device if self.device.type == "cuda" else None


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The torch seed of rank > 0's own random draws (dropout, view dropout) from `step` on."""
    return (seed * 1_000_003 + step) * 7919 + rank


def init_world(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun set up, on this rank's device; one process: no group.

    `device` is the picked --device: under torchrun "cuda" becomes the GPU of LOCAL_RANK
    (NCCL); "cpu" uses gloo.
    `timeout_s` bounds every collective, so a rank whose peer died fails instead of hanging.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={size} but {', '.join(missing)} unset: launch with torchrun "
            "(docs/training.md), or unset WORLD_SIZE for one process"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = _rank_device(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def shutdown(world: World, finished: bool = False, timeout_s: float = 30.0) -> None:
    """Leave the process group; a failed rank gives up after `timeout_s` (a dead peer can
    block NCCL's teardown), so every rank exits.

    `finished` (every rank ran to the end): wait for all ranks first. A rank that tore
    its gloo group down while rank 0 still wrote its checkpoints and plots made rank 0's
    own teardown abort now and then ("terminate called without an active exception").
    A failed run skips the wait: its peers may never come. (The wait is bounded by the
    process group's own timeout, --dist-timeout.)
    """
    if not world.distributed or not dist.is_initialized():
        return

    def leave() -> None:
        if finished:
            dist.barrier()
        dist.destroy_process_group()

    worker = threading.Thread(target=leave, daemon=True)
    worker.start()
    worker.join(None if finished else timeout_s)
    if worker.is_alive():
        print(
            f"rank {world.rank}: process group teardown still blocked after {timeout_s:g} s; "
            "exiting without it",
            file=sys.stderr,
        )


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise DistributedError(
            f"--device {device} under torchrun: use --device cuda (or auto); "
            "each rank takes the GPU of its LOCAL_RANK"
        )
    if local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} GPU(s) on this node: "
            "start at most one process per GPU (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def local_batch_size(global_batch: int, world: World) -> int:
    """Clips per rank and step; the global batch must split evenly over the ranks."""
    if global_batch % world.size:
        raise DistributedError(
            f"train.batch_size {global_batch} is the global batch: it must be a multiple of "
            f"the number of processes ({world.size})"
        )
    return global_batch // world.size


class GlobalBatchSampler(DistributedSampler):
    """This rank's share of an epoch, global batch by global batch.

    The epoch's permutation (`epoch_order`: seed and epoch only; `set_epoch` picks the
    epoch) is dealt round-robin, position p to rank p mod W, so this rank's batch k
    (batch_size / W clips, fewer in a short last batch) and the other ranks' batch k are
    together global batch k of one process. A rank left with no clip in a last batch
    shorter than W takes a padding clip, which weighs nothing in the loss (`weights`), so
    every rank takes the same number of steps. `start_batch` skips the global batches a
    resumed epoch already took.
    """

    def __init__(
        self, length: int, world: World, global_batch: int, seed: int, start_batch: int = 0
    ) -> None:
        local_batch = local_batch_size(global_batch, world)
        super().__init__(
            range(length), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed
        )
        self.length = length
        self.global_batch = global_batch
        self.local_batch = local_batch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start_batch * self.local_batch :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start_batch * self.local_batch)

    def _indices(self) -> list[int]:
        order = epoch_order(self.length, self.seed, self.epoch)
        mine = order[self.rank :: self.num_replicas]
        if math.ceil(len(mine) / self.local_batch) < self.batches:
            mine.append(order[0])
        return mine

    @property
    def batches(self) -> int:
        """Global batches (optimizer steps) in an epoch."""
        return math.ceil(self.length / self.global_batch)

    def clips_in(self, batch: int) -> int:
        """Real clips (no padding) in global batch `batch` of the epoch."""
        return min(self.global_batch, self.length - batch * self.global_batch)

    def weights(self, batch: int, size: int) -> Tensor:
        """[size] 1.0 for this rank's real clips in global batch `batch`, 0.0 for padding."""
        slots = batch * self.local_batch + torch.arange(size)
        return (self.rank + self.num_replicas * slots < self.length).float()


def shard(length: int, world: World) -> list[int]:
    """This rank's indices of an evaluation set (round-robin, no padding: may be empty)."""
    return list(range(world.rank, length, world.size))


class _AllGather(torch.autograd.Function):
    """[W, ...] every rank's tensor; the gradient of each rank's slice sums over the ranks.

    (torch.distributed.nn's all_gather is deprecated and its replacement private; gloo
    has no reduce-scatter, so the backward all-reduces the small gathered gradient.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, on any device and backend.

    torch's SyncBatchNorm runs on GPUs only. Each rank computes its batch's mean and
    variance (torch.var_mean, numerically sound), the ranks exchange (count, mean, var)
    with a differentiable all-gather, and the global moments follow from the parallel
    variance formula. In eval mode, or with one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        count = input.numel() // input.shape[1]
        var, mean = torch.var_mean(input, dim=dims, correction=0)
        local = torch.cat([input.new_full((1,), float(count)), mean, var])
        gathered = _AllGather.apply(local)  # [W, 1 + 2C]
        c = mean.numel()
        counts, means, variances = gathered[:, :1], gathered[:, 1 : 1 + c], gathered[:, 1 + c :]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_var = (counts * (variances + (means - global_mean) ** 2)).sum(0) / total
        if self.track_running_stats:
            self._update_running_stats(global_mean.detach(), global_var.detach(), total.item())
        shape = [1, -1] + [1] * (input.dim() - 2)
        out = (input - global_mean.view(shape)) * torch.rsqrt(global_var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers that normalise over the global batch: torch's SyncBatchNorm on CUDA,
    `GlobalBatchNorm` on the CPU. Parameter and buffer names stay, so checkpoints load into
    the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        state = module.state_dict()
        synced = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
            device=next((t.device for t in state.values()), None),
        )  # fmt: skip
        synced.load_state_dict(state)
        return synced.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module


def wrap(model: nn.Module, world: World) -> nn.Module:
    """`model` as DistributedDataParallel with global-batch BatchNorm; unchanged with one rank."""
    if not world.distributed:
        return model
    model = sync_batchnorm(model, world.device)
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[world.device] if world.device.type == "cuda" else None,
        # Global-batch BatchNorm keeps the running statistics equal on every rank already.
        forward_sync_buffers=False,
    )
