"""Bank samplers: usage (greedy over the self-expressive codes, with coverage), random, coreset."""

import pytest
import torch

from subspace.reconstruct import self_expression, usage
from subspace.sampling import UsageSampler, budget, make_sampler

SIZES = (400, 200, 100, 50, 25)  # points per cluster
CLUSTER = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))


@pytest.fixture(scope="module")
def clustered():
    """Five clusters of very different sizes in 16-D, and the bank's self-expression."""
    g = torch.Generator().manual_seed(0)
    centres = 6 * torch.randn(len(SIZES), 16, generator=g)
    parts = [c + torch.randn(n, 16, generator=g) for c, n in zip(centres, SIZES, strict=True)]
    bank = torch.cat(parts)
    return bank, self_expression(bank, 16, lam=0.1, alpha=0.5, affine=True)


def served(keep: torch.Tensor, codes, n: int) -> float:
    """Share of the bank that is kept or has a kept atom carrying part of its code."""
    kept = torch.zeros(n, dtype=torch.bool)
    kept[keep] = True
    uses_kept = ((codes.coef.abs() > 0) & kept[codes.index]).any(1)
    return float((kept | uses_kept).float().mean())


def test_usage_sampling_starts_with_the_most_used_atoms(clustered):
    bank, codes = clustered
    sampler = UsageSampler(0.1, rounds=4)
    keep = sampler.run(bank, codes)
    first = keep[: -(-budget(len(bank), 0.1) // 4)]
    top = torch.topk(usage(codes, len(bank)), len(first)).indices
    assert set(first.tolist()) == set(top.tolist())


def test_usage_sampling_serves_more_of_the_bank_than_top_usage(clustered):
    """Greedy rounds skip atoms whose users are already served: less redundancy."""
    bank, codes = clustered
    n = len(bank)
    for ratio in (0.05, 0.1):
        keep = UsageSampler(ratio).run(bank, codes)
        assert len(keep) == len(set(keep.tolist())) == budget(n, ratio)
        top = torch.topk(usage(codes, n), budget(n, ratio)).indices
        assert served(keep, codes, n) > served(top, codes, n) + 0.05
    assert set(CLUSTER[keep].tolist()) == set(range(len(SIZES)))  # at 10 %: every cluster kept
    assert set(CLUSTER[top].tolist()) != set(range(len(SIZES)))  # top usage misses the small


def test_coverage_spreads_the_kept_atoms_over_the_bank(clustered):
    """At 5 %, usage alone (greedy rounds) still leaves a small cluster without a kept atom;
    scaling gains by the distance to the kept atoms keeps every cluster and brings the bank
    closer to what is kept."""
    bank, codes = clustered

    def gap(keep):  # (mean, max) distance of a bank row to its nearest kept atom
        d = torch.cdist(bank, bank[keep]).min(1).values
        return float(d.mean()), float(d.max())

    spread = UsageSampler(0.05).run(bank, codes)
    alone = UsageSampler(0.05, coverage=0.0).run(bank, codes)
    assert len(set(spread.tolist())) == len(alone) == budget(len(bank), 0.05)
    assert set(CLUSTER[spread].tolist()) == set(range(len(SIZES)))
    assert set(CLUSTER[alone].tolist()) != set(range(len(SIZES)))
    (mean_s, max_s), (mean_a, max_a) = gap(spread), gap(alone)
    assert mean_s < 0.9 * mean_a and max_s < 0.5 * max_a
    first = -(-budget(len(bank), 0.05) // 50)  # the first round is usage alone either way
    assert spread[:first].tolist() == alone[:first].tolist()


def test_usage_sampling_gives_each_stratum_its_share(clustered):
    """With strata (the edge rings), codes stay inside a stratum and so must the budget: each
    keeps its share, picked by usage inside it. Unstratified, the big clusters crowd out the
    small ones' share."""
    bank, _ = clustered
    codes = self_expression(bank, 16, lam=0.1, alpha=0.5, affine=True, groups=(CLUSTER, CLUSTER))
    keep = UsageSampler(0.05, rounds=1).run(bank, codes, strata=CLUSTER)
    counts = torch.bincount(CLUSTER[keep], minlength=len(SIZES))
    assert counts.tolist() == [20, 10, 5, 3, 1]  # 5 % of 400, 200, 100, 50, 25 (largest remainders)
    for c in range(len(SIZES)):  # inside a stratum, the most used atoms go first
        mine, rows = keep[CLUSTER[keep] == c], torch.nonzero(CLUSTER.eq(c)).flatten()
        top = rows[torch.topk(usage(codes, len(bank))[rows], len(mine)).indices]
        assert set(mine.tolist()) == set(top.tolist())
    flat = UsageSampler(0.05, rounds=1).run(bank, codes)
    assert torch.bincount(CLUSTER[flat], minlength=len(SIZES)).tolist() != counts.tolist()


@pytest.mark.parametrize("name", ["usage", "usage-greedy", "usage-top", "random", "coreset"])
def test_samplers_keep_the_budget_of_distinct_rows(clustered, name):
    bank, codes = clustered
    keep = make_sampler(name, 0.1, seed=1).run(bank, codes)
    assert keep.dtype == torch.int64 and len(set(keep.tolist())) == budget(len(bank), 0.1)


def test_usage_sampling_needs_the_codes(clustered):
    with pytest.raises(ValueError, match="self-expressive codes"):
        UsageSampler(0.1).run(clustered[0])
