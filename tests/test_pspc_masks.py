"""flex_masks against the rule written as a loop, mask files, and the single-crop patch posterior."""

import numpy as np
import pytest
import torch

from denoiserlab.denoisers import (HeatmapMasks, OptimalDenoiser, PSPCSquare, ThresholdSchedule, flex_masks,
                                   load_masks, patch_posterior, square_crop)
from denoiserlab.errors import DenoiserLabError


def reference_mask(sensitivity, lam):
    """The rule for one output pixel: normalise, sort ascending (ties by flat index), keep cumulative sum >= 1 - lam."""
    values = sensitivity.flatten().tolist()
    total = sum(values)
    normalised = [value / total for value in values]
    order = sorted(range(len(values)), key=lambda index: (normalised[index], index))
    keep, cumulative = [False] * len(values), 0.0
    for index in order:
        cumulative += normalised[index]
        keep[index] = cumulative >= 1 - lam
    keep[order[-1]] = True
    return torch.tensor(keep).reshape(sensitivity.shape)


@pytest.mark.parametrize("lam", [1.0, 0.7, 0.4, 0.1])
def test_flex_masks_follow_the_rule(lam):
    generator = torch.Generator().manual_seed(0)
    heatmap = torch.randint(0, 4, (4, 5, 4, 5), generator=generator).double()  # many ties
    heatmap[..., 0, 0] += 1  # every map has a positive sum
    masks = flex_masks(heatmap, lam)
    assert masks.shape == (20, 4, 5) and masks.dtype == torch.bool
    for y in range(4):
        for x in range(5):
            assert torch.equal(masks[y * 5 + x], reference_mask(heatmap[y, x], lam))


def test_flex_masks_ties_drop_lower_flat_index_first_and_lam_one_keeps_all():
    heatmap = torch.ones(2, 2, 2, 2)
    masks = flex_masks(heatmap, 0.45)  # four pixels of 0.25: cumulative 0.25, 0.5, 0.75, 1 in flat-index order
    assert torch.equal(masks[0], torch.tensor([[False, False], [True, True]]))
    masks = flex_masks(heatmap, 0.5)  # the pixel reaching exactly 1 - lam = 0.5 is kept too
    assert torch.equal(masks[0], torch.tensor([[False, True], [True, True]]))
    assert flex_masks(torch.rand(3, 3, 3, 3) + 0.1, 1.0).all()


@pytest.mark.parametrize(
    "heatmap,lam,message",
    [
        (torch.rand(4, 4, 4), 0.5, "shape"),
        (torch.rand(2, 3, 2, 3).neg(), 0.5, "non-negative"),
        (torch.zeros(2, 2, 2, 2), 0.5, "positive sum"),
        (torch.rand(2, 2, 2, 2), 0.0, "lam"),
        (torch.rand(2, 2, 2, 2), 1.5, "lam"),
    ],
)
def test_flex_masks_reject_bad_input(heatmap, lam, message):
    with pytest.raises(DenoiserLabError, match=message):
        flex_masks(heatmap, lam)


def test_load_masks_from_files(tmp_path):
    masks = torch.rand(5, 4, 4) < 0.5
    np.save(tmp_path / "masks.npy", masks.numpy())
    torch.save(masks, tmp_path / "masks.pt")
    assert torch.equal(load_masks(tmp_path / "masks.npy"), masks)
    assert torch.equal(load_masks(tmp_path / "masks.pt"), masks)
    heatmap = torch.rand(4, 4, 4, 4, dtype=torch.float64) + 0.01
    np.savez(tmp_path / "heatmap.npz", heatmap=heatmap.numpy())
    assert torch.equal(load_masks(tmp_path / "heatmap.npz", lam=0.4), flex_masks(heatmap, 0.4))
    schedule = ThresholdSchedule.cifar10()
    by_sigma = load_masks(tmp_path / "heatmap.npz", lam=schedule)
    assert isinstance(by_sigma, HeatmapMasks)
    assert torch.equal(by_sigma(0.5), flex_masks(heatmap, schedule(0.5)))
    assert by_sigma(0.5) is by_sigma(0.4)  # same threshold, same tensor (so PSPCFlex groups the samples)
    with pytest.raises(DenoiserLabError, match="give a threshold"):
        load_masks(tmp_path / "heatmap.npz")
    with pytest.raises(DenoiserLabError, match="does not apply"):
        load_masks(tmp_path / "masks.npy", lam=0.5)
    with pytest.raises(DenoiserLabError, match="does not exist"):
        load_masks(tmp_path / "missing.npy")
    (tmp_path / "masks.txt").write_text("1")
    with pytest.raises(DenoiserLabError, match=".npy, .npz or .pt"):
        load_masks(tmp_path / "masks.txt")


def test_patch_posterior_matches_softmax_over_training_crops():
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(20, 3, 6, 6, generator=generator) * 2 - 1
    x = torch.randn(3, 3, 6, 6, generator=generator)
    sigmas = torch.tensor([0.5, 1.0, 0.002])
    crop = torch.rand(6, 6, generator=generator) < 0.4
    mean, weights = patch_posterior(x, sigmas, train, crop, return_weights=True)
    for b in range(3):
        query, patches = x[b][:, crop].double().flatten(), train[:, :, crop].double().flatten(1)
        expected = torch.softmax(-((patches - query) ** 2).sum(1) / (2 * sigmas[b].item() ** 2), 0)
        assert torch.allclose(weights[b], expected, atol=1e-10)
        assert torch.allclose(mean[b], (expected @ patches).reshape(3, -1), atol=1e-10)


def test_patch_posterior_of_whole_image_is_optimal_and_of_a_square_feeds_pspc():
    generator = torch.Generator().manual_seed(1)
    train = torch.rand(15, 1, 5, 5, generator=generator) * 2 - 1
    x = torch.randn(2, 1, 5, 5, generator=generator)
    whole = patch_posterior(x, 0.7, train, torch.ones(5, 5, dtype=torch.bool))
    assert torch.allclose(whole.reshape(2, 1, 5, 5), OptimalDenoiser(train)(x, 0.7).double(), atol=1e-6)
    # the corner pixel lies in exactly one 3 x 3 crop, so PSPC-Square's value there is that crop's posterior mean
    corner = patch_posterior(x, 0.7, train, square_crop((5, 5), 0, 0, 3))
    assert torch.allclose(PSPCSquare(train, 3)(x, 0.7)[:, :, 0, 0].double(), corner[:, :, 0], atol=1e-5)
    with pytest.raises(DenoiserLabError, match="empty"):
        patch_posterior(x, 0.7, train, torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(DenoiserLabError, match="does not fit"):
        square_crop((5, 5), 3, 0, 3)
