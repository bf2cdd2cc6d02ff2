"""Signed tokens: the capabilities a reader's links carry (no cookies, no login).

A token is ``SUBJECT.MAC`` (or ``SUBJECT.TIME.MAC`` for a timed one), each part base64url
without padding, so it sits in a URL path as it is. The MAC is HMAC-SHA256 over the token's
purpose, subject (and time), cut to 128 bits; the purpose is not in the token but in the MAC,
so a preferences link cannot be replayed as an unsubscribe link. The two kinds never share a
MAC input: a plain token signs ``digest-token-v1``, the purpose and the subject joined by NUL
bytes (unchanged: the links in emails already sent keep working); a timed one signs a message
under a domain of its own, ``digest-token-v1-timed``, each part length-prefixed. So a plain
token for the subject "S", NUL, "T" is never a timed token for ``S`` made at ``T`` (one that
would never expire), and no timed token is another with its parts cut elsewhere. Verification
compares in constant time (:func:`hmac.compare_digest`) and tries the current key, then each
old key.

Keys come from the environment at call time (``[web] secret_env``, and ``old_secrets_env`` for
keys kept after a rotation, verification only): ``digest serve``, ``send`` and the render
helpers (which inherit the environment) sign with the same key without it ever being in the
config file. A key is at least ``MIN_KEY_CHARS`` characters.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import os
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from ..config import WebSection
from ..errors import WebError

PURPOSES = frozenset({"unsubscribe", "preferences", "archive", "feed", "vote", "confirm", "form"})
MIN_KEY_CHARS = 32
MAC_BYTES = 16  # 128 bits: far beyond guessing, and the URL stays short
_DOMAIN = b"digest-token-v1"  # versioned, so a later format can never verify as this one
# Timed tokens: another domain (a plain token's message always starts b"digest-token-v1\0").
_TIMED_DOMAIN = b"digest-token-v1-timed"
_STAMP = re.compile(r"[0-9]{1,12}")  # seconds since the epoch, ASCII digits only
_SPLIT_KEYS = re.compile(r"[\s,]+")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs with the current key; verifies with the current key, then each old one."""

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = ()) -> None:
        self._keys = [key, *old_keys]

    @staticmethod
    def _message(purpose: str, subject: str, stamp: str | None) -> bytes:
        """What the MAC signs: plain, the domain, purpose and subject joined by NUL bytes (as
        ever: sent links keep working); timed, ``TIMED_DOMAIN`` then each of purpose, subject and time as
        ``LENGTH:BYTES`` (unambiguous whatever bytes the subject holds)."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown token purpose {purpose!r}")
        if stamp is None:
            return b"\0".join([_DOMAIN, purpose.encode(), subject.encode("utf-8")])
        parts = [purpose.encode(), subject.encode("utf-8"), stamp.encode("ascii")]
        return _TIMED_DOMAIN + b"".join(b"%d:%s" % (len(p), p) for p in parts)

    def _mac(self, key: int, message: bytes) -> bytes:
        return hmac.digest(self._keys[key], message, "sha256")[:MAC_BYTES]

    def _valid(self, mac: bytes, message: bytes) -> bool:
        found = False
        for key in range(len(self._keys)):
            found |= hmac.compare_digest(mac, self._mac(key, message))
        return found

    def token(self, purpose: str, subject: str) -> str:
        """A token for ``subject`` (a subscriber's address, or any text) for one purpose."""
        return f"{_b64(subject.encode('utf-8'))}.{_b64(self._mac(0, self._message(purpose, subject, None)))}"

    def subject(self, purpose: str, token: str) -> str | None:
        """The subject of a valid token for ``purpose``; None for a bad or altered one."""
        parts = token.split(".")
        if len(parts) != 2 or len(token) > 2048:
            return None
        try:
            subject, mac = _unb64(parts[0]).decode("utf-8"), _unb64(parts[1])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        return subject if self._valid(mac, self._message(purpose, subject, None)) else None

    def timed_token(self, purpose: str, subject: str, now: datetime) -> str:
        """A token that also signs the time it was made (form tokens, confirmations)."""
        stamp = str(int(now.timestamp()))
        mac = self._mac(0, self._message(purpose, subject, stamp))
        return f"{_b64(subject.encode('utf-8'))}.{stamp}.{_b64(mac)}"

    def timed_subject(self, purpose: str, token: str, now: datetime, max_age: timedelta) -> str | None:
        """The subject of a valid timed token no older than ``max_age`` (None otherwise)."""
        parts = token.split(".")
        if len(parts) != 3 or not _STAMP.fullmatch(parts[1]) or len(token) > 2048:
            return None
        try:
            subject, mac = _unb64(parts[0]).decode("utf-8"), _unb64(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        age = now.timestamp() - int(parts[1])
        valid = self._valid(mac, self._message(purpose, subject, parts[1]))
        if not valid or not -60 <= age <= max_age.total_seconds():
            return None
        return subject


def signer(web: WebSection) -> Signer:
    """The signer for the keys the environment holds now (``[web] secret_env``, old keys)."""
    key = os.environ.get(web.secret_env, "")
    old = os.environ.get(web.old_secrets_env, "") if web.old_secrets_env else ""
    return _signer(web.secret_env, key, web.old_secrets_env, old)


@functools.lru_cache(maxsize=8)  # (asked for every link of every digest, with the same keys)
def _signer(name: str, key: str, old_name: str | None, old: str) -> Signer:
    if not key.strip():
        raise WebError(
            f"the signing key for reader links is missing: set the environment variable {name} "
            f"(at least {MIN_KEY_CHARS} characters; e.g. python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'), or name another one in [web] secret_env"
        )
    if len(key.strip()) < MIN_KEY_CHARS:
        raise WebError(f"the signing key in {name} is too short: at least {MIN_KEY_CHARS} characters")
    old_keys = [k for k in _SPLIT_KEYS.split(old.strip()) if k]
    short = [k for k in old_keys if len(k) < MIN_KEY_CHARS]
    if short:
        raise WebError(f"an old signing key in {old_name} is too short: at least {MIN_KEY_CHARS} characters")
    return Signer(key.strip().encode("utf-8"), [k.encode("utf-8") for k in old_keys])
