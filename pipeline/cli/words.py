"""How the faces count things in words: "1 entry", "2 entries", never "1 entries" or "entry(s)"."""

from __future__ import annotations


def plural(count: int, one: str, many: str | None = None) -> str:
    """``count`` and the noun that agrees with it: ``plural(1, "entry", "entries")`` is "1 entry".

    ``many`` defaults to ``one`` + "s" ("feed error", "feed errors"); give it when that is wrong.
    """
    return f"{count} {one if count == 1 else (many if many is not None else one + 's')}"
