"""Check a prepared task (`python -m data --root R --task T`), build the demo
(`python -m data build-demo --root R`) or a synthetic task of any size
(`python -m data build-synthetic --root R --test 20000`); a problem prints `error: ...` and exits 2."""

import argparse
import sys
import textwrap
from collections import Counter
from typing import Iterator

from glora.errors import UserError

from .cache import check_images
from .demo import build_demo
from .lists import SPLITS, task_dir
from .synthetic import build_synthetic
from .vtab import read_split, resolve_num_classes


def check_task(root, task: str, num_classes: int | None = None, img_size: int = 224) -> Iterator[str]:
    """Read every list and decode every image of a task, yielding report lines as it goes;
    the first problem raises a UserError."""
    task_dir(root, task)  # a missing folder is the first problem to report, even for registry tasks
    k, note = resolve_num_classes(root, task, num_classes)
    yield f"task {task}: {k} classes ({note})"
    seen = set()  # train800val200 repeats train800 and val200: decode each image once
    for split in SPLITS:
        entries, _ = read_split(root, task, split, num_classes)
        check_images([e for e in entries if e.path not in seen], img_size, desc=f"check {task}/{split}")
        seen.update(e.path for e in entries)
        counts = Counter(e.label for e in entries)
        yield f"{split}: {len(entries)} images, {len(counts)} classes"
        histogram = " ".join(f"{c}:{counts[c]}" for c in sorted(counts))
        yield from textwrap.wrap(histogram, 100, initial_indent="  per class: ", subsequent_indent="    ")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["build-demo"]:
            parser = argparse.ArgumentParser(prog="python -m data build-demo",
                                             description="Write the `digits` demo task under ROOT.")
            parser.add_argument("--root", required=True, help="data root; the task goes to ROOT/digits")
            print(build_demo(parser.parse_args(argv[1:]).root))
            return 0
        if argv[:1] == ["build-synthetic"]:
            parser = argparse.ArgumentParser(
                prog="python -m data build-synthetic",
                description="Write a synthetic task (class-coloured striped noise, JPEG) in the VTAB-1k layout.")
            parser.add_argument("--root", required=True, help="data root; the task goes to ROOT/TASK")
            parser.add_argument("--task", default="synthetic", help="task folder name (default synthetic)")
            parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
            parser.add_argument("--test", type=int, default=1000, help="images in the test split (default 1000)")
            parser.add_argument("--img-size", type=int, default=224, help="image side in pixels (default 224)")
            a = parser.parse_args(argv[1:])
            print(build_synthetic(a.root, a.task, num_classes=a.classes, test=a.test, img_size=a.img_size))
            return 0
        parser = argparse.ArgumentParser(
            prog="python -m data",
            description="Check a VTAB-1k task: read every list and decode every image. "
                        "(`python -m data build-demo --root ROOT` writes the demo task.)")
        parser.add_argument("--root", required=True, help="data root holding <task>/ folders")
        parser.add_argument("--task", required=True, help="task folder name, e.g. cifar or digits")
        parser.add_argument("--num-classes", type=int, default=None,
                            help="class count of a task of your own (default: max label + 1)")
        parser.add_argument("--img-size", type=int, default=224, help="resize to this size (default 224)")
        args = parser.parse_args(argv)
        for line in check_task(args.root, args.task, args.num_classes, args.img_size):
            print(line, flush=True)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
