"""Text hygiene shared by the stages that handle untrusted feed text."""

from __future__ import annotations

import html
import re

import nh3

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Text safe for one line: no control or bidi characters, whitespace collapsed."""
    return _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def has_control(text: str) -> bool:
    """Whether text holds a character that ``clean_text`` would remove."""
    return _CONTROL.search(text) is not None


def strip_html(fragment: str) -> str:
    """The text of an HTML fragment: tags dropped (script and style with their content), entities decoded."""
    return html.unescape(nh3.clean(fragment, tags=set(), clean_content_tags={"script", "style"}))
