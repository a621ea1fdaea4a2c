"""A1111's prompt styles (sdapi.core.styles): the CSV as A1111 writes it, its {prompt} rule, order, and refusals."""

from __future__ import annotations

import os

import pytest

from sdapi.core.styles import StyleBook, merge_prompt, parse_styles
from sdapi.errors import InvalidParameter

CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    'Oil painting,"oil painting, {prompt}, thick brush strokes","photo, blurry"\n'
    "Sharp,highly detailed,lowres\n"
    ",orphan,\n"
)


def test_the_csv_as_a1111_writes_it():
    styles = parse_styles(CSV.removeprefix("\ufeff"))
    assert list(styles) == ["Oil painting", "Sharp"]
    assert styles["Oil painting"].prompt == "oil painting, {prompt}, thick brush strokes"


def test_a_placeholder_takes_the_prompt_and_otherwise_the_style_follows_it():
    assert merge_prompt("oil painting, {prompt}, thick", "a boat") == "oil painting, a boat, thick"
    assert merge_prompt("highly detailed", "a boat") == "a boat, highly detailed"
    assert merge_prompt("highly detailed", "") == "highly detailed"
    assert merge_prompt("", "a boat") == "a boat"


def test_styles_apply_in_order_and_an_unknown_one_names_the_known(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    book = StyleBook(path)
    prompt, negative = book.apply(["Oil painting", "Sharp"], "a boat", None)
    assert prompt == "oil painting, a boat, thick brush strokes, highly detailed"
    assert negative == "photo, blurry, lowres"
    with pytest.raises(InvalidParameter) as refused:
        book.apply(["Sharp", "Watercolour"], "a boat", None)
    assert refused.value.field == "styles" and "Watercolour" in refused.value.message
    assert "Oil painting" in refused.value.message and "Sharp" in refused.value.message


def test_the_file_is_read_again_when_it_changes_and_none_means_no_styles(tmp_path):
    path = tmp_path / "styles.csv"
    book = StyleBook(path)
    assert book.listed() == []
    path.write_text("name,prompt,negative_prompt\nA,first,\n", encoding="utf-8")
    assert [style.prompt for style in book.listed()] == ["first"]
    path.write_text("name,prompt,negative_prompt\nA,second,\n", encoding="utf-8")
    stamp = path.stat().st_mtime + 5
    os.utime(path, (stamp, stamp))
    assert [style.prompt for style in book.listed()] == ["second"]
