"""Compile every Triton kernel of the package for an H100/H200 (CUDA sm_90) without a GPU, as test_triton_compile.py
runs it: `python triton_compile_worker.py` (with TRITON_INTERPRET unset: the interpreter would replace the kernels).

Triton's front end, its GPU passes and the ptxas that ships with it run on any machine, so this catches what the CPU
interpreter cannot (a non-constexpr global, an op without a GPU lowering, a tile that does not fit). Signatures come
from the kernels' parameter names (`*_ptr` float32 pointers, UPPER-CASE constexprs, the rest int32) and the block
shapes from the host code, for 1x28x28 and 3x32x32 images. Prints one line per kernel and configuration.
"""

import inspect

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from denoiserlab.denoisers import pspc_flex_triton, pspc_triton


def signature(kernel) -> dict:
    names = inspect.signature(kernel.fn).parameters
    return {name: "*fp32" if name.endswith("_ptr") else "constexpr" if name.isupper() else "i32" for name in names}


def compile_for_hopper(kernel, constexprs: dict, num_warps: int) -> None:
    source = ASTSource(fn=kernel, signature=signature(kernel), constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    print(f"{kernel.fn.__name__} {constexprs} compiled: {compiled.metadata.shared} B shared memory", flush=True)


def main() -> None:
    for shape in ((1, 28, 28), (3, 32, 32)):
        tiles = pspc_triton.tile_sizes(*shape)
        num_warps = tiles.pop("num_warps")
        for kernel in pspc_triton.kernels():
            compile_for_hopper(kernel, tiles, num_warps)
    for kernel in pspc_flex_triton.kernels():
        compile_for_hopper(kernel, dict(pspc_flex_triton.TILES), 4)


if __name__ == "__main__":
    main()
