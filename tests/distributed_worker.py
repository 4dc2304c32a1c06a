"""One rank of the 2-process checks in test_distributed.py: `python distributed_worker.py RANK WORLD_SIZE INIT OUT`.

Joins a gloo group at INIT (a file:// URL), builds every case of `cases(distributed=True)` and writes its outputs to
OUT/rank-RANK.npz; test_distributed.py compares them with `cases(distributed=False)` in one process. Also records
whether a call with different queries on the two ranks was refused (as it must be, on every rank), and whether a
study stage's value broadcast from rank 0 arrived intact.
"""

import datetime
import sys

import numpy as np
import torch
import torch.distributed as dist

from denoiserlab.data import ImageSet
from denoiserlab.denoisers import (
    CFDM,
    ELS,
    LS,
    DataLocality,
    GaussianMixture,
    KNNDenoiser,
    OptimalDenoiser,
    PatchSchedule,
    PSPCFlex,
    PSPCSquare,
)
from denoiserlab.errors import DenoiserLabError

N_TRAIN = 13  # odd: the two shards differ in size (6 and 7 images)
SIGMAS = torch.tensor([0.002, 0.05, 0.4, 3.0, 80.0])  # one per query: the sharp and flat limits included


def training_sets() -> tuple[torch.Tensor, ImageSet]:
    """The same N_TRAIN images 1x8x8 as a float tensor in [-1, 1] and as a uint8 ImageSet (streamed)."""
    pixels = torch.randint(0, 256, (N_TRAIN, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return pixels.float() / 127.5 - 1, ImageSet(pixels, None, "random")


def queries(train: torch.Tensor) -> torch.Tensor:
    """Queries [5, 1, 8, 8]: noisy training images, so that sigma = 0.002 has one clear nearest image."""
    eps = torch.randn(len(SIGMAS), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return train[[0, 5, 6, 12, 3]] + SIGMAS.view(-1, 1, 1, 1) * eps


def cases(distributed: bool) -> dict:
    """name -> (denoiser, sigma) for every checked configuration (the peers' too)."""
    floats, stored = training_sets()
    masks = torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.4
    masks[:, 0, 0] = True  # no empty crop
    schedule = PatchSchedule((5, 3, 1), sigma_min=0.01, sigma_max=10.0)
    options = dict(distributed=distributed)
    return {
        "optimal": (OptimalDenoiser(floats, **options), SIGMAS),
        "optimal_stream_xflip": (OptimalDenoiser(stored, xflip=True, chunk_size=3, storage="stream", **options),
                                 SIGMAS),
        "optimal_sigma_0.002": (OptimalDenoiser(floats, **options), 0.002),
        "square_compiled": (PSPCSquare(floats, 3, kernel="compiled", **options), SIGMAS),
        "square_compiled_stream": (PSPCSquare(stored, 3, kernel="compiled", storage="stream", chunk_size=16,
                                              **options), 0.002),
        "square_schedule_eager_stream_xflip": (PSPCSquare(stored, schedule, xflip=True, kernel="eager", chunk_size=4,
                                                          storage="stream", **options), SIGMAS),
        "flex_compiled": (PSPCFlex(floats, masks, kernel="compiled", **options), SIGMAS),
        "flex_eager_stream_xflip": (PSPCFlex(stored, masks, xflip=True, kernel="eager", storage="stream", chunk_size=4,
                                             **options), SIGMAS),
        "cfdm_stream": (CFDM(stored, smoothing=0.3, n_noise=3, storage="stream", chunk_size=4, **options), SIGMAS),
        "els_compiled": (ELS(floats, 3, kernel="compiled", **options), SIGMAS),
        "els_circular_compiled_stream": (ELS(stored, schedule, padding="circular", kernel="compiled",
                                             storage="stream", chunk_size=16, **options), SIGMAS),
        "els_eager_xflip": (ELS(floats, 5, xflip=True, kernel="eager", chunk_size=3, **options), SIGMAS),
        "ls_compiled": (LS(floats, 3, kernel="compiled", **options), SIGMAS),
        "data_locality_stream_xflip": (DataLocality(stored, threshold=0.2, xflip=True, storage="stream", chunk_size=4,
                                                    **options), SIGMAS),
        "knn": (KNNDenoiser(floats, k=3, n_random=4, **options), SIGMAS),
        "knn_stream_xflip_k_over_shard": (KNNDenoiser(stored, k=9, n_random=5, xflip=True, storage="stream",
                                                      chunk_size=4, **options), SIGMAS),
        "mixture_labels_xflip": (GaussianMixture(floats, labels=torch.arange(N_TRAIN) % 3, xflip=True, **options),
                                 SIGMAS),
        "mixture_kmeans_stream": (GaussianMixture(stored, components=5, **options), SIGMAS),
    }


def outputs(distributed: bool) -> dict[str, np.ndarray]:
    """name -> float64 output [5, 1, 8, 8] of every case on the same queries."""
    x = queries(training_sets()[0])
    return {name: denoiser(x.double(), sigma).numpy() for name, (denoiser, sigma) in cases(distributed).items()}


def stage_value(rank: int) -> dict:
    """A value of every kind a study stage holds, different on every rank."""
    return {"tensor": torch.arange(6.0).reshape(2, 3) + rank, "flags": torch.tensor([True, rank == 0]),
            "empty": torch.zeros(0, 4, dtype=torch.int64), "array": np.full(3, float(rank)),
            "nested": ([rank, "text", None], (1.5 * rank,)), "name": f"rank {rank}"}


def broadcast_check(rank: int) -> bool:
    """Whether studies.common.ranks.broadcast_value gives this rank exactly rank 0's stage value."""
    from denoiserlab.studies.common.ranks import broadcast_value

    got, expected = broadcast_value(stage_value(rank)), stage_value(0)
    return (torch.equal(got["tensor"], expected["tensor"]) and torch.equal(got["flags"], expected["flags"])
            and got["empty"].shape == (0, 4) and got["empty"].dtype == torch.int64
            and isinstance(got["array"], np.ndarray) and np.array_equal(got["array"], expected["array"])
            and got["nested"] == expected["nested"] and got["name"] == expected["name"])


def main(rank: int, world_size: int, init_method: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    results = outputs(distributed=True)
    denoiser, _ = cases(distributed=True)["optimal"]
    try:  # rank 1 passes other queries: every rank must refuse the call
        denoiser(queries(training_sets()[0]) + rank, SIGMAS)
        refused = False
    except DenoiserLabError:
        refused = True
    broadcast = broadcast_check(rank)
    np.savez(f"{out}/rank-{rank}.npz", refused=np.array(refused), broadcast=np.array(broadcast), **results)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
