"""One supernet, several budgets: train the supernet once, search and retrain within each budget,
run the baselines' presets beside them, and write the table and figures of scripts/summarize.py.

Under the experiment's `output`: supernet/ (trained once), budget-<B>/{search,retrain}/ per budget
(search.budget = [its min, B] millions, reading ../supernet), <preset>/ per baseline, results.md,
results.csv and accuracy_vs_params.png (test accuracy against trainable parameters). Run again to
resume: complete stages are skipped, started ones resumed (as scripts/launch.py does per cell).

    python scripts/budgets.py configs/vtab/dtd.yaml --budgets 0.3 0.6 0.9 --baselines lora bitfit linear
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS.parent)]

from launch import STAGES, Cell, Parser, mark_stale, method_stages, refusal, refused_hint, report  # noqa: E402
from summarize import write_summary  # noqa: E402

from engine.config import load_config  # noqa: E402
from engine.method import check  # noqa: E402
from engine.status import STOPPED  # noqa: E402
from glora.errors import UserError  # noqa: E402


def sweep_cells(configs: list[str], overrides: list[str], budgets: list[float], baselines: list[str]) -> list[Cell]:
    """The supernet's cell, then one per budget (search + retrain), then one per baseline preset."""
    cfg = load_config(configs, overrides)
    check(cfg)
    if cfg["retrain"]["subnet"] != "searched":
        raise UserError(f"a budget sweep searches: the experiment's retrain.subnet is {cfg['retrain']['subnet']!r}, "
                        "not searched (give a GLoRA config, not a baseline preset)")
    if cfg["supernet"]:
        raise UserError(f"supernet={cfg['supernet']}: a budget sweep trains its own supernet (under output); "
                        "unset supernet (--set supernet=null)")
    out, low = Path(cfg["output"]).resolve(), cfg["search"]["budget"][0]
    if not budgets or min(budgets) <= low:
        raise UserError(f"--budgets {budgets}: give budgets in millions of adapter parameters above search.budget's "
                        f"min {low}")
    cells = [Cell("supernet", out, configs, [*overrides, f"output={out}"], stages=STAGES[:1])]
    for b in sorted(set(budgets)):
        sets = [*overrides, f"output={out / f'budget-{b:g}'}", f"supernet={out / 'supernet' / 'supernet.safetensors'}",
                f"search.budget=[{low},{b}]"]
        cells.append(Cell(f"budget-{b:g}", out / f"budget-{b:g}", configs, sets,
                          stages=method_stages(configs, sets, f"budget {b:g}")))
    for name in baselines:
        preset = SCRIPTS.parent / "configs" / "methods" / f"{name}.yaml"
        if not preset.is_file():
            raise UserError(f"--baselines {name}: no preset {preset}")
        files, sets = [*configs, str(preset)], [*overrides, f"output={out / name}"]
        cells.append(Cell(name, out / name, files, sets, stages=method_stages(files, sets, f"baseline {name}")))
    return cells


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="+", help="experiment YAML(s), applied in order over configs/defaults.yaml")
    p.add_argument("--budgets", nargs="+", type=float, required=True, help="max adapter parameters, in millions")
    p.add_argument("--baselines", nargs="*", default=[], help="method presets to run beside (configs/methods/NAME.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    p.add_argument("--rerun-stale", action="store_true", help="run afresh the stages whose settings, data or upstream "
                   "files changed since they ran (default: refuse); each old run moves to previous/")
    try:
        args = p.parse_args(argv)
        cells = sweep_cells(args.config, args.set, args.budgets, args.baselines)
        mark_stale(cells)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    refused = [c for c in cells if c.error or (c.stale and not args.rerun_stale)]
    if refused:  # the cells build on each other: nothing runs, and the table stays as it was
        for cell in refused:
            print(refusal(cell), file=sys.stderr)
        print(refused_hint("run the same command again") + "; nothing ran, and results.md was not rewritten",
              file=sys.stderr)
        return 2
    # SIGTERM and SIGUSR1 act as Ctrl-C: the running stage checkpoints and stops, then this script
    previous = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for cell in cells:
            mark_stale([cell])  # again: an earlier cell (the supernet) may have run afresh since
            if cell.error or (cell.stale and not args.rerun_stale):
                print(refusal(cell), file=sys.stderr)
                return 2
            for stage, why in cell.stale.items():
                print(f"{cell.name}: {stage} runs afresh: {why}", flush=True)
            print(f"{cell.name}: {'done before' if cell.done() else 'running ' + ', '.join(s.name for s in cell.stages)}",
                  flush=True)
            result = cell()
            if result["status"] != "done":
                print(report(cell, result, "run the same command again"), file=sys.stderr)
                return STOPPED if result["status"] == "stopped" else 1
    except KeyboardInterrupt:
        print("stopped: the running stage wrote its checkpoint; run the same command again to resume", file=sys.stderr)
        return STOPPED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    text, files = write_summary(cells[0].folder)
    print(f"{text}(written to {cells[0].folder}: {', '.join(f.name for f in files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
