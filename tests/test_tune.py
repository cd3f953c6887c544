"""The tuning sweep's variant names must say what they run: they are the evidence's labels."""

import re

from tune import VARIANTS

from subspace.detector import Config


def test_every_variant_is_a_valid_config_whose_name_states_its_support():
    for name, changes in VARIANTS.items():
        cfg = Config(**changes)  # raises on an invalid setting
        stated = re.search(r"K=(\d+)", name)
        assert stated is None or cfg.k == int(stated.group(1)), name
        assert "k" in changes, f"{name!r} must not depend on Config's default support"
