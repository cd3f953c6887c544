"""The synthetic example set: deterministic, plausible, with an exact mask."""

import numpy as np
import pytest
from PIL import Image

from subspace.synthetic import add_scratch, make_set, texture


def test_texture_is_deterministic_and_shaped():
    a, b = texture((64, 96), seed=3), texture((64, 96), seed=3)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_normal_images_differ_but_share_statistics():
    imgs = [texture((128, 128), seed=s).astype(np.float64) for s in range(4)]
    for i in range(1, 4):
        assert np.abs(imgs[i] - imgs[0]).mean() > 5  # not copies of each other
    means, stds = [x.mean() for x in imgs], [x.std() for x in imgs]
    assert max(means) - min(means) < 5
    assert max(stds) - min(stds) < 5


def test_scratch_mask_is_nonempty_inside_and_marks_the_change():
    img = texture((128, 160), seed=0)
    bad, mask = add_scratch(img, seed=1)
    assert bad.shape == img.shape and bad.dtype == np.uint8
    assert mask.shape == (128, 160) and mask.dtype == bool
    assert 0.001 < mask.mean() < 0.1
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any()
    assert not mask[:, -1].any()  # kept away from the border, so it is fully visible
    diff = np.abs(bad.astype(int) - img.astype(int)).sum(axis=2)
    assert diff[mask].mean() > 40  # obvious to a person
    assert diff[~mask].mean() < 1  # outside the mask only soft edges change
    np.testing.assert_array_equal(add_scratch(img, seed=1)[0], bad)


def test_add_scratch_rejects_non_rgb():
    with pytest.raises(ValueError, match="uint8"):
        add_scratch(np.zeros((8, 8), np.uint8))


def test_make_set_layout_and_idempotence(tmp_path):
    paths = make_set(tmp_path, n_normal=3, n_query=3, size=(64, 80), seed=1)
    assert [len(paths[k]) for k in ("normal", "query", "masks")] == [3, 3, 2]
    for q, m in zip(paths["query"], paths["masks"], strict=False):
        assert m.name == f"{q.stem}_mask.png"
        assert Image.open(q).size == Image.open(m).size == (80, 64)
        assert set(np.unique(np.asarray(Image.open(m)))) == {0, 255}
    assert paths["query"][-1].stem.endswith("good")

    stamps = {p: p.stat().st_mtime_ns for group in paths.values() for p in group}
    again = make_set(tmp_path, n_normal=3, n_query=3, size=(64, 80), seed=1)
    assert again == paths
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not rewritten

    other = make_set(tmp_path, n_normal=2, n_query=2, size=(64, 80), seed=1)
    assert sorted((tmp_path / "normal").iterdir()) == other["normal"]  # stale files gone
    np.testing.assert_array_equal(
        np.asarray(Image.open(other["normal"][0])), np.asarray(Image.open(paths["normal"][0]))
    )
