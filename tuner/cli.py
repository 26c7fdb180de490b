"""tuner: hyperparameter search for fine-tuning causal language models.

    tuner sweep SPEC|PRESET [--name NAME] [--set key.path=value ...] [--num-samples N] [--address ADDR] [--force]
    tuner resume SWEEP_DIR|STORAGE_URI [--num-samples N] [--address ADDR] [--force] [--restart-search]
    tuner validate SPEC|PRESET [--set key.path=value ...] [--address ADDR]
    tuner status SWEEP_DIR|STORAGE_URI [--watch]
    tuner export SWEEP_DIR [--format yaml|json] [--trial ID]
    tuner sync SWEEP_DIR [--dry-run]
    tuner report SWEEP_DIR
    tuner lr-find SPEC|PRESET [--set key.path=value ...] [--min-lr LR] [--max-lr LR] [--steps N] [--png]
                  [--write PATH [--force]]

`sweep` runs the whole pipeline: spec → prepared data → Optuna + ASHA on Ray Tune → leaderboard →
final evaluation of the best checkpoint → export. SPEC is a YAML file; a name that is not a file is
one of the presets shipped with tuner (`tuner sweep tiny` runs the embedded default from any
directory). Bad input exits with code 2 and one message. Run again (or `resume`d) on the same
sweep directory, a sweep goes on where it stopped. The first Ctrl-C (or SIGTERM) stops new trials,
lets the running ones reach their next checkpoint, saves the sweep and exits 130; a second one
stops at once. `-v` shows the libraries' own notices; `sweep.log` in the sweep directory keeps
everything.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner import constants as C
from tuner import secret
from tuner.errors import UserError

# The presets ship inside the package (search_spaces/ at the repository's top links here), so
# `tuner sweep tiny` works wherever tuner is installed, from any working directory.
PRESETS_DIR = Path(__file__).resolve().with_name("presets")


def preset_names() -> list[str]:
    """The shipped presets, by the name `sweep` and `validate` accept in place of a path."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def resolve_spec_path(arg: str) -> Path:
    """A spec argument as a file: an existing path wins, else a preset's name, else a UserError.

    A file comes first so that a local `tiny` file (or directory-relative spec) is never shadowed
    by the packaged preset of the same name."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if arg in preset_names():
        return PRESETS_DIR / f"{arg}.yaml"
    raise UserError(f"spec file {arg!r} does not exist and is not a preset: give the path of a YAML spec or "
                    f"a preset name ({', '.join(preset_names())}), e.g. `tuner validate tiny`")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep end to end: the spec is resolved (file or preset) before anything starts."""
    from tuner.pipeline import run_sweep

    spec = resolve_spec_path(args.spec)
    return _run(lambda: run_sweep(spec, overrides=args.set, name=args.name, num_samples=args.num_samples,
                                  address=args.address, force=args.force))


def cmd_resume(args: argparse.Namespace) -> int:
    """Go on with an interrupted sweep (its driver killed) under the spec saved in its directory."""
    from tuner.pipeline import resume_sweep

    return _run(lambda: resume_sweep(args.sweep_dir, address=args.address, force=args.force,
                                     num_samples=args.num_samples, restart_search=args.restart_search))


def _run(sweep: Callable[[], Any]) -> int:
    """A sweep's exit code: 0 with its results, 1 when no trial left anything to promote."""
    from tuner.pipeline import SweepFailed

    try:
        result = sweep()
    except SweepFailed as exc:
        print(f"tuner: sweep failed: {exc}", file=sys.stderr)
        return 1
    print(f"results: {result.sweep_dir}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Static checks only: builds no data, model or Ray runtime (local data files are read through)."""
    from tuner import data, datacheck, datafiles
    from tuner.plan import data_warnings, make_plan
    from tuner.spec import load_spec, to_yaml

    path = resolve_spec_path(args.spec)
    spec = load_spec(path, args.set)
    datacheck.check(spec.data)  # every local data file read through: the problems `sweep` would meet
    train_tokens, estimated = data.prepared_train_tokens(spec), False  # prepared by an earlier run
    if train_tokens is None and spec.data.path is not None:  # a guess from the files' size, for the warnings
        train_tokens, estimated = datafiles.estimate_train_tokens(spec.data), True
    print(to_yaml(spec, f"# resolved spec: {path}\n"))
    concurrency = None
    if args.address:  # the plan against the live cluster: its nodes, GPUs and what fits
        from tuner import cluster, sweep

        sweep.init_ray(args.address)
        nodes = cluster.inspect()
        print(nodes.describe())
        cluster.check(spec, nodes)
        concurrency = cluster.concurrency(spec, nodes)
    plan = make_plan(spec, train_tokens if not estimated else None, concurrency)
    print("plan:\n  " + plan.describe().replace("\n", "\n  "))
    if train_tokens is not None:
        for warning in data_warnings(spec, make_plan(spec, train_tokens), train_tokens, estimated):
            print(f"warning: {warning}", file=sys.stderr)
    print(f"sweep directory: {spec.sweep_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Leaderboard, driver, disk, report and W&B state: safe while the sweep runs."""
    from tuner import layout, lock, pareto, results, tracking
    from tuner.pipeline import load_sweep_spec

    if args.watch:
        return watch(args.sweep_dir)
    spec = load_sweep_spec(args.sweep_dir)
    rows = results.leaderboard(args.sweep_dir, spec.search.mode, spec.name, objectives=pareto.objectives(spec))
    holder = lock.read_holder(Path(args.sweep_dir))
    print(f"sweep {spec.name}: {args.sweep_dir}")
    print(f"driver: {holder.describe()}" if holder else "driver: none running")
    print(results.format_table(rows))
    for row in rows:
        print(f"  {row['trial_id']}: log {layout.resolve(row['log_file'], Path(args.sweep_dir).resolve())}")
    print(f"disk: {results.disk_summary(spec)}")
    report = Path(args.sweep_dir) / layout.REPORT_FILE
    print(f"report: {report}" if report.is_file() else
          f"report: none yet; build it with `tuner report {args.sweep_dir}`")
    offline = tracking.offline_runs(args.sweep_dir)
    if offline:
        print(f"W&B: {len(offline)} offline runs in {tracking.WANDB_DIR}/; upload them with "
              f"`tuner sync {args.sweep_dir}`")
    return 0


def watch(sweep: str) -> int:
    """The live view of a sweep from its directory, or from its bucket (its records fetched into a
    temporary directory at each refresh): read only, the driver never knows it is watched."""
    import tempfile
    import time

    from tuner import live, mirror, storage
    from tuner.pipeline import load_sweep_spec, saved_plan

    if not storage.is_uri(sweep):
        spec = load_sweep_spec(sweep)
        return live.watch(live.Source(spec, saved_plan(spec), time.time()))
    with tempfile.TemporaryDirectory(prefix="tuner-watch-") as tmp:
        folder = Path(tmp)
        if not mirror.pull(sweep.rstrip("/"), folder):
            raise UserError(f"{sweep}: no sweep there; give the storage URI the sweep ran with, e.g. "
                            "s3://bucket/sweeps/tiny")
        spec = load_sweep_spec(folder)
        return live.watch(live.Source(spec, None, time.time(), folder=folder,
                                      refresh=lambda: mirror.pull(sweep.rstrip("/"), folder)))


def cmd_export(args: argparse.Namespace) -> int:
    """Print best/config.yaml (or JSON): the spec that retrains the winner. With --trial, export that
    trial (one of the Pareto front, say) to exports/ID/ first, and print its config."""
    from tuner.export import read_best_config
    from tuner.layout import BEST_DIR
    from tuner.pipeline import load_sweep_spec

    spec = load_sweep_spec(args.sweep_dir)
    if args.trial is not None:
        from tuner.promotion import export_trial

        folder = export_trial(spec, args.trial)
        print(f"exported trial {args.trial}: {folder} (config.yaml, model/)", file=sys.stderr)
        print(read_best_config(folder.parent, args.format, folder.name), end="")
        return 0
    if not (Path(args.sweep_dir) / BEST_DIR / "config.yaml").exists():
        raise UserError(f"{args.sweep_dir}: no best config yet; the sweep exports one when it ends")
    print(read_best_config(args.sweep_dir, args.format), end="")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload the sweep's offline W&B runs, once a key is available."""
    from tuner import tracking
    from tuner.pipeline import load_sweep_spec

    spec = load_sweep_spec(args.sweep_dir)
    return tracking.sync(Path(args.sweep_dir), spec.tracking.wandb, dry_run=args.dry_run)


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild report.html from what the sweep directory holds now (a running sweep too)."""
    from tuner.pipeline import load_sweep_spec, write_report

    path = write_report(load_sweep_spec(args.sweep_dir))
    if path is None:
        return 1
    print(f"report: {path}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """The learning-rate range test: a plot, suggested bounds and, with --write, a spec that has them;
    1 when the loss never fell (nothing to suggest)."""
    from tuner import lrfind

    found = lrfind.find(resolve_spec_path(args.spec), args.set, min_lr=args.min_lr, max_lr=args.max_lr,
                        steps=args.steps, png_plot=args.png, write=args.write, force=args.force)
    curve = found.curve
    ended = "the loss diverged" if curve.stopped_early else "the range ran out"
    print(f"lr-find: {len(curve.lrs)} steps from {curve.lrs[0]:.2g} to {curve.lrs[-1]:.2g} ({ended}), "
          f"{curve.tokens:,} training tokens")
    for kind in ("svg", "png"):
        if kind in found.paths:
            print(f"plot: {found.paths[kind]}")
    if found.suggestion is None:
        print("no suggestion: the loss never fell; lower --min-lr or give more --steps", file=sys.stderr)
        return 1
    print(f"suggested {found.suggestion.describe()}")
    if "spec" in found.paths:
        print(f"spec with these bounds: {found.paths['spec']}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments too; raising keeps our one-line `tuner: error:` format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def parser() -> argparse.ArgumentParser:
    """The `tuner` command line; its prog is `tuner` however it was started (console script,
    `python -m tuner`, `python launch.py`), so every hint it prints is a command to copy."""
    top = _Parser(prog="tuner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("-v", "--verbose", action="store_true",
                     help="show the libraries' own notices too (anywhere on the line; sweep.log keeps them all)")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sweep = commands.add_parser("sweep", help="run a sweep end to end")
    sweep.add_argument("spec", help=f"the sweep's YAML spec, or a preset: {', '.join(preset_names())}")
    sweep.add_argument("--name", help="override the spec's name (and so its default sweep directory)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override one spec value, e.g. --set search.num_samples=4 (repeatable)")
    sweep.add_argument("--num-samples", type=int, help="override search.num_samples")
    sweep.add_argument("--address", help="attach to a running Ray cluster (default: a private local one)")
    sweep.add_argument("--force", action="store_true",
                       help="go on with an existing sweep directory even though the spec changed")
    sweep.set_defaults(run=cmd_sweep)

    resume = commands.add_parser("resume", help="go on with an interrupted sweep (same as re-running `sweep`)")
    resume.add_argument("sweep_dir", help="the directory `sweep` printed, e.g. runs/tiny, or its bucket storage "
                        "URI, e.g. s3://bucket/sweeps/tiny (on another machine: the driver's files are fetched)")
    resume.add_argument("--num-samples", type=int, help="raise search.num_samples: run that many trials in all")
    resume.add_argument("--address", help="attach to a running Ray cluster (default: a private local one)")
    resume.add_argument("--force", action="store_true", help="resume even though the saved spec was edited")
    resume.add_argument("--restart-search", action="store_true",
                        help="go on without an unreadable Tune snapshot or Optuna study: every finished trial is "
                             "kept, unfinished ones run again from their checkpoints")
    resume.set_defaults(run=cmd_resume)

    validate = commands.add_parser("validate", help="check a spec and print the plan; builds nothing")
    validate.add_argument("spec", help=f"a YAML spec, or a preset: {', '.join(preset_names())}")
    validate.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    validate.add_argument("--address", help="also plan against this running Ray cluster")
    validate.set_defaults(run=cmd_validate)

    status = commands.add_parser("status", help="print a sweep's leaderboard (running or finished)")
    status.add_argument("sweep_dir", help="the sweep's directory, or its bucket storage URI with --watch")
    status.add_argument("--watch", action="store_true",
                        help="the live view, refreshed until the sweep's driver stops (Ctrl-C leaves it)")
    status.set_defaults(run=cmd_status)

    export = commands.add_parser("export", help="print the best config of a finished sweep")
    export.add_argument("sweep_dir")
    export.add_argument("--format", choices=("yaml", "json"), default="yaml")
    export.add_argument("--trial", metavar="ID", help="export this trial's best checkpoint and config to "
                        "SWEEP_DIR/exports/ID/ (e.g. one on the Pareto front), and print its config")
    export.set_defaults(run=cmd_export)

    sync = commands.add_parser("sync", help="upload a sweep's offline W&B runs")
    sync.add_argument("sweep_dir")
    sync.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    sync.set_defaults(run=cmd_sync)

    report = commands.add_parser("report", help="(re)build a sweep's report.html")
    report.add_argument("sweep_dir")
    report.set_defaults(run=cmd_report)

    lr_find = commands.add_parser("lr-find", help="a learning-rate range test: plot and bounds for learning_rate")
    lr_find.add_argument("spec", help=f"the sweep's YAML spec, or a preset: {', '.join(preset_names())}")
    lr_find.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                         help="override one spec value, e.g. --set data.max_records=1000 (repeatable)")
    lr_find.add_argument("--min-lr", type=float, default=C.LR_FIND_MIN_LR,
                         help="the first step's rate (default: %(default)g)")
    lr_find.add_argument("--max-lr", type=float, default=C.LR_FIND_MAX_LR,
                         help="the last step's rate (default: %(default)g)")
    lr_find.add_argument("--steps", type=int, default=C.LR_FIND_STEPS,
                         help="optimizer steps, one rate each (default: %(default)s); it stops sooner once the loss "
                              "diverges")
    lr_find.add_argument("--png", action="store_true", help="also write lr_find.png (needs matplotlib)")
    lr_find.add_argument("--write", type=Path, metavar="PATH",
                         help="write a copy of the spec file with search.space.learning_rate's low and high set "
                              "to the suggestion (the spec itself is never changed)")
    lr_find.add_argument("--force", action="store_true", help="let --write replace an existing file")
    lr_find.set_defaults(run=cmd_lr_find)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code: 0 done, 1 a sweep or report with nothing to show, 2 bad input,
    130 stopped by Ctrl-C or SIGTERM (a sweep saved to resume)."""
    from tuner import logs
    from tuner.interrupt import EXIT_CODE, Interrupted, as_keyboard_interrupt

    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    logs.setup(verbose)
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, as_keyboard_interrupt) if main_thread else None  # a job stop: as Ctrl-C
    try:
        args = parser().parse_args([a for a in argv if a not in ("-v", "--verbose")])
        return args.run(args)
    except UserError as exc:
        print(f"tuner: error: {secret.redact(str(exc))}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"tuner: interrupted: {exc}; go on with `tuner resume {exc.sweep_dir}`", file=sys.stderr)
        return EXIT_CODE
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return EXIT_CODE
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)
