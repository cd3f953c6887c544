"""The cross-dataset benchmark's contract, on two tiny synthetic datasets (seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cross
import pytest

from subspace.synthetic import make_set


def _dataset(root: Path, seed: int) -> Path:
    """An MVTec-layout folder: 3 train images, 2 good and 2 scratched test images with masks."""
    paths = make_set(root / "raw", n_normal=5, n_query=3, size=(96, 96), seed=seed)
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (root / sub).mkdir(parents=True)
    for p in paths["normal"][:3]:
        shutil.copy(p, root / "train" / "good")
    for p in paths["normal"][3:] + paths["query"][-1:]:
        shutil.copy(p, root / "test" / "good")
    for q, m in zip(paths["query"][:-1], paths["masks"], strict=True):
        shutil.copy(q, root / "test" / "scratch")
        shutil.copy(m, root / "ground_truth" / "scratch")
    shutil.rmtree(root / "raw")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _dataset(root / "alpha" / "tile", seed=1)
    _dataset(root / "beta" / "mesh", seed=2)
    (root / "README.md").write_text("not a dataset")
    (root / "examples" / "normal").mkdir(parents=True)  # not the MVTec layout either
    return root


def test_every_mvtec_layout_folder_is_a_dataset(data):
    assert cross.discover(data) == [data / "alpha" / "tile", data / "beta" / "mesh"]


def test_a_small_grid_prints_tables_margins_and_resumes_from_its_cache(data, tmp_path, capsys):
    out, cache, feats = tmp_path / "tables.md", tmp_path / "runs", tmp_path / "features"
    argv = ["--data", str(data), "--shots", "1", "2", "--seeds", "0", "--max-test", "3"]
    argv += ["--out", str(out), "--cache", str(cache), "--features", str(feats), "-q"]
    assert cross.main(argv) == 0
    first = capsys.readouterr().out
    for name in ("alpha/tile", "beta/mesh"):
        assert f"**{name}** (3 test images)" in first  # the fixed subset, not all 5
        assert f"| {name} | 1 |" in first and f"| {name} | 2 |" in first
    assert "Must-targets" in first and first.count("| mean |") == 2
    assert first.strip().splitlines()[-1].startswith("| defaults | 2 datasets, seeds 0 |")
    runs = sorted(p.name for p in cache.iterdir())
    assert len(runs) == 4 and not [p for p in cache.rglob("*.partial")]
    assert len(list(feats.rglob("*.safetensors"))) > 0
    assert not out.exists()  # only the standard grid writes the tables file
    # Run again: every run comes from the cache, with the same tables.
    assert cross.main(argv) == 0
    assert capsys.readouterr().out == first and sorted(p.name for p in cache.iterdir()) == runs
    # A variant is a run of its own, named in the output.
    assert cross.main([*argv, "--set", "angle=0", "--name", "residual alone"]) == 0
    assert "### residual alone" in capsys.readouterr().out
    assert len(list(cache.iterdir())) == 8


def test_a_bad_setting_is_named(data):
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        cross.main(["--data", str(data), "--set", "nosuch=1"])
