"""DKIM signatures (RFC 6376) on finished messages: ``rsa-sha256``, or ``ed25519-sha256``
(RFC 8463), with relaxed/relaxed canonicalisation.

A signature covers those header fields of ``SIGNED`` that the message has, From once more
than it has it (oversigned: a second From added on the way, which a reader's client might
show instead of ours, then breaks the signature), and the whole body. It is computed from
the bytes as they go out and is the message's first header field: ``compose`` asks for it
last, when the header block and the body are final, and nothing downstream rewrites a
message (the SMTP transport sends a canonical message as it is, and the server undoes
dot-stuffing; the Maildir stores the bytes). A message that is not ``canonical`` (an alert
built by the email package) gets CRLF line ends and a final CRLF before it is signed, as the
SMTP transport would give it.

Speed (figures: docs/performance.md): dkimpy canonicalises with regular expressions and signs
with RSA written in Python. Here the header hash is signed by ``cryptography`` (OpenSSL),
and the body is canonicalised piece by piece: ``compose`` hands over the pieces it joined,
and those that many digests share are the same objects, so each is canonicalised once per
process (a dictionary keyed by the piece: a bytes object keeps its hash) and only a digest's
own pieces are worked on. Relaxed canonicalisation is line by line, so pieces that end at
line ends canonicalise apart. A piece with no tab, no double space and no space before a
line end is its own canonical form, which C-speed ``in`` tests tell. dkimpy's verifier
checks the result in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .config import Settings, key_line
from .errors import ConfigError
from .models import OutgoingMessage

# The fields signed when present (RFC 6376 5.4.1 names From as the one that must be).
SIGNED = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
)
OVERSIGNED = ("From",)
RSA_MIN_BITS = 1024  # RFC 8301 3.2: verifiers refuse smaller keys
LINE = 78
B_LINE = 72  # base64 characters per line of b=
CRLF = b"\r\n"
_WSP_RUN = re.compile(rb"[ \t]+")
_SPACES = re.compile(rb"  +")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_PIECES_BYTES = 4 * 2**20  # pieces (and their relaxed forms) in the young generation

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimSigner:
    """Signs messages as ``domain`` with the key published at ``selector._domainkey.domain``."""

    def __init__(
        self, domain: str, selector: str, key: PrivateKey, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.domain, self.selector, self.key, self.clock = domain, selector, key, clock
        self.algorithm = "rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else "ed25519-sha256"
        self._signed = {name.lower().encode("ascii") for name in SIGNED}
        # Relaxed forms of body pieces, in two generations: a piece met again moves to the
        # young one, and the old one is dropped when the young one is full. A digest's own
        # pieces (its greeting, its footer) are met once and go; shared ones stay.
        self._young: dict[bytes, bytes] = {}
        self._old: dict[bytes, bytes] = {}
        self._young_size = 0

    # --- signing ---------------------------------------------------------------------------------

    def sign(self, message: OutgoingMessage) -> OutgoingMessage:
        """``message`` with a DKIM-Signature field in front (made CRLF first if need be)."""
        data = message.data
        if not message.canonical:
            data = _LINE_END.sub(CRLF, data)
            if not data.endswith(CRLF):
                data += CRLF
        end = data.find(b"\r\n\r\n")
        head, body = (data[:end], data[end + 4 :]) if end >= 0 else (data.removesuffix(CRLF), b"")
        return replace(message, data=self.signature(head, [body]) + data)

    def signature(self, head: bytes, body: Sequence[bytes]) -> bytes:
        """The DKIM-Signature field (folded, CRLF-ended) for a message whose header block is
        ``head`` (without the blank line after it) and whose body is ``b"".join(body)``.

        Every piece of ``body`` but the last must end at a line end (else the pieces are
        joined first); pieces seen before, as the same objects, cost a look-up.
        """
        unsigned, digest = self.hashed(head, body)
        return self.sealed(unsigned, self._sign(digest))

    def hashed(self, head: bytes, body: Sequence[bytes]) -> tuple[str, bytes]:
        """The DKIM-Signature field up to its ``b=``, and the hash its signature signs."""
        fields = _header_fields(head)
        names = [name for name, _ in fields if name in self._signed]
        names += [name.lower().encode("ascii") for name in OVERSIGNED]
        tags = [
            f"v=1; a={self.algorithm}; c=relaxed/relaxed; d={self.domain}; s={self.selector};",
            f"t={int(self.clock())};",
            "h=" + ":".join(name.decode("ascii") for name in names) + ";",
            f"bh={base64.b64encode(self._body_hash(body)).decode('ascii')};",
        ]
        unsigned = _fold("DKIM-Signature", tags) + "\r\n b="
        digest = hashlib.sha256()
        for value in _selected(fields, names):
            digest.update(value)
        digest.update(b"dkim-signature:" + _relaxed_value(unsigned.encode("ascii")[len("DKIM-Signature:") :]))
        return unsigned, digest.digest()

    @staticmethod
    def sealed(unsigned: str, signature: bytes) -> bytes:
        """The whole field: ``unsigned`` (from :meth:`hashed`) with the signature in its ``b=``."""
        signed = base64.b64encode(signature).decode("ascii")
        # (b= on lines of its own: whitespace within it is ignored, RFC 6376 3.5)
        lines = "\r\n ".join(signed[i : i + B_LINE] for i in range(0, len(signed), B_LINE))
        return (unsigned + lines).encode("ascii") + CRLF

    def _sign(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.key.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 hash

    def _body_hash(self, body: Sequence[bytes]) -> bytes:
        """SHA-256 of the relaxed canonical body (RFC 6376 3.4.4), piece by piece.

        (A loop kept lean: a digest has ~80 pieces, and per piece a look-up and an append is
        all a shared one costs. Only pieces that end at a line end are remembered.)
        """
        if not body:
            return hashlib.sha256(b"").digest()
        young = self._young
        canonical: list[bytes] = []
        append = canonical.append
        for piece in body[:-1]:
            relaxed = young.get(piece)
            if relaxed is None:
                relaxed = self._old.get(piece)
                if relaxed is None:
                    if not piece.endswith(b"\n"):  # (not at a line end: canonicalised as a whole)
                        return self._body_hash([b"".join(body)])
                    relaxed = _relaxed_body(piece)
                self._remember(piece, relaxed)
                young = self._young
            append(relaxed)
        # Empty lines at the end are not hashed, and a body that does not end at a line end
        # is hashed with one; the last pieces may be nothing but line ends.
        last = _relaxed_body(body[-1])
        while canonical and last.count(CRLF) * 2 == len(last):  # (nothing but line ends)
            last = canonical.pop() + last
        while last.endswith(b"\r\n\r\n"):
            last = last[:-2]
        if last == CRLF:
            last = b""  # (an empty body, RFC 6376 3.4.4: and with it no line end)
        elif last and not last.endswith(CRLF):
            last += CRLF
        append(last)
        return hashlib.sha256(b"".join(canonical)).digest()

    def _remember(self, piece: bytes, relaxed: bytes) -> None:
        """Keep a piece's relaxed form for the next digest that has the same piece."""
        if self._young_size > _PIECES_BYTES:
            self._old, self._young, self._young_size = self._young, {}, 0
        self._young[piece] = relaxed
        self._young_size += len(piece) + (len(relaxed) if relaxed is not piece else 0)

    # --- publishing ------------------------------------------------------------------------------

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}."

    def record_value(self) -> str:
        """The TXT record's text: ``v=DKIM1; k=rsa; p=...`` (RFC 6376 3.6.1, RFC 8463 4)."""
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            kind = "rsa"
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            kind = "ed25519"
            der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k={kind}; p={base64.b64encode(der).decode('ascii')}"

    def dns_record(self) -> str:
        """The record to publish, as a zone file line; the text in strings of at most 255
        bytes (a TXT record's strings are, RFC 1035 3.3.14; resolvers join them)."""
        value = self.record_value()
        strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
        return f"{self.record_name} IN TXT {strings}"

    @property
    def key_bits(self) -> int:
        return self.key.key_size if isinstance(self.key, rsa.RSAPrivateKey) else 256


def load_signer(settings: Settings) -> DkimSigner | None:
    """The signer ``[dkim]`` describes (None without the section), or a ConfigError naming
    the key file and what is wrong with it."""
    dkim = settings.dkim
    if dkim is None:
        return None
    try:
        key = load_key(dkim.key_file, dkim.algorithm)
    except ValueError as exc:
        try:
            text = settings.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        line = key_line(text, ("dkim", "key_file")) if text else None
        where = f"{settings.path}:{line}" if line else f"{settings.path}"
        raise ConfigError([f"{where}: dkim.key_file: {exc}"]) from None
    return DkimSigner(dkim.domain, dkim.selector, key)


def load_key(path: str, algorithm: str) -> PrivateKey:
    """The private key in ``path`` (PEM or DER, unencrypted), fit for ``algorithm``; a
    ValueError saying what is wrong otherwise."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"key file {path} does not exist (README, DKIM, says how to make one)") from None
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ValueError(f"{path} holds a public key: key_file is the private one (the public is for DNS)")
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"key file {path} is encrypted: digest needs it unencrypted (openssl pkey -in {path} -out NEW)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} is not a private key in PEM or DER form") from None
    kind = _kind(key)
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(
                f'{path} holds {kind} key, but dkim.algorithm is "rsa-sha256" '
                '(use an RSA key, or algorithm = "ed25519-sha256" for an Ed25519 key)'
            )
        if key.key_size < RSA_MIN_BITS:
            raise ValueError(
                f"{path} holds an RSA key of {key.key_size} bits: verifiers refuse keys under "
                f"{RSA_MIN_BITS} bits (RFC 8301); make one of 2048 bits"
            )
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(
            f'{path} holds {kind} key, but dkim.algorithm is "ed25519-sha256" '
            '(use an Ed25519 key, or algorithm = "rsa-sha256" for an RSA key)'
        )
    return key


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA ({key.key_size}-bit)"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519"
    return f"a {type(key).__name__.removeprefix('_').replace('PrivateKey', '')}"


# --- canonicalisation (RFC 6376 3.4.2 and 3.4.4) ------------------------------------------------


def _relaxed_body(piece: bytes) -> bytes:
    if b"\t" in piece:
        piece = piece.replace(b"\t", b" ")
    if b"  " in piece:
        piece = _SPACES.sub(b" ", piece)
    if b" \r\n" in piece:
        piece = piece.replace(b" \r\n", b"\r\n")
    return piece


def _relaxed_value(value: bytes) -> bytes:
    """A field's value, relaxed: unfolded, white space runs one space, none at either end."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip(b" \t")


def _header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """Each header field as (lower-case name, its relaxed form ``name:value`` + CRLF)."""
    fields: list[tuple[bytes, bytes]] = []
    raw: list[bytes] = []
    for line in head.split(CRLF):
        if line[:1] in (b" ", b"\t") and raw:
            raw[-1] += line
        else:
            raw.append(line)
    for field in raw:
        name, colon, value = field.partition(b":")
        if not colon:
            continue
        lower = name.rstrip(b" \t").lower()
        fields.append((lower, lower + b":" + _relaxed_value(value) + CRLF))
    return fields


def _selected(fields: list[tuple[bytes, bytes]], names: list[bytes]) -> list[bytes]:
    """The fields ``h=`` names, in its order: for a name listed again, the next instance up
    from the bottom; none once they are used up (RFC 6376 5.4.2)."""
    chosen = []
    below: dict[bytes, int] = {}
    for name in names:
        i = below.get(name, len(fields))
        while i > 0:
            i -= 1
            if fields[i][0] == name:
                chosen.append(fields[i][1])
                break
        below[name] = i
    return chosen


def _fold(name: str, tags: list[str]) -> str:
    """``name: tag tag ...`` folded before a tag (or within h=, after a colon) to keep lines
    within 78 characters."""
    tokens: list[tuple[str, str]] = []  # (what goes before it unfolded, the text)
    for tag in tags:
        if tag.startswith("h="):
            parts = tag.split(":")
            words = [part + ":" for part in parts[:-1]] + [parts[-1]]
            tokens += [(" " if i == 0 else "", word) for i, word in enumerate(words)]
        else:
            tokens += [(" ", word) for word in tag.split(" ")]
    lines, line = [], f"{name}:"
    for before, text in tokens:
        if len(line) + len(before) + len(text) > LINE and line != f"{name}:":
            lines.append(line)
            line = " " + text
        else:
            line += before + text
    return "\r\n".join([*lines, line])
