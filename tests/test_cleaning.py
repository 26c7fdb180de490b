"""Cleaning rules: text kept intact by default, HTML and whitespace rules opt-in and careful."""

from __future__ import annotations

import re

import pytest

from tuner import cleaning
from tuner.cleaning import apply_rules, clean_batch, normalize_whitespace, record_hash, strip_html
from tuner.spec import CleanSpec

DEFAULT = CleanSpec()
ALL_ON = CleanSpec(strip_html=True, normalize_whitespace=True)

CODE = "def area(r):\n    \"\"\"Circle.\"\"\"\n    if r  <  0:\n        raise ValueError(r)\n    return 3.14 * r ** 2\n"
NOT_MARKUP = ["<class 'int'>", "x < y > z", "List<String> names = new ArrayList<String>();", "a <b> c",
              "if a<b and c>d: pass", "Map<K, V>", "1 <2> 3", "a<b", "<<", "->", "print('<tag>')"]


def builtin_paragraphs_with_brackets() -> list[str]:
    """The built-in corpus's paragraphs that hold `<` or `>`: prose and code about Python, no HTML."""
    from pydoc_data.topics import topics

    found = [p.strip() for topic in sorted(topics) for p in re.split(r"\n\s*\n", topics[topic])
             if ("<" in p or ">" in p) and p.strip()]
    assert len(found) >= 50
    return found


def test_by_default_the_built_in_paragraphs_with_brackets_come_through_unchanged():
    for paragraph in builtin_paragraphs_with_brackets():
        assert apply_rules(paragraph, DEFAULT) == (paragraph, dict.fromkeys(cleaning.RULES, False))


def test_by_default_an_indented_code_block_comes_through_unchanged():
    assert apply_rules(CODE, DEFAULT)[0] == CODE
    assert apply_rules("  leading\t\ttabs  and   runs  ", DEFAULT)[0] == "  leading\t\ttabs  and   runs  "


def test_by_default_only_crlf_line_endings_change():
    text, changed = apply_rules("one\r\ntwo\r\n\r\nthree", DEFAULT)
    assert text == "one\ntwo\n\nthree"
    assert changed == {"line_endings": True, "strip_html": False, "normalize_whitespace": False}


@pytest.mark.parametrize("text", NOT_MARKUP)
def test_strip_html_keeps_text_that_only_looks_like_tags(text):
    assert strip_html(text) == text


def test_strip_html_keeps_the_built_in_paragraphs():
    changed = [p for p in builtin_paragraphs_with_brackets() if strip_html(p) != p]
    assert changed == []


@pytest.mark.parametrize("html, text", [
    ("<p>Fish &amp; chips</p>", "Fish & chips"),
    ('see <a href="x">the link</a> now', "see the link now"),
    ("<b>bold</b> and <i>it</i>", "bold and it"),
    ("<div><script>var x = 1;</script>hi</div><!-- note -->", "hi"),
    ("<ul><li>one<li>two</ul>", "one\ntwo"),
    ("a<br/>b", "a\nb"),
    ("use &lt;b&gt; for bold", "use <b> for bold"),  # an escaped tag is text its author meant
])
def test_strip_html_removes_markup(html, text):
    assert strip_html(html) == text


def test_normalize_whitespace_keeps_indentation():
    assert normalize_whitespace(CODE) == CODE.replace("r  <  0", "r < 0")
    assert normalize_whitespace("\tkeep\t\tthis  \n\n\n\n  and  this") == "\tkeep this\n\n  and this"


def test_rules_switched_on_run_and_say_so():
    text, changed = apply_rules("<p>a   b</p>\r\n", ALL_ON)
    assert text == "a b"
    assert changed == dict.fromkeys(cleaning.RULES, True)


def test_record_hash_is_stable_and_fits_int64():
    assert record_hash(["abc"]) == record_hash(["abc"]) != record_hash(["abd"])
    assert record_hash(["a", "bc"]) != record_hash(["ab", "c"])  # fields are not just concatenated
    assert all(0 <= record_hash([str(i)]) < 2 ** 63 for i in range(1000))


def test_clean_batch_marks_empty_records_and_changes():
    batch = {"text": ["keep\r\n", "   ", None, "<p>x</p>"], "id": [1, 2, 3, 4]}
    out = clean_batch(batch, DEFAULT, ["text"], "text")
    assert out["text"] == ["keep\n", "   ", "", "<p>x</p>"]
    assert out[cleaning.EMPTY] == [False, True, True, False]
    assert out[cleaning.CHANGED["line_endings"]] == [True, False, False, False]
    assert "id" not in out  # the other columns are the map's to keep or drop


def test_clean_batch_instruction_record_is_empty_without_a_completion():
    batch = {"q": ["ask", "ask"], "a": ["answer", "  "]}
    out = clean_batch(batch, DEFAULT, ["q", "a"], "a")
    assert out[cleaning.EMPTY] == [False, True]
    assert out[cleaning.HASH][0] == record_hash(["ask", "answer"])


def test_clean_batch_chat_record_needs_an_assistant_turn():
    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello\r\n"}],
             [{"role": "user", "content": "hi"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]]
    out = clean_batch({"messages": chats}, DEFAULT, [], None, "messages")
    assert out[cleaning.EMPTY] == [False, True, True]
    assert out["messages"][0][1]["content"] == "hello\n"
    assert out[cleaning.CHANGED["line_endings"]] == [True, False, False]
