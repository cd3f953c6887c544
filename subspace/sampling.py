"""Bank reduction: usage-based sampling (ours), random and greedy k-center coreset (PatchCore).

Each sampler has one method, ``run(bank, codes=None) -> (n_keep,) int64 row indices``; only
usage sampling needs ``codes``, the self-expression of the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reconstruct import Code, knn, label_rows, usage


def budget(n: int, ratio: float) -> int:
    """Rows kept out of ``n`` at ``ratio`` (at least one)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"sampling ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, round(n * ratio)))


@dataclass(frozen=True)
class UsageSampler:
    """Keep the atoms the self-expressive codes use most, greedily, without redundancy.

    The usage of atom j is u_j = sum_i |c_ij| over the codes c_i of all bank atoms. Plain
    top-usage picks crowd into dense regions: many atoms there are used for the same
    patches. So selection is greedy in rounds: an atom's gain is its usage by the atoms not
    yet served, where keeping j serves atom i by the share |c_ij| / |c_i|_1 of i's code and
    serves j itself fully. The first round is exactly top-usage.

    Codes only link an atom to its support, so an atom whose neighbourhood is already kept
    can still look unserved. With ``coverage`` = beta > 0, each later round also scales an
    atom's gain by (d_j / mean d)^beta, d_j its distance to the nearest atom kept so far: the
    kept atoms spread over the bank instead of piling up where usage is high.
    """

    ratio: float
    rounds: int = 50  # gains are recomputed this many times (each round keeps 1/rounds)
    coverage: float = 1.0  # beta: weight of the distance to the kept atoms (0: usage only)

    def run(
        self, bank: torch.Tensor, codes: Code | None = None, strata: torch.Tensor | None = None
    ) -> torch.Tensor:
        """bank (N, d), codes: the self-expression of the bank -> kept rows, in pick order.

        ``strata``: optional (N,) int group of each row (the edge rings, when codes are drawn
        within a ring). Each group then keeps its own share of the budget, picked greedily by
        gain inside the group, so that no group's atoms are crowded out by another's.
        """
        if codes is None:
            raise ValueError("usage sampling needs the self-expressive codes of the bank")
        n, keep = bank.shape[0], budget(bank.shape[0], self.ratio)
        groups = [torch.arange(n)] if strata is None else list(label_rows(strata).values())
        quota = _apportion([len(g) for g in groups], keep)
        steps = [max(1, -(-q // self.rounds)) for q in quota]
        mass = codes.coef.abs().sum(1).clamp_min(1e-12)  # (N,) |c_i|_1
        share = codes.coef.abs() / mass[:, None]  # (N, K) what each support atom carries
        self_gain = mass.mean()  # keeping j serves j itself, like a typical code
        chosen = torch.zeros(n, dtype=torch.bool)
        served = torch.zeros(n, dtype=mass.dtype)  # (N,) how much of each atom is served
        far = torch.full((n,), float("inf"), dtype=bank.dtype)  # (N,) distance to the kept
        order: list[torch.Tensor] = []
        done = [0] * len(groups)
        while sum(done) < keep:
            unserved = (1 - served).clamp_min(0)
            gain = usage(codes, n, unserved) + self_gain * unserved
            if self.coverage and order:
                gain = gain * (far / far[~chosen].mean().clamp_min(1e-12)).pow(self.coverage)
            gain[chosen] = -1.0
            picked = []
            for i, (rows, q, step) in enumerate(zip(groups, quota, steps, strict=True)):
                if done[i] < q:
                    pick = rows[torch.topk(gain[rows], min(step, q - done[i])).indices]
                    chosen[pick] = True
                    picked.append(pick)
                    done[i] += len(pick)
            order += picked
            if self.coverage:  # exact distance to the nearest of this round's picks
                far = torch.minimum(far, knn(bank, bank[torch.cat(picked)], 1)[2].sqrt())
            served = torch.where(chosen, 1.0, (share * chosen[codes.index]).sum(1))
        return torch.cat(order)


def _apportion(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainders; sum exact)."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    quota = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - quota[i], reverse=True)
    for i in by_remainder[: total - sum(quota)]:
        quota[i] += 1
    return quota


@dataclass(frozen=True)
class RandomSampler:
    """Uniform random subset (seeded): the floor any sampler must beat."""

    ratio: float
    seed: int = 0

    def run(self, bank: torch.Tensor, codes: Code | None = None) -> torch.Tensor:
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

    def run(self, bank: torch.Tensor, codes: Code | None = None) -> torch.Tensor:
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
    """Sampler by name: ``usage``, ``usage-greedy`` (no coverage), ``usage-top`` (one round,
    no coverage), ``random`` or ``coreset``."""
    if name == "usage":
        return UsageSampler(ratio)
    if name == "usage-greedy":  # greedy rounds by usage alone
        return UsageSampler(ratio, coverage=0.0)
    if name == "usage-top":  # the literal rule: the top ``ratio`` share by usage
        return UsageSampler(ratio, rounds=1, coverage=0.0)
    if name == "random":
        return RandomSampler(ratio, seed)
    if name == "coreset":
        return CoresetSampler(ratio, seed)
    raise ValueError(
        f"unknown sampling {name!r}; choose usage, usage-greedy, usage-top, random or coreset"
    )
