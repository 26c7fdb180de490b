"""What a sweep optimises, checked: `search.metric` and `search.mode`, the objectives of `search.metrics`,
a user's `search.metric_fn` and its sample, and what promotion does with them (`promote.pick` trades
one objective for another; `promote.top_k` > 1 re-measures the metric).

A metric named wrongly is found here, before any trial starts, rather than at the first report. A
generation metric's direction is taken (higher is better) where the spec leaves it out; a metric_fn's
must be said, as tuner cannot know it. `trial_metrics` imports the user's function with
`import_callable`, and `pareto` reads `promote.pick.within` with `tolerance`, so both read a value
the way it was accepted here.
"""

from __future__ import annotations

import importlib
from typing import Any

from tuner import limits
from tuner.constants import EVAL_EXACT_MATCH, EVAL_LOSS, GENERATION_METRICS, METRIC_PREFIX, REPORT_KEYS
from tuner.errors import first_line
from tuner.schema import SearchSpec, Spec
from tuner.schema_build import as_number

MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsga2", "random")  # Optuna's samplers of several objectives


def check_metrics(search: SearchSpec, raw: dict[str, Any], problems: list[str]) -> None:
    """`search.metrics`: two or more reported keys, each once, on a sampler of several objectives.
    The first becomes `search.metric` and `search.mode`, which ASHA, patience, the ledger and
    promotion read; a `metric` or `mode` also written must agree with it."""
    if search.metrics is None:
        return
    entries = [m for m in search.metrics if m is not None]
    if len(search.metrics) < 2:
        problems.append(f"search.metrics: got {len(search.metrics)} entry; a multi-objective search needs at least "
                        "2: add one, e.g. {name: trainable_params, mode: min}, or use search.metric and "
                        "search.mode for one")
    seen: set[str] = set()
    for i, entry in enumerate(search.metrics):
        if entry is None or not isinstance(entry.name, str):
            continue  # missing or of the wrong type: reported already
        if entry.name not in REPORT_KEYS:
            problems.append(f"search.metrics[{i}].name: got {entry.name!r}, expected a reported key: "
                            f"{', '.join(REPORT_KEYS)}")
        elif entry.name in seen:
            problems.append(f"search.metrics[{i}].name: {entry.name!r} is listed twice; list each metric once")
        seen.add(entry.name)
    if search.sampler not in MULTI_OBJECTIVE_SAMPLERS:
        problems.append(f"search.sampler: got {search.sampler!r} with search.metrics; a multi-objective search "
                        f"takes sampler {', '.join(MULTI_OBJECTIVE_SAMPLERS)}: use tpe or nsga2")
    first = entries[0] if len(entries) == len(search.metrics) and entries else None
    if first is None or first.name not in REPORT_KEYS or first.mode not in ("min", "max"):
        return  # reported already
    given = raw.get("search") or {}
    for key in ("metric", "mode"):
        if key in given and given[key] != getattr(first, key if key == "mode" else "name"):
            problems.append(f"search.{key}: got {given[key]!r} with search.metrics, whose first entry has "
                            f"{key if key == 'mode' else 'name'} {getattr(first, key if key == 'mode' else 'name')!r}; "
                            f"drop search.{key}: the first of search.metrics is the search's {key}")
    search.metric, search.mode = first.name, first.mode


def check_metric(spec: Spec, raw: dict[str, Any], problems: list[str], metric_fn: Any, saved: bool) -> None:
    """What search.metric may name: a reported key, a generation metric, or a key of the metric_fn's
    result (with a metric_fn, in the spec or from Python). Its direction: left out, a generation
    metric is maximised (a higher ROUGE is better: `mode: min` would hunt for the worst model),
    and a metric_fn's must be said, as tuner cannot know it."""
    search = spec.search
    metric, given = search.metric, "mode" in (raw.get("search") or {})
    if search.metric_fn is not None and metric_fn is not None:
        problems.append(f"search.metric_fn: got {search.metric_fn!r} and a metric_fn from Python too; give one")
    if isinstance(search.metric_fn, str) and not saved:
        check_metric_fn_path(search.metric_fn, problems)
    if search.metric_sample is not None:
        for key in ("num_prompts", "prompt_tokens", "reference_tokens", "max_new_tokens"):
            limits.at_least(getattr(search.metric_sample, key), 1, f"search.metric_sample.{key}", problems)
    if not isinstance(metric, str):
        return
    custom = search.metric_fn is not None or metric_fn is not None or saved
    if metric in GENERATION_METRICS:
        _check_generation_metric(spec, given, problems)
    elif metric not in REPORT_KEYS and not custom:
        problems.append(f"search.metric: got {metric!r}, expected a reported key ({', '.join(REPORT_KEYS)}), "
                        f"a generation metric ({', '.join(GENERATION_METRICS)}), or with search.metric_fn a key "
                        "of its result")
    elif metric not in REPORT_KEYS and not metric.startswith(METRIC_PREFIX):
        problems.append(f"search.metric: got {metric!r} with search.metric_fn; its keys are reported with the "
                        f"prefix {METRIC_PREFIX}: set search.metric: {METRIC_PREFIX}{metric}")
    elif metric not in REPORT_KEYS and not given:
        problems.append(f"search.mode: missing with search.metric {metric!r} (a metric_fn key); say whether "
                        "higher is better (mode: max) or lower (mode: min)")


def _check_generation_metric(spec: Spec, given: bool, problems: list[str]) -> None:
    """A generation metric is higher-better: max unless said, and `min` refused. Exact match needs an
    answer to match: instruction or chat data."""
    search, data = spec.search, spec.data
    if not given:
        search.mode = "max"
    elif search.mode == "min":
        problems.append(f"search.mode: got 'min' with search.metric {search.metric!r}, where higher is better; "
                        "set mode: max, or leave mode out (max is taken for generation metrics)")
    if (search.metric == EVAL_EXACT_MATCH and data is not None and data.prompt_column is None
            and data.messages_column is None):
        problems.append(f"search.metric: got {EVAL_EXACT_MATCH!r} on plain text (no data.prompt_column or "
                        "data.messages_column); exact match compares answers with completions: use eval_rougeL "
                        "or eval_bleu, or instruction data")


def check_metric_fn_path(path: str, problems: list[str]) -> None:
    """search.metric_fn names an importable module and a callable in it, before any trial starts."""
    try:
        import_callable(path)
    except ValueError as exc:
        problems.append(f"search.metric_fn: {exc}")


def import_callable(path: str) -> Any:
    """The function `package.module:function` names; ValueError saying what is wrong with it."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"got {path!r}, expected package.module:function (e.g. mypkg.metrics:accuracy)")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 (any error importing the user's module means: not importable)
        raise ValueError(f"got {path!r}, but module {module_name!r} cannot be imported ({first_line(exc)}); "
                         "install it or put its folder on PYTHONPATH where the sweep runs") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"got {path!r}, but {module_name} has no {attribute!r}; name a function defined there")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"got {path!r}, which is a {type(found).__name__}, not a function; name a function "
                         "that takes (model, tokenizer, sample)")
    return found


def check_promote_against(spec: Spec, problems: list[str]) -> None:
    """The re-ranking re-measures the loss on the whole validation split, and a generation metric or
    a metric_fn's on a larger validation sample; training figures (train_loss, ...) it cannot."""
    top_k = spec.promote.top_k
    if (spec.search is not None and isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 1
            and spec.search.metric in REPORT_KEYS and spec.search.metric != EVAL_LOSS):
        problems.append(f"promote.top_k: got {top_k} with search.metric {spec.search.metric!r}; the re-evaluation "
                        f"measures {EVAL_LOSS}, the generation metrics and metric_fn's keys, not a training "
                        f"figure: set promote.top_k to 1 or search on one of those")


def check_pick(spec: Spec, problems: list[str]) -> None:
    """`promote.pick` chooses among the objectives of `search.metrics`, by names it lists."""
    pick = spec.promote.pick
    if pick is None:
        return
    metrics = spec.search.metrics if spec.search is not None else None
    if not metrics:
        problems.append("promote.pick: set without search.metrics; it trades one objective for another: list "
                        "them in search.metrics, or drop promote.pick to promote the best by search.metric")
        return
    names = [m.name for m in metrics if m is not None and isinstance(m.name, str)]
    for key in ("metric", "then"):
        value = getattr(pick, key)
        if value is not None and value not in names:
            problems.append(f"promote.pick.{key}: got {value!r}, expected one of search.metrics: {', '.join(names)}")
    if pick.then is not None and pick.then == (pick.metric or (names[0] if names else None)):
        problems.append(f"promote.pick.then: got {pick.then!r}, the metric the pick starts from; name another "
                        "of search.metrics to choose by among the near-best")
    if pick.within is not None and tolerance(pick.within) is None:
        problems.append(f"promote.pick.within: got {pick.within!r}, expected a percentage of the best value such as "
                        "'1%', or a number >= 0 in the metric's own units")
    top_k = spec.promote.top_k
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 1:
        problems.append(f"promote.top_k: got {top_k} with promote.pick; the pick chooses the trial to promote: "
                        "set promote.top_k to 1")


def tolerance(within: float | str) -> tuple[float, bool] | None:
    """`promote.pick.within` as (amount, relative): '1%' is (0.01, True), 0.05 is (0.05, False); None
    when it is neither a percentage nor a number >= 0."""
    relative = isinstance(within, str) and within.strip().endswith("%")
    number = as_number(within.strip()[:-1] if relative else within)  # type: ignore[union-attr]
    if number is None or number < 0:
        return None
    return (number / 100, True) if relative else (number, False)
