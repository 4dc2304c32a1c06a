"""denoiserlab: trained diffusion denoisers side by side with closed-form denoisers.

A denoiser is any callable ``den(x, sigma)`` returning E[x0 | x_t] for ``x_t = x0 + sigma * eps``,
``x`` a float tensor ``[B, C, H, W]`` in [-1, 1] scale and ``sigma`` a float or a ``[B]`` tensor.
"""

from denoiserlab.errors import DenoiserLabError

__version__ = "0.1.0"
__all__ = ["DenoiserLabError", "__version__"]
