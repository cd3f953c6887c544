"""``python -m subspace bench DATA_DIR``: the project's benchmark tables, as markdown.

Every row is one ``python -m subspace eval ... --json`` run in its own process, so its peak
RSS is its own, and the markdown shows the exact command of each row. Results are cached
under ``artifacts/bench/`` keyed by the settings they resolve to: an interrupted run resumes
where it stopped, a row shared by two tables runs once, and changed Config defaults re-run
what they change. The file is rewritten after every row, and each row is printed as it ends.

Tables: (a) shots x seeds, SGFR vs nearest neighbour; (b) bank sampling ablation;
(c) latency and memory, with a random-weight WideResNet-50 for speed only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from . import cli, evaluation
from .detector import Config


@dataclass(frozen=True)
class Plan:
    """What the benchmark runs."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16)  # (a) few-shot sizes k
    seeds: tuple[int, ...] = (0, 1, 2)  # draws per k; tables report mean ± std
    max_test: int = 200  # fixed random test subset, the same for every row
    backbone: str = "lite0"  # bundled weights: runs offline
    ablation_shots: int = 8  # (b) k of the sampling ablation
    samplers: tuple[str, ...] = ("usage", "usage-greedy", "usage-top", "random", "coreset")
    ratios: tuple[float, ...] = (1.0, 0.25, 0.1, 0.05)  # share of the bank kept
    speed_shots: tuple[int, ...] = (8, 16)  # (c) latency / memory rows
    speed_seeds: tuple[int, ...] = (0,)  # random-weight rows: one draw is enough for timing
    speed_max_test: int = 20


FULL = Plan()
QUICK = Plan(shots=(2,), seeds=(0,), max_test=10, ablation_shots=2, ratios=(1.0, 0.1))
QUICK = replace(QUICK, speed_shots=(2,), speed_max_test=10)  # 10 images hold both classes


@dataclass(frozen=True)
class Row:
    """One eval run: its arguments (after ``python -m subspace``) and a short label."""

    label: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return " ".join(["python -m subspace", *map(shlex.quote, self.argv)])


def _eval(data: str, k: int, seeds, max_test: int, backbone: str, *extra: str) -> tuple:
    seeds = [str(s) for s in seeds]
    common = ["--backbone", backbone, "--max-test", str(max_test), *extra]
    return ("eval", data, "--shots", str(k), "--seeds", *seeds, *common)


def tables(plan: Plan, data: str) -> dict[str, list[Row]]:
    """The rows of each table, in running order."""
    p = plan

    def lite(k: int, *extra: str) -> tuple:
        return _eval(data, k, p.seeds, p.max_test, p.backbone, *extra)

    shots = [Row(f"k={k}", lite(k)) for k in p.shots]
    full = lite(p.ablation_shots, "--ratio", "1.0")  # nothing is dropped: no sampler
    ablation = []
    for ratio in p.ratios:
        if ratio == 1.0:
            ablation.append(Row("full bank, 1.0", full))
            continue
        for s in p.samplers:
            extra = ("--sampling", s, "--ratio", f"{ratio:g}")
            ablation.append(Row(f"{s}, {ratio:g}", lite(p.ablation_shots, *extra)))
    speed = []
    for k in p.speed_shots:
        speed.append(Row(f"{p.backbone} k={k}", lite(k)))
        if k == p.ablation_shots:  # beside the default bank, the full one: (b)'s very run
            speed.append(Row("full bank", full))
    speed += [
        Row(
            f"wrn50 k={k} (random weights)",
            _eval(data, k, p.speed_seeds, p.speed_max_test, "wrn50", "--random-weights"),
        )
        for k in p.speed_shots
    ]
    return {"shots": shots, "sampling": ablation, "speed": speed}


def _code_hash() -> str:
    """Hash of the sources that decide a row's numbers (not the CLI, the app or drawing)."""
    core = ("backbone", "presets", "data", "dataset", "features", "reconstruct", "sampling")
    core += ("scoring", "detector", "metrics", "evaluation")  # evaluation: draws and subset
    files = [Path(__file__).with_name(f"{name}.py") for name in core]
    return hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()


def cache_key(row: Row) -> str:
    """Hash of what a row resolves to (Config, data, draws), so equal runs share a result."""
    args = cli.build_parser().parse_args(row.argv)
    config = asdict(cli.config_from(args))
    config.pop("method")  # both scorers come from the same predictions
    what = dict(
        config=config,
        data=str(Path(args.data).resolve()),
        shots=args.shots,
        seeds=args.seeds,
        max_test=args.max_test,
        random_weights=args.random_weights,
        code=_code_hash(),  # results of different core code never mix in one table
    )
    digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config['backbone']}-k{args.shots}-{digest}"


def run_row(row: Row, cache: Path, fresh: bool, quiet: bool) -> tuple[dict, bool]:
    """(the row's eval result, whether it came from the cache); runs it in a fresh process.

    Raises:
        subprocess.CalledProcessError: the eval failed (its message is already on stderr).
    """
    path = cache / f"{cache_key(row)}.json"
    if path.is_file() and not fresh:
        return json.loads(path.read_text()), True
    tmp = path.with_suffix(".tmp")
    argv = [sys.executable, "-m", "subspace", *row.argv, "--json", str(tmp)]
    argv += ["--quiet"] if quiet else []
    env = dict(os.environ)  # the child imports this very package, wherever we run from
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    try:
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        result = json.loads(tmp.read_text())
        os.replace(tmp, path)  # only complete results enter the cache
    finally:  # failed or interrupted: no partial file stays behind
        tmp.unlink(missing_ok=True)
    return result, False


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers never see it half written."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- markdown
def _pm(r: dict, key: str) -> str:
    several = len(r["seeds"]) > 1
    return f"{r[key]:.3f}" + (f" ± {r['std'][key]:.3f}" if several else "")


def _by_method(result: dict) -> dict[str, dict]:
    other = result["baseline"] | {"seeds": result["seeds"]}
    return {result["method"]: result, other["method"]: other}


def _table(head: str, rows: list[list[str]]) -> list[str]:
    cols = head.split("|")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _commands(rows: list[Row]) -> list[str]:
    return ["```bash", *(r.command for r in rows), "```", ""]


def _machine() -> str:
    import timm
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} "
        f"({torch.get_num_threads()} torch thread(s)), timm {timm.__version__}, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def _shots_rows(res: dict, row: Row) -> list[list[str]]:
    return [
        [str(res["shots"]), "SGFR" if name == "sgfr" else "nearest neighbour"]
        + [_pm(m, k) for k in evaluation.METRICS]
        for name, m in sorted(_by_method(res).items(), reverse=True)  # sgfr first
    ]


def _sampling_rows(res: dict, row: Row) -> list[list[str]]:
    m = _by_method(res)
    metrics = [_pm(m[name], k) for name in ("sgfr", "knn") for k in ("pixel_auroc", "pro")]
    sizes = [str(res["bank_size"]), f"{res['bank_bytes'] / 1024:.0f}", f"{res['fit_s']:.1f}"]
    return [[*row.label.split(", "), *metrics, *sizes, f"{res['ms_per_image']:.0f}"]]


def _bank(res: dict) -> str:
    """The bank a row ran on: full, or the sampler and the share of the bank it kept."""
    c = res["config"]
    return "full" if c["ratio"] == 1.0 else f"{c['sampling']} {c['ratio']:g}"


def _speed_rows(res: dict, row: Row) -> list[list[str]]:
    weights = "pretrained" if res["pretrained"] else "RANDOM (speed only)"
    load = "/".join(f"{x:.1f}" for x in res.get("load_avg", []) if x is not None)
    return [
        [res["backbone"], weights, str(res["config"]["size"]), str(res["shots"]), _bank(res)]
        + [str(res.get("feature_dim")), str(res["bank_size"]), f"{res['bank_bytes'] / 2**20:.1f}"]
        + [f"{res['fit_s']:.1f}", f"{res['ms_per_image']:.0f}", f"{res['peak_rss_mb']:.0f}"]
        + [load, f"{res['n_test']} x {len(res['seeds'])}"]
    ]


SECTIONS = {  # table -> (title, column heads, rows of one result, note)
    "shots": (
        "(a) Few-shot: SGFR vs nearest neighbour (mean ± std over seeds)",
        "k|method|pixel AUROC|pixel AP|PRO|image AUROC",
        _shots_rows,
        [],
    ),
    "sampling": (
        "(b) Bank sampling at the same budget: usage (greedy, ours), top usage, random, coreset",
        "sampling|ratio|SGFR pixel AUROC|SGFR PRO|NN pixel AUROC|NN PRO|bank rows|bank KB|fit s"
        "|predict ms/image",
        _sampling_rows,
        [
            "Fit time includes learning the self-expressive codes when sampling by usage. Fit and",
            "predict are timed as in table (c), inside each row's eval run.",
            "",
        ],
    ),
    "speed": (
        "(c) Latency and memory",
        "backbone|weights|size px|k|bank|feature dim|bank rows|bank MB|fit s|predict ms/image"
        "|peak RSS MB|load avg|images x seeds",
        _speed_rows,
        [
            "Predict: median over all test images of one `Detector.predict` call, PIL image in,",
            "full-size maps of both scorers out. Fit includes leave-one-out calibration. Peak RSS",
            "is that of the whole eval process (libraries, model, bank, the metrics' pixels).",
            "WideResNet-50 runs with RANDOM weights (none can be downloaded here): its rows",
            "measure speed and memory only, never accuracy. Load avg: the machine's 1-minute",
            "load at the start / end of the run; above the core count, CPUs were shared.",
            "",
        ],
    ),
}


def render(
    plan: Plan, data: str, rows: dict[str, list[Row]], done: dict[tuple, dict], quick: bool
) -> str:
    """The whole markdown file from the rows finished so far."""
    me = f"python -m subspace bench {shlex.quote(data)}" + (" --quick" if quick else "")
    total = {r.argv for v in rows.values() for r in v}
    todo = "" if total <= set(done) else f" ({len(total & set(done))}/{len(total)} runs so far)"
    out = ["# Benchmarks", ""]
    if quick:
        out += [
            "> **Smoke run** (`--quick`): tiny settings (one seed, k = 2, a few test images).",
            "> These numbers only show that the runner works; they are not benchmark results.",
            "",
        ]
    first = next((done[r.argv] for r in rows["shots"] if r.argv in done), None)
    config = first["config"] if first else asdict(Config(backbone=plan.backbone))
    out += [
        f"Written by `{me}` on {datetime.now().strftime('%Y-%m-%d %H:%M')}{todo}.",
        "",
        f"- Machine: {_machine()}.",
        f"- Data: `{data}`; test images: a random subset drawn once with a fixed seed "
        f"(`subspace.evaluation.SUBSET_SEED = {evaluation.SUBSET_SEED}`), the same images in "
        "every row.",
        "- Each seed draws k normal images from `train/good` "
        "(`numpy.random.default_rng(seed).choice`, without replacement).",
        "- Both scorers come from the same predictions (same features, same bank).",
        "- Metrics on maps at each image's own size; PRO integrated up to FPR 0.3.",
        "- Each row's full JSON is cached (`--cache`, default `artifacts/bench/`); rerunning the",
        "  same command resumes and only runs rows whose settings or core code changed.",
        "",
        "Config (`subspace.detector.Config` defaults, except where a command says otherwise):",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    for key, (title, head, make, note) in SECTIONS.items():
        body = [line for r in rows[key] if r.argv in done for line in make(done[r.argv], r)]
        out += [f"## {title}", "", *_commands(rows[key]), *note, *_table(head, body)]
    return "\n".join(out)


def _summary(row: Row, res: dict) -> str:
    m = _by_method(res)
    return (
        f"{row.label}: pixel AUROC sgfr {_pm(m['sgfr'], 'pixel_auroc')}, "
        f"knn {_pm(m['knn'], 'pixel_auroc')}; PRO sgfr {_pm(m['sgfr'], 'pro')}, "
        f"knn {_pm(m['knn'], 'pro')}; bank {res['bank_size']} rows, fit {res['fit_s']:.1f} s, "
        f"{res['ms_per_image']:.0f} ms/image, peak RSS {res['peak_rss_mb']:.0f} MB"
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if not Path(args.data).is_dir():
        raise cli.UsageError(f"{args.data}: no such directory; pass an MVTec-layout folder")
    plan = QUICK if args.quick else FULL
    rows = tables(plan, args.data)
    cache, out = Path(args.cache), Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = list({r.argv: r for v in rows.values() for r in v}.values())  # (c) reuses (a)
    partial = cache / "tables-so-far.md"  # the tables file is written once, when all rows are in
    print(f"{len(todo)} runs; results cached in {cache}/, tables in {out}", flush=True)
    done: dict[tuple, dict] = {}
    fresh = set()  # with --fresh, each distinct result is recomputed once
    code = _code_hash()
    for i, row in enumerate(todo, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(todo)}] {row.command}", flush=True)
        key = cache_key(row)
        try:
            done[row.argv], cached = run_row(
                row, cache, args.fresh and key not in fresh, args.quiet
            )
        except subprocess.CalledProcessError as err:
            print(
                f"{cli.PROG} bench: error: row {i} failed (exit code {err.returncode}); "
                "finished rows are cached: run the same command again to resume",
                file=sys.stderr,
            )
            return err.returncode if err.returncode > 0 else 1
        fresh.add(key)
        if _code_hash() != code:
            print("warning: the core's code changed during this run; rows may mix versions")
            code = _code_hash()
        took = "cached" if cached else f"{time.perf_counter() - t0:.0f} s"
        print(f"[{i}/{len(todo)}] {_summary(row, done[row.argv])} ({took})", flush=True)
        write_atomically(partial, render(plan, args.data, rows, done, args.quick))
    write_atomically(out, render(plan, args.data, rows, done, args.quick))
    partial.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    """Register ``bench`` on the CLI's subparsers."""
    p = sub.add_parser(
        "bench",
        help="run the benchmark tables and write them as markdown",
    )
    p.add_argument("data", metavar="DATA_DIR", help="MVTec-layout folder (e.g. MTD)")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test version (1 seed, k=2)")
    p.add_argument(
        "--out",
        default="benchmarks/README.md",
        help="markdown file to write (default: %(default)s)",
    )
    p.add_argument(
        "--cache",
        default="artifacts/bench",
        help="per-row results, for resuming (default: %(default)s)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore cached rows, run everything")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)
