"""Export: the winner as a re-runnable spec, plain `TrainingArguments`, and a model to load.

`best/config.yaml` fixes the winning hyperparameters and stops training at the step the best
checkpoint had reached (without changing the LR schedule), so `tuner sweep best/config.yaml`
retrains exactly that model.
"""

from __future__ import annotations

import copy
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tuner import hyperparams, layout, records, space
from tuner.records import TrialRecord
from tuner.spec import Spec, to_yaml, validate

BEST_DIR = layout.BEST_DIR
PACKAGES = ("tuner", "torch", "transformers", "ray", "optuna", "datasets", "accelerate", "peft")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def best_config(spec: Spec, record: TrialRecord, suffix: str = "best") -> dict[str, Any]:
    """A complete, valid spec that retrains the winner: `<name>-best`, nothing left to sample (an
    exported trial's: `<name>-<trial id>`)."""
    data = copy.deepcopy(spec.to_dict())
    name = spec.name if spec.name.endswith(f"-{suffix}") else f"{spec.name}-{suffix}"
    data["name"] = name
    data["storage"] = None
    for key, value in record.params.items():
        data["search"]["space"][key] = value
    for key, entry in list(data["search"]["space"].items()):  # conditioned off for the winner: unused
        if key not in record.params and isinstance(entry, dict) and "type" in entry:
            del data["search"]["space"][key]
    _pin_defaults(data, space.resolve(spec, record.params))
    data["search"].update(num_samples=1, baseline=None, enqueue=None, warm_start=None)
    data["scheduler"] = "none"
    step = _checkpoint_step(record)  # where the exported checkpoint was saved
    data["train"]["stop_after_steps"] = step
    data["origin"] = {  # the checkpoint relative to the sweep: the sweep directory may move
        "sweep": spec.name, "trial_id": record.trial_id, "metric": spec.search.metric,
        "value": records.checkpoint_metric(record), "checkpoint": record.best_checkpoint,
        "step": step, "seed": spec.train.seed, "git_commit": git_commit(),
        "versions": versions(),
    }
    validate(copy.deepcopy(data), saved=True)  # an export that does not validate is a bug: fail here, not later
    return data


def _pin_defaults(data: dict[str, Any], hyper: dict[str, Any]) -> None:
    """Write out each hyperparameter the winner took by default (left unset in `train`/`model`), so the
    config reads as the values it trained with and reruns them if Hugging Face's defaults move."""
    for p in hyperparams.TABLE:
        if p.name not in data["search"]["space"] and data[p.section].get(p.name) is None:
            data[p.section][p.name] = hyper.get(p.name)  # None: conditioned off for the winner


def write_best(spec: Spec, record: TrialRecord, metrics: dict[str, Any],
               samples: list[dict[str, Any]], model, tokenizer_path: str) -> Path:
    """Write `best/`: config.yaml, training_args.json, model/ (LoRA merged into the weights) and, for a
    LoRA winner, adapter/ (peft's adapter alone), final_eval.json, samples.jsonl. It is filled aside
    and takes the old `best/`'s place in one step: a kill at any instant leaves one whole."""
    target = spec.sweep_dir / BEST_DIR
    with layout.staged_dir(target) as out:
        _fill_best(out, spec, record, metrics, samples, model, tokenizer_path)
    return target


def _fill_best(out: Path, spec: Spec, record: TrialRecord, metrics: dict[str, Any],
               samples: list[dict[str, Any]], model, tokenizer_path: str) -> None:
    header = (f"# tuner sweep {spec.sweep_dir.name}/{BEST_DIR}/config.yaml  (from the folder holding "
              f"the sweep)\n# The best trial of sweep {spec.name!r}, fixed.\n")
    _fill_model(out, spec, record, model, tokenizer_path, header)
    final = {"trial_id": record.trial_id, "checkpoint": record.best_checkpoint,
             "step": _checkpoint_step(record),
             "search_" + spec.search.metric: records.checkpoint_metric(record), **metrics}
    (out / "final_eval.json").write_text(json.dumps(final, indent=2))
    with open(out / "samples.jsonl", "w") as f:
        for row in samples:
            f.write(json.dumps(row) + "\n")


def _checkpoint_step(record: TrialRecord) -> int:
    """The step the exported checkpoint was saved at; an exported trial has a checkpoint."""
    step = records.checkpoint_step(record)
    if step is None:
        raise ValueError(f"trial {record.trial_id} has no checkpoint to export")
    return int(step)


def write_trial(spec: Spec, record: TrialRecord, model, tokenizer_path: str) -> Path:
    """`tuner export --trial ID`: exports/ID/ with the trial's config.yaml, training_args.json and
    model/ (and adapter/ for LoRA), as `best/` holds them for the promoted trial (a trial of the
    Pareto front the pick did not take, say). Written whole, in one step, like `best/`."""
    target = spec.sweep_dir / layout.EXPORTS_DIR / record.trial_id
    header = (f"# tuner sweep {spec.sweep_dir.name}/{layout.EXPORTS_DIR}/{record.trial_id}/config.yaml  (from "
              f"the folder holding the sweep)\n# Trial {record.trial_id} of sweep {spec.name!r}, fixed.\n")
    with layout.staged_dir(target) as out:
        _fill_model(out, spec, record, model, tokenizer_path, header, record.trial_id)
    return target


def _fill_model(out: Path, spec: Spec, record: TrialRecord, model, tokenizer_path: str, header: str,
                suffix: str = "best") -> None:
    """config.yaml, training_args.json, model/ (LoRA merged into the weights) and, for a LoRA trial,
    adapter/ (peft's adapter alone)."""
    from transformers import AutoTokenizer

    from tuner.trial import training_arguments  # the Trainer's module: imported where a model is written

    config = best_config(spec, record, suffix)
    (out / "config.yaml").write_text(to_yaml(config, header))
    hyper = space.resolve(spec, record.params)
    # `TrainingArguments(**json.load(f))` takes it as it is: where the winner stopped (not a field of
    # TrainingArguments: its max_steps would change the LR schedule) is config.yaml's stop_after_steps
    args = training_arguments(spec, hyper, f"{BEST_DIR}/model").to_dict()
    (out / "training_args.json").write_text(json.dumps(args, indent=2, default=str))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if hasattr(model, "merge_and_unload"):  # LoRA (peft): the adapter alone, then merged into the weights
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    (out / "model" / "tuner_config.yaml").write_text(to_yaml(config))  # the spec travels with the model


def read_best_config(sweep_dir: Path, fmt: str = "yaml", folder: str = BEST_DIR) -> str:
    path = Path(sweep_dir) / folder / "config.yaml"
    text = path.read_text()
    if fmt == "json":
        import yaml

        return json.dumps(yaml.safe_load(text), indent=2)
    return text
