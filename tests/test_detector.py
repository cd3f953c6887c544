"""The detector end to end with the real bundled weights on real and synthetic images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from subspace import reconstruct
from subspace.backbone import load_backbone
from subspace.data import load_mask
from subspace.detector import Config, Detector
from subspace.examples import read_set
from subspace.features import edge_rings
from subspace.synthetic import make_set, texture

ROOT = Path(__file__).resolve().parents[1]
BALLSCREW = ROOT / "examples" / "ballscrew"
# The example set's references: six early, clean ones and one later, dirtier one.
EARLY = sorted((BALLSCREW / "normal").glob("01_2008*.jpg"))
LATER = BALLSCREW / "normal" / "01_200905161959_635000_270_crop_2.jpg"


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("lite0")


def rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def ballscrew(lite0):
    """Fitted on the six early references; the later one is held out as a normal query."""
    assert len(EARLY) == 6 and LATER.is_file()
    return Detector(Config(backbone="lite0"), lite0).fit([rgb(p) for p in EARLY])


def test_pitting_is_localised_and_scored_above_the_normal_query(ballscrew):
    normal_score = ballscrew.predict(rgb(LATER)).sgfr.score
    masks = sorted((BALLSCREW / "ground_truth").glob("*_mask.png"))
    assert len(masks) == 3
    for mask_path in masks:
        query = rgb(BALLSCREW / "query" / mask_path.name.replace("_mask.png", ".jpg"))
        pred = ballscrew.predict(query)
        assert Image.open(mask_path).size == query.size, mask_path.name  # drawn on this image
        mask = load_mask(mask_path, query.size)  # as eval reads masks
        heat = pred.sgfr.heatmap
        assert heat.shape == mask.shape == (query.height, query.width)
        assert heat[mask].mean() > heat[~mask].mean(), mask_path.name
        assert pred.sgfr.score > normal_score, mask_path.name
        assert pred.backbone == "lite0"


def test_example_set_flags_the_pits_and_little_else(lite0, ballscrew):
    """With the later, dirtier reference among them, the calibrated threshold keeps each pit
    and little of the dirt; the early references alone flag much of the dirt as well."""
    ex = read_set(BALLSCREW)  # the set as the app loads it
    assert len(ex.normal) == 7 and len(ex.query) == len(ex.masks) == 3
    spanning = Detector(Config(backbone="lite0"), lite0).fit([rgb(p) for p in ex.normal])
    for path in ex.query:
        query, mask_path = rgb(path), ex.masks[path.stem]
        mask = load_mask(mask_path, query.size)
        pred, early = spanning.predict(query).sgfr, ballscrew.predict(query).sgfr
        above = pred.heatmap > pred.threshold
        assert above[mask].mean() > 0.9, mask_path.name  # the pit
        assert above[~mask].mean() < 0.15, mask_path.name  # the rest: some dirt at most
        assert (early.heatmap > early.threshold)[~mask].mean() > 2 * above[~mask].mean()


def test_synthetic_scratch_scores_higher_inside_its_mask(lite0, tmp_path):
    files = make_set(tmp_path, n_normal=4, n_query=2)
    det = Detector(Config(backbone="lite0", ratio=0.25), lite0).fit(
        [rgb(p) for p in files["normal"]]
    )
    bad, good = (det.predict(rgb(p)) for p in files["query"])
    mask = np.asarray(Image.open(files["masks"][0])) > 0
    for scored in (bad.sgfr, bad.knn):
        assert scored.heatmap[mask].mean() > 1.5 * scored.heatmap[~mask].mean()
    assert bad.sgfr.score > bad.sgfr.threshold > good.sgfr.score * 0.5
    assert bad.sgfr.score > good.sgfr.score


def test_constant_images_give_zero_scores(lite0):
    grey = Image.new("RGB", (128, 128), (120, 120, 120))
    # The full bank: every query feature has an exact copy in it
    det = Detector(Config(backbone="lite0", ratio=1.0), lite0).fit([grey, grey.copy()])
    pred = det.predict(grey.copy())
    scale = float(det.bank.norm(dim=1).mean())
    assert pred.knn.score < 1e-3 * scale  # every query feature is in the bank (float32)
    # The network's zero padding (beyond the mirrored border) makes each position's feature
    # unique, with one exact copy per reference; the elastic net's ridge share spreads a
    # little weight over the rest of its K nearest atoms: a small bias (about 5 % of the
    # feature norm), the same in calibration, where each patch also has one copy. So the
    # constant query reads as normal: scored like the references themselves, and flagged no
    # more than they are (1 - quantile of their pixels lie above the threshold).
    assert pred.sgfr.score < 0.15 * scale
    assert pred.sgfr.p_value == 1.0
    assert (pred.sgfr.heatmap > pred.sgfr.threshold).mean() <= 1 - det.config.quantile + 1e-3
    other = det.predict(Image.new("RGB", (128, 128), (230, 230, 230)))
    assert other.sgfr.score > 3 * pred.sgfr.threshold


def test_save_load_round_trip_and_redrawn_maps_are_identical(ballscrew, lite0, tmp_path):
    query = rgb(BALLSCREW / "query" / "01_200907090805_635000_270_crop_2.jpg")
    before = ballscrew.predict(query)
    ballscrew.save(tmp_path / "det")
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == [
        "bank.safetensors",
        "config.json",
    ]
    after = Detector.load(tmp_path / "det", backbone=lite0).predict(query)
    for name in ("sgfr", "knn"):
        a, b = getattr(before, name), getattr(after, name)
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
        assert (a.score, a.threshold, a.p_value) == (b.score, b.threshold, b.p_value)
        # eval keeps only the patch scores and draws the map again: it must be the same map
        np.testing.assert_array_equal(ballscrew.heatmap(a.patch_scores, query.size), a.heatmap)
    np.testing.assert_array_equal(before.coef, after.coef)
    # a detector saved by the earlier format scored differently: it is refused, not misread
    meta = json.loads((tmp_path / "det" / "config.json").read_text())
    (tmp_path / "det" / "config.json").write_text(json.dumps(meta | {"format": 1}))
    with pytest.raises(ValueError, match="fit the detector again"):
        Detector.load(tmp_path / "det", backbone=lite0)


@pytest.mark.parametrize(
    "ratio,sampling", [(0.1, "usage"), (0.1, "usage-top"), (0.1, "random"), (0.1, "coreset")]
)
def test_sampling_reduces_the_bank(lite0, ratio, sampling):
    refs = [rgb(p) for p in sorted((BALLSCREW / "normal").glob("*.jpg"))[:3]]
    det = Detector(Config(backbone="lite0", ratio=ratio, sampling=sampling), lite0).fit(refs)
    assert det.bank_size == round(det.n_full * ratio)
    assert det.bank_bytes < 0.11 * det.n_full * (det.bank.shape[1] + 3) * 4
    if sampling == "usage":  # the self-expression stays in each edge ring, so does the budget
        full = torch.bincount(edge_rings(det.ref_grids, det.config.rings))
        kept = torch.bincount(det.atom_rings(det.config.rings), minlength=len(full))
        assert ((kept - full * ratio).abs() < 1).all()


def test_usage_ranks_atoms_by_a_self_expression_over_usage_pool(lite0, monkeypatch):
    """The bank's self-expression spreads over Config.usage_pool nearest atoms (queries are
    coded over their K nearest); its width decides which atoms usage sampling keeps."""
    refs = [rgb(p) for p in sorted((BALLSCREW / "normal").glob("*.jpg"))[:3]]
    pools, self_expression = [], reconstruct.self_expression
    monkeypatch.setattr(
        reconstruct,
        "self_expression",
        lambda *a, **kw: pools.append(kw["pool"]) or self_expression(*a, **kw),
    )

    def kept(usage_pool):
        cfg = Config(backbone="lite0", ratio=0.1, usage_pool=usage_pool)
        return Detector(cfg, lite0).fit(refs).positions

    narrow, wide = kept(0), kept(512)
    assert pools == [0, 512]
    assert not torch.equal(narrow, wide)
    with pytest.raises(ValueError, match="usage_pool"):
        Config(usage_pool=-1)


def test_one_reference_and_mixed_sizes(lite0, tmp_path):
    files = make_set(tmp_path, n_normal=2, n_query=2)
    one = Detector(Config(backbone="lite0"), lite0).fit([rgb(files["normal"][0])])
    cal = one.calibration["sgfr"]
    assert 0 < cal.vmin < cal.threshold < cal.vmax
    wide = rgb(files["normal"][1]).resize((300, 120))
    det = Detector(Config(backbone="lite0"), lite0).fit([rgb(files["normal"][0]), wide])
    assert det.ref_grids[0] != det.ref_grids[1]
    pred = det.predict(rgb(files["query"][0]).resize((200, 90)))
    assert pred.sgfr.heatmap.shape == (90, 200)


def test_patch_explanations(ballscrew):
    query = rgb(BALLSCREW / "query" / "01_200907090805_635000_270_crop_2.jpg")
    pred = ballscrew.predict(query)
    gy, gx = pred.top_patch()
    assert pred.primary.patch_scores[gy, gx] == pred.primary.patch_scores.max()
    assert pred.patch_at(query.width - 1, query.height - 1) == (pred.grid[0] - 1, pred.grid[1] - 1)
    sources = ballscrew.sources(pred, gy, gx)
    assert 1 <= len(sources) <= 8
    assert abs(sum(s["coef"] for s in ballscrew.sources(pred, gy, gx, top=99)) - 1) < 1e-3
    for s in sources:
        x0, y0, x1, y1 = s["box"]
        w, h = ballscrew.ref_sizes[s["image"]]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert pred.residuals.shape == (pred.grid[0] * pred.grid[1], ballscrew.bank.shape[1])
    assert sum(st.stop - st.start for st in ballscrew.stages) == ballscrew.bank.shape[1]


def test_unfitted_and_invalid_configs_fail_clearly(lite0):
    with pytest.raises(RuntimeError, match="not fitted"):
        Detector(Config(backbone="lite0"), lite0).predict(Image.new("RGB", (64, 64)))
    with pytest.raises(ValueError, match="at least one"):
        Detector(Config(backbone="lite0"), lite0).fit([])
    with pytest.raises(ValueError, match="ratio"):
        Config(ratio=0)
    with pytest.raises(ValueError, match="method"):
        Config(method="magic")


def test_border_aware_support_codes_each_patch_from_its_own_edge_ring(lite0, tmp_path):
    """rings=2: every atom of a patch's support lies as far from its reference's edge as the
    patch from its query's edge (0, 1, or 2+ cells); the nearest-neighbour baseline and the
    saved detector are unaffected."""
    g = torch.Generator().manual_seed(0)
    refs = [torch.randn(16, 9, 11, generator=g), torch.randn(16, 8, 13, generator=g)]
    query = torch.randn(16, 10, 12, generator=g)
    preds = {}
    for rings in (0, 2):
        det = Detector(Config(backbone="lite0", k=8, rings=rings, ratio=1.0), lite0)
        det.fit_features(refs, [(88, 72), (104, 64)], lambda f, m: None)
        preds[rings] = det.predict_features(query, (96, 80))
    assert det.ring_cap == 2
    atom_ring = det.atom_rings(2)[torch.from_numpy(preds[2].index)]  # (h*w, K)
    query_ring = edge_rings([(10, 12)], 2)
    assert (atom_ring == query_ring[:, None]).all()
    plain_ring = det.atom_rings(2)[torch.from_numpy(preds[0].index)]
    assert not (plain_ring == query_ring[:, None]).all()  # without rings, supports mix
    np.testing.assert_array_equal(preds[0].knn.patch_scores, preds[2].knn.patch_scores)
    det.save(tmp_path / "det")
    again = Detector.load(tmp_path / "det", backbone=lite0).predict_features(query, (96, 80))
    np.testing.assert_array_equal(again.sgfr.heatmap, preds[2].sgfr.heatmap)


def test_border_rings_are_merged_until_each_holds_k_atoms(lite0):
    """A 5 x 5 reference has 16 edge cells, 8 one cell in and 1 centre cell: with K = 9 the
    centre joins ring 1 (cap 1, 9 atoms); with K = 10 every cell codes over the whole bank."""
    ref = [torch.randn(16, 5, 5, generator=torch.Generator().manual_seed(1))]
    for k, cap in ((9, 1), (10, 0)):
        det = Detector(Config(backbone="lite0", k=k, rings=4, ratio=1.0), lite0)
        det.fit_features(ref, [(40, 40)], lambda f, m: None)
        assert det.ring_cap == cap
    # refitted on a 9 x 9 reference (rings of 32, 24, 16, 8 and 1 cells), the same detector
    # finds its rings again: the last two merge into 9 atoms, cap 3
    det = Detector(Config(backbone="lite0", k=9, rings=4, ratio=1.0), lite0)
    det.fit_features(ref, [(40, 40)], lambda f, m: None)
    assert det.ring_cap == 1
    det.fit_features([torch.randn(16, 9, 9)], [(72, 72)], lambda f, m: None)
    assert det.ring_cap == 3
    assert det.bank_rings()[1].shape == (81,)


def test_angle_score_discounts_offsets_along_the_normal_subspace(lite0):
    """Normal features fill a plane. A query patch on the plane between them is rebuilt almost
    exactly, one lifted off the plane above an atom is not. The angle score (||r|| times
    (||r|| / d_nn)^angle) keeps the lifted patch's residual whole and discounts the in-plane
    one further; codes and the baseline do not change, and it never exceeds ||r||."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=g))[0]  # orthonormal: plane + normal

    def on_plane(uv: torch.Tensor) -> torch.Tensor:  # (2, h, w) -> (16, h, w)
        return torch.einsum("dk,khw->dhw", basis[:, :2], uv)

    refs = [on_plane(6 * torch.rand(2, 8, 8, generator=g)) for _ in range(3)]
    query = on_plane(1 + 4 * torch.rand(2, 8, 8, generator=g))  # inside the references' span
    off = torch.zeros(8, 8, dtype=torch.bool)
    off[:, :4] = True
    query[:, off] = refs[0][:, off] + 0.3 * basis[:, 2:3]  # lifted 0.3 off the plane
    preds = {}
    for angle in (0.0, 1.0):
        det = Detector(
            Config(backbone="lite0", k=8, rings=0, lam=1e-3, angle=angle, ratio=1),
            lite0,
        )
        det.fit_features(refs, [(64, 64)] * 3, lambda f, m: None)
        preds[angle] = det.predict_features(query, (64, 64))
    plain, angled = preds[0.0], preds[1.0]
    np.testing.assert_array_equal(plain.coef, angled.coef)
    np.testing.assert_array_equal(plain.knn.patch_scores, angled.knn.patch_scores)
    s, a, on = plain.sgfr.patch_scores, angled.sgfr.patch_scores, ~off.numpy()
    np.testing.assert_allclose(plain.knn.patch_scores[~on], 0.3, rtol=1e-3)
    assert (a <= s + 1e-6).all()
    np.testing.assert_allclose(a[~on], s[~on], rtol=0.05)  # across the plane: counts in full
    assert s[~on].min() > 2 * s[on].max()
    # in-plane scores shrink by their s / d_nn (here at most about 1 / 4): the gap widens
    assert a[~on].min() / a[on].max() > 3 * s[~on].min() / s[on].max()
    with pytest.raises(ValueError, match="angle"):
        Config(angle=-1.5)


def test_the_default_score_is_the_nn_distance_discounted_by_the_subspace(lite0):
    """SGFR's patch score is d_nn (||r|| / d_nn)^0.25: the baseline's distance, times the
    fourth root of the share of it that the normal subspace leaves unexplained; where the code
    rebuilds a patch worse than its nearest atom (||r|| > d_nn), the residual itself."""
    refs = [Image.fromarray(texture((96, 96), seed=s)) for s in range(3)]
    det = Detector(Config(backbone="lite0"), backbone=lite0).fit(refs)
    assert det.config.angle == -0.75
    pred = det.predict(Image.fromarray(texture((96, 96), seed=9)))
    d = pred.knn.patch_scores.ravel()
    r = np.sqrt((pred.residuals.astype(np.float64) ** 2).sum(1))
    want = np.where(r <= d, d * (r / d) ** 0.25, r)
    np.testing.assert_allclose(pred.sgfr.patch_scores.ravel(), want, rtol=1e-4)
    assert (r <= d).mean() > 0.5  # the usual case: the subspace rebuilds at least as well
