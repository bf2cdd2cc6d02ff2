"""DKIM signing cost per message: dkimpy's ``dkim.sign`` against ours (``pipeline.sign``), with
RSA-2048 and Ed25519, and where our time goes.

Builds the digests of ``bench_render`` (500 entries, 20 topics, subscribers on 3 topics each),
renders and composes them once, then times, per message:

- dkimpy: ``dkim.sign`` on the finished message (relaxed/relaxed, the same header fields);
- ours, as a send does it: ``compose_message`` with a signer minus ``compose_message`` without,
  i.e. what signing adds to composing (the body handed over in its pieces, shared pieces
  canonicalised once per process);
- the parts of ours: the body hash from the pieces (warm), the body hash of the whole body as
  one new bytes object (what a message without pieces costs, e.g. an alert), SHA-256 alone
  over the body, the header fields (parse, relaxed, select, hash), the signature alone.

Every signature of a sample is checked with dkimpy's verifier first (Ed25519 needs PyNaCl).
It prints figures; it is not a timed test. Run: ``.venv/bin/python bench/bench_dkim.py``
(``--subscribers N`` to change the size).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_render  # noqa: E402
import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from pipeline import run  # noqa: E402
from pipeline.compose import compose_message  # noqa: E402
from pipeline.models import OutgoingMessage  # noqa: E402
from pipeline.render import Renderer  # noqa: E402
from pipeline.sign import SIGNED, DkimSigner, _header_fields, _relaxed_body, _selected  # noqa: E402
from pipeline.store import Store  # noqa: E402

DOMAIN, SELECTOR = "example.org", "bench"


class Recording(DkimSigner):
    """A signer that keeps what compose hands it, to time the parts on the same input."""

    def __init__(self, key: Any) -> None:
        super().__init__(DOMAIN, SELECTOR, key)
        self.calls: list[tuple[bytes, Sequence[bytes]]] = []

    def signature(self, head: bytes, body: Sequence[bytes]) -> bytes:
        self.calls.append((head, body))
        return super().signature(head, body)


def per_message(func: Callable[[Any], object], items: Sequence[Any], rounds: int = 3) -> float:
    """Best of ``rounds``, in microseconds per item."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for item in items:
            func(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--dkimpy-sample", type=int, default=40, help="messages dkimpy signs")
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_render.make_settings(Path(tmp), args.subscribers, rng)
        now = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
        with Store(settings.digest.database_url) as store:
            store.sync_feeds({"arxiv": "feeds/arxiv.xml", "blog": "feeds/blog.xml"})
            store.add_items(bench_render.make_items(args.entries, rng), now)
            digests = run.plan_digests(settings, store, settings.subscribers, now)
    renderer = Renderer(settings)
    renderer.prepare(digests)
    rendered = [(d, renderer.render(d)) for d in digests]
    compose_args: dict[str, Any] = {
        "sender": settings.sender,
        "list_id": settings.list_id,
        "unsubscribe": ["mailto:digest@localhost.localdomain?subject=unsubscribe"],
    }
    unsigned = [compose_message(d, r, **compose_args) for d, r in rendered]
    size = statistics.mean(len(m.data) for m in unsigned) / 1024
    print(
        f"{len(unsigned)} digests (mean {size:.0f} KB, {len(rendered[0][1].html_parts)} HTML pieces "
        f"in the first), microseconds per message, best of 3 rounds\n"
    )
    keys: list[tuple[str, Any]] = [
        ("RSA-2048", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("Ed25519", ed25519.Ed25519PrivateKey.generate()),
    ]
    rows = []
    for label, key in keys:
        figures, checked = _measure(key, rendered, unsigned, compose_args, args.dkimpy_sample)
        rows.append((f"{label} ({checked})", figures))
    width = max(len(name) for _, figures in rows for name in figures)
    print(f"{'':<{width}}" + "".join(f"{label:>26}" for label, _ in rows))
    for name in rows[0][1]:
        print(f"{name:<{width}}" + "".join(f"{figures[name]:>26.1f}" for _, figures in rows))
    for label, figures in rows:
        ratio = figures["dkimpy dkim.sign"] / figures["ours, added to compose"]
        print(f"\n{label}: ours is {ratio:.0f}x faster than dkim.sign")


def _measure(
    key: Any,
    rendered: list[tuple[Any, Any]],
    unsigned: list[OutgoingMessage],
    compose_args: dict[str, Any],
    sample_size: int,
) -> tuple[dict[str, float], str]:
    """The figures for one key, in microseconds per message, and what dkimpy said of them."""
    include = [name.lower().encode() for name in SIGNED]
    signer = Recording(key)
    signed = [compose_message(d, r, **compose_args, signer=signer) for d, r in rendered]
    checked = _verify(signer, signed[:20])
    if isinstance(key, rsa.RSAPrivateKey):  # (dkimpy reads PEM for RSA, base64 raw for Ed25519)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    else:
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        private = base64.b64encode(raw)
    sample = unsigned[:sample_size]
    figures: dict[str, float] = {}
    try:
        figures["dkimpy dkim.sign"] = per_message(
            lambda m: dkim.sign(
                m.data,
                SELECTOR.encode(),
                DOMAIN.encode(),
                private,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
                signature_algorithm=signer.algorithm.encode(),
            ),
            sample,
            rounds=1,
        )
    except ImportError:  # (dkimpy signs Ed25519 with PyNaCl)
        figures["dkimpy dkim.sign"] = float("nan")
    plain = DkimSigner(DOMAIN, SELECTOR, key)
    compose_plain, compose_signed = _alternating(rendered, compose_args, plain)
    figures["ours, added to compose"] = compose_signed - compose_plain
    figures["  compose alone (for scale)"] = compose_plain
    calls = signer.calls[: len(rendered)]
    figures["  body hash, pieces (warm)"] = per_message(lambda c: plain._body_hash(c[1]), calls)
    bodies = [b"".join(c[1]) for c in calls]
    figures["  body hash, one new bytes"] = per_message(
        lambda b: hashlib.sha256(_relaxed_body(bytes(b))).digest(), bodies
    )
    figures["  SHA-256 alone"] = per_message(lambda b: hashlib.sha256(b).digest(), bodies)
    names = [n.lower().encode() for n in SIGNED]

    def header_hash(head: bytes) -> bytes:
        fields = _header_fields(head)
        digest = hashlib.sha256()
        for value in _selected(fields, [n for n, _ in fields if n in names]):
            digest.update(value)
        return digest.digest()

    figures["  header fields"] = per_message(header_hash, [c[0] for c in calls])
    digest = hashlib.sha256(b"x").digest()
    figures["  signature alone"] = per_message(lambda _: plain._sign(digest), range(500))
    figures["ours, whole message (sign)"] = per_message(plain.sign, unsigned)
    return figures, checked


def _alternating(
    rendered: list[tuple[Any, Any]], compose_args: dict[str, Any], signer: DkimSigner
) -> tuple[float, float]:
    """compose_message without and with ``signer``, message by message in turn (so that a
    machine whose speed drifts slows both alike): microseconds per message, best of 3 rounds."""
    best: tuple[float, float] | None = None
    for _ in range(3):
        plain = signed = 0.0
        for digest, text in rendered:
            started = time.perf_counter()
            compose_message(digest, text, **compose_args)
            middle = time.perf_counter()
            compose_message(digest, text, **compose_args, signer=signer)
            plain, signed = plain + middle - started, signed + time.perf_counter() - middle
        if best is None or signed - plain < best[1] - best[0]:
            best = (plain, signed)
    assert best is not None
    return best[0] / len(rendered) * 1e6, best[1] / len(rendered) * 1e6


def _verify(signer: DkimSigner, messages: list[OutgoingMessage]) -> str:
    """Check the signatures with dkimpy's verifier (the bench is void if they fail)."""
    record = signer.record_value().encode()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == signer.record_name.encode() else None

    try:
        for message in messages:
            if not dkim.verify(message.data, dnsfunc=dns):
                raise SystemExit(f"dkimpy does not verify our {signer.algorithm} signature")
    except ImportError:  # (dkimpy verifies Ed25519 with PyNaCl)
        return "not verified: no PyNaCl"
    return f"{len(messages)} verified"


if __name__ == "__main__":
    main()
