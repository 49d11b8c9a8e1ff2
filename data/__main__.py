"""Check a prepared task (`python -m data --root R --task T`, few-shot or domain generalization with
`--benchmark fewshot --shots K`), every VTAB-1k task as one table (`python -m data --root R --all`),
unpack and verify VTAB-1k (`python -m data prepare-vtab SRC --root R`), build the demo
(`python -m data build-demo --root R`) or a synthetic task of any size
(`python -m data build-synthetic --root R --test 20000`). Each problem prints one `error: ...`
line (the checker reports all it finds, not just the first, and ends with one verdict line) and the
exit status is 2."""

import argparse
import sys
import textwrap
from collections import Counter
from typing import Iterator

from glora.errors import UserError

from .checks import image_problems, mode_notes, published_problems, read_task
from .demo import build_demo
from .layout import BENCHMARKS, VTAB, Layout
from .prepare import prepare_vtab, table, verify_vtab
from .synthetic import build_synthetic


def check_task(root, task: str, num_classes: int | None = None, img_size: int = 224,
               problems: list[str] | None = None, layout: Layout | None = None) -> Iterator[str]:
    """Read every list and decode every image of a task, yielding report lines as it goes; every
    problem found (all of them, not just the first) is appended to `problems`."""
    problems = [] if problems is None else problems
    lists = read_task(root, task, num_classes, layout)  # a missing folder raises: nothing else to check
    problems += published_problems(lists) if lists.layout.benchmark == VTAB and lists.num_classes else []
    problems += lists.problems
    if lists.num_classes is not None:
        yield f"task {task}: {lists.num_classes} classes ({lists.source})"
    yield from (f"note: {n}" for n in lists.notes)
    seen, modes = set(), Counter()  # train800val200 repeats train800 and val200: decode each image once
    for split, entries in lists.entries.items():
        problems += image_problems([e for e in entries if e.path not in seen], img_size, desc=f"check {task}/{split}",
                                   modes=modes)
        seen.update(e.path for e in entries)
        counts = Counter(e.label for e in entries)
        source = "" if lists.layout.benchmark == VTAB else f" ({lists.files[split].name})"
        yield f"{split}{source}: {len(entries)} images, {len(counts)} classes"
        histogram = " ".join(f"{c}:{counts[c]}" for c in sorted(counts))
        yield from textwrap.wrap(histogram, 100, initial_indent="  per class: ", subsequent_indent="    ")
    yield from (f"note: {n}" for n in mode_notes(modes))


def verdict(task: str, problems: list[str]) -> str:
    """The checker's last line: ok, or how many problems the `error:` lines above name."""
    if not problems:
        return f"ok: task {task} passes every rule and every image reads"
    return f"not ok: task {task} has {len(problems)} problem{'s' * (len(problems) > 1)} (the error: lines above)"


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
        if argv[:1] == ["prepare-vtab"]:
            parser = argparse.ArgumentParser(
                prog="python -m data prepare-vtab",
                description="Unpack the 19 VTAB-1k tasks of the NOAH layout from an archive (zip, tar, tar.gz, ...) "
                            "or a folder into ROOT (only the task folders), all or nothing: a damaged archive, an "
                            "unsafe member (a link, a device, a path leaving ROOT) or too little free space is "
                            "refused before anything is written, and a failure midway removes what the run wrote. "
                            "Then verify every task and print one table. Exit status 2 if any task is wrong or missing.")
            parser.add_argument("src", help="the VTAB-1k archive or folder (<...>/<task>/{train800,val200,"
                                "train800val200,test}.txt plus images)")
            parser.add_argument("--root", required=True, help="data root to write <task>/ folders into")
            parser.add_argument("--img-size", type=int, default=224, help="decode images at this size (default 224)")
            a = parser.parse_args(argv[1:])
            prepare_vtab(a.src, a.root)
            return _verify_all(a.root, a.img_size)
        parser = argparse.ArgumentParser(
            prog="python -m data",
            description="Check a task: read every list, apply every rule, decode every image; report every "
                        "problem. --all checks the 19 VTAB-1k tasks under ROOT and prints one table. "
                        "(`python -m data build-demo --root ROOT` writes the demo task.)")
        parser.add_argument("--root", required=True, help="data root holding <task>/ folders")
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--task", help="task folder name, e.g. cifar, digits or food101")
        which.add_argument("--all", action="store_true", help="every VTAB-1k task: one table, exit 2 if any is "
                           "wrong or missing")
        parser.add_argument("--num-classes", type=int, default=None,
                            help="class count of a task of your own (default: max label + 1)")
        parser.add_argument("--img-size", type=int, default=224, help="resize to this size (default 224)")
        parser.add_argument("--benchmark", choices=BENCHMARKS, default=VTAB,
                            help="list layout: vtab (default), fewshot or dg (NOAH's annotations/ lists)")
        parser.add_argument("--shots", type=int, help="fewshot/dg: K of train_meta.list.num_shot_K.seed_S")
        parser.add_argument("--shot-seed", type=int, default=0, help="fewshot/dg: S of that list (default 0)")
        args = parser.parse_args(argv)
        if args.all:
            return _verify_all(args.root, args.img_size)
        layout = Layout(args.benchmark, args.shots, args.shot_seed)
        problems: list[str] = []
        for line in check_task(args.root, args.task, args.num_classes, args.img_size, problems, layout):
            print(line, flush=True)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.stderr.flush()
        print(verdict(args.task, problems))
        return 2 if problems else 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # prepare-vtab has removed what it wrote by now
        print("interrupted", file=sys.stderr)
        return 130


def _verify_all(root, img_size: int) -> int:
    rows = []
    for row in verify_vtab(root, img_size=img_size):
        rows.append(row)
        print(f"{row.task}: {row.status}", file=sys.stderr, flush=True)  # progress; the table follows
        for problem in row.problems if row.status == "wrong" else ():
            print(f"error: {row.task}: {problem}", file=sys.stderr)
    print(table(rows), end="")
    return 0 if all(r.status == "ok" for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
