"""Random mutations of the shipped presets fed to the real `validate`: exit 0 or 2, never a traceback,
never more than 10 s.

Each example takes a preset, then changes it as a careless hand would: a value replaced by another of
any YAML type (huge, negative, NaN, empty, nested), a key dropped, renamed or added, or the file's
text cut or spliced. `validate` runs in this process through `launch.main` (what the console script
calls), with Ray replaced by a failure: validate must never start it. Derandomized, so CI runs the
same examples every time (50 in the fast tier, 500 in the integration tier); TUNER_FUZZ_RANDOM=1
draws new ones at each run.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import launch
from tuner import sweep

PRESETS = sorted((Path(__file__).resolve().parents[1] / "tuner" / "presets").glob("*.yaml"))
RAW = {p.stem: yaml.safe_load(p.read_text()) for p in PRESETS}
TEXT = {p.stem: p.read_text() for p in PRESETS}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "none", "auto", "1e-4", "90s", "-1", "/", "..", "builtin:tiny-gpt2", "min", "float",
                     "categorical", "{}", "[]", "~", "0x10", "1_000", "yes", "null"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=10)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in the tree (lists by index)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def mutate(tree: Any, path: tuple, how: str, value: Any, new_key: str) -> Any:
    parent = tree
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "drop":
        del parent[last]
    elif how == "rename" and isinstance(parent, dict):
        parent[new_key] = parent.pop(last)
    elif how == "add" and isinstance(parent, dict):
        parent[new_key] = value
    return tree


@st.composite
def mutated_specs(draw) -> str:
    name = draw(st.sampled_from(sorted(RAW)))
    if draw(st.integers(0, 4)) == 0:  # the text itself: cut short, or spliced with junk
        text = TEXT[name]
        cut = draw(st.integers(0, len(text)))
        junk = draw(st.text(max_size=20))
        return text[:cut] + junk + (text[cut:] if draw(st.booleans()) else "")
    tree = yaml.safe_load(TEXT[name])
    for _ in range(draw(st.integers(1, 3))):
        found = paths(tree)
        if not found:
            break
        path = draw(st.sampled_from(found))
        tree = mutate(tree, path, draw(st.sampled_from(["replace", "replace", "drop", "rename", "add"])),
                      draw(values), draw(st.text(min_size=1, max_size=12)))
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)


def _must_not_run(*args, **kwargs):
    raise AssertionError("validate started Ray")


@pytest.fixture(scope="module")
def no_ray():
    original = sweep.init_ray
    sweep.init_ray = _must_not_run
    yield
    sweep.init_ray = original


# Derandomized (CI draws the same examples every run) unless TUNER_FUZZ_RANDOM is set.
FUZZ = settings(deadline=None, derandomize="TUNER_FUZZ_RANDOM" not in os.environ, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@settings(FUZZ, max_examples=50)  # the fast tier's share: about a second
@given(text=mutated_specs())
def test_validate_of_a_mutated_preset_exits_0_or_2_without_a_traceback(text, tmp_path_factory, no_ray):
    check_validate(text, tmp_path_factory)


@pytest.mark.integration  # the full fuzz: some ten seconds
@settings(FUZZ, max_examples=500)
@given(text=mutated_specs())
def test_validate_of_500_mutated_presets_exits_0_or_2_without_a_traceback(text, tmp_path_factory, no_ray):
    check_validate(text, tmp_path_factory)


def check_validate(text: str, tmp_path_factory) -> None:
    """`validate` of the spec `text`: exit 0 or 2, one message, no traceback, within 10 s, nothing built."""
    folder = tmp_path_factory.mktemp("spec")
    path = folder / "spec.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = launch.main(["validate", str(path), "--set", f"storage={folder / 'sweep'}"])
    elapsed = time.monotonic() - start
    assert code in (0, 2), err.getvalue()[-2000:]
    assert "Traceback" not in err.getvalue() + out.getvalue()
    assert elapsed < 10, f"validate took {elapsed:.1f} s"
    if code == 2:
        assert err.getvalue().count("tuner: error:") == 1
    assert not (folder / "sweep").exists()
