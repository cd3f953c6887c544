"""The alternative scorings of benchmarks/alternatives.py measure what their names say."""

import torch
from alternatives import capped_support, kmeans, subspace_distance, subspaces, top_share


def test_union_of_subspaces_scores_distance_to_the_nearest_plane():
    """Two noiseless 2-D planes in 6-D: points on either plane score 0, a point lifted off a
    plane by 3 along its normal scores 3."""
    g = torch.Generator().manual_seed(0)
    basis = [torch.linalg.qr(torch.randn(6, 2, generator=g)).Q for _ in range(2)]
    offset = [torch.zeros(6), 40 * torch.ones(6)]  # far apart: k-means separates them
    points = [
        o + torch.randn(200, 2, generator=g) @ b.T for o, b in zip(offset, basis, strict=True)
    ]
    bank = torch.cat(points)
    label = kmeans(bank, 2)
    assert len(label[:200].unique()) == 1 and label[0] != label[-1]
    means, bases = subspaces(bank, label, rank=2)
    on_plane = offset[1] + torch.tensor([[1.5, -2.0]]) @ basis[1].T  # not a bank point
    normal = torch.linalg.qr(torch.cat([basis[0], torch.randn(6, 1, generator=g)], 1)).Q[:, 2]
    off_plane = offset[0] + 3 * normal
    d = subspace_distance(torch.cat([on_plane, off_plane[None]]), means, bases, nearest=2)
    assert d[0] < 1e-2  # float32 cancellation at |x| ~ 100
    assert abs(float(d[1]) - 3.0) < 1e-2


def test_top_share_averages_the_largest_standardised_dimensions():
    diff = torch.tensor([[1.0, -4.0, 2.0, 0.0]])
    typical = torch.tensor([1.0, 2.0, 0.5, 1.0])  # standardised: 1, 2, 4, 0
    assert top_share(diff, typical, 0.25).item() == 4.0  # the single largest
    assert top_share(diff, typical, 0.5).item() == 3.0  # mean of 4 and 2
    assert top_share(diff, typical, 1.0).item() == 7.0 / 4


def test_capped_support_takes_the_nearest_with_at_most_per_from_each_source():
    d2 = torch.tensor([[0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0]])
    source = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    assert capped_support(d2, source, 4, per=4).tolist() == [[0, 1, 2, 3]]  # no cap binds
    assert capped_support(d2, source, 4, per=2).tolist() == [[0, 1, 4, 5]]
    assert capped_support(d2, source, 3, per=1).tolist() == [[0, 4, 6]]  # one from each
