"""The relaxed canonicalisation of ``pipeline.sign`` equals dkimpy's, for any body cut into any
line-aligned pieces (the pieces compose hands over) and any header values (hypothesis)."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import ed25519
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sign import DkimSigner, _header_fields

# Lines of printable text, spaces and tabs (runs of them, at the ends too), and empty lines.
LINE = st.text(alphabet=st.sampled_from("ab= .\t"), max_size=12).map(lambda s: s.encode())
BODY_LINES = st.lists(LINE, max_size=12)


def _signer() -> DkimSigner:
    return DkimSigner("example.org", "s", ed25519.Ed25519PrivateKey.generate())


@settings(max_examples=300, deadline=None)
@given(lines=BODY_LINES, ending=st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b" \r\n\t\r\n"]), cuts=st.data())
def test_the_body_hash_equals_dkimpy_relaxed_for_any_line_aligned_pieces(
    lines: list[bytes], ending: bytes, cuts: st.DataObject
) -> None:
    body = b"\r\n".join(lines) + ending
    expected = hashlib.sha256(Relaxed.canonicalize_body(body)).digest()
    # cut after some line ends: each piece but the last ends with a line end
    ends = [i + 2 for i in range(len(body) - 1) if body[i : i + 2] == b"\r\n"]
    chosen = sorted(set(cuts.draw(st.lists(st.sampled_from(ends), max_size=4)) if ends else []))
    pieces = [body[a:b] for a, b in zip([0, *chosen], [*chosen, len(body)], strict=True)]
    signer = _signer()
    assert signer._body_hash(pieces) == expected
    assert signer._body_hash(pieces) == expected  # (again, from the remembered pieces)
    assert signer._body_hash([body]) == expected
    # pieces that do not end at line ends are joined first
    if len(body) > 3:
        assert signer._body_hash([body[:3], body[3:]]) == expected


VALUE = st.text(alphabet=st.sampled_from("aZ:;= \t,<>@é"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["Subject", "To", "X-Other"]), parts=st.lists(VALUE, min_size=1, max_size=3))
def test_header_fields_equal_dkimpy_relaxed_for_folded_values(name: str, parts: list[str]) -> None:
    value = "\r\n ".join(parts).encode("utf-8")  # folded where the parts meet
    head = b"From: a@example.org\r\n" + name.encode() + b":" + value + b"\r\nDate: x"
    ((_, from_), (_, field), (_, date)) = _header_fields(head)
    expected = Relaxed.canonicalize_headers([[name.encode(), value + b"\r\n"]])
    assert field == expected[0][0] + b":" + expected[0][1]
    assert from_ == b"from:a@example.org\r\n" and date == b"date:x\r\n"
