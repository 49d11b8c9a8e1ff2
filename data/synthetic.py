"""A synthetic task of any size in the VTAB-1k layout: class-coloured, striped noise images as JPEG.

For checks at real sizes where no dataset can be downloaded: a 224-px task with a 20,000-image
test split, say, or the GPU run-book's timing run. Each class has its own mean colour and stripe
direction, so a model can learn it; every image has its own noise.
"""

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from glora.errors import UserError
from glora.io import write_bytes

from .lists import list_text

TRAIN, VAL = 800, 200


def synthetic_image(index: int, label: int, num_classes: int, img_size: int, seed: int = 0) -> bytes:
    """JPEG bytes of image `index` of class `label` (the same bytes for the same arguments)."""
    rng = np.random.default_rng([seed, index])
    colour = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 131 + 160) % 256], dtype=np.float32)
    angle = np.pi * label / num_classes
    yy, xx = np.mgrid[0:img_size, 0:img_size].astype(np.float32)
    stripes = 40 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / 16))
    noise = rng.normal(0, 30, (img_size, img_size, 3)).astype(np.float32)
    pixels = np.clip(colour + stripes[..., None] + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_synthetic(root, task: str = "synthetic", *, num_classes: int = 10, test: int = 1000,
                    img_size: int = 224, seed: int = 0, workers: int = 8) -> Path:
    """Write `<root>/<task>`: train800, val200, train800val200 (their union) and a `test` split of
    `test` images, labels in turn 0..num_classes-1; existing images of the same name are kept."""
    if num_classes < 2 or test < 1 or img_size < 8:
        raise UserError(f"synthetic task: need num_classes >= 2, test >= 1 and img_size >= 8, got "
                        f"{num_classes}, {test}, {img_size}")
    folder = Path(root).expanduser() / task
    counts = {"train800": TRAIN, "val200": VAL, "test": test}
    items, start = {}, 0
    for split, n in counts.items():
        items[split] = [(f"images/{i:06d}.jpg", i % num_classes) for i in range(start, start + n)]
        start += n
    items["train800val200"] = items["train800"] + items["val200"]

    def write(i: int, label: int, rel: str) -> None:
        if not (folder / rel).is_file():
            write_bytes(folder / rel, synthetic_image(i, label, num_classes, img_size, seed))

    try:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        every = [e for split in counts for e in items[split]]
        with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while encoding
            list(pool.map(lambda a: write(a[0], a[1][1], a[1][0]), enumerate(every)))
        for split, entries in items.items():
            write_bytes(folder / f"{split}.txt", list_text(entries).encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write the synthetic task to {folder} ({' '.join(str(exc).split())}): "
                        "choose a writable data root") from None
    return folder
