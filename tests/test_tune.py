"""The tuning sweep: variant names say what they run, data is read as eval reads it."""

import re

import numpy as np
from PIL import Image
from tune import VARIANTS, augmented, load

from subspace.detector import Config
from subspace.synthetic import make_set


def test_every_variant_is_a_valid_config_whose_name_states_its_support():
    for name, changes in VARIANTS.items():
        cfg = Config(**changes)  # raises on an invalid setting
        stated = re.search(r"K=(\d+)", name)
        assert stated is None or cfg.k == int(stated.group(1)), name
        assert "k" in changes, f"{name!r} must not depend on Config's default support"


def test_flat_example_folders_load_with_masks_and_labels(tmp_path):
    """``normal/`` + ``query/`` + ``ground_truth/``: masked queries are defects, the rest good."""
    make_set(tmp_path, n_normal=6, n_query=4)  # 3 scratched queries with masks, 1 good
    refs, test = load(tmp_path, shots=4, seed=0, max_test=0)
    assert len(refs) == 4 and {p.parent.name for p in refs} == {"normal"}
    assert len(set(refs)) == 4
    defects = [t for t in test if t.defect != "good"]
    assert len(test) == 4 and len(defects) == 3
    for t in defects:
        assert t.mask_path.name == f"{t.path.stem}_mask.png" and t.mask_path.is_file()
    assert [t.mask_path for t in test if t.defect == "good"] == [None]


def test_augmented_bank_holds_each_reference_then_its_transforms():
    a = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    b = Image.fromarray(np.arange(12, 24, dtype=np.uint8).reshape(3, 4))
    out = [np.asarray(im) for im in augmented([a, b], ["hflip", "rot180"])]
    expected = [np.asarray(a), np.asarray(b)]
    expected += [np.asarray(a)[:, ::-1], np.asarray(b)[:, ::-1]]
    expected += [np.asarray(a)[::-1, ::-1], np.asarray(b)[::-1, ::-1]]
    assert len(out) == 6 and all((o == e).all() for o, e in zip(out, expected, strict=True))
    assert augmented([a], []) == [a]
