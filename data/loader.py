"""Batches of a decoded split, held whole or read from its cache file batch by batch: seeded,
resumable shuffling and on-device normalization."""

import math

import torch

from glora.errors import UserError

from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize


class BatchLoader:
    """Serves (image, label) batches of uint8 images: a tensor on any device, or a cache file's
    `CachedImages`, of which each batch is read alone.

    Batches come out on `device` (default: where the images are), normalized there, as `dtype`.
    Each epoch (each `iter()`) draws one permutation from a seeded CPU `torch.Generator`;
    `state_dict()` taken at any point, restored with `load_state_dict()`, replays the rest of
    that epoch and every later one exactly.
    """

    def __init__(
            self,
            images: torch.Tensor,
            labels: torch.Tensor,
            *,
            batch_size: int,
            shuffle: bool = False,
            drop_last: bool = False,
            seed: int = 0,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dtype: torch.dtype = torch.float32,
            device=None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images (N, C, H, W) and N labels, got {images.dtype} "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}: fix data.batch_size")
        self.device = torch.device(device) if device is not None else images.device
        self.images, self.labels = images, labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.dtype = dtype
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_state = None  # generator state at the start of the epoch in progress
        self._done = 0  # batches of that epoch already handed out
        self._skip = 0  # batches to skip at the next epoch start (after load_state_dict)

    def to(self, device) -> "BatchLoader":
        """Hold the whole split on `device` (a cache file is read in now) and serve batches there."""
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        self._epoch_state = self.generator.get_state()
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        start, self._skip = self._skip, 0
        for b in range(start, len(self)):
            self._done = b + 1
            yield self._batch(slice(b * self.batch_size, min((b + 1) * self.batch_size, n)), order)
        self._epoch_state, self._done = None, 0

    def _batch(self, rows: slice, order) -> tuple[torch.Tensor, torch.Tensor]:
        # A method, not inline in __iter__: the generator keeps no reference to a batch it handed out.
        if order is None:
            x, y = self.images[rows], self.labels[rows]
        else:
            idx = order[rows]
            x, y = self.images[idx.to(self.images.device)], self.labels[idx.to(self.device)]
        return normalize(x.to(self.device, non_blocking=True), self.mean, self.std, self.dtype), y

    def state_dict(self) -> dict:
        """Where the shuffling stands: enough to resume mid-epoch or between epochs exactly."""
        if self._epoch_state is None:
            return {"generator": self.generator.get_state(), "batches_done": 0}
        return {"generator": self._epoch_state.clone(), "batches_done": self._done}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`: the next `iter()` resumes right after its last batch."""
        self.generator.set_state(state["generator"])
        self._epoch_state, self._done = None, 0
        self._skip = int(state["batches_done"])
