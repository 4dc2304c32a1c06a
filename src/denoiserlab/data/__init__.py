"""Datasets: `load(source, ...)` returns an ImageSet of uint8 images [N, C, H, W].

Sources: built-in names ('fashion-mnist', 'fashion-mnist-full', 'emoji', 'emoji-64') or paths: image folders,
EDM-style zips, CIFAR-10 python batches, IDX files, .npz archives and uint8 .npy arrays, memory-mapped (see
`sources`, `npy`). `load(..., cache_dir=...)` keeps the decoded set of the other formats as a memory-mapped .npy
(see `cache`).
"""

from denoiserlab.data.imageset import ImageSet, float_to_uint8, uint8_to_float
from denoiserlab.data.load import load
from denoiserlab.data.options import held_out_options

__all__ = ["ImageSet", "load", "held_out_options", "uint8_to_float", "float_to_uint8"]
