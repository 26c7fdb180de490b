"""The sweep spec: one YAML file read, checked against its schema, and validated as a whole.

Every knob of a sweep is declared once, in `schema`, as a field of a dataclass whose name is the YAML
key; this module is the door to it, so the rest of tuner imports the spec's names from here. Loading
checks the whole file and reports *all* problems together, each with its key path, the bad value and
the rule, so a user fixes a spec in one edit rather than one error at a time. Checks that need the
data or the model (columns, block counts, maximum positions) run later, in `data` and `sweep`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tuner import metriccheck, rules, secret, yamlfile
from tuner.errors import UserError
from tuner.metriccheck import import_callable, tolerance
from tuner.rules import parse_duration
from tuner.schema import (
    HASHED_UNSET,
    CleanSpec,
    DataSpec,
    GenerateSpec,
    MetricSampleSpec,
    MetricSpec,
    ModelSpec,
    OriginSpec,
    PickSpec,
    PromoteSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    Spec,
    SplitSpec,
    TrackingSpec,
    TrainSpec,
    WandbSpec,
)
from tuner.schema_build import as_number, build, to_number
from tuner.spacecheck import check_point, condition_holds, conditions, fixed_value, is_distribution

# The entry points, and the names other modules import from here: the schema's classes live in `schema`.
__all__ = [
    "HASHED_UNSET", "CleanSpec", "DataSpec", "GenerateSpec", "MetricSampleSpec", "MetricSpec", "ModelSpec",
    "OriginSpec", "PickSpec", "PromoteSpec", "ResourcesSpec", "SchedulerSpec", "SearchSpec", "Spec", "SpecError",
    "SplitSpec", "TrackingSpec", "TrainSpec", "WandbSpec", "apply_override", "as_number",
    "check_point", "condition_holds", "conditions", "fixed_value", "import_callable", "is_distribution",
    "load_spec", "parse_duration", "to_number", "to_yaml", "tolerance", "validate",
]


class SpecError(UserError):
    """A spec that breaks one or more rules; the message lists every problem."""


# ---------------------------------------------------------------------------------------------
# Loading.


def load_spec(source: str | Path | dict[str, Any], overrides: list[str] | None = None, *,
              metric_fn: Any = None, saved: bool = False) -> Spec:
    """Read a spec (a YAML path or an already-parsed mapping), apply `--set` overrides, validate
    (`metric_fn`, `saved`: see `validate`)."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file {str(source)!r} does not exist: give the path of a YAML spec, "
                            "e.g. search_spaces/tiny.yaml")
        try:
            raw = yamlfile.load(yamlfile.read_text(path))
        except yamlfile.YamlRefused as exc:
            raise SpecError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec: got {type(raw).__name__}, expected a mapping with at least "
                        "`name`, `model` and `data`")
    for item in overrides or []:
        apply_override(raw, item)
    return validate(raw, metric_fn=metric_fn, saved=saved)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set key.path=value`; the value is parsed as YAML (`1e-4`, `true`, `[1, 2]`)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {item!r}: expected key.path=value, e.g. --set search.num_samples=4")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    try:
        node[parts[-1]] = yamlfile.load(text) if text else None
    except yamlfile.YamlRefused as exc:
        raise SpecError(f"--set {item!r}: {exc}") from None
    except yaml.YAMLError:
        raise SpecError(f"--set {item!r}: the value {text!r} is not valid YAML; quote strings and close "
                        "brackets, e.g. --set search.space.weight_decay=\"{type: float, low: 0, high: 0.1}\"") from None


def validate(raw: dict[str, Any], *, metric_fn: Any = None, saved: bool = False) -> Spec:
    """The spec built from `raw`, or SpecError listing every problem. `metric_fn`: a function passed
    in Python (run_sweep(metric_fn=...)), which stands in for search.metric_fn. `saved`: a sweep's
    own spec read back (status, report, export): its metric_fn is not imported, and a metric a
    Python metric_fn reported is taken as it is."""
    problems: list[str] = []
    secret.check_spec(raw, problems)
    spec: Spec | None = build(Spec, raw, "", problems)
    if spec is not None:  # None only when `raw` is not a mapping
        rules.check_rules(spec, raw, problems)
        if spec.search is not None:
            metriccheck.check_metric(spec, raw, problems, metric_fn, saved)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SpecError(f"the spec has {len(problems)} problem{'s' * (len(problems) > 1)}:\n{lines}")
    assert spec is not None
    return spec


# ---------------------------------------------------------------------------------------------
# Writing.


def to_yaml(spec: Spec | dict[str, Any], header: str = "") -> str:
    """The spec as YAML, its keys in the schema's order (origin left out while unset), after `header`."""
    data = spec.to_dict() if isinstance(spec, Spec) else spec
    if data.get("origin") is None:
        data = {k: v for k, v in data.items() if k != "origin"}
    text: str = yaml.safe_dump(data, sort_keys=False)
    return header + text
