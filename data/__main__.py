"""Check a prepared task (`python -m data --root R --task T`), build the demo
(`python -m data build-demo --root R`) or a synthetic task of any size
(`python -m data build-synthetic --root R --test 20000`). Each problem prints one `error: ...`
line (the checker reports all it finds, not just the first) and the exit status is 2."""

import argparse
import sys
import textwrap
from collections import Counter
from typing import Iterator

from glora.errors import UserError

from .checks import image_problems, read_task
from .demo import build_demo
from .synthetic import build_synthetic


def check_task(root, task: str, num_classes: int | None = None, img_size: int = 224,
               problems: list[str] | None = None) -> Iterator[str]:
    """Read every list and decode every image of a task, yielding report lines as it goes; every
    problem found (all of them, not just the first) is appended to `problems`."""
    problems = [] if problems is None else problems
    lists = read_task(root, task, num_classes)  # a missing folder raises: nothing else to check
    problems += lists.problems
    if lists.num_classes is not None:
        yield f"task {task}: {lists.num_classes} classes ({lists.source})"
    yield from (f"note: {n}" for n in lists.notes)
    seen = set()  # train800val200 repeats train800 and val200: decode each image once
    for split, entries in lists.entries.items():
        problems += image_problems([e for e in entries if e.path not in seen], img_size, desc=f"check {task}/{split}")
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
            description="Check a VTAB-1k task: read every list, apply every rule, decode every image; "
                        "report every problem. "
                        "(`python -m data build-demo --root ROOT` writes the demo task.)")
        parser.add_argument("--root", required=True, help="data root holding <task>/ folders")
        parser.add_argument("--task", required=True, help="task folder name, e.g. cifar or digits")
        parser.add_argument("--num-classes", type=int, default=None,
                            help="class count of a task of your own (default: max label + 1)")
        parser.add_argument("--img-size", type=int, default=224, help="resize to this size (default 224)")
        args = parser.parse_args(argv)
        problems: list[str] = []
        for line in check_task(args.root, args.task, args.num_classes, args.img_size, problems):
            print(line, flush=True)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2 if problems else 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
