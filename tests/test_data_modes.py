"""Every image mode PIL opens decodes to the picture of its 8-bit twin, or is refused with one line
naming the file, its mode and the fix (data/modes.py); the checker and every stage read images
through that one decode, and a 16-bit task trains exactly as its 8-bit twin does."""
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import build_demo, load_split, read_list, write_list
from data.__main__ import main
from data.modes import to_rgb
from data.transforms import decode_image
from glora.errors import UserError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo crop, RGB uint8, with the whole range of levels."""
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[1][100:164, 200:280].copy()


def grey_of(photo) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).convert("L"))


def png16(levels: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG of (H, W[, C]) uint16 samples (grey 0, RGB 2, grey+alpha 4, RGBA 6), which PIL cannot write."""
    h, w = levels.shape[:2]
    raw = b"".join(b"\0" + levels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def save(folder: Path, name: str, image: Image.Image | bytes, **kwargs) -> Path:
    path = folder / name
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path, **kwargs)
    return path


SIZES = ((32, "bicubic"), (17, "bilinear"))


def same_picture(path: Path, twin: Path, tolerance: int = 0) -> None:
    for size, method in SIZES:
        got, want = decode_image(path, size, method), decode_image(twin, size, method)
        assert (got.int() - want.int()).abs().max() <= tolerance, (path.name, size, method)


def test_16_bit_and_float_twins_decode_to_the_8_bit_picture(tmp_path, photo):
    grey = grey_of(photo)
    twin = save(tmp_path, "twin.png", Image.fromarray(grey))
    v = grey.astype(np.uint16)
    be = Image.frombytes("I;16B", grey.shape[::-1], (v * 257).astype(">u2").tobytes())
    cases = {
        "x257.png": Image.fromarray(v * 257),  # I;16: 0..255 -> 0..65535, the full range
        "x256.png": Image.fromarray(v << 8),
        "x257.tif": Image.fromarray(v * 257),
        "big-endian.tif": be,  # I;16B
        "pgm16.pgm": b"P5\n%d %d\n65535\n" % grey.shape[::-1] + (v * 257).astype(">u2").tobytes(),  # mode I
        "png16.png": png16(v * 257, 0),
        "fraction.tif": Image.fromarray(grey.astype(np.float32) / 255),  # F in [0, 1]
        "levels.tif": Image.fromarray(grey.astype(np.float32)),  # F in [0, 255]
    }
    for name, image in cases.items():
        path = save(tmp_path, name, image)
        with Image.open(path) as opened:
            assert opened.mode in ("I;16", "I;16B", "I", "F"), (name, opened.mode)
        same_picture(path, twin, tolerance=1)  # within one grey level: exactly equal, in fact
        same_picture(path, twin)
    rgb16 = save(tmp_path, "rgb16.png", png16(photo.astype(np.uint16) * 257, 2))  # PIL keeps the high byte
    same_picture(rgb16, save(tmp_path, "rgb.png", Image.fromarray(photo)))
    half = save(tmp_path, "half.tif", Image.fromarray(np.full((8, 8), 0.5, np.float32)))
    assert decode_image(half, 8).unique().tolist() == [128]  # mid-grey, not black
    top = save(tmp_path, "top.png", Image.fromarray(np.full((8, 8), 65535, np.uint16)))
    assert decode_image(top, 8).unique().tolist() == [255]


def _tiff_i32(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(levels.astype(np.int32))


MODES = [  # name, how to make it from the photo (RGB), file type, the twin's tolerance or the refusal expected
    ("1", lambda p: Image.fromarray(p).convert("1"), "png", 0),
    ("L", lambda p: Image.fromarray(p).convert("L"), "png", 0),
    ("LA", lambda p: Image.fromarray(p).convert("LA"), "png", 0),
    ("P", lambda p: Image.fromarray(p).convert("P"), "png", 0),
    ("P transparency", lambda p: Image.fromarray(p).convert("P"), "png", 0),
    ("PA", lambda p: Image.fromarray(p).convert("PA"), "tif", 0),
    ("RGBA", lambda p: Image.fromarray(p).convert("RGBA"), "png", 0),
    ("RGBA translucent", lambda p: Image.fromarray(np.dstack([p, p[..., :1]])), "png", 0),
    ("RGBX", lambda p: Image.fromarray(p).convert("RGBX"), "tif", 0),
    ("CMYK", lambda p: Image.fromarray(p).convert("CMYK"), "tif", 0),
    ("CMYK jpeg", lambda p: Image.fromarray(p).convert("CMYK"), "jpg", 0),
    ("YCbCr", lambda p: Image.fromarray(p).convert("YCbCr"), "tif", 0),
    ("LAB", lambda p: Image.fromarray(p).convert("LAB"), "tif", 0),
    ("I;16 grey", lambda p: Image.fromarray(grey_of(p).astype(np.uint16) * 257), "tif", 0),
    ("I 32-bit", lambda p: _tiff_i32(grey_of(p).astype(np.int32) * 257), "tif", "32-bit integer samples"),
    ("F negative", lambda p: Image.fromarray(grey_of(p).astype(np.float32) / 255 - 0.5), "tif", "neither [0, 1] nor [0, 255]"),
    ("F too bright", lambda p: Image.fromarray(grey_of(p).astype(np.float32) * 4), "tif", "neither [0, 1] nor [0, 255]"),
    ("F nan", lambda p: Image.fromarray(np.where(grey_of(p) > 200, np.nan, 0.5).astype(np.float32)), "tif",
     "NaN or infinite values"),
]


@pytest.mark.parametrize("name,make,ext,expect", MODES, ids=[m[0] for m in MODES])
def test_every_mode_is_its_twin_or_refused(tmp_path, photo, name, make, ext, expect):
    """The twin: the file's own picture in 8-bit RGB (PIL's conversion, alpha dropped as torchvision's
    loader drops it; for 16-bit grey, the 8-bit grey it was made from)."""
    image = make(photo)
    path = save(tmp_path, f"image.{ext}", image, **({"transparency": 0} if "transparency" in name else {}))
    with Image.open(path) as opened:
        mode = opened.mode
        if isinstance(expect, str):
            with pytest.raises(UserError) as info:
                decode_image(path, 16)
            message = str(info.value)
            assert message.startswith(f"image {path} has mode {mode} ") and expect in message, message
            assert "save it as 8-bit RGB" in message or "rescale it" in message
            return
        if mode in ("I;16", "I;16B"):
            reference = Image.fromarray(grey_of(photo)).convert("RGB")
        else:
            straight = {"La": "LA", "RGBa": "RGBA"}.get(mode, mode)
            reference = opened.convert(straight).convert("RGB")
    twin = save(tmp_path, "twin.png", reference)
    same_picture(path, twin, expect)


@pytest.mark.parametrize("mode", ["HSV", "La", "RGBa", "I;16L", "I;16N"])
def test_modes_that_no_file_type_keeps_read_as_their_twin(photo, mode):
    """Modes PIL produces in memory (premultiplied alpha, HSV, 16-bit of either byte order)."""
    if mode.startswith("I;16"):
        order = {"I;16L": "<u2", "I;16N": "=u2"}[mode]
        image = Image.frombytes(mode, photo.shape[1::-1], (grey_of(photo).astype(np.uint16) * 257).astype(order).tobytes())
        want = np.asarray(Image.fromarray(grey_of(photo)).convert("RGB"))
    else:
        image = Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]) if "a" in mode
                                else photo).convert(mode)
        want = np.asarray(image.convert({"La": "LA", "RGBa": "RGBA"}.get(mode, mode)).convert("RGB"))
    assert np.array_equal(np.asarray(to_rgb(image, "x")), want)


def test_an_unknown_mode_is_refused_by_name():
    class Strange:
        mode = "BGR;24"

    with pytest.raises(UserError, match=r"image x.bgr has mode BGR;24, which has no defined reading as 8-bit RGB"):
        to_rgb(Strange(), "x.bgr")


def _twin_task(demo_root: Path, name: str, convert) -> Path:
    """A copy of the demo task (the same lists) with every image rewritten by `convert`."""
    src, folder = demo_root / "digits", demo_root / name
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns(".cache", "*.png"))
    for image in (src / "images").iterdir():
        convert(Image.open(image), folder / "images" / image.name)
    return folder


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    build_demo(root)
    _twin_task(root, "digits16", lambda im, p: Image.fromarray(np.asarray(im).astype(np.uint16) * 257).save(p))
    _twin_task(root, "digitsf", lambda im, p: Image.fromarray(np.asarray(im).astype(np.float32) / 255).save(
        p.with_suffix(".tif")) or p.with_suffix(".tif").rename(p))  # a float TIFF named .png: PIL reads content
    return root


def test_the_checker_reads_16_bit_and_float_tasks_and_says_how(twins, capsys):
    for task, note in (("digits16", "1797 image(s) in mode I;16: 16-bit grey, read as its high byte"),
                       ("digitsf", "1797 image(s) in mode F: float grey, read as [0, 1]")):
        assert main(["--root", str(twins), "--task", task, "--img-size", "8"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert f"note: {note} (0..65535 -> 0..255)" in out if task == "digits16" else any(note in l for l in out)
        assert out[-1] == f"ok: task {task} passes every rule and every image reads"
    for split in ("val200",):  # every split, and training on them: the test below
        eight = load_split(twins, "digits", split, img_size=32)
        for task in ("digits16", "digitsf"):
            assert torch.equal(load_split(twins, task, split, img_size=32).images[:], eight.images[:]), (task, split)


def test_a_float_image_out_of_range_is_one_error_line_in_the_checker(tmp_path, capsys):
    from test_data import make_task

    task = make_task(tmp_path)
    entry = read_list(task / "test.txt")[3]
    bad = entry.path.with_suffix(".tif")
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(bad)
    items = [(e.rel, e.label) for e in read_list(task / "test.txt")]
    items[3] = (str(bad.relative_to(task)), items[3][1])
    write_list(task / "test.txt", items)
    assert main(["--root", str(tmp_path), "--task", "photos", "--img-size", "8"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {task / 'test.txt'}:4: image {bad} has mode F with values in [300, 300], "
                                "neither [0, 1] nor [0, 255]: rescale it to [0, 1] (or save it as 8-bit RGB or grey "
                                "(or 16-bit grey, or float grey in [0, 1]) or drop its line from the list)"]
    assert out.splitlines()[-1] == "not ok: task photos has 1 problem (the error: lines above)"
    with pytest.raises(UserError, match=r"test.txt:4: image .* has mode F with values in \[300, 300\]"):
        load_split(tmp_path, "photos", "test", img_size=8)


@pytest.mark.slow
def test_a_16_bit_task_trains_to_the_accuracy_of_its_8_bit_twin(twins, tmp_path):
    """A short deterministic run (LoRA retrain, tiny ViT) on the 8-bit task and on its 16-bit twin."""
    import yaml

    from test_methods_end_to_end import TINY, run_method

    results = {}
    for task in ("digits", "digits16"):
        config = tmp_path / f"{task}.yaml"
        config.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "root": str(twins), "task": task}}))
        results[task] = run_method(config, "lora", tmp_path / task)
    assert results["digits16"]["test_acc"] == results["digits"]["test_acc"] > 10  # above chance: it learnt
