"""The tuning sweep's variant names must say what they run: they are the evidence's labels."""

import re
from pathlib import Path

from tune import VARIANTS, load

from subspace.detector import Config


def test_every_variant_is_a_valid_config_whose_name_states_its_support():
    for name, changes in VARIANTS.items():
        cfg = Config(**changes)  # raises on an invalid setting
        stated = re.search(r"K=(\d+)", name)
        assert stated is None or cfg.k == int(stated.group(1)), name
        assert "k" in changes, f"{name!r} must not depend on Config's default support"


def test_flat_example_folders_load_with_masks_and_labels():
    """``normal/`` + ``query/`` + ``ground_truth/``: masked queries are defects, the rest good."""
    root = Path(__file__).resolve().parents[1] / "examples" / "ballscrew"
    refs, test = load(root, shots=4, seed=0, max_test=0)
    assert len(refs) == 4 and {p.parent.name for p in refs} == {"normal"}
    assert len(set(refs)) == 4
    defects = [t for t in test if t.defect != "good"]
    assert len(test) == 4 and len(defects) == 3
    for t in defects:
        assert t.mask_path.name == f"{t.path.stem}_mask.png" and t.mask_path.is_file()
    assert [t.mask_path for t in test if t.defect == "good"] == [None]
