"""The one preprocessing path of every stage: `decode_image` (PIL → resized uint8) and `normalize`
(uint8 batch → float), together bitwise equal to torchvision Resize + ToTensor + Normalize for 8-bit
images; other image modes are read as data/modes.py says (16-bit and float grey scaled, or refused)."""

import os
import stat

import numpy as np
import torch
from PIL import Image

from glora.errors import UserError

from .modes import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def resample_mode(interpolation: str) -> Image.Resampling:
    """The PIL resampling filter named `interpolation` (bicubic, bilinear or nearest)."""
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise UserError(f"unknown interpolation {interpolation!r}: use one of "
                        f"{', '.join(INTERPOLATIONS)}") from None


def check_img_size(img_size: int) -> int:
    """`img_size` if it is a positive int, else a UserError."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise UserError(f"img_size must be a positive integer, got {img_size!r}: set data.img_size "
                        f"(224 for the VTAB-1k protocol)")
    return img_size


def decode_image(path, img_size: int = 224, interpolation: str = "bicubic") -> torch.Tensor:
    """Decode an image file with PIL, read it as 8-bit RGB (data/modes.py) and resize it to
    (img_size, img_size).

    Returns a uint8 (3, img_size, img_size) tensor; an unreadable or missing file, or a mode or
    value range that has no 8-bit reading, is a UserError.
    """
    return decode_image_mode(path, img_size, interpolation)[0]


def decode_image_mode(path, img_size: int = 224, interpolation: str = "bicubic") -> tuple[torch.Tensor, str]:
    """`decode_image` and the mode the file was stored in (the checker notes modes read by a rule)."""
    resample = resample_mode(interpolation)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a folder, a fifo (which would block), a device
            raise UserError(f"image {path} is not a file: replace it by the image or drop its line from the list")
        with Image.open(path) as img:
            mode = img.mode
            img = to_rgb(img, path).resize((img_size, img_size), resample)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist: restore it or drop its line from the list") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"cannot read image {path} ({reason}): replace the file or drop its line "
                        f"from the list") from None
    # Same HWC → CHW route as torchvision's to_tensor, without its division.
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous(), mode


def normalize(
        images: torch.Tensor,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(images / 255 - mean) / std on the images' device, for uint8 (..., 3, H, W).

    The arithmetic is float32 and op-for-op that of ToTensor + Normalize (so bitwise equal to
    them); the result is then cast to `dtype`.
    """
    x = images.to(torch.float32, copy=True)  # in place from here on: never the input
    # A tensor divisor, not the number 255: CUDA divides by a number as a product with its
    # reciprocal, which rounds differently from the CPU's true division.
    x = x.div_(torch.tensor(255.0, device=x.device))
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    x = x.sub_(mean).div_(std)
    return x if dtype == torch.float32 else x.to(dtype)
