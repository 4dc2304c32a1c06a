"""A network's denoiser with its raw network in bfloat16: Jacobian-heavy analyses (gradient heatmaps) run ~1.4x faster
than float32 at its best chunking on a CPU with bfloat16 units (AVX-512 BF16), at a measured cost in accuracy
(benchmarks/bench_heatmaps_chunking.py, benchmarks/bench_heatmaps_precision.py)."""

from __future__ import annotations

import copy

import torch

from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.layers import FourierEmbedding, PositionalEmbedding
from denoiserlab.networks.precond import EDMPrecond

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NOISE_FEATURES = (FourierEmbedding, PositionalEmbedding)  # sinusoids of c_noise, kept in float32


def with_precision(denoiser: EDMPrecond, precision: str) -> EDMPrecond:
    """denoiser itself for "float32"; for "bfloat16" a copy whose raw network F computes in bfloat16.

    The EDM skip path c_skip x + c_out F stays in the input's dtype (at small sigma the output is almost all skip),
    and so do the noise-level features: their sinusoids of c_noise would lose their phase with bfloat16 frequencies
    (16-bit floats hold ~3 significant digits). The copy takes and returns the input's dtype.
    """
    if precision not in PRECISIONS:
        raise DenoiserLabError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return denoiser
    if not isinstance(denoiser, EDMPrecond):
        raise DenoiserLabError(f"precision {precision!r} needs a network trained here (EDMPrecond), got "
                               f"{type(denoiser).__name__}")
    lowered = copy.deepcopy(denoiser)
    features = [module for module in lowered.net.modules() if isinstance(module, NOISE_FEATURES)]
    kept = [dict(module.named_buffers()) for module in features]  # before .to() rounds them
    lowered.net.to(PRECISIONS[precision])
    for module, buffers in zip(features, kept):
        for name, buffer in buffers.items():
            setattr(module, name, buffer)  # assigning a tensor to a buffer's name replaces the buffer
    return lowered
