"""The self-expressive solver against independent references, and its structural properties."""

import pytest
import torch

from subspace.reconstruct import code, knn, self_expression, solve, usage


def coordinate_descent(y, atoms, l1, l2, nonneg=False, sweeps=2000):
    """Textbook cyclic coordinate descent for 1/2||y - A^T c||^2 + l1|c|_1 + l2/2|c|^2."""
    gram, b = atoms @ atoms.T, atoms @ y
    c = torch.zeros(atoms.shape[0], dtype=y.dtype)
    for _ in range(sweeps):
        for j in range(len(c)):
            rho = b[j] - gram[j] @ c + gram[j, j] * c[j]
            v = (rho - l1).clamp_min(0) if nonneg else rho.sign() * (rho.abs() - l1).clamp_min(0)
            c[j] = v / (gram[j, j] + l2)
    return c


def penalties(atoms, lam, alpha):
    s = atoms.pow(2).sum(-1).mean(-1)  # mean squared atom norm: lam is relative to it
    return lam * alpha * s, lam * (1 - alpha) * s + 1e-7 * s


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(12, 8, 20, generator=g, dtype=torch.float64)
    y = torch.randn(12, 20, generator=g, dtype=torch.float64)
    return y, atoms


@pytest.mark.parametrize(
    "lam,alpha,nonneg", [(0.1, 0.5, False), (0.5, 1.0, False), (0.05, 0.9, True), (0.2, 0.5, True)]
)
def test_elastic_net_matches_coordinate_descent(problem, lam, alpha, nonneg):
    y, atoms = problem
    c = solve(y, atoms, lam, alpha, nonneg=nonneg, iters=5000, tol=1e-12)
    for i in range(len(y)):
        l1, l2 = penalties(atoms[i], lam, alpha)
        ref = coordinate_descent(y[i], atoms[i], l1, l2, nonneg, sweeps=300)
        torch.testing.assert_close(c[i], ref, atol=1e-7, rtol=1e-6)
    assert (c == 0).any(), "an L1 penalty this strong must zero some coefficients"
    if nonneg:
        assert (c >= 0).all()


def test_ridge_matches_lstsq(problem):
    y, atoms = problem
    c = solve(y, atoms, 0.3, 0.0)
    for i in range(len(y)):
        _, l2 = penalties(atoms[i], 0.3, 0.0)
        a = torch.cat([atoms[i].T, l2.sqrt() * torch.eye(8, dtype=y.dtype)])  # (d + K, K)
        rhs = torch.cat([y[i], torch.zeros(8, dtype=y.dtype)])
        ref = torch.linalg.lstsq(a, rhs.unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(c[i], ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_affine_codes_satisfy_kkt(problem, alpha):
    """Affine elastic net: 1^T c = 1 and the subgradient optimality conditions hold."""
    y, atoms = problem
    lam = 0.1
    c = solve(y, atoms, lam, alpha, affine=True, iters=20000, tol=1e-13)
    torch.testing.assert_close(c.sum(1), torch.ones(len(y), dtype=y.dtype), atol=1e-8, rtol=0)
    for i in range(len(y)):
        l1, l2 = penalties(atoms[i], lam, alpha)
        grad = atoms[i] @ (atoms[i].T @ c[i] - y[i]) + l2 * c[i]  # smooth part's gradient
        on = c[i] != 0
        nu = -(grad[on] + l1 * c[i][on].sign()).mean()  # multiplier of 1^T c = 1
        torch.testing.assert_close(
            grad[on] + l1 * c[i][on].sign() + nu, torch.zeros_like(grad[on]), atol=1e-6, rtol=0
        )
        assert ((grad[~on] + nu).abs() <= l1 + 1e-6).all()


def test_knn_matches_brute_force_and_respects_exclusion():
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(30, 5, generator=g), torch.randn(50, 5, generator=g)
    d2, idx, nn = knn(q, bank, 4, chunk=7)
    ref = torch.cdist(q, bank).pow(2).topk(4, largest=False)
    torch.testing.assert_close(d2, ref.values, atol=1e-4, rtol=1e-4)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(nn, d2[:, 0])
    banned = torch.zeros(30, 50, dtype=torch.bool)
    banned[:, idx[:, 0]] = True
    _, idx2, _ = knn(q, bank, 4, exclude=lambda rows: banned[rows])
    assert not banned.gather(1, idx2).any()


def test_grouped_supports_leave_the_nearest_distance_alone():
    """``groups`` keeps other labels' atoms out of the K neighbours (and the codes), never out
    of nn_dist: the nearest-neighbour baseline stays the plain nearest-neighbour distance."""
    g = torch.Generator().manual_seed(2)
    q, bank = torch.randn(40, 6, generator=g), torch.randn(80, 6, generator=g)
    target, atom = torch.arange(40) % 3, torch.arange(80) % 3  # three support groups
    plain = code(q, bank, 5, 0.1, 0.5, affine=True, chunk=16)
    kept = code(q, bank, 5, 0.1, 0.5, affine=True, chunk=16, groups=(target, atom))
    assert (atom[kept.index] == target[:, None]).all()
    assert not (atom[plain.index] == target[:, None]).all()  # the groups changed the supports
    torch.testing.assert_close(kept.nn_dist, torch.cdist(q, bank).amin(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kept.nn_dist, plain.nn_dist)
    # the same neighbours as ranking the whole row with the other groups' atoms masked out
    d2 = torch.cdist(q, bank).pow(2).masked_fill(target[:, None] != atom, float("inf"))
    assert torch.equal(kept.index, d2.topk(5, largest=False).indices)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_without_the_nearest_distance_groups_give_the_same_supports(metric):
    """``nearest=False`` (the self-expression) ranks each group's block of distances only:
    the same neighbours, excluded atoms and spread as the whole row, and nn_d2 becomes the
    distance to the nearest atom of the target's own group."""
    g = torch.Generator().manual_seed(3)
    q, bank = torch.randn(45, 6, generator=g), torch.randn(120, 6, generator=g)
    target, atom = torch.arange(45) % 3, torch.arange(120) % 3
    banned = torch.rand(45, 120, generator=g) < 0.2
    ban = lambda rows: banned[rows]  # noqa: E731
    for pool in (0, 24):
        full = knn(q, bank, 4, ban, metric, chunk=16, groups=(target, atom), pool=pool)
        block = knn(q, bank, 4, ban, metric, 16, (target, atom), pool, nearest=False)
        assert torch.equal(block[1], full[1])
        torch.testing.assert_close(block[0], full[0])
    d2 = torch.cdist(q, bank).pow(2).masked_fill(banned | (target[:, None] != atom), float("inf"))
    torch.testing.assert_close(block[2], d2.amin(1), atol=1e-4, rtol=1e-4)
    assert (block[2] >= full[2] - 1e-5).all() and (block[2] > full[2] + 1e-3).any()
    sub = self_expression(bank, 4, 0.1, 0.5, affine=True, groups=(atom, atom), metric=metric)
    with_nn = code(
        bank,
        bank,
        4,
        0.1,
        0.5,
        True,
        exclude=lambda r: torch.eye(120, dtype=torch.bool)[r],
        metric=metric,
        groups=(atom, atom),
    )
    assert torch.equal(sub.index, with_nn.index) and torch.equal(sub.coef, with_nn.coef)


def test_grouped_supports_need_k_atoms_per_group():
    q, bank = torch.randn(4, 3), torch.randn(10, 3)
    with pytest.raises(ValueError, match="fewer than K = 5"):
        code(q, bank, 5, 0.1, 0.5, groups=(torch.zeros(4, dtype=torch.long), torch.arange(10) % 3))
    with pytest.raises(ValueError, match="group 2 has no atoms"):  # a label the bank lacks
        code(q, bank, 3, 0.1, 0.5, groups=(torch.full((4,), 2), torch.arange(10) % 2))


def test_spread_supports_take_every_nth_of_the_pool_nearest():
    """``pool``: K atoms at ranks 0, P/K, 2P/K, ... of the P nearest; the nearest always in."""
    g = torch.Generator().manual_seed(4)
    q, bank = torch.randn(30, 5, generator=g), torch.randn(300, 5, generator=g)
    order = torch.cdist(q, bank).argsort(1)  # (30, 300) atoms by rank
    _, idx, nn = knn(q, bank, 8, pool=64)
    assert torch.equal(idx, order[:, 0:64:8])
    _, near, nn_plain = knn(q, bank, 8)
    assert torch.equal(near, order[:, :8]) and torch.equal(knn(q, bank, 8, pool=8)[1], near)
    torch.testing.assert_close(nn, nn_plain)  # the baseline's distance does not move
    spread_all = order[:, torch.arange(8) * 300 // 8]  # P > N: spread over the whole bank
    assert torch.equal(knn(q, bank, 8, pool=1000)[1], spread_all)


def test_spread_supports_count_only_allowed_atoms():
    """Excluded atoms and other groups' atoms never enter the pool, nor shrink the spread."""
    g = torch.Generator().manual_seed(5)
    q, bank = torch.randn(20, 4, generator=g), torch.randn(200, 4, generator=g)
    odd = torch.arange(200) % 2 == 1
    _, idx, _ = knn(
        q, bank, 5, exclude=lambda rows: odd.expand(rows.stop - rows.start, -1), pool=50
    )
    evens = torch.cdist(q, bank).masked_fill(odd, float("inf")).argsort(1)
    assert torch.equal(idx, evens[:, 0:50:10])
    target, atom = torch.arange(20) % 2, torch.arange(200) % 2  # a group of 100 atoms: P clips
    _, idx, _ = knn(q, bank, 5, groups=(target, atom), pool=400)
    same = torch.cdist(q, bank).masked_fill(target[:, None] != atom, float("inf")).argsort(1)
    assert torch.equal(idx, same[:, 0:100:20])


def test_bank_feature_rebuilds_itself_only_with_the_diagonal():
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(200, 32, generator=g)  # generic points: none is a combination of 8 others
    with_diag = code(bank, bank, 8, lam=1e-4, alpha=0.5, affine=True)
    assert torch.equal(with_diag.index[:, 0], torch.arange(200))
    assert with_diag.residual.norm(dim=1).max() < 1e-2 * bank.norm(dim=1).min()
    without = self_expression(bank, 8, lam=1e-4, alpha=0.5, affine=True)
    assert not (without.index == torch.arange(200).unsqueeze(1)).any()
    assert without.residual.norm(dim=1).min() > 0.1 * bank.norm(dim=1).mean()


def test_points_on_a_subspace_are_rebuilt_from_it():
    """Self-expression of a union of 2-D subspaces: codes stay inside each point's own subspace."""
    g = torch.Generator().manual_seed(3)
    bases = torch.randn(2, 2, 40, generator=g)  # two 2-D subspaces of R^40
    angle = torch.rand(2, 60, generator=g) * 6.283
    radius = 1 + torch.rand(2, 60, generator=g)  # away from the origin, where subspaces meet
    circle = torch.stack([angle.cos(), angle.sin()], -1) * radius.unsqueeze(-1)  # (2, 60, 2)
    pts = torch.cat([circle[i] @ bases[i] for i in range(2)])  # (120, 40)
    coded = self_expression(pts, 6, lam=1e-3, alpha=0.5)
    assert coded.residual.norm(dim=1).max() < 0.05 * pts.norm(dim=1).mean()
    label = torch.arange(120) // 60
    own = label[coded.index] == label.unsqueeze(1)  # (120, 6) atom from the same subspace
    mass = coded.coef.abs()
    assert (mass * own).sum() > 0.999 * mass.sum()


def test_usage_sums_absolute_coefficients():
    g = torch.Generator().manual_seed(4)
    bank = torch.randn(40, 10, generator=g)
    coded = self_expression(bank, 5, lam=0.1, alpha=0.5)
    u = usage(coded, 40)
    ref = torch.zeros(40)
    for i in range(40):
        for j in range(5):
            ref[coded.index[i, j]] += coded.coef[i, j].abs()
    torch.testing.assert_close(u, ref)


def test_invalid_hyper_parameters_are_rejected(problem):
    y, atoms = problem
    with pytest.raises(ValueError, match="alpha"):
        solve(y, atoms, 0.1, 1.5)
