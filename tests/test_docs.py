"""The documentation keeps up with the code: every spec key is in docs/spec.md, every module in
docs/design.md, and every relative link of README.md and docs/*.md reaches a file (and a heading).

Read-only and fast: no Ray, no torch. Each check is a function that returns what is wrong, so the
tests below can also show it catching a missing key, a dead link and a dead anchor.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from tuner import hyperparams
from tuner.spec import Spec

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SPEC_REFERENCE = DOCS / "spec.md"
DESIGN = DOCS / "design.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def nested_dataclass(tp: typing.Any) -> type | None:
    """The dataclass a field's type holds, if any: `X`, `X | None`, `list[X]`."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = nested_dataclass(arg)
        if found is not None:
            return found
    return None


def spec_keys(cls: type = Spec, prefix: str = "") -> list[str]:
    """Every key of a spec as a dotted path (`search.warm_start`, `promote.generate.top_k`)."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        keys.append(path)
        inner = nested_dataclass(hints[f.name])
        if inner is not None:
            keys.extend(spec_keys(inner, path + "."))
    return keys


def missing_keys(reference: str) -> list[str]:
    """The spec keys and searchable names the reference never names in backticks."""
    wanted = spec_keys() + list(hyperparams.names())
    return [key for key in wanted if f"`{key}`" not in reference]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a YAML block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lowercase, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, a repeated heading numbered as GitHub numbers it (-1, -2, …)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of a page whose file, or heading, is not there."""
    broken = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading in {file.name})")
    return broken


def test_the_walk_reaches_nested_keys():
    keys = spec_keys()
    for key in ("name", "search.warm_start", "promote.generate.top_k", "search.metrics.name",
                "promote.pick.then", "data.clean.strip_html", "tracking.wandb.api_key_env", "origin.step"):
        assert key in keys
    assert len(keys) == len(set(keys))


def test_every_spec_key_is_in_the_spec_reference():
    assert missing_keys(SPEC_REFERENCE.read_text(encoding="utf-8")) == []


def test_the_hyperparameter_table_is_generated_from_tuner_hyperparams():
    """docs/spec.md holds the table `python -m tuner.hyperparams` prints, between its markers: regenerate
    it there after adding a hyperparameter."""
    reference = SPEC_REFERENCE.read_text(encoding="utf-8")
    begin, end = "<!-- hyperparams: begin -->\n", "<!-- hyperparams: end -->"
    assert begin in reference and end in reference
    assert reference.split(begin, 1)[1].split(end, 1)[0] == hyperparams.markdown()


def test_a_missing_key_is_caught():
    reference = SPEC_REFERENCE.read_text(encoding="utf-8")
    assert missing_keys(reference.replace("`search.warm_start_top_k`", "warm_start_top_k")) == [
        "search.warm_start_top_k"]
    assert missing_keys(reference.replace("`adam_epsilon`", "adam_epsilon")) == ["adam_epsilon"]


def test_every_module_is_in_the_design():
    design = DESIGN.read_text(encoding="utf-8")
    modules = sorted(p.stem for p in (ROOT / "tuner").glob("*.py"))
    assert [m for m in modules if f"`{m}`" not in design] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_a_dead_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Watch a sweep in W&B\n\n## Finding: `lr-find`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#watch-a-sweep-in-wb) [ok](other.md#finding-lr-find) [ok](#a-b)\n"
                    "## A b\n"
                    "[dead](gone.md) [dead](other.md#watch-a-sweep-in-w-b)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["page.md: gone.md (no such file)",
                                  "page.md: other.md#watch-a-sweep-in-w-b (no such heading in other.md)"]


def test_slugs_follow_github():
    assert slug("Final evaluation and report.html") == "final-evaluation-and-reporthtml"
    assert slug("Resuming: a sweep you can leave running for a week") == (
        "resuming-a-sweep-you-can-leave-running-for-a-week")
    assert slug("Finding learning-rate bounds: `lr-find`") == "finding-learning-rate-bounds-lr-find"


def test_the_readme_holds_the_ci_test_command():
    """CI runs the README's test command; the two may not drift apart."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ci in readme
    assert "bash scripts/setup && .venv/bin/tuner sweep tiny" in readme
