"""Image scores from maps: the default is robust to a single hot pixel, a defect area counts."""

import pytest
import torch

from subspace.scoring import image_score


def test_top1_ignores_a_single_hot_pixel_but_scores_a_hot_region_fully():
    spike = torch.zeros(100, 100)
    spike[50, 50] = 100.0
    assert image_score(spike, "max") == 100.0
    assert image_score(spike, "top1") == pytest.approx(1.0)  # 100 over the top 100 pixels
    region = torch.zeros(100, 100)
    region[10:20, 10:20] = 7.0  # 1 % of the image
    assert image_score(region, "top1") == pytest.approx(7.0)
    assert image_score(region) == image_score(region, "top1")  # the default


def test_unknown_image_score_is_refused():
    with pytest.raises(ValueError, match="unknown image score"):
        image_score(torch.zeros(4, 4), "mean")
