"""`tuner lr-find`: the suggestion rule on curves whose answer is known, the SVG, `--write`'s copy
of the spec, bad options, and one real range test on the tiny preset through the command line."""

from __future__ import annotations

import json
import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tuner import lrfind, yamlfile
from tuner.cli import main
from tuner.errors import UserError
from tuner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.yaml"
LRS = lrfind.schedule(1e-7, 10.0, 100)


def fall(lr: float, steep_at: float) -> float:
    """A loss falling from 6 to 3 against log10(rate), fastest at `steep_at` (a tanh)."""
    return 6 - 1.5 * (1 + math.tanh(2 * (math.log10(lr) - math.log10(steep_at))))


def range_curve(steep_at: float, lowest_at: float, noise: float = 0.0, tail: float = 40.0) -> list[float]:
    """A range test's loss: `fall`, then from `lowest_at` on blowing up (a parabola in log10(rate),
    `tail` steep), with Gaussian noise."""
    rng = random.Random(0)
    rise = [tail * max(0.0, math.log10(lr / lowest_at)) ** 2 for lr in LRS]
    return [fall(lr, steep_at) + up + rng.gauss(0, noise) for lr, up in zip(LRS, rise)]


# ---------------------------------------------------------------------------------------------
# The rule.


def test_schedule_rises_exponentially_from_min_to_max():
    lrs = lrfind.schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10.0) for a, b in zip(lrs, lrs[1:]))


def test_smoothing_is_bias_corrected_and_both_ways_has_no_lag():
    assert lrfind.smooth([5.0] * 4) == pytest.approx([5.0] * 4)  # not pulled towards 0 at the start
    step = [1.0] * 60 + [0.0] * 60  # long enough for the ends not to matter
    forward = lrfind.smooth(step)
    both = lrfind.smooth_both_ways(step)
    assert forward[65] > 0.5  # the forward average trails the step...
    assert both[59] > 0.5 > both[60]  # ...the two-way one crosses the middle where the step is
    assert both[59] - 0.5 == pytest.approx(0.5 - both[60], abs=3e-3)


def test_the_run_stops_once_the_smoothed_loss_passes_4x_its_lowest():
    assert not lrfind.diverged([5.0, 4.0, 3.0, 12.0])
    assert lrfind.diverged([5.0, 4.0, 3.0, 12.01])
    assert lrfind.diverged([5.0, math.nan])


def test_without_smoothing_the_bounds_are_the_steepest_step_over_10_and_the_lowest(monkeypatch):
    monkeypatch.setattr(lrfind, "SMOOTHING", 0.0)
    losses = [6.0] * 100
    for i, loss in {30: 5.9, 31: 5.0, 32: 4.5, 33: 4.3, 34: 4.2, 35: 4.1, 36: 7.0}.items():
        losses[i] = loss
    suggestion = lrfind.suggest(LRS, losses[:37])
    # the central difference is steepest at step 31 (5.9 -> 4.5), the loss lowest at step 35
    assert suggestion.steepest == pytest.approx(LRS[31]) and suggestion.low == pytest.approx(LRS[31] / 10)
    assert suggestion.minimum == pytest.approx(LRS[35]) and suggestion.high == pytest.approx(LRS[35])


def test_on_a_noisy_curve_the_bounds_are_near_the_known_points():
    suggestion = lrfind.suggest(LRS, range_curve(steep_at=1e-3, lowest_at=3e-2, noise=0.05))
    assert abs(math.log10(suggestion.steepest / 1e-3)) < 0.25
    assert suggestion.low == pytest.approx(suggestion.steepest / 10)
    # high is on the valley's floor (the noise-free loss within 0.1 of its lowest, 3% of the fall), not
    # past its end: smoothing an uneven valley moves its bottom towards the flat side, never up the wall
    assert suggestion.high <= 3e-2 and fall(suggestion.high, 1e-3) - fall(3e-2, 1e-3) < 0.1


def test_a_diverging_tail_does_not_drag_the_minimum_to_lower_rates():
    """A blow-up 100x the loss right after the minimum: capped at the first loss, it cannot reach back
    through the backward smoothing (uncapped, it pulls the minimum back to the very first step)."""
    losses = range_curve(steep_at=1e-3, lowest_at=3e-2, tail=0.0)
    cut = next(i for i, lr in enumerate(LRS) if lr > 3e-2)
    losses = losses[:cut] + [600.0] * 6
    suggestion = lrfind.suggest(LRS[:len(losses)], losses)
    assert suggestion.minimum <= LRS[cut - 1] and fall(suggestion.minimum, 1e-3) - fall(LRS[cut - 1], 1e-3) < 0.1
    uncapped = lrfind.smooth_both_ways(losses, lrfind.SMOOTHING)
    assert min(range(len(uncapped)), key=uncapped.__getitem__) < 5


def test_a_loss_that_never_falls_has_no_suggestion():
    with pytest.raises(UserError, match="the loss never fell.*lower --min-lr"):
        lrfind.suggest(LRS[:20], [6.0 + i for i in range(20)])
    with pytest.raises(UserError, match="the loss never fell"):  # by 1% or more
        lrfind.suggest(LRS[:20], [6.0] * 10 + [5.95] * 5 + [7.0] * 5)


def test_bad_options_are_each_named():
    problems = lrfind.option_problems(-1.0, 0.0, 3)
    assert [p.split(":")[0] for p in problems] == ["--min-lr", "--max-lr", "--steps"]
    assert "--min-lr: got -1, expected a rate > 0" in problems[0] and "--steps: got 3" in problems[2]
    assert lrfind.option_problems(1e-7, 1e-8, 100) == [
        "--max-lr: got 1e-08, not above --min-lr 1e-07; the range rises from --min-lr to --max-lr, e.g. "
        "--min-lr 1e-7 --max-lr 10"]
    assert lrfind.option_problems(1e-7, 10.0, 100) == []


# ---------------------------------------------------------------------------------------------
# The SVG.


def test_the_svg_parses_and_holds_every_step_and_the_bounds():
    losses = range_curve(steep_at=1e-3, lowest_at=3e-2, noise=0.05)
    curve = lrfind.Curve(LRS[:80], losses[:80], tokens=40960, stopped_early=True)
    suggestion = lrfind.suggest(curve.lrs, curve.losses)
    root = ET.fromstring(lrfind.svg(curve, suggestion))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    series = {line.get("data-series"): line.get("points").split() for line in root.iter(f"{ns}polyline")}
    assert len(series["loss"]) == len(series["smoothed"]) == 80
    xs = [float(point.split(",")[0]) for point in series["loss"]]
    assert xs == sorted(xs) and xs[0] < xs[-1]  # rising rates, left to right
    assert {mark.get("data-mark") for mark in root.iter(f"{ns}line")} >= {"steepest", "minimum"}
    band = next(root.iter(f"{ns}rect"))
    assert float(band.get("width")) > 0
    text = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert f"low {suggestion.low:.2g}, high {suggestion.high:.2g}" in text


def test_the_png_is_drawn_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    curve = lrfind.Curve(LRS[:80], range_curve(1e-3, 3e-2)[:80], tokens=1, stopped_early=True)
    path = lrfind.png(curve, lrfind.suggest(curve.lrs, curve.losses), tmp_path / "lr_find.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# --write: a copy of the spec with the bounds.


def suggestion_of(low: float, high: float) -> lrfind.Suggestion:
    return lrfind.Suggestion(low=low, high=high, steepest=low * 10, minimum=high, smoothed=[])


def test_write_makes_a_copy_with_the_bounds_and_leaves_the_rest_and_the_original_alone(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.read_text())
    before = spec.read_bytes()
    target = tmp_path / "tiny-lr.yaml"
    assert lrfind.target_problems(spec, target, force=False) == []
    lrfind.write_bounds(spec, target, suggestion_of(2.04e-5, 0.0187))  # the baseline's 5e-5 inside
    assert spec.read_bytes() == before
    entry = load_spec(target).search.space["learning_rate"]
    assert (entry["low"], entry["high"], entry["log"]) == (2.0e-5, 1.9e-2, True)
    changed = [(a, b) for a, b in zip(before.decode().splitlines(), target.read_text().splitlines()) if a != b]
    assert changed == [("    learning_rate: {type: float, low: 5.0e-5, high: 1.0e-2, log: true}",
                        "    learning_rate: {type: float, low: 2.0e-05, high: 1.9e-02, log: true}")]
    assert len(before.decode().splitlines()) == len(target.read_text().splitlines())  # comments kept


def test_write_refuses_an_existing_file_unless_forced_and_never_the_spec_itself(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.read_text())
    target = tmp_path / "taken.yaml"
    target.write_text("mine\n")
    assert lrfind.target_problems(spec, target, force=False) == [
        f"--write {target}: the file exists; give a new path, or add --force to replace it"]
    assert lrfind.target_problems(spec, target, force=True) == []
    assert "that is the spec itself" in lrfind.target_problems(spec, spec, force=True)[0]
    assert target.read_text() == "mine\n"


def test_write_refuses_a_copy_that_would_not_validate(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.read_text())
    target = tmp_path / "out.yaml"
    with pytest.raises(UserError, match=r"(?s)not written.*search\.baseline\.learning_rate: got 5e-05"):
        lrfind.write_bounds(spec, target, suggestion_of(1e-4, 1e-2))  # the baseline below the new low
    assert not target.exists()


def test_write_needs_a_learning_rate_range_in_the_file(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["search"]["space"]["learning_rate"] = 1e-3
    raw["search"]["baseline"].pop("learning_rate")
    spec = tmp_path / "fixed.yaml"
    spec.write_text(yaml.safe_dump(raw))
    [problem] = lrfind.target_problems(spec, tmp_path / "out.yaml", force=False)
    assert "no search.space.learning_rate.low" in problem and "written as a range in the file" in problem


def test_replace_scalars_keeps_block_style_and_comments():
    text = ("search:\n  space:  # the space\n    learning_rate:\n      type: float\n      low: '1e-5'  # q\n"
            "      high: 1.0e-2\n")
    out = yamlfile.replace_scalars(text, ["search", "space", "learning_rate"], {"low": "2.0e-05", "high": "3.0e-03"})
    assert out == text.replace("'1e-5'", "2.0e-05").replace("1.0e-2", "3.0e-03")
    with pytest.raises(yamlfile.YamlRefused, match="no search.space.lr"):
        yamlfile.replace_scalars(text, ["search", "space", "lr"], {"low": "1"})


# ---------------------------------------------------------------------------------------------
# The command line.


@pytest.mark.parametrize("args, needle", [
    (["--min-lr", "0", "--steps", "3"], "--min-lr: got 0"),
    (["--min-lr", "abc"], "argument --min-lr: invalid float value: 'abc'"),
    (["--steps", "2.5"], "argument --steps: invalid int value: '2.5'"),
])
def test_bad_options_exit_2_before_anything_is_built(tmp_path, capsys, args, needle):
    assert main(["lr-find", str(TINY), "--set", f"storage={tmp_path / 'sweep'}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuner: error: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


def test_write_to_an_existing_file_exits_2_before_the_run(tmp_path, capsys):
    taken = tmp_path / "taken.yaml"
    taken.write_text("mine\n")
    assert main(["lr-find", str(TINY), "--set", f"storage={tmp_path / 'sweep'}", "--write", str(taken)]) == 2
    assert "the file exists" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists() and taken.read_text() == "mine\n"


def test_every_problem_is_reported_together_before_the_run(tmp_path, capsys):
    raw = yaml.safe_load(TINY.read_text())
    raw["train"]["colour"] = "blue"
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(raw))
    taken = tmp_path / "taken.yaml"
    taken.write_text("mine\n")
    assert main(["lr-find", str(spec), "--set", f"storage={tmp_path / 'sweep'}", "--steps", "3",
                 "--write", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "--steps: got 3" in err and "the file exists" in err and "train.colour: unknown key" in err
    assert not (tmp_path / "sweep").exists()


def test_png_without_matplotlib_exits_2_saying_how_to_install_it(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed")
    except ImportError:
        pass
    assert main(["lr-find", str(TINY), "--set", f"storage={tmp_path / 'sweep'}", "--png"]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@pytest.mark.integration
def test_lr_find_on_the_tiny_preset_plots_suggests_and_writes_a_spec(tmp_path, capsys):
    raw = yaml.safe_load(TINY.read_text())
    raw["search"]["baseline"] = None  # its 5e-5 may fall outside the bounds
    spec = tmp_path / "tiny.yaml"
    spec.write_text("# tuner sweep tiny.yaml\n" + yaml.safe_dump(raw, sort_keys=False))
    before = spec.read_text()
    sweep_dir = tmp_path / "sweep"
    code = main(["lr-find", str(spec), "--set", f"storage={sweep_dir}", "--set", "data.max_records=600",
                 "--min-lr", "1e-5", "--max-lr", "10", "--steps", "40", "--write", str(tmp_path / "out.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "suggested search.space.learning_rate: low " in out
    found = json.loads((sweep_dir / "lr_find.json").read_text())
    steps = len(found["losses"])
    point = lrfind.starting_point(load_spec(spec))  # no baseline: the middle batch (16) and accumulation (2)
    assert (point["per_device_train_batch_size"], point["gradient_accumulation_steps"]) == (16, 2)
    assert 10 <= steps <= 40
    assert found["tokens"] == pytest.approx(steps * 16 * 2 * 64, rel=0.02)  # an epoch's last batch is short
    # the rates the Trainer ran at are the schedule's, one per step
    assert found["lrs"] == pytest.approx(lrfind.schedule(1e-5, 10.0, 40)[:steps], rel=1e-6)
    root = ET.fromstring((sweep_dir / "lr_find.svg").read_text())
    loss = next(line for line in root.iter("{http://www.w3.org/2000/svg}polyline") if line.get("data-series") == "loss")
    assert len(loss.get("points").split()) == steps
    entry = load_spec(tmp_path / "out.yaml").search.space["learning_rate"]
    suggestion = found["suggestion"]
    assert entry["low"] == pytest.approx(suggestion["low"], rel=0.05)
    assert entry["high"] == pytest.approx(suggestion["high"], rel=0.05)
    assert spec.read_text() == before
