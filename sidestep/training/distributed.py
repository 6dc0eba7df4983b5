"""Data-parallel helpers: one process per device under torchrun; every rank takes the same optimiser steps."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def shard(order: list[int], rank: int, world: int) -> list[int]:
    """This rank's share of an epoch's order; the order is wrapped so every rank gets the same count."""
    if world == 1:
        return order
    per_rank = -(-len(order) // world)
    padded = (order * (per_rank * world // max(len(order), 1) + 1))[: per_rank * world]
    return padded[rank::world]


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks."""
    if not active():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of trainable parameters over all ranks (what DDP does, without wrapping the model)."""
    if not active():
        return
    world = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(world)


def any_true(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (so a stop is taken together)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        dist.barrier()


def check_in_sync(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every rank holds the same trainable weights (compares a float64 checksum across ranks)."""
    if not active():
        return True
    checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in parameters)], dtype=torch.float64)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())
