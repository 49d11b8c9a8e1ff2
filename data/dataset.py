"""`VTABDataset`: a split decoded with PIL at every access, the uncached baseline and the reference
that proves the decode cache exact."""

import torch
from torch.utils.data import Dataset

from glora.errors import UserError

from .splits import read_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD, check_img_size, decode_image, normalize, resample_mode


class VTABDataset(Dataset):
    """A split decoded with PIL at every access: the uncached baseline, and the reference that
    proves the cache exact. Items are (uint8 image, label), or (float32 image, label) when
    `normalize` is set."""

    def __init__(
            self,
            root,
            task: str,
            split: str,
            *,
            num_classes: int | None = None,
            img_size: int = 224,
            interpolation: str = "bicubic",
            normalize: bool = False,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
    ):
        self.img_size = check_img_size(img_size)
        resample_mode(interpolation)
        self.interpolation = interpolation
        self.entries, self.num_classes = read_split(root, task, split, num_classes)
        self.normalize = normalize
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        e = self.entries[i]
        try:
            image = decode_image(e.path, self.img_size, self.interpolation)
        except UserError as exc:
            raise UserError(f"{e.where}: {exc}") from None
        return (normalize(image, self.mean, self.std) if self.normalize else image), e.label
