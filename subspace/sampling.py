"""Bank reduction: usage-based sampling (ours), random and greedy k-center coreset (PatchCore).

Each sampler has one method, ``run(bank, usage=None) -> (n_keep,) int64 row indices``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def budget(n: int, ratio: float) -> int:
    """Rows kept out of ``n`` at ``ratio`` (at least one)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"sampling ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, round(n * ratio)))


@dataclass(frozen=True)
class UsageSampler:
    """Keep the atoms the self-expressive codes use most (u_j = sum_i |c_ij|)."""

    ratio: float

    def run(self, bank: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
        """bank (N, d), usage (N,) -> kept row indices, most used first."""
        if usage is None:
            raise ValueError("usage sampling needs the self-expression usage scores")
        return torch.topk(usage, budget(bank.shape[0], self.ratio)).indices


@dataclass(frozen=True)
class RandomSampler:
    """Uniform random subset (seeded): the floor any sampler must beat."""

    ratio: float
    seed: int = 0

    def run(self, bank: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(bank.shape[0], generator=g)[: budget(bank.shape[0], self.ratio)]


@dataclass(frozen=True)
class CoresetSampler:
    """Greedy k-center coreset as PatchCore: iteratively add the row farthest from the set.

    Distances are taken in a random 128-dim projection (Johnson-Lindenstrauss), as PatchCore.
    """

    ratio: float
    seed: int = 0
    proj_dim: int = 128

    def run(self, bank: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
        n, d = bank.shape
        keep = budget(n, self.ratio)
        g = torch.Generator().manual_seed(self.seed)
        x = bank
        if d > self.proj_dim:
            x = bank @ torch.randn(d, self.proj_dim, generator=g) / self.proj_dim**0.5
        chosen = [int(torch.randint(n, (1,), generator=g))]
        min_d = (x - x[chosen[0]]).pow(2).sum(1)  # (N,) squared distance to the set
        for _ in range(keep - 1):
            nxt = int(torch.argmax(min_d))
            chosen.append(nxt)
            min_d = torch.minimum(min_d, (x - x[nxt]).pow(2).sum(1))
        return torch.tensor(chosen, dtype=torch.int64)


def make_sampler(name: str, ratio: float, seed: int = 0):
    """Sampler by name: ``usage``, ``random`` or ``coreset``."""
    if name == "usage":
        return UsageSampler(ratio)
    if name == "random":
        return RandomSampler(ratio, seed)
    if name == "coreset":
        return CoresetSampler(ratio, seed)
    raise ValueError(f"unknown sampling {name!r}; choose usage, random or coreset")
