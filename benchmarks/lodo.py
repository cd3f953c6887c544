"""Leave one dataset out: choose among variants on the other datasets, report the one left out.

    python benchmarks/cross.py --seeds 0 --set angle=0 --set active=0 --name "..." > a.md
    python benchmarks/cross.py --seeds 0 --set ... --name "..." > b.md
    python benchmarks/lodo.py a.md b.md ...

Reads the SGFR - NN table that ``benchmarks/cross.py`` prints for each variant. For each
dataset left out, the rule of docs/experiments.md is applied to the others: among the variants
that meet the must-targets on every remaining dataset and k (pixel AUROC >= -0.005, PRO >=
-0.01), the one with the highest mean margin of the four metrics wins; printed is its worst
pixel AUROC and PRO margin on the dataset left out.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

FLOORS = (-0.005, -0.01)  # pixel AUROC, PRO
ROW = re.compile(r"\| (\S+/\S+) \| (\d+) \| (.+) \|\s*$")


def margins(text: str) -> tuple[str, dict]:
    """(variant name, {(dataset, k): [pixel AUROC, PRO, pixel AP, image AUROC] margins})."""
    name = re.search(r"^### (.+)$", text, re.M).group(1)
    table = text.split("**SGFR - NN**")[-1]
    out = {}
    for line in table.splitlines():
        if m := ROW.match(line):
            cells = [float(c.strip().strip("*")) for c in m.group(3).split("|")]
            out[m.group(1), int(m.group(2))] = cells
    return name, out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outputs", nargs="+", help="saved outputs of cross.py, one per variant")
    paths = ap.parse_args(argv).outputs
    variants = dict(margins(Path(p).read_text()) for p in paths)
    datasets = sorted({d for v in variants.values() for d, _ in v})
    print("| left out | chosen on the others | its worst pixel AUROC / PRO there |")
    print("|---|---|---|")
    for out in datasets:
        best, score = None, -np.inf
        for name, v in variants.items():
            kept = [c for (d, _), c in v.items() if d != out]
            worst = np.min([c[:2] for c in kept], axis=0)
            if (worst >= FLOORS).all() and np.mean(kept) > score:
                best, score = name, float(np.mean(kept))
        if best is None:
            print(f"| {out} | none meets the must-targets | - |")
            continue
        held = [c for (d, _), c in variants[best].items() if d == out]
        auroc, pro = min(c[0] for c in held), min(c[1] for c in held)
        print(f"| {out} | {best} | {auroc:+.3f} / {pro:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
