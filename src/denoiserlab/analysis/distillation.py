"""Linear distillation (Li et al. 2024, sec. 3.1 eqs. 8-9 and appendix C): the affine map W x + b closest to a
denoiser D at one noise level, min over W, b of E |W x + b - D(x)|^2 over noisy images x = y + sigma eps.

Two solvers on the same draw of noisy images:
- "lstsq": the exact least-squares solution in float64 from moments accumulated over chunks (memory O(D^2)):
  W = Cov(D(x), x) Cov(x, x)^-1, b = E[D(x)] - W E[x] (the normal equations of the augmented [x, 1] design,
  solved after centring, which is better conditioned). Needs n_samples >= D + 1.
- "gd": Adam on mini-batches of a pool of n_samples (x, D(x)) pairs computed once, from W = 0, b = 0, minimising
  the mean squared error per element, as the paper distils by gradient descent; returns the loss curve.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from denoiserlab.analysis.noisy_inputs import Denoiser, check_positive_int, check_sigma, checked_call, noisy_batches
from denoiserlab.errors import DenoiserLabError
from denoiserlab.validation import check_images

METHODS = ("lstsq", "gd")


def distill_linear(den: Denoiser, images: Tensor, sigma: float, method: str = "lstsq", n_samples: int = 4096,
                   seed: int = 0, batch_size: int = 256, steps: int = 2000, learning_rate: float = 1e-3,
                   progress: bool = False, return_losses: bool = False) -> tuple[Tensor, ...]:
    """Fit W [D, D], b [D] (float64, on images' device; D = C*H*W, acting on flattened images) to den at sigma.

    images: float [N, C, H, W] in [-1, 1]; n_samples noisy images are drawn (seeded) from them with replacement;
    den is called on batch_size images at a time. steps, learning_rate and progress (a tqdm bar) apply to "gd".
    Returns (W, b), or (W, b, losses) with return_losses: for "gd" the mini-batch MSE per element at each step
    (float64 [steps]), for "lstsq" the MSE per element of the fit over its samples (float64 [1]).
    """
    if method not in METHODS:
        raise DenoiserLabError(f"method must be one of {METHODS}, got {method!r}")
    sigma = check_sigma(sigma)
    check_images(images, "images")
    dim = images[0].numel()
    if method == "lstsq":
        check_least_squares_samples(n_samples, dim)
    pairs = ((x.reshape(x.shape[0], -1), checked_call(den, x, sigma).reshape(x.shape[0], -1))
             for x in noisy_batches(images, sigma, n_samples, batch_size, seed))
    if method == "lstsq":
        weight, bias, losses = least_squares_fit(pairs)
    else:
        weight, bias, losses = gradient_descent_fit(pairs, batch_size, steps, learning_rate, seed, progress)
    return (weight, bias, losses) if return_losses else (weight, bias)


def check_least_squares_samples(n_samples: int, dim: int) -> None:
    """An affine fit of D outputs on D inputs has D + 1 unknowns per output: refuse fewer samples."""
    if check_positive_int(n_samples, "n_samples") < dim + 1:
        raise DenoiserLabError(f"least squares needs n_samples >= D + 1 = {dim + 1}, got n_samples={n_samples}")


@torch.no_grad()
def least_squares_fit(pairs) -> tuple[Tensor, Tensor, Tensor]:
    """Exact affine least squares from an iterable of (inputs [b, D], targets [b, D]) chunks; float64 results."""
    mean_x, mean_y, cov_xx, cov_yx, var_y = centred_moments(pairs)
    weight = torch.linalg.solve(cov_xx, cov_yx.T).T  # cov_xx is symmetric: W cov_xx = cov_yx
    bias = mean_y - weight @ mean_x
    residual = (var_y.sum() - (weight * cov_yx).sum()).clamp(min=0) / mean_x.shape[0]  # tr(cov_yy - W cov_xy) / D
    return weight, bias, residual.reshape(1)


def centred_moments(pairs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(E x [D], E y [D], Cov(x, x) [D, D], Cov(y, x) [D, D], Var y [D]) in float64 from (x, y) chunks.

    Sums are taken around the first chunk's means, so the covariances keep their precision when the means are
    large next to the spread (e.g. a -1 background at sigma = 0.002).
    """
    count = 0
    for inputs, targets in pairs:
        inputs, targets = inputs.double(), targets.double()
        if count == 0:
            shift_x, shift_y = inputs.mean(0), targets.mean(0)
            sum_x = sum_y = sum_yy = sum_xx = sum_yx = 0.0
        inputs, targets = inputs - shift_x, targets - shift_y
        sum_x, sum_y = sum_x + inputs.sum(0), sum_y + targets.sum(0)
        sum_xx, sum_yx = sum_xx + inputs.T @ inputs, sum_yx + targets.T @ inputs
        sum_yy = sum_yy + targets.pow(2).sum(0)
        count += inputs.shape[0]
    offset_x, offset_y = sum_x / count, sum_y / count
    cov_xx = sum_xx / count - torch.outer(offset_x, offset_x)
    cov_yx = sum_yx / count - torch.outer(offset_y, offset_x)
    var_y = sum_yy / count - offset_y.pow(2)
    return shift_x + offset_x, shift_y + offset_y, cov_xx, cov_yx, var_y


def gradient_descent_fit(pairs, batch_size: int, steps: int, learning_rate: float, seed: int,
                         progress: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Adam on W x + b over shuffled mini-batches of the (x, D(x)) pool; returns float64 W, b and losses [steps]."""
    check_positive_int(steps, "steps")
    if not learning_rate > 0:
        raise DenoiserLabError(f"learning_rate must be > 0, got {learning_rate}")
    with torch.no_grad():
        inputs, targets = (torch.cat(parts).float() for parts in zip(*pairs))  # each [n, D]
    weight = torch.zeros(inputs.shape[1], inputs.shape[1], device=inputs.device, requires_grad=True)
    bias = torch.zeros(inputs.shape[1], device=inputs.device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=learning_rate)
    losses = torch.empty(steps, dtype=torch.float64)
    for step, rows in enumerate(tqdm(minibatch_rows(inputs.shape[0], batch_size, steps, seed), total=steps,
                                     disable=not progress, desc="linear distillation")):
        rows = rows.to(inputs.device)
        loss = (inputs[rows] @ weight.T + bias - targets[rows]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
    return weight.detach().double(), bias.detach().double(), losses


def minibatch_rows(n_rows: int, batch_size: int, steps: int, seed: int):
    """Yield `steps` index batches [<= batch_size], walking through a fresh random permutation each epoch."""
    generator = torch.Generator().manual_seed(int(seed) + 1)
    order, position = torch.randperm(n_rows, generator=generator), 0
    for _ in range(steps):
        if position >= n_rows:
            order, position = torch.randperm(n_rows, generator=generator), 0
        yield order[position : position + batch_size]
        position += batch_size
