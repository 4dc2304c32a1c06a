"""Train the small CNN classifier of a labelled built-in dataset and write its feature encoder as TorchScript
([B, 1 or 3, H, W] in [-1, 1] -> [B, 128]); the shipped files were made with

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_feature_classifier.py \
        --out src/denoiserlab/assets/feature_models/fashion-mnist-classifier.pt
    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_feature_classifier.py --data emoji \
        --out src/denoiserlab/assets/feature_models/emoji-classifier.pt
"""

import argparse
import time

import torch

from denoiserlab import data
from denoiserlab.atomic import atomic_write
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.classifier import ClassifierConfig, export_feature_model, train_classifier


def labelled_split(source: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images [N, C, H, W] in [-1, 1] and labels [N] of one split of a labelled dataset."""
    images = data.load(source, split=split)
    if images.labels is None or images.image_shape[0] not in (1, 3):
        raise DenoiserLabError(f"{images.name}: the classifier needs labelled 1- or 3-channel images, got "
                               f"{images.image_shape} with{'out' if images.labels is None else ''} labels")
    return images.as_float(), images.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="dataset source with train and test splits")
    parser.add_argument("--epochs", type=int, default=ClassifierConfig.epochs, help="passes over the train split")
    parser.add_argument("--seed", type=int, default=ClassifierConfig.seed, help="seed of init, order, augmentation")
    parser.add_argument("--out", required=True, help="TorchScript file to write (atomically)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small convolutions: one thread is fastest on a shared CPU, and reproducible
    train_images, train_labels = labelled_split(args.data, "train")
    test_images, test_labels = labelled_split(args.data, "test")
    start = time.perf_counter()
    model, accuracy = train_classifier(
        train_images, train_labels, test_images, test_labels, ClassifierConfig(epochs=args.epochs, seed=args.seed),
        log=lambda epoch, loss, acc: print(f"epoch {epoch + 1:3d}  train loss {loss:.4f}  test accuracy {acc:.3f}"))
    seconds = time.perf_counter() - start
    encoder = export_feature_model(model)
    path = atomic_write(args.out, lambda temp: torch.jit.save(encoder, str(temp)))
    feature_dim = encoder(test_images[:1]).shape[1]
    print(f"test accuracy {accuracy:.4f} on {len(test_images)} images; trained in {seconds:.0f} s; "
          f"{feature_dim} features; wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
