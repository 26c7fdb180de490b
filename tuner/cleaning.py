"""Cleaning rules, applied record by record inside `datasets.map` (batched, in parallel).

By default a kept record's text is left as the user wrote it, except CRLF line endings (→ LF): only
empty records and exact duplicates are dropped. Removing HTML tags and collapsing whitespace change
text, so both are opt-in, and neither is a regex guess: tags are found by the standard library's
HTML parser and only names HTML defines count as markup (`List<String>`, `<class 'int'>` and
`x < y > z` survive); whitespace collapsing never touches a line's leading indentation.

Each batch comes back with, per record, a 64-bit hash of its cleaned fields (exact dedup runs on
the hashes, never on the texts), an `empty` flag, and a flag per rule that changed it (the data
summary counts them).
"""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Any

from tuner.spec import CleanSpec

RULES = ("line_endings", "strip_html", "normalize_whitespace")  # in the order they run
HASH, EMPTY = "_hash", "_empty"
CHANGED = {rule: f"_changed_{rule}" for rule in RULES}
HELPER_COLUMNS = (HASH, EMPTY, *CHANGED.values())

# Elements HTML defines (WHATWG, with a few obsolete ones still common in scraped pages).
HTML_TAGS = frozenset("""
a abbr address area article aside audio b base bdi bdo blockquote body br button canvas caption
center cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset
figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe img input
ins kbd label legend li link main map mark menu meta meter nav noscript object ol optgroup option
output p param picture pre progress q rp rt ruby s samp script section select small source span
strike strong style sub summary sup svg table tbody td template textarea tfoot th thead time title
tr track tt u ul var video wbr""".split())
BLOCK_TAGS = frozenset("""address article aside blockquote br dd div dl dt fieldset figcaption figure
footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tr ul""".split())
SKIPPED = frozenset({"script", "style", "template", "noscript"})  # their content is not text
# Elements that are markup on their own: void, or with an end tag HTML lets authors leave out. Any
# other element counts as markup only where its end tag appears too (`a <b> c`, `if a<b and c>d`
# are text).
STANDALONE = frozenset("""area base br col embed hr img input link meta param source track wbr
p li dt dd tr td th option optgroup thead tbody tfoot colgroup rp rt html head body""".split())
END_TAG = re.compile(r"</\s*([A-Za-z][A-Za-z0-9]*)")
SPACES = re.compile(r"(?<=\S)[ \t\f\v\u00a0]+")  # a run after a line's first non-space character
TRAILING = re.compile(r"[ \t\f\v\u00a0]+$", re.MULTILINE)
BLANK_RUNS = re.compile(r"\n{3,}")


class _TextOf(HTMLParser):
    """The text of a document: HTML elements dropped (block elements leave a line break), entities
    unescaped, and anything that only looks like a tag kept as written."""

    def __init__(self, closed: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.closed = closed
        self.end_at = 0

    def _markup(self, tag: str) -> bool:
        return tag in HTML_TAGS and (tag in STANDALONE or tag in self.closed)

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if not self._markup(tag):
            self.parts.append(self.get_starttag_text() or "")
        elif tag in SKIPPED:
            self.skipping += 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if not self._markup(tag):
            self.parts.append(self.get_starttag_text() or "")
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def parse_endtag(self, i: int) -> int:
        self.end_at = i  # where the end tag starts: kept as written when it is not markup
        return super().parse_endtag(i)

    def handle_endtag(self, tag: str) -> None:
        if tag not in HTML_TAGS:
            end = self.rawdata.find(">", self.end_at)
            self.parts.append(self.rawdata[self.end_at:end + 1] if end >= 0 else f"</{tag}>")
        elif tag in SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)

    def handle_comment(self, data: str) -> None:
        pass

    def unknown_decl(self, data: str) -> None:
        pass


def strip_html(text: str) -> str:
    """The text outside HTML markup. Text without a known HTML element comes back unchanged."""
    if "<" not in text and "&" not in text:
        return text
    parser = _TextOf({tag.lower() for tag in END_TAG.findall(text)})
    parser.feed(text)
    parser.close()
    out = "".join(parser.parts)
    return BLANK_RUNS.sub("\n\n", out).strip("\n") if out != text else text


def normalize_whitespace(text: str) -> str:
    """Runs of spaces inside a line become one, trailing spaces go, three or more line breaks become
    two. A line's leading indentation is kept as it is (code keeps its structure)."""
    lines = [SPACES.sub(" ", line) for line in text.split("\n")]
    return BLANK_RUNS.sub("\n\n", TRAILING.sub("", "\n".join(lines)))


def apply_rules(text: str, rules: CleanSpec) -> tuple[str, dict[str, bool]]:
    """The cleaned text and which rules changed it."""
    changed = dict.fromkeys(RULES, False)
    steps = [("line_endings", lambda t: t.replace("\r\n", "\n")),
             ("strip_html", strip_html if rules.strip_html else None),
             ("normalize_whitespace", normalize_whitespace if rules.normalize_whitespace else None)]
    for rule, step in steps:
        if step is not None:
            new = step(text)
            changed[rule], text = new != text, new
    return text, changed


def record_hash(fields: list[Any]) -> int:
    """63 bits of a record's cleaned fields: equal records hash equal, and a collision (which would
    drop a record as a duplicate) is unlikely below a billion records."""
    key = json.dumps(fields, ensure_ascii=False) if len(fields) > 1 or not isinstance(fields[0], str) \
        else fields[0]
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return digest & (1 << 63) - 1  # an int64 column whatever the batch holds


def clean_batch(batch: dict[str, list], rules: CleanSpec, text_fields: list[str],
                label_field: str | None, messages_field: str | None = None) -> dict[str, list]:
    """A `datasets.map(batched=True)` function: clean `text_fields`, and add the hash, the empty flag
    and the changed flags. A record is empty when `label_field` (the text, or an instruction
    record's completion) is blank, or a chat record has no assistant turn with text."""
    n = len(batch[next(iter(batch))])
    out: dict[str, list] = {name: [] for name in (*text_fields, *HELPER_COLUMNS)}
    if messages_field:
        out[messages_field] = []
    for i in range(n):
        changed = dict.fromkeys(RULES, False)
        fields: list[Any] = []  # the record's cleaned texts and messages, hashed together
        for name in text_fields:
            text, flags = apply_rules(batch[name][i] or "", rules)
            out[name].append(text)
            fields.append(text)
            changed = {rule: changed[rule] or flags[rule] for rule in RULES}
        if messages_field:
            messages = []
            for message in batch[messages_field][i] or []:
                content, flags = apply_rules(message.get("content") or "", rules)
                messages.append({"role": message.get("role"), "content": content})
                changed = {rule: changed[rule] or flags[rule] for rule in RULES}
            out[messages_field].append(messages)
            fields.append(messages)
            empty = not any(m["role"] == "assistant" and m["content"].strip() for m in messages)
        else:
            assert label_field is not None  # a record without messages has a text or completion
            empty = not batch[label_field][i] or not out[label_field][-1].strip()
        out[HASH].append(record_hash(fields))
        out[EMPTY].append(empty)
        for rule in RULES:
            out[CHANGED[rule]].append(changed[rule])
    return out
