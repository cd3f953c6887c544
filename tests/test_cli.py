"""The command line: eval's JSON contract, predict's files, clean failures on bad input."""

import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace import cli, evaluation, viz
from subspace.data import load_image, load_mask
from subspace.dataset import list_test
from subspace.detector import Config, Detector
from subspace.metrics import evaluate

REPO = Path(__file__).resolve().parents[1]
MTD = REPO.parent / "shared" / "data" / "mtd" / "magnetic_tile"
BALLSCREW = REPO / "examples" / "ballscrew"
needs_mtd = pytest.mark.skipif(
    not (MTD / "train" / "good").is_dir(), reason=f"MTD subset not found at {MTD}"
)
METRIC_KEYS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc")


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "subspace", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert all(cmd in proc.stdout for cmd in ("eval", "predict", "bench"))


def test_every_config_field_is_a_flag_with_the_dataclass_default():
    parser = cli.build_parser()
    args = parser.parse_args(["predict", "--normals", "a", "--query", "b", "--out", "c"])
    assert cli.config_from(args) == Config()  # no flag given: exactly the dataclass defaults
    for f in fields(Config):
        assert hasattr(args, f.name), f"no flag for Config.{f.name}"
    args = parser.parse_args(
        ["eval", "d", "--shots", "2", "--angle", "-1", "--k", "4", "--lam", "0.5", "--ratio", "0.1"]
    )
    c = cli.config_from(args)
    assert (c.angle, c.k, c.lam, c.ratio) == (-1.0, 4, 0.5, 0.1)


def test_every_config_flag_is_described_by_the_field_comments():
    """--help reuses each Config field's comments, trailing and above it."""
    ev = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["eval"]
    helps = {a.dest: a.help for a in ev._actions if a.dest in {f.name for f in fields(Config)}}
    assert len(helps) == len(fields(Config)) - 1  # eval's --seeds stands for Config.seed
    for name, text in helps.items():
        assert not text.startswith("default:"), f"Config.{name} has no description"
    assert "self-expression" in helps["usage_pool"]  # from the comment lines above the field
    assert helps["angle"].startswith("patch score") and "nearest normal patch" in helps["angle"]


def test_draws_and_test_subset_are_seeded():
    draw = evaluation.draw
    assert draw(50, 8, seed=1) == draw(50, 8, seed=1) != draw(50, 8, seed=2)
    assert len(set(evaluation.draw(8, 8, seed=0))) == 8  # without replacement
    sub = evaluation.subset_indices(100, 10)
    assert sub == evaluation.subset_indices(100, 10) == sorted(sub) and len(set(sub)) == 10
    assert evaluation.subset_indices(5, 10) == list(range(5))


@needs_mtd
def test_eval_writes_the_json_contract(tmp_path, capsys):
    out = tmp_path / "res.json"
    argv = ["eval", MTD, "--shots", 2, "--max-test", 12, "--backbone", "lite0", "--json", out]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "* sgfr" in stdout and "knn" in stdout and "pixel AUROC" in stdout
    r = json.loads(out.read_text())
    assert r["backbone"] == "lite0" and r["method"] == "sgfr"
    assert r["shots"] == 2 and r["seeds"] == [0]
    assert r["n_test"] == 12 and r["n_skipped"] == 0 and len(r["test_images"]) == 12
    for res in (r, r["baseline"]):
        for key in METRIC_KEYS:
            assert 0.0 <= res[key] <= 1.0, key
    assert r["baseline"]["method"] == "knn"
    assert 0 < r["ms_per_image"] < 60_000 and 0 < r["fit_s"] < 600
    assert r["bank_size"] > 0 and r["bank_bytes"] >= r["bank_size"] * r["feature_dim"] * 4
    assert r["peak_rss_mb"] > 50
    assert r["config"] == {**r["config"], "backbone": "lite0", "k": Config.k}
    assert set(r["config"]) == {f.name for f in fields(Config)}
    (seed,) = r["per_seed"]
    assert seed["seed"] == 0 and len(seed["train"]) == 2
    assert set(seed["sgfr"]) == set(seed["knn"]) == set(METRIC_KEYS)


def _small_set(root: Path) -> Path:
    """An MVTec-layout copy of 2 train, 2 good and 2 cracked MTD images (with masks)."""
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    for p in sorted((MTD / "train" / "good").iterdir())[:2]:
        shutil.copy(p, root / "train" / "good")
    for p in sorted((MTD / "test" / "good").iterdir())[:2]:
        shutil.copy(p, root / "test" / "good")
    for p in sorted((MTD / "test" / "crack").iterdir())[:2]:
        shutil.copy(p, root / "test" / "crack")
        mask = MTD / "ground_truth" / "crack" / f"{p.stem}_mask.png"
        shutil.copy(mask, root / "ground_truth" / "crack")
    return root


@needs_mtd
def test_eval_skips_unreadable_test_images_and_counts_them(tmp_path, capsys):
    root = _small_set(tmp_path / "set")
    (root / "test" / "good" / "zz_broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "r.json"
    argv = ["eval", root, "--shots", 2, "--backbone", "lite0", "--size", 128, "--json", out, "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert "zz_broken.png" in err and "Traceback" not in err
    r = json.loads(out.read_text())
    assert (r["n_test"], r["n_skipped"]) == (4, 1)


@needs_mtd
def test_eval_metrics_are_those_of_the_predicted_maps(tmp_path, capsys):
    # eval keeps only patch scores and draws each map again for its two metric passes; its
    # numbers must equal the metrics of the maps that predict returns, kept in memory.
    root = _small_set(tmp_path / "set")
    out = tmp_path / "r.json"
    argv = ["eval", root, "--shots", 2, "--backbone", "lite0", "--size", 128, "--json", out, "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    det = Detector(Config(**r["config"])).fit(
        [load_image(root / p) for p in r["per_seed"][0]["train"]]
    )
    tests = list_test(root)
    preds = [det.predict(load_image(s.path)) for s in tests]
    masks = [load_mask(s.mask_path, size=(p.size)) for s, p in zip(tests, preds, strict=True)]
    labels = [s.defect != "good" for s in tests]
    for m in ("sgfr", "knn"):
        maps = [getattr(p, m).heatmap for p in preds]
        scores = [getattr(p, m).score for p in preds]
        assert r["per_seed"][0][m] == evaluate(maps, masks, scores, labels), m


def test_predict_writes_heatmap_overlay_npy_and_scores(tmp_path, capsys):
    normals = sorted((BALLSCREW / "normal").iterdir())[:2]
    query = BALLSCREW / "query" / "01_200907090805_635000_270_crop_2.jpg"
    argv = ["predict", "--normals", *normals, "--query", query, "--out", tmp_path, "-q"]
    code, stdout, err = run([*argv, "--backbone", "lite0", "--size", 128], capsys)
    assert code == 0, err
    w, h = Image.open(query).size
    heat = np.load(tmp_path / "heatmap.npy")
    assert heat.shape == (h, w) and heat.dtype == np.float32 and np.isfinite(heat).all()
    for name in ("heatmap.png", "overlay.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size == (w, h) and im.mode == "RGB"
    s = json.loads((tmp_path / "scores.json").read_text())
    assert s["backbone"] == "lite0" and s["vmin"] < s["threshold"] < s["vmax"]
    assert 0 < s["p_value"] <= 1 and np.isfinite([s["score"], s["knn"]["score"]]).all()
    assert s["score"] == pytest.approx(float(heat.max()), rel=0.05)  # image score = map max
    # Drawn on the calibrated scale from scores.json, not stretched to this image's range.
    expected = viz.colorize(heat, s["vmin"], s["vmax"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "heatmap.png")), expected)
    assert "score" in stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "/no/such/dir", "--shots", "2"], "no such directory"),
        (["eval", MTD, "--shots", "0"], "--shots"),
        (["eval", MTD, "--shots", "2", "--method", "best"], "--method"),
        (["eval", MTD, "--shots", "2", "--ratio", "0"], "ratio"),
        pytest.param(
            ["eval", MTD, "--shots", "2", "--max-test", "3"], "no defective", marks=needs_mtd
        ),
        (["predict", "--normals", "/no/such", "--query", "x.png", "--out", "o"], "/no/such"),
        ([], "usage"),
    ],
)
def test_bad_arguments_exit_2_with_one_message(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_non_image_query_exits_2(tmp_path, capsys):
    query = tmp_path / "query.png"
    query.write_text("hello, I am text")
    normals = sorted((BALLSCREW / "normal").iterdir())[:1]
    argv = ["predict", "--normals", *normals, "--query", query, "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "query.png" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # failed before writing anything
