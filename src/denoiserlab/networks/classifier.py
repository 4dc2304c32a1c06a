"""A small CNN classifier of small images (1x28x28 Fashion-MNIST, 3x32x32 emoji) whose penultimate features serve as
an image encoder (Fréchet distance, feature cosine), its seeded CPU training loop, and its export as a TorchScript
feature model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from denoiserlab.errors import DenoiserLabError


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (same size), batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class FeatureClassifier(nn.Module):
    """Three conv stages (e.g. 28 -> 14 -> 7 pixels), average pooling to a 3x3 grid, a ReLU layer of `feature_dim`
    features, linear head. Input: [B, in_channels, H, W] in [-1, 1]. forward -> logits [B, n_classes];
    features -> [B, feature_dim]."""

    def __init__(self, n_classes: int = 10, width: int = 32, feature_dim: int = 128, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(
            conv_block(in_channels, width // 2), nn.MaxPool2d(2),  # [B, w/2, 14, 14]
            conv_block(width // 2, width), conv_block(width, width), nn.MaxPool2d(2),  # [B, w, 7, 7]
            conv_block(width, 2 * width), nn.AdaptiveAvgPool2d(3), nn.Flatten(),  # [B, 2w * 9]
            nn.Linear(2 * width * 9, feature_dim), nn.ReLU())  # [B, F]
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, n_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate (post-ReLU) activations: [B, in_channels, H, W] -> [B, F]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class FeatureEncoder(nn.Module):
    """The exported feature model: [B, C, H, W] in [-1, 1] with C = 1 or 3 -> [B, F]; a grey classifier reads RGB
    averaged to grey, a colour one reads grey repeated on three channels. `logits(x)` gives the class logits.
    Other image sizes than the training one run, but their features are untested."""

    def __init__(self, classifier: FeatureClassifier):
        super().__init__()
        self.classifier = classifier
        self.in_channels: int = classifier.in_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or (x.shape[1] != 1 and x.shape[1] != 3):
            raise ValueError("feature model input must be [B, 1 or 3, H, W] images in [-1, 1]")
        if x.shape[1] == 3 and self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return self.classifier.features(x.float())

    @torch.jit.export
    def logits(self, x: Tensor) -> Tensor:
        """Class logits [B, n_classes] of the classifier the features come from (Fashion-MNIST: 10 classes, emoji:
        the 9 Unicode emoji groups)."""
        return self.classifier.head(self.forward(x))


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training options of train_classifier."""

    width: int = 32  # channels of the middle conv stage (first: width / 2, last: 2 * width)
    feature_dim: int = 128  # size of the feature layer (the exported features)
    epochs: int = 25  # passes over the training images
    batch_size: int = 128  # images per AdamW step
    learning_rate: float = 3e-3  # peak learning rate (one-cycle: warm-up, then cosine decay to ~0)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    max_shift: int = 1  # augmentation: random translation of up to this many pixels (0: none)
    xflip: bool = True  # augmentation: random horizontal flips
    seed: int = 0  # seed of initialisation, batch order and augmentation

    def __post_init__(self):
        if self.width < 2 or min(self.feature_dim, self.epochs, self.batch_size) < 1:
            raise DenoiserLabError(f"classifier needs width >= 2 and feature_dim, epochs, batch_size >= 1, "
                                   f"got {self}")
        if self.learning_rate <= 0 or self.max_shift < 0:
            raise DenoiserLabError(f"classifier needs learning_rate > 0 and max_shift >= 0; got {self}")


def background_value(images: Tensor) -> float:
    """The images' background: the median of their corner pixels (-1 for Fashion-MNIST, +1 for white emoji)."""
    return float(images[:, :, [0, -1]][..., [0, -1]].median())


def augment(images: Tensor, max_shift: int, xflip: bool, generator: torch.Generator,
            background: float = -1.0) -> Tensor:
    """Random flips and translations (padded with `background`): [B, C, H, W] -> [B, C, H, W]."""
    if xflip:
        flip = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    if max_shift == 0:
        return images
    height, width = images.shape[2:]
    padded = F.pad(images, (max_shift,) * 4, value=background)  # [B, C, H + 2s, W + 2s]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())])


def classifier_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Fraction of images [N, C, H, W] whose arg-max logit equals labels [N]."""
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                      for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_classifier(train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
                     options: ClassifierConfig = ClassifierConfig(),
                     log: Callable[[int, float, float], None] | None = None) -> tuple[FeatureClassifier, float]:
    """Train a FeatureClassifier with AdamW, a one-cycle learning rate and light augmentation; returns the model
    (eval mode) and its test accuracy. Images: [N, C, H, W] in [-1, 1] with C = 1 or 3; labels: [N] int64 class
    indices (classes: 0 .. the largest train label). log(epoch, mean train loss, test accuracy) is called after
    each epoch."""
    if (train_images.dim() != 4 or train_images.shape[1] not in (1, 3) or len(train_images) != len(train_labels)
            or test_images.shape[1:] != train_images.shape[1:]):
        raise DenoiserLabError(f"train_classifier needs train and test images [N, 1 or 3, H, W] of one shape and "
                               f"labels [N], got {tuple(train_images.shape)}, {tuple(test_images.shape)} and "
                               f"{tuple(train_labels.shape)}")
    generator = torch.Generator().manual_seed(options.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)  # weight initialisation and dropout
        model = FeatureClassifier(int(train_labels.max()) + 1, options.width, options.feature_dim,
                                  train_images.shape[1])
        steps_per_epoch = -(-len(train_images) // options.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), options.learning_rate, weight_decay=options.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, options.learning_rate,
                                                       total_steps=options.epochs * steps_per_epoch)
        for epoch in range(options.epochs):
            loss = train_epoch(model, optimizer, schedule, train_images, train_labels, options, generator)
            if log is not None:
                log(epoch, loss, classifier_accuracy(model, test_images, test_labels))
    return model.eval(), classifier_accuracy(model, test_images, test_labels)


def train_epoch(model: FeatureClassifier, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler, images: Tensor,
                labels: Tensor, options: ClassifierConfig, generator: torch.Generator) -> float:
    """One shuffled pass of cross-entropy steps; returns the mean training loss."""
    model.train()
    background = background_value(images)
    order = torch.randperm(len(images), generator=generator)
    total = 0.0
    for start in range(0, len(images), options.batch_size):
        batch = order[start:start + options.batch_size]
        inputs = augment(images[batch], options.max_shift, options.xflip, generator, background)
        loss = F.cross_entropy(model(inputs), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += float(loss.detach()) * len(batch)
    return total / len(images)


def export_feature_model(classifier: FeatureClassifier) -> torch.jit.ScriptModule:
    """TorchScript FeatureEncoder of a trained classifier (eval mode, CPU)."""
    return torch.jit.script(FeatureEncoder(classifier).cpu().eval())
