"""Properties of the closed-form denoisers that follow from their definitions, checked with Hypothesis (issue 15).

Each denoiser depends on the training set only as a multiset of images weighted equally, so permuting it or
repeating every image leaves the output unchanged; as sigma -> 0 the optimal denoiser returns the nearest training
image, PSPC-Square the composite of nearest training crops and the Gaussian denoiser the projection onto the affine
span of the data; as sigma -> inf all of them return the training mean.

Pixel values come from coarse grids (training images: multiples of 1/4 in [-1, 1]; queries: multiples of 1/8 in
[-2, 2]), so every squared distance is exact in float32 and float64: ties are exact ties, and the sigma -> 0 limits
can be compared with a plain float64 reference without rounding deciding which neighbour is nearest.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser, PSPCFlex, PSPCSquare

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, max_images: int = 7, side: int = 4):
    """(training images [N, 1, side, side], queries [B, 1, side, side], a permutation of N), float64."""
    n_images = draw(st.integers(2, max_images))
    batch = draw(st.integers(1, 3))
    train = draw(st.lists(st.integers(-4, 4), min_size=n_images * side * side, max_size=n_images * side * side))
    queries = draw(st.lists(st.integers(-16, 16), min_size=batch * side * side, max_size=batch * side * side))
    order = draw(st.permutations(range(n_images)))
    train = torch.tensor(train, dtype=torch.float64).reshape(n_images, 1, side, side) / 4
    queries = torch.tensor(queries, dtype=torch.float64).reshape(batch, 1, side, side) / 8
    return train, queries, torch.tensor(order)


def all_crops(side: int, size: int) -> torch.Tensor:
    """Every size x size square of a side x side image as bool masks [K, side, side] (PSPC-Flex's form of them)."""
    masks = []
    for top in range(side - size + 1):
        for left in range(side - size + 1):
            mask = torch.zeros(side, side, dtype=torch.bool)
            mask[top : top + size, left : left + size] = True
            masks.append(mask)
    return torch.stack(masks)


DENOISERS = {  # name -> train -> denoiser, each on its readable path (the C kernel is compared in test_pspc.py)
    "optimal": lambda train: OptimalDenoiser(train),
    "gaussian": lambda train: GaussianDenoiser(train, cache=False),
    "pspc_square": lambda train: PSPCSquare(train, 3, kernel="eager"),
    "pspc_flex": lambda train: PSPCFlex(train, all_crops(train.shape[-1], 2), kernel="eager"),
}


@pytest.mark.parametrize("name", DENOISERS)
@SETTINGS
@given(problem=problems(), sigma=st.floats(0.05, 5.0))
def test_permuting_the_training_set_changes_nothing(name, problem, sigma):
    train, queries, order = problem
    make = DENOISERS[name]
    assert torch.allclose(make(train[order])(queries, sigma), make(train)(queries, sigma), atol=1e-5)


@pytest.mark.parametrize("name", DENOISERS)
@SETTINGS
@given(problem=problems(), sigma=st.floats(0.05, 5.0))
def test_repeating_every_training_image_changes_nothing(name, problem, sigma):
    train, queries, _ = problem
    make = DENOISERS[name]
    assert torch.allclose(make(torch.cat([train, train]))(queries, sigma), make(train)(queries, sigma), atol=1e-5)


@pytest.mark.parametrize("name", DENOISERS)
@SETTINGS
@given(problem=problems(), sigma=st.sampled_from([1e8, 1e150, 1e300]))
def test_huge_sigma_gives_the_training_mean(name, problem, sigma):
    train, queries, _ = problem
    mean = train.mean(0, keepdim=True).expand_as(queries)
    assert torch.allclose(DENOISERS[name](train)(queries, sigma), mean, atol=1e-6)


@SETTINGS
@given(problem=problems(), sigma=st.sampled_from([1e-4, 1e-30, 1e-200, 5e-324]))
def test_optimal_denoiser_at_tiny_sigma_returns_the_nearest_training_image(problem, sigma):
    train, queries, _ = problem
    distances = ((queries[:, None] - train[None]) ** 2).flatten(2).sum(2)  # [B, N], exact on the grid
    nearest = (distances == distances.min(1, keepdim=True).values).double()
    expected = torch.einsum("bn,nchw->bchw", nearest / nearest.sum(1, keepdim=True), train)  # ties: their mean
    assert torch.allclose(OptimalDenoiser(train)(queries, sigma), expected, atol=1e-12)


def nearest_patch_composite(queries: torch.Tensor, train: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sigma -> 0 limit of a patch composite over bool crops [K, H, W], by loops in float64."""
    total, count = torch.zeros_like(queries), torch.zeros(queries.shape[-2:], dtype=torch.float64)
    for mask in masks:
        distances = ((queries[:, None] - train[None])[..., mask] ** 2).flatten(2).sum(2)  # [B, N]
        nearest = (distances == distances.min(1, keepdim=True).values).double()
        crop_mean = torch.einsum("bn,nck->bck", nearest / nearest.sum(1, keepdim=True), train[..., mask])
        total[..., mask] += crop_mean
        count[mask] += 1
    return total / count


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
@SETTINGS
@given(problem=problems(), sigma=st.sampled_from([1e-4, 1e-20, 1e-300]))
def test_pspc_at_tiny_sigma_is_the_composite_of_nearest_crops(kernel, problem, sigma):
    train, queries, _ = problem
    masks = all_crops(train.shape[-1], 3)
    expected = nearest_patch_composite(queries, train, masks)
    assert torch.allclose(PSPCSquare(train, 3, kernel=kernel)(queries, sigma), expected, atol=1e-5)
    assert torch.allclose(PSPCFlex(train, masks, kernel=kernel)(queries, sigma), expected, atol=1e-5)


@SETTINGS
@given(problem=problems(), sigma=st.sampled_from([1e-170, 1e-300]))
def test_gaussian_denoiser_at_tiny_sigma_projects_onto_the_span_of_the_data(problem, sigma):
    train, queries, _ = problem
    centred = (train - train.mean(0)).flatten(1).numpy()
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    basis = torch.from_numpy(basis[singular > singular.max() * 1e-10])  # [rank, D], orthonormal rows
    offsets = (queries - train.mean(0)).flatten(1)
    expected = train.mean(0).flatten() + (offsets @ basis.T) @ basis
    assert torch.allclose(GaussianDenoiser(train, cache=False)(queries, sigma).flatten(1), expected, atol=1e-8)
