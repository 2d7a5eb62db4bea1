"""The batch loader: uint8 images kept on the model's device, normalized and augmented there, whole batches at once.

airbench's CifarLoader counterpart: no DataLoader workers and no PIL. With many short trials, worker start-up and
per-step host-to-device copies cost more than training a small image model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from search.errors import DataError

# Zero padding before the random crop, in pixels: torchvision's RandomCrop(32, padding=4), the CIFAR standard.
CROP_PADDING = 4


class Batches:
    """Normalized, optionally augmented batches, made on the device from uint8 images kept there.

    The augmentation is torchvision's RandomCrop(size, padding=4) then RandomHorizontalFlip(), done for the
    whole batch at once. Shuffle order and augmentation depend only on (seed, epoch), and their random numbers
    are drawn on the CPU, so a resumed run, on any device, sees exactly the same batches.

    Each pass uses the current epoch and then advances it by one; `set_epoch` picks the next pass's epoch.

    Args:
        x: images, uint8 [N, C, H, W]; moved to `device` once, here.
        y: labels [N].
        batch_size: images per batch.
        mean: per-channel mean in 0..1 scale [C].
        std: per-channel std in 0..1 scale [C].
        device: where batches are made and returned.
        shuffle: a new random order every epoch.
        augment: random crop with zero padding and random horizontal flip.
        drop_last: leave out the last batch when it is smaller than batch_size.
        seed: seeds the order and augmentation, together with the epoch.
        channels_last: return images in channels_last memory format.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise DataError(f"Batches: x must be uint8 [N, C, H, W], got {x.dtype} {list(x.shape)}")
        if y.shape != (len(x),):
            raise DataError(f"Batches: y must have one label per image ({len(x)}), got shape {list(y.shape)}")
        if batch_size < 1:
            raise DataError(f"batch_size: must be >= 1, got {batch_size}")
        if seed < 0:
            raise DataError(f"seed: must be >= 0, got {seed}")
        channels = x.shape[1]
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean.shape != (channels,) or std.shape != (channels,) or not bool((std > 0).all()):
            raise DataError(f"Batches: mean and std must be [{channels}] with std > 0, got {mean} and {std}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0
        # (x / 255 - mean) / std == x * scale + shift: one fused multiply-add per batch.
        self._scale = (1 / (255 * std)).float().view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean / std).float().view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the next pass, which fixes its order and augmentation."""
        if epoch < 0:
            raise DataError(f"epoch: must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yields (x float32 [B, C, H, W] normalized, y int64 [B]), both on the device."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, bs = len(self.x), self.batch_size
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        if self.augment:
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
        for start in range(0, len(self) * bs, bs):
            stop = min(start + bs, n)
            idx = order[start:stop] if order is not None else slice(start, stop)
            x = self.x[idx]
            if self.augment:
                # On uint8, before normalizing: the padding is black pixels, exactly as in torchvision.
                x = _crop_flip(x, offsets[start:stop], flips[start:stop], CROP_PADDING)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)  # the float ops below keep the layout
            yield torch.addcmul(self._shift, x.float(), self._scale), self.y[idx]


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes the pair, so neighbouring (seed, epoch) pairs give unrelated streams.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def _crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Random crops of the zero-padded images at per-image (dy, dx) offsets, mirrored where `flips` is set."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [B, H] rows of the padded image
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
