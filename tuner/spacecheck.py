"""`search.space` checked: each entry a fixed value or a distribution in Optuna's vocabulary, inside the
range `hyperparams` gives its field, with conditions (`when:`) that can hold.

Also the space's readers that need no Optuna: whether an entry is a distribution, its conditions, and a
field's value where the space leaves it fixed; `space` builds the distributions from the same entries,
`warmstart` and `lrfind` read them. The checks append to the one list of problems `spec.validate`
reports; a malformed entry is reported once, where it is read, and read as absent by the other checks.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from tuner import grid, hyperparams
from tuner.schema import SearchSpec, Spec
from tuner.schema_build import as_number

DISTRIBUTION_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}


def conditions(entry: Any) -> dict[str, Any]:
    """A space entry's `when:` mapping; {} for none, or for a malformed one (validation refuses it:
    the checks that run beside that one read it as absent rather than fail on it)."""
    when = entry.get("when") if isinstance(entry, dict) else None
    return when if isinstance(when, dict) else {}


def condition_holds(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """A space entry's `when:` against a trial's values: each named field equals the value given, or
    one of the values listed. No `when:` always holds."""
    for name, wanted in (when or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if values.get(name) not in allowed:
            return False
    return True


def is_distribution(entry: Any) -> TypeGuard[dict[str, Any]]:
    """A space entry is a distribution when it is a mapping with a `type`; anything else is fixed."""
    return isinstance(entry, dict) and "type" in entry


def check_space(spec: Spec, raw: dict[str, Any], problems: list[str]) -> None:
    """Each entry of `search.space`: a searchable field, not also fixed, its `when:` and its values."""
    raw_train: dict[str, Any] = raw["train"] if isinstance(raw.get("train"), dict) else {}
    raw_model: dict[str, Any] = raw["model"] if isinstance(raw.get("model"), dict) else {}
    declared: list[str] = []
    for name, entry in spec.search.space.items():
        path = f"search.space.{name}"
        hyper = hyperparams.get(name)
        if hyper is None:
            problems.append(f"{path}: {name!r} cannot be searched; searchable: {', '.join(hyperparams.names())}")
            continue
        if isinstance(entry, dict) and "when" in entry:
            _check_when(name, entry["when"], spec, declared, path, problems)
        declared.append(name)
        fixed_where = hyper.section
        if (raw_model if fixed_where == "model" else raw_train).get(name) is not None:
            problems.append(f"{path}: {name} is also fixed in {fixed_where}.{name}; "
                            f"a field is either fixed in `{fixed_where}` or searched in `search.space`, "
                            "remove one of them")
        if is_distribution(entry):
            _check_distribution(name, entry, path, problems)
        else:
            check_value(name, entry, path, problems)


def _check_when(name: str, when: Any, spec: Spec, declared: list[str], path: str, problems: list[str]) -> None:
    """`when: {field: value or [values]}`: sample this entry only for trials where each named field,
    declared earlier in the space, takes one of those values (e.g. LoRA's rank only when use_lora)."""
    if not is_distribution(spec.search.space[name]):
        problems.append(f"{path}.when: a fixed value has no condition; make it a distribution or drop `when`")
        return
    if not isinstance(when, dict) or not when:
        problems.append(f"{path}.when: got {when!r}, expected a mapping such as {{use_lora: true}}")
        return
    for parent, wanted in when.items():
        where = f"{path}.when.{parent}"
        if parent in spec.search.space and parent not in declared:
            problems.append(f"{where}: {parent!r} is declared after {name!r}; a condition names a field "
                            "declared above it in search.space (or fixed)")
            continue
        if hyperparams.get(parent) is None or parent == name:
            problems.append(f"{where}: {parent!r} is not a hyperparameter; a condition names one of "
                            f"{', '.join(hyperparams.names())}")
            continue
        values = wanted if isinstance(wanted, list) else [wanted]
        entry = spec.search.space.get(parent)
        if parent not in spec.search.space:  # fixed in `model`/`train`, or its default
            fixed = fixed_value(spec, parent)
            if fixed not in values:
                problems.append(f"{where}: got {wanted!r}, but {parent} is fixed at {fixed!r} (not searched), "
                                f"so {name} would never be sampled; search {parent} in search.space or drop {name}")
            continue
        possible = entry.get("choices") if is_distribution(entry) and entry.get("type") == "categorical" else (
            None if is_distribution(entry) else [entry])
        possible = possible if isinstance(possible, list) else None  # malformed choices: reported already
        for value in values:
            if possible is not None and value not in possible:
                problems.append(f"{where}: got {value!r}, which {parent} never takes (its values: {possible!r})")


def fixed_value(spec: Spec, name: str) -> Any:
    """A hyperparameter's value where the space does not search it: fixed in `model`/`train`, else the default."""
    hyper = hyperparams.get(name)
    if hyper is None:
        raise KeyError(f"{name!r} is not a hyperparameter")  # a bug: callers name the table's fields
    section = spec.model if hyper.section == "model" else spec.train
    value = getattr(section, name, None) if section is not None else None
    return hyper.default if value is None else value


def check_plateau_warmup(spec: Spec, problems: list[str]) -> None:
    """reduce_lr_on_plateau has no warmup (transformers ignores warmup_steps for it): a trial that
    could get both is refused, unless warmup_ratio is conditioned on the other schedulers."""
    plateau = "reduce_lr_on_plateau"
    space_ = spec.search.space
    scheduler = space_.get("lr_scheduler_type", fixed_value(spec, "lr_scheduler_type"))
    schedulers = scheduler.get("choices") or [] if is_distribution(scheduler) else [scheduler]
    schedulers = schedulers if isinstance(schedulers, list) else []  # malformed choices: reported already
    if plateau not in schedulers:
        return
    warmup = space_.get("warmup_ratio", fixed_value(spec, "warmup_ratio"))
    if is_distribution(warmup):
        when = conditions(warmup).get("lr_scheduler_type")
        if when is not None and plateau not in (when if isinstance(when, list) else [when]):
            return
        top = max([as_number(c) or 0.0 for c in warmup.get("choices", [])] or [as_number(warmup.get("high")) or 0.0])
        where, shown = "search.space.warmup_ratio", f"up to {top:g}"
    else:
        top = as_number(warmup) or 0.0
        where = "search.space.warmup_ratio" if "warmup_ratio" in space_ else "train.warmup_ratio"
        shown = f"{top:g}"
    if top > 0:
        problems.append(f"{where}: got {shown} with lr_scheduler_type reduce_lr_on_plateau, which has no warmup; "
                        "set warmup_ratio to 0, or sample it only for the other schedulers with "
                        "`when: {lr_scheduler_type: [linear, cosine, ...]}`")


def _check_distribution(name: str, entry: dict[str, Any], path: str, problems: list[str]) -> None:
    """A distribution's type and keys, its choices or its range, against the field's kind."""
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in DISTRIBUTION_KEYS:
        problems.append(f"{path}.type: got {kind!r}, expected 'float', 'int' or 'categorical'")
        return
    for key in entry:
        if key not in DISTRIBUTION_KEYS[kind]:
            problems.append(f"{path}.{key}: unknown key for a {kind} distribution; "
                            f"allowed: {', '.join(sorted(DISTRIBUTION_KEYS[kind]))}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{path}.choices: got {choices!r}, expected a non-empty list")
            return
        if len(set(map(repr, choices))) != len(choices):
            problems.append(f"{path}.choices: got {choices!r}; each choice must appear once")
        for i, choice in enumerate(choices):
            check_value(name, choice, f"{path}.choices[{i}]", problems)
        return
    hyper = hyperparams.by_name()[name]
    if hyper.kind is str:
        problems.append(f"{path}.type: got {kind!r}; {name} takes a categorical or a fixed value")
        return
    if hyper.kind is bool:
        problems.append(f"{path}.type: got {kind!r}; {name} is true or false: use type: categorical, "
                        "choices: [true, false]")
        return
    if kind == "float" and hyper.kind is int:
        problems.append(f"{path}.type: got 'float', but {name} is an integer: use type: int")
    _check_range(name, kind, entry, path, problems)


def _check_range(name: str, kind: str, entry: dict[str, Any], path: str, problems: list[str]) -> None:
    """A float or int distribution's low, high, log and step."""
    bounds: list[float] = []
    for key in ("low", "high"):
        value, number = entry.get(key), as_number(entry.get(key))
        if number is None or (kind == "int" and not float(number).is_integer()):
            problems.append(f"{path}.{key}: got {value!r}, expected {'an integer' if kind == 'int' else 'a number'}")
        else:
            check_value(name, number, f"{path}.{key}", problems)
            bounds.append(number)
    if len(bounds) < 2:
        return
    low, high = bounds
    if low > high:
        problems.append(f"{path}: the `low` value must be smaller than or equal to the `high` value "
                        f"(low={low:g}, high={high:g}); swap them")
    log, step = entry.get("log", False), entry.get("step")
    if not isinstance(log, bool):
        problems.append(f"{path}.log: got {log!r}, expected true or false")
    if log and low <= 0:
        problems.append(f"{path}: a log distribution needs low > 0 (low={low:g}); raise low "
                        f"(e.g. {1 if kind == 'int' else 1e-6:g}) or set log: false")
    if step is not None:
        step_value = as_number(step)
        if step_value is None or step_value <= 0 or (kind == "int" and not step_value.is_integer()):
            problems.append(f"{path}.step: got {step!r}, expected {'an integer' if kind == 'int' else 'a number'} > 0")
        elif log:
            problems.append(f"{path}: `step` and `log` cannot be used together (step={step!r}, log=true)")
        elif low <= high and not _divides(step_value, high - low):
            # Optuna would quietly move `high` down to the last step; say so instead.
            last = low + math.floor((high - low) / step_value + 1e-9) * step_value
            problems.append(f"{path}.step: got {step!r}, which does not divide the range high - low = "
                            f"{high - low:g}; use a step that does, or set high: {last:.6g}")


def _divides(step: float, span: float) -> bool:
    """Whether `span` is a whole number of `step`s (within float error: 0.1 / 0.02 is 5.000000000000001)."""
    count = span / step
    return math.isclose(count, round(count), rel_tol=1e-9, abs_tol=1e-9)


def check_value(name: str, value: Any, path: str, problems: list[str]) -> None:
    """Check one value (fixed, a bound, a choice) of hyperparameter `name` against its range."""
    hyper = hyperparams.by_name()[name]
    if hyper.kind in (bool, str):
        ok = hyper.accepts(value)
    else:
        number = as_number(value)
        ok = number is not None and (hyper.kind is not int or number.is_integer()) and hyper.accepts(number)
    if not ok:
        problems.append(f"{path}: got {value!r}, expected {hyper.describe()}")


def check_grid(search: SearchSpec, raw: dict[str, Any], problems: list[str]) -> None:
    """A grid sweep runs each point once: num_samples is the grid's point count (and the baseline's)
    unless the spec asks for fewer (the first ones of the seeded order), never more. Sized once the
    rest of the spec is clean (a malformed entry has no list of values)."""
    entries = {name: entry for name, entry in search.space.items() if is_distribution(entry)}
    clean = not problems
    points = grid.check(entries, problems)
    if points is None or not clean or not entries:
        return
    points += (search.baseline is not None) + len(search.enqueue or [])
    asked = (raw.get("search") or {}).get("num_samples")
    if asked is None:
        search.num_samples = points
    elif search.num_samples > points:
        queued = " with the queued configs" * (search.baseline is not None or bool(search.enqueue))
        problems.append(f"search.num_samples: got {search.num_samples}, but the grid has {points} points"
                        f"{queued}; a grid runs each once: "
                        "drop num_samples to run them all, or list more values")


def check_point(point: dict[str, Any], search: SearchSpec, where: str, what: str, problems: list[str]) -> None:
    """The baseline and each enqueued config are queued as Optuna's first trials: each must give
    each searched field a value the distribution contains."""
    for name, entry in search.space.items():
        if is_distribution(entry) and "when" in entry and not conditions(entry):
            continue  # a malformed `when:`, reported already: whether it applies is unknown
        active = condition_holds(conditions(entry), point) if is_distribution(entry) else True
        if is_distribution(entry) and active and name not in point:
            problems.append(f"{where}: no value for {name!r}; {what} gives a value for every searched field")
    for name, value in point.items():
        path = f"{where}.{name}"
        entry = search.space.get(name)
        if not is_distribution(entry):
            problems.append(f"{path}: {name!r} is not searched in search.space; {what} gives values "
                            "for searched fields only")
        elif entry.get("type") == "categorical":
            if isinstance(entry.get("choices"), list) and value not in entry["choices"]:
                problems.append(f"{path}: got {value!r}, expected one of the choices {entry.get('choices')!r}")
        else:
            number, low, high = as_number(value), as_number(entry.get("low")), as_number(entry.get("high"))
            if number is not None and entry.get("type") == "int" and not number.is_integer():
                problems.append(f"{path}: got {value!r}, expected an integer (the search is type: int)")
            elif number is None or low is None or high is None or not low <= number <= high:
                problems.append(f"{path}: got {value!r}, expected a value in the searched range "
                                f"[{entry.get('low')}, {entry.get('high')}]")
