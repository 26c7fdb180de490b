"""`tuner lr-find`: the learning-rate range test (Leslie Smith, 2015; fastai's `lr_find`).

One short run of the sweep's own trial (the same prepared data, model and Trainer set-up) whose
learning rate rises exponentially, one optimizer step at a time, from `min_lr` to `max_lr`; the
training loss of every step is kept. The curve of loss against rate says where training starts to
learn and where it blows up, so a sweep can search between the two instead of across eight decades.

The rule for the suggested `search.space.learning_rate` bounds, on the loss smoothed exponentially
(factor `SMOOTHING`, about the last 10 steps):

- the run stops once the smoothed loss (forward, as the run goes) passes `DIVERGED` times its lowest,
  or a loss is not finite (fastai's rule): past that point the rate only tells how fast it diverges;
- the suggestion reads the loss smoothed forward then backward, so the smoothing's lag does not shift
  the curve towards larger rates, each loss first capped at the first step's (the model's before
  training): a diverged step's loss, 10x that, would otherwise reach back through the backward pass;
- `minimum` is the rate of the lowest smoothed loss, `steepest` the rate below it where the smoothed
  loss falls fastest against log(rate);
- high = minimum: the rate where the loss stops falling, the upper bound of Smith's cyclical rates;
  beyond it a whole run only gets less stable;
- low = steepest / `LOW_DIVISOR`: a decade under the fastest learning (fastai's suggested rate), where
  learning has begun.

No Ray here: like the training core it runs in a plain process.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuner import constants as C
from tuner import layout, yamlfile
from tuner.charts import PALETTE, Axis, frame, label, plot
from tuner.errors import UserError
from tuner.spec import Spec, SpecError, is_distribution, load_spec, to_number

log = logging.getLogger("tuner")

MIN_LR, MAX_LR, STEPS = C.LR_FIND_MIN_LR, C.LR_FIND_MAX_LR, C.LR_FIND_STEPS  # one rate per optimizer step
SMOOTHING = 0.9  # exponential smoothing factor of the loss: about the last 10 steps
DIVERGED = 4.0  # stop once the smoothed loss passes 4x its lowest
LOW_DIVISOR = 10.0  # low = the steepest descent's rate / 10; high = the lowest smoothed loss's rate
MIN_STEPS = 10  # fewer rates cannot show a descent and a minimum
MIN_FALL = 0.01  # a smoothed loss that fell less than 1% below its start has shown no descent


@dataclass
class Curve:
    """What the range test measured: one rate and one training loss per optimizer step."""

    lrs: list[float]
    losses: list[float]
    tokens: int  # training tokens the test used: its cost
    stopped_early: bool  # the loss diverged before max_lr


@dataclass
class Suggestion:
    """Bounds for `search.space.learning_rate`, and the two points of the curve they come from."""

    low: float
    high: float
    steepest: float  # the rate where the smoothed loss fell fastest
    minimum: float  # the rate of the lowest smoothed loss
    smoothed: list[float]  # the curve the suggestion read (forward then backward)

    def describe(self) -> str:
        return (f"search.space.learning_rate: low {self.low:.2g}, high {self.high:.2g} (steepest descent at "
                f"{self.steepest:.2g} / {LOW_DIVISOR:g}; the lowest loss at {self.minimum:.2g})")


def option_problems(min_lr: float, max_lr: float, steps: int, png_plot: bool = False) -> list[str]:
    """What is wrong with the range's options (and --png without matplotlib)."""
    problems = []
    if not (math.isfinite(min_lr) and min_lr > 0):
        problems.append(f"--min-lr: got {min_lr:g}, expected a rate > 0, e.g. --min-lr 1e-7")
    if not (math.isfinite(max_lr) and max_lr > 0):
        problems.append(f"--max-lr: got {max_lr:g}, expected a rate > 0, e.g. --max-lr 10")
    elif min_lr > 0 and max_lr <= min_lr:
        problems.append(f"--max-lr: got {max_lr:g}, not above --min-lr {min_lr:g}; the range rises from "
                        "--min-lr to --max-lr, e.g. --min-lr 1e-7 --max-lr 10")
    if steps < MIN_STEPS:
        problems.append(f"--steps: got {steps}, expected at least {MIN_STEPS} (one rate per step; "
                        f"{STEPS} is the usual)")
    if png_plot and importlib.util.find_spec("matplotlib") is None:
        problems.append("--png: matplotlib is not installed; install it (`.venv/bin/pip install matplotlib`) "
                        "or leave --png out: the SVG is always written")
    return problems


def check(spec_path: Path, overrides: list[str] | None, min_lr: float, max_lr: float, steps: int,
          png_plot: bool, write: Path | None, force: bool) -> Spec:
    """The resolved spec, once every option, --write's target and the spec are checked: all their
    problems in one UserError, before anything is built."""
    problems = option_problems(min_lr, max_lr, steps, png_plot)
    if write is not None:
        problems += target_problems(spec_path, write, force)
    spec = None
    try:
        spec = load_spec(spec_path, overrides)
    except SpecError as exc:
        problems.append(str(exc).replace("\n", "\n  "))
    if problems or spec is None:
        raise UserError("lr-find cannot run:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec


def schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The rate of each step: exponential from min_lr (the first step) to max_lr (the last)."""
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The exponential moving average of `losses`, bias-corrected (its first values are not pulled
    towards 0): what the run watches to stop."""
    out, average = [], 0.0
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return out


def smooth_both_ways(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Smoothed forward, then the result backward: no lag, so the minimum stays where it is."""
    return smooth(smooth(losses, beta)[::-1], beta)[::-1]


def diverged(smoothed: list[float]) -> bool:
    """The range test is over: the last smoothed loss is not finite or passes DIVERGED x the lowest."""
    last = smoothed[-1]
    return not math.isfinite(last) or last > DIVERGED * min(smoothed)


def suggest(lrs: list[float], losses: list[float]) -> Suggestion:
    """Bounds for the learning rate from a range test's curve (the rule is in the module's docstring).
    Raises UserError when the curve has no descent to read: the range starts too high or is too short."""
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    lrs, losses = [lrs[i] for i in finite], [losses[i] for i in finite]
    smoothed = smooth_both_ways([min(loss, losses[0]) for loss in losses], SMOOTHING)
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__) if smoothed else 0
    if lowest < 2 or smoothed[lowest] > (1 - MIN_FALL) * smoothed[0]:
        start = lrs[0] if lrs else math.nan
        raise UserError(f"the loss never fell by {MIN_FALL:.0%} ({len(losses)} finite steps from {start:.2g}): "
                        "no descent to read bounds from; lower --min-lr, or give more --steps")
    x = [math.log10(lr) for lr in lrs]
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / (x[i + 1] - x[i - 1]) for i in range(1, lowest)}
    steepest = min(slopes, key=slopes.__getitem__)
    return Suggestion(low=lrs[steepest] / LOW_DIVISOR, high=lrs[lowest], steepest=lrs[steepest],
                      minimum=lrs[lowest], smoothed=smoothed)


# ---------------------------------------------------------------------------------------------
# The run: the sweep's trial, with the rate rising at every step.


@dataclass
class Found:
    """A range test's outcome: the curve, the bounds (None when the loss never fell) and its files."""

    curve: Curve
    suggestion: Suggestion | None
    paths: dict[str, Path]


def find(spec_path: Path, overrides: list[str] | None = None, *, min_lr: float = MIN_LR, max_lr: float = MAX_LR,
         steps: int = STEPS, png_plot: bool = False, write: Path | None = None, force: bool = False) -> Found:
    """Run the range test on the sweep `spec_path` (with `--set` overrides) describes, in its sweep
    directory (under its lock: never beside a running driver); draw it and suggest bounds; with
    `write`, put them in a copy of the spec file. Every option is checked before anything is built."""
    from tuner import data, lock, logs, model, pipeline

    write = Path(write) if write is not None else None
    spec = check(spec_path, overrides, min_lr, max_lr, steps, png_plot, write, force)
    sweep_dir = spec.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with lock.hold(sweep_dir, spec.location, "lr-find"), logs.to_file(sweep_dir):
        pipeline.quiet_libraries()
        pipeline.check_model(spec)
        prepared = data.prepare(spec, sweep_dir)
        data.check_prepared(spec, prepared)
        curve = measure(spec, prepared, model.resolve(spec.model.name_or_path), schedule(min_lr, max_lr, steps))
    try:
        suggestion: Suggestion | None = suggest(curve.lrs, curve.losses)
    except UserError as exc:
        suggestion = None
        log.warning("lr-find: %s", exc)
    if suggestion is not None and suggestion.minimum == curve.lrs[-1]:
        log.warning("lr-find: the loss was still falling at %.2g, the range's end: raise --max-lr for an upper "
                    "bound past it", curve.lrs[-1])
    paths = {"svg": save(curve, suggestion, sweep_dir), "json": sweep_dir / layout.LR_FIND_JSON}
    if png_plot:
        paths["png"] = png(curve, suggestion, sweep_dir / layout.LR_FIND_PNG)
    if write is not None and suggestion is not None:
        paths["spec"] = write_bounds(spec_path, write, suggestion)
    return Found(curve, suggestion, paths)


LR_PATH = ["search", "space", "learning_rate"]
RANGE_EXAMPLE = "{type: float, low: 1.0e-5, high: 1.0e-2, log: true}"


def target_problems(spec_path: Path, target: Path, force: bool) -> list[str]:
    """--write's checks, before the run: a new file (or --force), never the spec itself, and a spec
    file whose learning_rate is a range to rewrite."""
    if target.exists() and target.resolve() == spec_path.resolve():
        return [f"--write {target}: that is the spec itself, which lr-find never changes; give the path "
                "of a new file, e.g. --write spec-lr.yaml"]
    problems = []
    if target.is_dir():
        problems.append(f"--write {target}: a directory; give the path of the file to write")
    elif target.exists() and not force:
        problems.append(f"--write {target}: the file exists; give a new path, or add --force to replace it")
    try:
        _with_bounds(spec_path, 1.0, 2.0)
    except UserError as exc:
        problems.append(str(exc))
    return problems


def _with_bounds(spec_path: Path, low: float, high: float) -> str:
    """The spec file's text with search.space.learning_rate's low and high replaced."""
    try:
        return yamlfile.replace_scalars(yamlfile.read_text(spec_path), LR_PATH,
                                        {"low": f"{low:.1e}", "high": f"{high:.1e}"})
    except yamlfile.YamlRefused as exc:
        raise UserError(f"--write: {spec_path}: {exc}; the copy needs search.space.learning_rate written as a "
                        f"range in the file, e.g. learning_rate: {RANGE_EXAMPLE}") from None


def write_bounds(spec_path: Path, target: Path, suggestion: Suggestion) -> Path:
    """A copy of the spec file with the suggested bounds, the rest of it as it was; refused (the
    original untouched either way) when the copy would not validate, e.g. a baseline outside them."""
    text = _with_bounds(spec_path, suggestion.low, suggestion.high)
    try:
        load_spec(yamlfile.load(text))
    except SpecError as exc:
        raise UserError(f"--write {target}: not written: with low {suggestion.low:.1e} and high "
                        f"{suggestion.high:.1e} the copy of {spec_path} would not validate ({exc}); move or drop "
                        "those values in the spec and run again, or write the bounds by hand") from None
    layout.write_text(target, text)
    return target


def starting_point(spec: Spec) -> dict[str, Any]:
    """The values of the other searched hyperparameters for the test: the baseline's where it gives
    one, else the middle of the range (geometric for a log range, rounded half up for an int, the
    middle choice). The best rate depends on the batch size: fix it with --set to test another."""
    chosen = {}
    baseline = spec.search.baseline or {}
    for name, entry in spec.search.space.items():
        if not is_distribution(entry) or name == "learning_rate":
            continue
        if name in baseline:
            chosen[name] = baseline[name]
        elif entry["type"] == "categorical":
            chosen[name] = entry["choices"][len(entry["choices"]) // 2]
        else:
            low, high = to_number(entry["low"]), to_number(entry["high"])
            middle = math.sqrt(low * high) if entry.get("log") else (low + high) / 2
            chosen[name] = math.floor(middle + 0.5) if entry["type"] == "int" else middle
    return chosen


def measure(spec: Spec, prepared: Any, model_path: str, lrs: list[float]) -> Curve:
    """Train the sweep's trial at `lrs`, one per step, until they run out or the loss diverges."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import PrinterCallback

    from tuner import space, trial
    from tuner.data import trial_splits

    hyper = {**space.resolve(spec, starting_point(spec)), "learning_rate": lrs[0], "warmup_ratio": 0.0,
             "lr_scheduler_type": "constant"}
    log.info("lr-find: %d steps from %.2g to %.2g; %s", len(lrs), lrs[0], lrs[-1],
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in starting_point(spec).items()))
    train_split, _ = trial_splits(prepared, spec.train.eval_blocks, spec.train.seed)
    workdir = Path(tempfile.mkdtemp(prefix="tuner-lrfind-"))
    args = trial.training_arguments(spec, hyper, workdir)
    args.max_steps, args.logging_steps = len(lrs), 1  # one loss per step, each at its own rate
    trainer = trial.counting_trainer()(model=trial.trial_model(spec, model_path, hyper), args=args,
                                       data_collator=trial.collate, train_dataset=train_split)
    # The Trainer's optimizer (weight decay, betas, epsilon as a trial's), stepped along `lrs`.
    trainer.lr_scheduler = LambdaLR(trainer.create_optimizer(), lambda step: lrs[min(step, len(lrs) - 1)] / lrs[0])
    watch = _watcher()()
    trainer.add_callback(watch)
    trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every step's log line
    try:
        trainer.train()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Curve(watch.lrs, watch.losses, int(trainer.state.num_input_tokens_seen), len(watch.lrs) < len(lrs))


@functools.lru_cache(maxsize=1)
def _watcher() -> Any:
    """The callback that keeps each step's loss and the rate the Trainer says that step ran at, and
    stops the run once it diverges (a factory: transformers is imported only when a test runs)."""
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def __init__(self) -> None:
            self.lrs: list[float] = []
            self.losses: list[float] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if logs is not None and "loss" in logs:
                self.lrs.append(float(logs["learning_rate"]))
                self.losses.append(float(logs["loss"]))
                if diverged(smooth(self.losses)):
                    control.should_training_stop = True

    return Watch


# ---------------------------------------------------------------------------------------------
# What it leaves: the curve as JSON, an SVG plot, a PNG on request.


def save(curve: Curve, suggestion: Suggestion | None, sweep_dir: Path) -> Path:
    """lr_find.json (the curve and the suggestion) and lr_find.svg in the sweep directory."""
    layout.write_json(sweep_dir / layout.LR_FIND_JSON, {**asdict(curve), "suggestion": asdict(suggestion)
                                                        if suggestion else None})
    path = sweep_dir / layout.LR_FIND_SVG
    layout.write_text(path, svg(curve, suggestion))
    return path


STYLE = ("<style>text{font:11px sans-serif;fill:#333}.axis{stroke:#333}.grid{stroke:#ddd}"
         ".band{fill:#59a14f;fill-opacity:.12}.mark{stroke-dasharray:4 3}</style>")


def svg(curve: Curve, suggestion: Suggestion | None) -> str:
    """Loss against learning rate (log axis): each step's loss, the smoothed curve, the suggested
    bounds as a band. A standalone file: its styles are inside it."""
    from tuner.charts import HEIGHT, PAD, WIDTH

    points = [(lr, loss) for lr, loss in zip(curve.lrs, curve.losses) if math.isfinite(loss)]
    if not points:
        return plot([STYLE, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}">no finite loss</text>'], "lr-find")
    smoothed = suggestion.smoothed if suggestion else smooth_both_ways([loss for _, loss in points], SMOOTHING)
    top = max(smoothed[0], *smoothed) * 1.05  # the diverging tail is cut at the top
    x = Axis(points[0][0], points[-1][0], PAD, WIDTH - 16, log_scale=True)
    y = Axis(min(loss for _, loss in points), top, HEIGHT - PAD, 16)
    parts = [STYLE, *frame(x, y, "learning rate", "training loss", lambda v: f"{v:.0e}")]
    if suggestion:
        parts.append(f'<rect class="band" x="{x(suggestion.low):.1f}" y="16" width="'
                     f'{max(0.0, x(suggestion.high) - x(suggestion.low)):.1f}" height="{HEIGHT - PAD - 16}"/>')
        for name, lr in (("steepest", suggestion.steepest), ("minimum", suggestion.minimum)):
            parts.append(f'<line class="mark" data-mark="{name}" x1="{x(lr):.1f}" y1="16" x2="{x(lr):.1f}" '
                         f'y2="{HEIGHT - PAD}" stroke="{PALETTE[3]}"/><text x="{x(lr) + 4:.1f}" y="28">'
                         f'{name} {label(lr)}</text>')
    parts.append(_line("loss", points, x, y, top, PALETTE[0], 'stroke-opacity=".45"'))
    parts.append(_line("smoothed", list(zip((lr for lr, _ in points), smoothed)), x, y, top, PALETTE[1],
                       'stroke-width="2"'))
    title = html.escape(suggestion.describe() if suggestion else "no suggestion: the loss never fell")
    parts.append(f'<text x="{PAD}" y="12">{title}</text>')
    return plot(parts, "lr-find")


def _line(name: str, points: list[tuple[float, float]], x: Axis, y: Axis, top: float, color: str,
          extra: str) -> str:
    coords = " ".join(f"{x(lr):.1f},{y(min(loss, top)):.1f}" for lr, loss in points)
    return f'<polyline data-series="{name}" points="{coords}" fill="none" stroke="{color}" {extra}/>'


def png(curve: Curve, suggestion: Suggestion | None, path: Path) -> Path:
    """The same plot as a PNG, drawn by matplotlib (not a dependency of tuner: `check` asks for it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7.6, 3.6))
    axes.semilogx(curve.lrs, curve.losses, alpha=0.45, label="loss")
    if suggestion:
        axes.semilogx(curve.lrs[:len(suggestion.smoothed)], suggestion.smoothed, linewidth=2, label="smoothed")
        axes.axvspan(suggestion.low, suggestion.high, color="#59a14f", alpha=0.12, label="suggested bounds")
        axes.set_title(suggestion.describe(), fontsize=8)
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.legend()
    with layout.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
