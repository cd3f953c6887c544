"""The benchmark's plan: which eval runs fill which table, and how a row names its bank."""

from __future__ import annotations

from dataclasses import asdict

from subspace import bench
from subspace.detector import Config


def test_speed_table_shows_the_default_bank_and_the_full_one():
    """Table (c) times the default (sampled) bank and the full bank at the ablation's k; the
    full-bank row is the very run of table (b)'s first row, so it costs nothing extra."""
    rows = bench.tables(bench.FULL, "DATA")
    speed = {r.label: r.argv for r in rows["speed"]}
    assert speed["full bank"] == rows["sampling"][0].argv
    assert "--ratio" not in speed["lite0 k=8"]  # Config's default bank
    runs = {r.argv for table in rows.values() for r in table}
    assert len(runs) < sum(len(table) for table in rows.values())  # shared runs run once


def test_a_row_names_its_bank():
    default = asdict(Config(backbone="lite0"))
    assert bench._bank({"config": default}) == f"{Config.sampling} {Config.ratio:g}"
    assert bench._bank({"config": default | {"ratio": 1.0}}) == "full"
    assert bench._bank({"config": default | {"sampling": "coreset", "ratio": 0.1}}) == "coreset 0.1"


def test_a_failed_run_leaves_the_tables_file_and_no_partial_files(tmp_path):
    """A row that fails (as an interrupted one stops) must not rewrite the tracked tables file
    with rows missing, nor leave its temporary result behind."""
    import subprocess
    import sys

    data = tmp_path / "not-a-dataset"
    data.mkdir()
    out, cache = tmp_path / "README.md", tmp_path / "cache"
    out.write_text("the tables of the last full run\n")
    argv = [sys.executable, "-m", "subspace", "bench", str(data), "--quick", "-q"]
    done = subprocess.run(
        [*argv, "--out", str(out), "--cache", str(cache)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "run the same command again to resume" in done.stderr
    assert out.read_text() == "the tables of the last full run\n"
    assert not [p.name for p in cache.iterdir()], "partial files left in the cache"
