"""The Gaussian (Wiener) denoiser of the training set's empirical mean and covariance (Li et al. 2024, eq. 6).

The mean and covariance are accumulated in float64 over chunks of the training set read from its storage (an
ImageSet's uint8, memory-mapped or not, is converted chunk by chunk), so no float copy of the set is made. The
eigendecomposition can be kept in the user cache folder (`cache=True`); see `cache_key` for how an entry is found.
The Gaussian mixture (`gaussian_mixture.py`) fits its components with the same passes and the same cache.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor

from denoiserlab.atomic import atomic_write
from denoiserlab.data.imageset import ImageSet
from denoiserlab.denoisers.distributed import shard, sum_across
from denoiserlab.denoisers.training_set import TrainingImages, training_source
from denoiserlab.errors import DenoiserLabError
from denoiserlab.user_cache import user_cache_dir
from denoiserlab.validation import (
    check_denoiser_call,
    check_finite_output,
    check_flag,
    check_memory,
    check_optional_count,
    check_same_image_shape,
    sigma_per_sample,
)

CHUNK_IMAGES = 4096  # training images converted at a time by the mean and covariance passes
SKETCH_DIRECTIONS = 8  # k fixed random directions r_j of the cache key's second-moment sketch sum_i (x_i . r_j)^2
CACHE_FORMAT = "gaussian-eigh-v2"  # hashed into every cache key: entries of another key scheme are never read


@dataclass(frozen=True)
class GaussianConfig:
    rank: int | None = None  # keep the top `rank` principal components (None: all C*H*W)
    xflip: bool = False  # also use the horizontal flip of every training image
    cache: bool = False  # keep the eigendecomposition in the user cache folder (read back if already there)
    # split the mean and covariance passes over the processes of an initialised torch.distributed group (rank r of W
    # reads the stored images [r N // W, (r + 1) N // W)); every rank then holds the one-process denoiser
    distributed: bool = False

    def __post_init__(self):
        check_optional_count(self.rank, "rank")  # the upper bound C*H*W is checked once the data is known
        check_flag(self.xflip, "xflip")
        check_flag(self.cache, "cache")
        check_flag(self.distributed, "distributed")


@dataclass(frozen=True)
class FittedGaussian:
    """The empirical Gaussian of n training images, float64: mean [D], eigenvalues [D] (descending, >= 0; those
    below eigh's rounding noise set to 0) and eigenvectors [D, D] as orthonormal columns."""

    n_images: int
    mean: Tensor
    eigvals: Tensor
    eigvecs: Tensor


class GaussianDenoiser:
    """D(x, sigma) = mu + U diag(S / (S + sigma^2)) U^T (x - mu), with U, S the eigenvectors and eigenvalues of the
    biased (divide by N) empirical covariance, computed once in float64 (`fit_gaussians`).

    cache=True keeps the eigendecomposition in the user cache folder ($DENOISERLAB_CACHE, else
    ~/.cache/denoiserlab) and reads it back when the same data comes again; the default writes nothing to disk.
    distributed=True (under torchrun, or after torch.distributed.init_process_group) has each rank read one
    contiguous shard of the stored images and all_reduce its float64 sums (SUM), so every rank gets the one-process
    mean and covariance up to the order of float64 additions; construction is collective, calls are local.
    Memory: 24 D^2 bytes for the covariance and eigh (D = C*H*W) plus about 24 n D for one chunk of n = CHUNK_IMAGES
    images (as float32, float64 and centred), independent of N; the denoiser then holds 8 D (r + 1) bytes (r = rank
    or D).
    """

    config_class = GaussianConfig
    tunable = None  # no option to fit per sigma

    def __init__(self, train: Tensor | ImageSet, rank: int | None = None, xflip: bool = False, cache: bool = False,
                 distributed: bool = False):
        self.config = GaussianConfig(rank=rank, xflip=xflip, cache=cache, distributed=distributed)
        images = training_source(train, xflip)
        self.image_shape_ = images.image_shape
        check_rank(rank, math.prod(self.image_shape_))
        if distributed:
            images = shard(images)  # this rank's contiguous shard; refused without a process group
        (fitted,) = fit_gaussians(images, cache=cache, chunk_images=CHUNK_IMAGES, distributed=distributed)
        keep = slice(None) if rank is None else slice(0, rank)
        self.mean_ = fitted.mean  # [D] float64
        self.eigvals_ = fitted.eigvals[keep]  # [r] float64, descending
        self.eigvecs_ = fitted.eigvecs[:, keep].contiguous()  # [D, r] float64, orthonormal columns

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x: [B, C, H, W]; sigma: float or [B]; returns [B, C, H, W] in x's dtype and device."""
        sigma = check_denoiser_call(x, sigma, self.image_shape_)
        mean, eigvals, eigvecs = (t.to(x.device) for t in (self.mean_, self.eigvals_, self.eigvecs_))
        offset = x.reshape(x.shape[0], -1).double() - mean  # [B, D]
        gains = wiener_gains(eigvals, sigma[:, None] ** 2)  # [B, r]
        out = mean + ((offset @ eigvecs) * gains) @ eigvecs.T
        return check_finite_output(out.reshape(x.shape).to(x.dtype), "the Gaussian denoiser", sigma)

    def linear_map(self, sigma: float) -> Tensor:
        """The matrix A of D(x, sigma) = mu + A (x - mu): U diag(S / (S + sigma^2)) U^T, float64 [D, D] on CPU, with
        the gains of the denoiser itself (`wiener_gains`): finite at any sigma > 0, 0 on the null space."""
        (sigma,) = sigma_per_sample(sigma, 1)  # a positive finite number
        gains = wiener_gains(self.eigvals_, sigma**2)  # [r]
        return (self.eigvecs_ * gains) @ self.eigvecs_.T

    def ode_trajectory(self, noise: Tensor, sigmas: Tensor) -> Tensor:
        """Closed-form PF-ODE states at `sigmas` from x = noise * sigmas[0] (see diffusion.gaussian_ode_trajectory)."""
        from denoiserlab.diffusion.gaussian_trajectory import gaussian_ode_trajectory

        check_same_image_shape(noise, self.image_shape_)
        return gaussian_ode_trajectory(self.mean_, self.eigvals_, self.eigvecs_, noise, sigmas)


def check_rank(rank: int | None, dim: int) -> None:
    """A rank must be None or an integer in [1, C*H*W]."""
    if rank is not None and not 1 <= rank <= dim:
        raise DenoiserLabError(f"rank must be between 1 and C*H*W = {dim}, got {rank}")


def wiener_gains(eigvals: Tensor, sigma_squared: Tensor) -> Tensor:
    """S / (S + sigma^2) per eigenvalue S, and exactly 0 where S = 0 for every sigma > 0: that is the limit as
    sigma -> 0 too (the projection onto the span of the data), where S / (S + sigma^2) alone gives 0 / 0 once
    sigma^2 underflows. sigma^2 overflowing to inf gives 0: the training mean, the sigma -> inf limit."""
    return torch.where(eigvals > 0, eigvals / (eigvals + sigma_squared), 0.0)


def fit_gaussians(images: TrainingImages, labels: Tensor | None = None, n_groups: int = 1, cache: bool = False,
                  chunk_images: int = CHUNK_IMAGES, distributed: bool = False) -> list[FittedGaussian]:
    """The empirical Gaussian (biased covariance, divided by n) of each group of the training images: of all of them
    (labels None), or of the images with labels == g for g = 0 .. n_groups - 1 (labels: int64 [N] over the N images
    of `images`, flips included; every group non-empty). Returns one FittedGaussian per group.

    Two float64 passes over chunks of the storage: sums of x per group (`moment_sums`), then the sums of centred
    outer products (x - mu)(x - mu)^T (`centred_scatters`), which avoid the cancellation of sum x x^T / n - mu mu^T
    at the same GEMM cost. With cache=True, a group found in the user cache folder under its `cache_key` (and with
    the same mean) skips the second pass and eigh; the others are written there. Memory: 8 D^2 bytes per group not
    found, plus 16 D^2 for eigh and about 20 n D for a chunk of n images, whatever N.

    distributed: `images` is this rank's shard of an initialised process group; the counts, sums and sketches, then
    the scatters are summed over ranks (all_reduce SUM, identical on every rank), and a cache entry is used only
    where every rank found it (`entries_found_everywhere`), since the second pass is collective. Every rank that
    computes an entry writes it (the same bytes; atomic, so a shared folder is safe).
    """
    dim = math.prod(images.image_shape)
    check_memory(8 * dim**2 * (n_groups + 2), f"the covariance of {list(images.image_shape)} images")
    counts, sums, sketches = moment_sums(images, labels, n_groups, chunk_images)
    if distributed:
        counts, sums, sketches = sum_across(counts), sum_across(sums), sum_across(sketches)
    means = sums / counts[:, None]  # [G, D]
    paths = [cache_path(cache_key(int(counts[g]), images.image_shape, sums[g], sketches[g])) for g in range(n_groups)]
    stored = [read_cached(path, means[g]) if cache else None for g, path in enumerate(paths)]
    if distributed and cache:
        stored = entries_found_everywhere(stored)
    missing = [g for g in range(n_groups) if stored[g] is None]
    scatters = centred_scatters(images, means, missing, labels, chunk_images)  # [D, D] per missing group
    if distributed:
        scatters = [sum_across(scatter) for scatter in scatters]
    for g in missing:
        scatter = scatters.pop(0)  # dropped once its eigendecomposition is made
        eigvals, eigvecs = descending_eigh(scatter.div_(int(counts[g])))
        stored[g] = means[g], eigvals, eigvecs
        if cache:
            write_cached(paths[g], *stored[g])
    return [FittedGaussian(int(counts[g]), *stored[g]) for g in range(n_groups)]


def entries_found_everywhere(stored: list) -> list:
    """The cache entries of `stored` (one per group, None where this rank found none) that every rank of the process
    group found; None for the others, which all ranks then recompute together. One all_reduce MIN."""
    found = torch.tensor([entry is not None for entry in stored], dtype=torch.int64)
    dist.all_reduce(found, dist.ReduceOp.MIN)
    return [entry if everywhere else None for entry, everywhere in zip(stored, found.tolist())]


def labelled_chunks(images: TrainingImages, labels: Tensor | None,
                    chunk_images: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The images in order, chunk by chunk: (rows float64 [n, D], their groups int64 [n]: labels, or all 0)."""
    for start in range(0, len(images), chunk_images):
        chunk = images.read(start, start + chunk_images)
        rows = chunk.reshape(chunk.shape[0], -1).double()
        groups = torch.zeros(rows.shape[0], dtype=torch.int64) if labels is None else labels[start : start + len(rows)]
        yield rows, groups


def sketch_directions(dim: int) -> Tensor:
    """The k = SKETCH_DIRECTIONS fixed directions r_j of the cache key's sketch: float64 [D, k], seeded N(0, 1)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(dim, SKETCH_DIRECTIONS, generator=generator, dtype=torch.float64)


def moment_sums(images: TrainingImages, labels: Tensor | None = None, n_groups: int = 1,
                chunk_images: int = CHUNK_IMAGES) -> tuple[Tensor, Tensor, Tensor]:
    """Pass 1, per group (see `fit_gaussians`): image counts int64 [G], sums of x float64 [G, D], and the sketch
    sum_i (x_i . r_j)^2 float64 [G, k] of the second moments along `sketch_directions` (for `cache_key`; k D
    multiply-adds an image, against D^2 for the covariance)."""
    directions = sketch_directions(math.prod(images.image_shape))
    counts = torch.zeros(n_groups, dtype=torch.int64)
    sums = torch.zeros(n_groups, directions.shape[0], dtype=torch.float64)
    sketches = torch.zeros(n_groups, SKETCH_DIRECTIONS, dtype=torch.float64)
    for rows, groups in labelled_chunks(images, labels, chunk_images):
        counts += torch.bincount(groups, minlength=n_groups)
        sums.index_add_(0, groups, rows)
        sketches.index_add_(0, groups, (rows @ directions).square())
    return counts, sums, sketches


def centred_scatters(images: TrainingImages, means: Tensor, wanted: list[int], labels: Tensor | None = None,
                     chunk_images: int = CHUNK_IMAGES) -> list[Tensor]:
    """Pass 2: sum over the images of group g of (x - mu_g)(x - mu_g)^T for each g in `wanted`: a float64 [D, D]
    each. means: float64 [G, D]; labels as in `fit_gaussians`. No pass when nothing is wanted."""
    dim = means.shape[1]
    scatters = [torch.zeros(dim, dim, dtype=torch.float64) for _ in wanted]
    if not wanted:
        return scatters
    slot_of_group = torch.full((means.shape[0],), -1, dtype=torch.int64)
    slot_of_group[wanted] = torch.arange(len(wanted))
    for rows, groups in labelled_chunks(images, labels, chunk_images):
        slots = slot_of_group[groups]  # [n], -1 for groups not wanted
        for slot in slots[slots >= 0].unique().tolist():
            members = slots == slot
            centred = (rows if members.all() else rows[members]) - means[wanted[slot]]  # [m, D]
            scatters[slot].addmm_(centred.T, centred)
    return scatters


def descending_eigh(covariance: Tensor) -> tuple[Tensor, Tensor]:
    """(eigenvalues [D] descending, eigenvectors [D, D] as columns) of a float64 covariance [D, D].

    Eigenvalues below D * eps * the largest (the rounding noise of eigh, as in numpy's matrix_rank) are set to 0:
    they are directions the data does not span, which the sigma -> 0 limit (wiener_gains) must leave out."""
    eigvals, eigvecs = torch.linalg.eigh(covariance)
    eigvals = eigvals.flip(0)
    tolerance = eigvals.abs().max() * eigvals.numel() * torch.finfo(torch.float64).eps
    return torch.where(eigvals > tolerance, eigvals, 0.0), eigvecs.flip(1).contiguous()


def cache_key(n_images: int, image_shape: tuple[int, ...], sums: Tensor, sketch: Tensor) -> str:
    """Key of an eigendecomposition in the user cache folder: SHA-256 of CACHE_FORMAT, n, the image shape, the
    float64 sums of x [D] and the second-moment sketch [k] that `moment_sums` computes anyway.

    Why this and not a hash of every value: a hit then costs the first pass alone (reading and converting the set,
    D + k D multiply-adds an image), not a SHA-256 of all 4 N D bytes of float32 on top of it, and a miss pays
    nothing extra. What it sees: in exact arithmetic it is a function of the set of images, not of their order (as
    the covariance is). Changing any value changes a per-coordinate sum (one uint8 level, 1 / 127.5, is far above
    the sums' float64 rounding). Edits that keep every per-coordinate sum, such as swapping one pixel between two
    images or shuffling patches across images (a control in locality studies), change the covariance but not the
    sums; they change the sketch r_j^T (sum x x^T) r_j for the fixed random directions r_j unless the change of
    sum x x^T is orthogonal to all k rank-one r_j r_j^T, which no accidental edit is (a set of measure zero). It is
    no cryptographic hash: data can be built to collide on purpose, as with any cache a user can write to. A hit is
    also checked: shapes, finite values, eigenvalues >= 0 and the stored mean equal to the one just computed
    (`read_cached`). Float64 sums depend on the order of additions, so the same images in another order, chunking,
    thread count, BLAS or number of processes may give another key: a miss and a recomputation, never a wrong entry.
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT} {n_images} {list(image_shape)}".encode())
    for values in (sums, sketch):
        digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_path(key: str) -> Path:
    """Where the eigendecomposition of `key` is kept: a safetensors file in the user cache folder."""
    return user_cache_dir("gaussian") / f"{key}.safetensors"


def write_cached(path: Path, mean: Tensor, eigvals: Tensor, eigvecs: Tensor) -> None:
    """Write an eigendecomposition atomically as safetensors. The cache is a convenience: a cache folder that
    cannot be written is skipped (the result is still right, only not kept)."""
    try:
        atomic_write(path, lambda temp: save_file({"mean": mean, "eigvals": eigvals, "eigvecs": eigvecs}, str(temp)))
    except OSError:
        pass


def read_cached(path: Path, mean: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """(mean [D], eigvals [D], eigvecs [D, D]) from a cache file, or None when it is absent or not exactly that:
    three float64 tensors of these shapes, finite, eigenvalues >= 0, and its mean equal to `mean` [D] (computed
    from the data). Anything else (truncated, foreign or planted files) is recomputed."""
    try:
        stored = load_file(str(path))
    except Exception:  # absent, truncated or not safetensors at all (safetensors raises its own error types)
        return None
    dim = mean.shape[0]
    shapes = {"mean": (dim,), "eigvals": (dim,), "eigvecs": (dim, dim)}
    if set(stored) != set(shapes) or any(tuple(stored[name].shape) != shape or stored[name].dtype != torch.float64
                                         for name, shape in shapes.items()):
        return None
    if not all(torch.isfinite(tensor).all() for tensor in stored.values()) or (stored["eigvals"] < 0).any():
        return None
    if not torch.equal(stored["mean"], mean):
        return None
    return stored["mean"], stored["eigvals"], stored["eigvecs"]
