"""tuner: hyperparameter search for fine-tuning causal language models.

    python launch.py sweep SPEC [--name NAME] [--set key.path=value ...] [--num-samples N] [--address ADDR] [--force]
    python launch.py resume SWEEP_DIR|STORAGE_URI [--num-samples N] [--address ADDR] [--force] [--restart-search]
    python launch.py validate SPEC [--set key.path=value ...] [--address ADDR]
    python launch.py status SWEEP_DIR
    python launch.py export SWEEP_DIR [--format yaml|json]
    python launch.py sync SWEEP_DIR [--dry-run]
    python launch.py report SWEEP_DIR

`sweep` runs the whole pipeline: spec → prepared data → Optuna + ASHA on Ray Tune → leaderboard →
final evaluation of the best checkpoint → export. Bad input exits with code 2 and one message.
Run again (or `resume`d) on the same sweep directory, a sweep goes on where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tuner.errors import UserError


def cmd_sweep(args: argparse.Namespace) -> int:
    from tuner.pipeline import run_sweep

    return _run(lambda: run_sweep(args.spec, overrides=args.set, name=args.name, num_samples=args.num_samples,
                                  address=args.address, force=args.force))


def cmd_resume(args: argparse.Namespace) -> int:
    """Go on with an interrupted sweep (its driver killed) under the spec saved in its directory."""
    from tuner.pipeline import resume_sweep

    return _run(lambda: resume_sweep(args.sweep_dir, address=args.address, force=args.force,
                                     num_samples=args.num_samples, restart_search=args.restart_search))


def _run(sweep) -> int:
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
    import json
    from pathlib import Path

    from tuner import data, datacheck, datafiles, layout
    from tuner.plan import data_warnings, make_plan
    from tuner.spec import load_spec, to_yaml

    spec = load_spec(args.spec, args.set)
    datacheck.check(spec.data)  # every local data file read through: the problems `sweep` would meet
    meta = spec.sweep_dir / layout.DATA_DIR / data.fingerprint(spec) / "prepared.json"
    train_tokens, estimated = None, False
    if meta.exists():  # data prepared by an earlier run: the plan can give token budgets
        prepared = json.loads(Path(meta).read_text())
        train_tokens = prepared["blocks"]["train"] * prepared["block_size"]
    elif spec.data.path is not None:  # a guess from the files' size, for the warnings below
        train_tokens, estimated = datafiles.estimate_train_tokens(spec.data), True
    print(to_yaml(spec, f"# resolved spec: {args.spec}\n"))
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
    from pathlib import Path

    from tuner import layout, lock, results, tracking
    from tuner.pipeline import load_sweep_spec

    spec = load_sweep_spec(args.sweep_dir)
    rows = results.leaderboard(args.sweep_dir, spec.search.mode, spec.name)
    holder = lock.read_holder(Path(args.sweep_dir))
    print(f"sweep {spec.name}: {args.sweep_dir}")
    print(f"driver: {holder.describe()}" if holder else "driver: none running")
    print(results.format_table(rows))
    for row in rows:
        print(f"  {row['trial_id']}: log {layout.resolve(row['log_file'], Path(args.sweep_dir).resolve())}")
    print(f"disk: {results.disk_summary(spec)}")
    report = Path(args.sweep_dir) / layout.REPORT_FILE
    print(f"report: {report}" if report.is_file() else
          f"report: none yet; build it with `python launch.py report {args.sweep_dir}`")
    offline = tracking.offline_runs(args.sweep_dir)
    if offline:
        print(f"W&B: {len(offline)} offline runs in {tracking.WANDB_DIR}/; upload them with "
              f"`python launch.py sync {args.sweep_dir}`")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.export import read_best_config
    from tuner.layout import BEST_DIR
    from tuner.pipeline import load_sweep_spec

    load_sweep_spec(args.sweep_dir)
    if not (Path(args.sweep_dir) / BEST_DIR / "config.yaml").exists():
        raise UserError(f"{args.sweep_dir}: no best config yet; the sweep exports one when it ends")
    print(read_best_config(args.sweep_dir, args.format), end="")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload the sweep's offline W&B runs, once a key is available."""
    from pathlib import Path

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep our one-line format
        raise UserError(f"{message} (see `python launch.py {self.prog.split()[-1]} --help`)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="launch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sweep = commands.add_parser("sweep", help="run a sweep end to end")
    sweep.add_argument("spec", help="the sweep's YAML spec, e.g. search_spaces/tiny.yaml")
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
    validate.add_argument("spec")
    validate.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    validate.add_argument("--address", help="also plan against this running Ray cluster")
    validate.set_defaults(run=cmd_validate)

    status = commands.add_parser("status", help="print a sweep's leaderboard (running or finished)")
    status.add_argument("sweep_dir")
    status.set_defaults(run=cmd_status)

    export = commands.add_parser("export", help="print the best config of a finished sweep")
    export.add_argument("sweep_dir")
    export.add_argument("--format", choices=("yaml", "json"), default="yaml")
    export.set_defaults(run=cmd_export)

    sync = commands.add_parser("sync", help="upload a sweep's offline W&B runs")
    sync.add_argument("sweep_dir")
    sync.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    sync.set_defaults(run=cmd_sync)

    report = commands.add_parser("report", help="(re)build a sweep's report.html")
    report.add_argument("sweep_dir")
    report.set_defaults(run=cmd_report)
    return top


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("tuner").setLevel(logging.INFO)
    from tuner.secret import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    try:
        args = parser().parse_args(argv)
        return args.run(args)
    except UserError as exc:
        print(f"tuner: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
