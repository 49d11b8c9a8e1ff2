"""How every image mode PIL opens becomes 8-bit RGB, the same picture as its 8-bit twin, or a refusal.

- 8-bit modes (1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV): PIL's own conversion (a palette is
  looked up, CMYK/YCbCr/LAB/HSV converted); PIL reads 16-bit colour PNGs and TIFFs as their high byte.
- alpha (LA, PA, RGBA, a palette's transparency; premultiplied La/RGBa are un-premultiplied first)
  is dropped and the colour kept as stored, as torchvision's loader and the published pipelines do.
- integer grey (I;16, I;16B, I;16L, I;16N, I): 16-bit samples scaled over the full range to their
  high byte, v // 256 (65535 -> 255, 32768 -> 128), as PIL reads 16-bit colour: a 16-bit twin
  written as 257 v or 256 v reads back as v exactly; values outside 0..65535, or a TIFF of more
  than 16 bits per sample (a range the file does not state), are refused.
- float grey (F): values in [0, 1] are fractions of white (round(255 v): 0.5 -> 128); values
  above 1 and within [0, 255] are 8-bit levels as they are; anything else (negative, above 255,
  NaN, infinite) is refused rather than guessed. A dark [0, 255] image whose values all stay at or
  below 1 reads as [0, 1]: the range is the only thing a float file says of itself.
- any other mode is refused with its name and the fix (save the image as 8-bit RGB).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from glora.errors import UserError

PIL_CONVERTS = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
DROP_ALPHA = {"LA": "LA", "PA": "PA", "RGBA": "RGBA", "La": "LA", "RGBa": "RGBA"}  # mode -> straight-alpha mode
INTEGER = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
FLOAT = frozenset({"F"})
_HALF = 0.5 / 255  # a fraction within half a level of [0, 1] still rounds into 0..255
_FIX = "save it as 8-bit RGB or grey (or 16-bit grey, or float grey in [0, 1]) or drop its line from the list"


def describe(mode: str) -> str | None:
    """How a mode is read, for a checker's note; None for an ordinary 8-bit mode."""
    if mode in INTEGER:
        return "16-bit grey, read as its high byte (0..65535 -> 0..255)"
    if mode in FLOAT:
        return "float grey, read as [0, 1] (or [0, 255] where values exceed 1)"
    return None


def to_rgb(img: Image.Image, path) -> Image.Image:
    """`img` as an 8-bit RGB image by the rules above; a mode or range it cannot read is a UserError."""
    mode = img.mode
    if mode in PIL_CONVERTS:
        return img.convert("RGB")
    if mode in DROP_ALPHA:
        straight = img if DROP_ALPHA[mode] == mode else img.convert(DROP_ALPHA[mode])
        return straight.convert("RGB")
    if mode in INTEGER:
        return _grey(_from_integer(img, path))
    if mode in FLOAT:
        return _grey(_from_float(img, path))
    raise UserError(f"image {path} has mode {mode}, which has no defined reading as 8-bit RGB: {_FIX}")


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(levels, "L").convert("RGB")


def _from_integer(img: Image.Image, path) -> np.ndarray:
    bits = _tiff_bits(img)
    if bits > 16:
        raise UserError(f"image {path} has mode {img.mode} with {bits}-bit integer samples, whose range the file "
                        f"does not state: {_FIX}")
    v = np.asarray(img).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 65535):
        raise UserError(f"image {path} has mode {img.mode} with values in [{v.min()}, {v.max()}], outside the "
                        f"16-bit range 0..65535: {_FIX}")
    return (v >> 8).astype(np.uint8)


def _tiff_bits(img: Image.Image) -> int:
    """Bits per sample a TIFF declares (other formats give mode I only for 16-bit samples)."""
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    return max(bits) if isinstance(bits, tuple) and bits else int(bits or 16)


def _from_float(img: Image.Image, path) -> np.ndarray:
    v = np.asarray(img, dtype=np.float64)
    if not np.isfinite(v).all():
        raise UserError(f"image {path} has mode {img.mode} with NaN or infinite values: {_FIX}")
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if lo >= -_HALF and hi <= 1 + _HALF:
        v = v * 255
    elif not (lo >= -0.5 and 1 < hi <= 255.5):
        raise UserError(f"image {path} has mode {img.mode} with values in [{lo:g}, {hi:g}], neither [0, 1] nor "
                        f"[0, 255]: rescale it to [0, 1] (or {_FIX})")
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)
