"""Matching basics (the matching issue adds the full rule tables and properties)."""

from __future__ import annotations

import pytest

from pipeline.match import fold, hit_spans, words


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("network", "networks"),
        ("SNN", "SNNs"),
        ("policy", "policies"),
        ("bandit", "bandits"),
        ("MDP", "MDPs"),
        ("match", "matches"),
        ("cache", "caches"),
        ("Réseau", "reseau"),
    ],
)
def test_plural_and_accent_fold(a: str, b: str) -> None:
    assert fold(a) == fold(b)


def test_words_split_on_everything_but_letters_and_digits() -> None:
    assert words("Score-based (RL)/URL: SNNs_2") == ["score", "based", "rl", "url", "snn", "2"]


def test_hit_spans_cover_exactly_the_matching_words() -> None:
    text = "Spiking Neural Networks (SNNs) beat URL-based RL"
    spans = hit_spans(text, ["spiking neural network", "SNN", "RL"])
    assert [text[a:b] for a, b in spans] == ["Spiking Neural Networks", "SNNs", "RL"]
