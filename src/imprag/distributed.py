"""Process-group helpers shared by encoding and training: one code path for 1..N processes.

Launch N processes with `torchrun --standalone --nproc_per_node=N ...`; with one process (no WORLD_SIZE in
the environment) everything is a no-op. gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Dist", "init_from_env", "shutdown"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_error(self, failed: bool) -> bool:
        """True on every rank if any rank failed (so all ranks stop together instead of hanging)."""
        if self.world == 1:
            return failed
        flag = torch.tensor([1 if failed else 0], device=self._device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def mean(self, values: list[float]) -> list[float]:
        """The mean of each value over the processes (identity with one)."""
        if self.world == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(total)
        return (total / self.world).tolist()

    def max_(self, value: int) -> int:
        """The largest of each process's `value` (identity with one)."""
        if self.world == 1:
            return value
        top = torch.tensor([value], dtype=torch.int64, device=self._device())
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return int(top.item())

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over the processes in place (and return it); identity with one."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def _device() -> torch.device:
        """Where collectives' small tensors live: NCCL reduces GPU tensors only (this process's own GPU,
        set by init_from_env); gloo, CPU ones."""
        return (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` concatenated along dim 0 in rank order, (world * B, ...); every rank must
        pass the same shape. Only this rank's slice keeps its gradient; the others are constants here.

        This is the usual in-batch-negatives scheme: each rank scores its queries against all ranks'
        passages and backpropagates into its own embeddings only. Query gradients are exact; a passage
        gets gradient only from its own rank's queries (the terms where other ranks' queries score it are
        dropped -- `torch.distributed.nn.all_gather` would keep them at the cost of a backward
        all-reduce). The ranks' losses sum to the one-process loss (the 2-process test checks all three)."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.detach().contiguous())
        parts[self.rank] = tensor
        return torch.cat(parts, dim=0)


_joined = False  # whether init_from_env created the process group (shutdown destroys only that one)


def init_from_env() -> Dist:
    """Join the process group torchrun set up (if any) and return this process's rank and world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # one GPU per process, chosen before NCCL binds (untested here: no GPU)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        global _joined
        _joined = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def shutdown() -> None:
    """Destroy the process group, if one was joined, while the interpreter is still whole.

    Call it once the ranks have finished together (a normal end, or an error every rank learned of through
    `Dist.broadcast_error`). A process that exits with the group alive leaves gloo's worker threads to
    the interpreter's finalisation, which aborts with "terminate called without an active exception"
    (SIGABRT) now and then -- after all the work is done. Not for an unexpected crash of one rank: the
    others may still wait in a collective, and the launcher stops them anyway."""
    global _joined
    if _joined and dist.is_initialized():  # a group the caller made is the caller's to end
        dist.destroy_process_group()
    _joined = False
