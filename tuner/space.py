"""Search space: the spec's `search.space` in Optuna's vocabulary → Optuna distributions.

Distributions go to the sampler; fixed entries, fixed `train`/`model` fields and Hugging Face's
defaults fill in the rest, so every trial sees one complete set of hyperparameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.constants import HYPERPARAMETER_DEFAULTS
from tuner.spec import RULES, SEARCHABLE, Spec, as_number, is_distribution

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
    return od.FloatDistribution(as_number(entry["low"]), as_number(entry["high"]), log=log,
                                step=as_number(step) if step is not None else None)


def distributions(spec: Spec) -> dict[str, od.BaseDistribution]:
    return {name: to_distribution(name, entry) for name, entry in spec.search.space.items()
            if is_distribution(entry)}


def fixed_values(spec: Spec) -> dict[str, Any]:
    """Every hyperparameter that is not sampled: fixed in the space, in `train`/`model`, or default."""
    values: dict[str, Any] = dict(HYPERPARAMETER_DEFAULTS)
    values["freeze_layers"] = spec.model.freeze_layers or 0
    for name in SEARCHABLE:
        if name in HYPERPARAMETER_DEFAULTS and name != "freeze_layers":
            if getattr(spec.train, name) is not None:
                values[name] = getattr(spec.train, name)
    for name, entry in spec.search.space.items():
        if is_distribution(entry):
            values.pop(name, None)
        else:
            values[name] = entry
    return {name: _typed(name, value) for name, value in values.items()}


def _typed(name: str, value: Any) -> Any:
    rule = RULES.get(name)
    if rule is None:
        return value
    number = as_number(value)
    return int(number) if rule.kind is int else number


def resolve(spec: Spec, sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's complete hyperparameters: the sampled ones over the fixed ones."""
    values = fixed_values(spec)
    values.update({name: _typed(name, value) for name, value in sampled.items()})
    return values


def searched_names(spec: Spec) -> list[str]:
    return [name for name, entry in spec.search.space.items() if is_distribution(entry)]


def largest(spec: Spec, name: str) -> float:
    """The largest value hyperparameter `name` can take in this sweep."""
    entry = spec.search.space.get(name)
    if is_distribution(entry):
        if entry["type"] == "categorical":
            return max(as_number(c) for c in entry["choices"])
        return as_number(entry["high"])
    return as_number(fixed_values(spec)[name])


def largest_batch(spec: Spec) -> int:
    """The most blocks one optimizer step can take: the largest batch times the largest accumulation."""
    return int(largest(spec, "per_device_train_batch_size")) * int(largest(spec, "gradient_accumulation_steps"))


def max_epochs(spec: Spec) -> float:
    """The largest epoch count any trial can get: it sets ASHA's max_t."""
    return float(largest(spec, "num_train_epochs"))
