"""The bundled demo task `digits`: scikit-learn's 8×8 digits written offline in the VTAB-1k layout."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from glora.errors import UserError
from glora.io import write_bytes

from .lists import list_text

DEMO_TASK = "digits"
SEED = 0
N_TRAIN, N_VAL = 800, 200  # the test split gets the remaining 797 of 1797


def demo_splits() -> dict[str, list[tuple[str, int]]]:
    """The demo's list files (name → [(relative path, label)]), stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    index = np.arange(len(labels))
    trainval, test = train_test_split(index, train_size=N_TRAIN + N_VAL, stratify=labels, random_state=SEED)
    train, val = train_test_split(trainval, train_size=N_TRAIN, stratify=labels[trainval], random_state=SEED)
    items = {name: [(_image_name(i), int(labels[i])) for i in sorted(idx)]
             for name, idx in (("train800", train), ("val200", val), ("test", test))}
    items["train800val200"] = items["train800"] + items["val200"]
    return items


def demo_images() -> dict[str, bytes]:
    """PNG bytes of every digit (relative path → bytes): 8×8 grey, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    files = {}
    for i, image in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        files[_image_name(i)] = buf.getvalue()
    return files


def _image_name(i: int) -> str:
    return f"images/{i:04d}.png"


def build_demo(root) -> Path:
    """Write `<root>/digits` (images and the four lists); files already identical are left alone."""
    folder = Path(root).expanduser() / DEMO_TASK
    try:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for rel, data in demo_images().items():
            _write_if_changed(folder / rel, data)
        for split, items in demo_splits().items():
            _write_if_changed(folder / f"{split}.txt", list_text(items).encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write the demo task to {folder} ({' '.join(str(exc).split())}): "
                        f"choose a writable data root") from None
    return folder


def _write_if_changed(path: Path, data: bytes) -> None:
    if not (path.is_file() and path.read_bytes() == data):
        write_bytes(path, data)
