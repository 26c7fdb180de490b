"""Search space: the spec's `search.space` in Optuna's vocabulary → Optuna distributions.

Distributions go to the sampler; fixed entries, fixed `train`/`model` fields and Hugging Face's
defaults fill in the rest, so every trial sees one complete set of hyperparameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner import hyperparams
from tuner.grid import values as grid_values
from tuner.spec import Spec, condition_holds, conditions, fixed_value, is_distribution, to_number

if TYPE_CHECKING:  # Optuna is needed to search, not to train: trials import this module too
    import optuna.distributions as od


def to_distribution(name: str, entry: dict[str, Any]) -> od.BaseDistribution:
    """One validated space entry → its Optuna distribution."""
    import optuna.distributions as od

    kind = entry["type"]
    if kind == "categorical":
        return od.CategoricalDistribution(entry["choices"])
    log = bool(entry.get("log", False))
    step = entry.get("step")
    if kind == "int":
        return od.IntDistribution(int(entry["low"]), int(entry["high"]), log=log, step=int(step or 1))
    return od.FloatDistribution(to_number(entry["low"]), to_number(entry["high"]), log=log,
                                step=to_number(step) if step is not None else None)


def distributions(spec: Spec) -> dict[str, od.BaseDistribution]:
    return {name: to_distribution(name, entry) for name, entry in spec.search.space.items()
            if is_distribution(entry)}


def grid(spec: Spec) -> dict[str, list[Any]]:
    """`sampler: grid`'s grid: each searched field's values (validation made sure each has a list)."""
    found: dict[str, list[Any]] = {}
    for name, entry in spec.search.space.items():
        if is_distribution(entry):
            values = grid_values(entry)
            if values is None:  # not reached: validation refuses a float without step under sampler: grid
                raise ValueError(f"search.space.{name}: a float without step has no grid")
            found[name] = values
    return found


def is_conditional(spec: Spec) -> bool:
    return any(is_distribution(entry) and "when" in entry for entry in spec.search.space.values())


class ConditionalSpace:
    """The space as an Optuna define-by-run function, for spaces with `when:` conditions: entries are
    suggested in the spec's order, each only when its condition holds for the values so far (the
    fixed ones, then those already sampled), so LoRA's rank is never sampled for a trial without
    LoRA and TPE models each parameter only over the trials that used it. A plain class, so Tune
    can pickle the searcher holding it."""

    def __init__(self, spec: Spec):
        self.entries = {name: entry for name, entry in spec.search.space.items() if is_distribution(entry)}
        self.fixed = fixed_values(spec)

    def __call__(self, trial) -> None:
        values = dict(self.fixed)
        for name, entry in self.entries.items():
            if condition_holds(conditions(entry), values):
                values[name] = _suggest(trial, name, entry)


def _suggest(trial, name: str, entry: dict[str, Any]) -> Any:
    """One entry through Optuna's public suggest API (what Ray's trial captor records)."""
    kind = entry["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, entry["choices"])
    log, step = bool(entry.get("log", False)), entry.get("step")
    if kind == "int":
        return trial.suggest_int(name, int(entry["low"]), int(entry["high"]), step=int(step or 1), log=log)
    return trial.suggest_float(name, to_number(entry["low"]), to_number(entry["high"]),
                               step=to_number(step) if step is not None else None, log=log)


def fixed_values(spec: Spec) -> dict[str, Any]:
    """Every hyperparameter that is not sampled: fixed in the space, in `train`/`model`, or default."""
    values: dict[str, Any] = {name: fixed_value(spec, name) for name in hyperparams.names()}
    for name, entry in spec.search.space.items():
        if is_distribution(entry):
            values.pop(name, None)
        else:
            values[name] = entry
    return {name: hyperparams.typed(name, value) for name, value in values.items()}


def resolve(spec: Spec, sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's complete hyperparameters: the sampled ones over the fixed ones."""
    values = fixed_values(spec)
    values.update({name: hyperparams.typed(name, value) for name, value in sampled.items()})
    return values


def searched_names(spec: Spec) -> list[str]:
    return [name for name, entry in spec.search.space.items() if is_distribution(entry)]


def largest(spec: Spec, name: str) -> float:
    """The largest value hyperparameter `name` can take in this sweep."""
    entry = spec.search.space.get(name)
    if is_distribution(entry):
        if entry["type"] == "categorical":
            return max(to_number(c) for c in entry["choices"])
        return to_number(entry["high"])
    return to_number(fixed_values(spec)[name])


def may_take(spec: Spec, name: str, value: Any) -> bool:
    """Whether some trial of this sweep can get `value` for hyperparameter `name`."""
    entry = spec.search.space.get(name)
    if is_distribution(entry):
        return entry["type"] != "categorical" or value in entry["choices"]
    return fixed_values(spec).get(name) == value


def largest_batch(spec: Spec) -> int:
    """The most blocks one optimizer step can take: the largest batch times the largest accumulation."""
    return int(largest(spec, "per_device_train_batch_size")) * int(largest(spec, "gradient_accumulation_steps"))


def max_epochs(spec: Spec) -> float:
    """The largest epoch count any trial can get: it sets ASHA's max_t."""
    return float(largest(spec, "num_train_epochs"))
