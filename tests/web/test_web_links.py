"""``digest links``: a subscriber's signed URLs, which a real ``digest serve`` then accepts;
and the tokens themselves (purpose-bound, altered ones refused, old keys for verification)."""

from __future__ import annotations

import base64
import hmac
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from web_server import OLD_WEB_SECRET, WEB_SECRET, digest, web_config, web_env

from pipeline.errors import WebError
from pipeline.web.tokens import PURPOSES, Signer, signer

ADA = "ada@example.org"


def test_links_prints_the_four_urls_and_serve_accepts_them(tmp_path: Path, web_server: Any) -> None:
    config = web_config(tmp_path, web_server.base_url)
    printed = digest(config, "links", "--subscriber", "GRACE@example.org")  # any case
    assert printed.returncode == 0, printed.stderr
    urls = dict(re.findall(r"^(\w+): +(\S+)$", printed.stdout, re.M))
    assert list(urls) == ["unsubscribe", "preferences", "archive", "feed"]
    base = re.escape(web_server.base_url)
    token = r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
    for purpose, shape in [
        ("unsubscribe", rf"{base}/u/({token})"),
        ("preferences", rf"{base}/p/({token})"),
        ("archive", rf"{base}/archive/({token})"),
        ("feed", rf"{base}/feed/({token})\.atom"),
    ]:
        found = re.fullmatch(shape, urls[purpose])
        assert found, (purpose, urls[purpose])
        # Each token names Grace, for its own purpose only.
        assert Signer(WEB_SECRET.encode()).subject(purpose, found[1]) == "grace@example.org"
        others = {"unsubscribe", "preferences", "archive", "feed"} - {purpose}
        assert all(Signer(WEB_SECRET.encode()).subject(other, found[1]) is None for other in others)
    served = web_server.start(config)
    for purpose in ("unsubscribe", "preferences"):
        page = served.client.get(urls[purpose])
        assert page.status_code == 200 and "Grace@example.org" in page.text


def test_links_says_what_is_missing(tmp_path: Path) -> None:
    config = web_config(tmp_path, "https://digest.example.org")
    unknown = digest(config, "links", "--subscriber", "nobody@example.org")
    assert unknown.returncode == 1 and "unknown subscriber nobody@example.org" in unknown.stderr
    no_key = digest(config, "links", "--subscriber", "ada@example.org", env=web_env(secret=None))
    assert no_key.returncode == 1 and "DIGEST_WEB_SECRET" in no_key.stderr
    config.write_text(config.read_text().replace('base_url = "https://digest.example.org"', ""))
    no_base = digest(config, "links", "--subscriber", "ada@example.org")
    assert no_base.returncode == 1 and "base_url" in no_base.stderr


def test_tokens_verify_only_unaltered_for_their_purpose_with_current_or_old_keys() -> None:
    old = Signer(OLD_WEB_SECRET.encode())
    rotated = Signer(WEB_SECRET.encode(), [OLD_WEB_SECRET.encode()])
    token = old.token("unsubscribe", "ada@example.org")
    assert rotated.subject("unsubscribe", token) == "ada@example.org"  # signed before the rotation
    assert Signer(WEB_SECRET.encode()).subject("unsubscribe", token) is None  # old key dropped
    assert rotated.token("unsubscribe", "ada@example.org") != token  # new links use the new key
    assert rotated.subject("preferences", token) is None
    for i in range(len(token)):  # any one character changed
        altered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert rotated.subject("unsubscribe", altered) is None, altered
    now = datetime.now(UTC)
    timed = rotated.timed_token("form", "x", now)
    assert rotated.timed_subject("form", timed, now + timedelta(hours=1), timedelta(days=1)) == "x"
    assert rotated.timed_subject("form", timed, now + timedelta(days=2), timedelta(days=1)) is None
    stamp = timed.split(".")[1]
    assert (
        rotated.timed_subject("form", timed.replace(stamp, str(int(stamp) + 3600)), now, timedelta(days=1))
        is None
    )
    with pytest.raises(ValueError, match="unknown token purpose"):
        rotated.token("admin", "x")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def test_a_plain_token_is_never_a_timed_one() -> None:
    """The MAC input says which kind a token is: a plain token for "S", NUL, "T" (which would
    have the MAC of a timed token for S made at T, one that never expires) is refused as a
    timed token, and the other way round."""
    signer = Signer(WEB_SECRET.encode())
    now = datetime.now(UTC)
    week = timedelta(days=7)
    stamp = str(int(now.timestamp()))
    form_subject = f"preferences\0{ADA}"  # (as pipeline.web.forms joins them)
    for purpose in ("form", "confirm", "unsubscribe"):
        plain = signer.token(purpose, f"{form_subject}\0{stamp}")
        mac = plain.split(".")[1]
        forged = f"{_b64(form_subject.encode())}.{stamp}.{mac}"
        assert signer.timed_subject(purpose, forged, now, week) is None
        assert signer.timed_subject(purpose, forged, now + timedelta(days=3650), timedelta(days=3651)) is None
        timed = signer.timed_token(purpose, form_subject, now)
        subject, time, timed_mac = timed.split(".")
        assert signer.timed_subject(purpose, timed, now, week) == form_subject
        as_plain = _b64((form_subject + "\0" + time).encode()) + "." + timed_mac
        assert signer.subject(purpose, as_plain) is None
        assert subject == _b64(form_subject.encode())
    # A time in other digits than ASCII ones is refused, not an error.
    subject, _, timed_mac = signer.timed_token("form", "x", now).split(".")
    assert signer.timed_subject("form", f"{subject}.\u00b2\u00b3.{timed_mac}", now, week) is None


def test_plain_tokens_keep_the_mac_of_the_links_already_sent() -> None:
    """Links in emails already sent do not expire: a plain token's MAC input is unchanged."""
    message = b"\0".join([b"digest-token-v1", b"unsubscribe", ADA.encode()])
    mac = hmac.digest(WEB_SECRET.encode(), message, "sha256")[:16]
    assert Signer(WEB_SECRET.encode()).token("unsubscribe", ADA) == f"{_b64(ADA.encode())}.{_b64(mac)}"


def test_every_purpose_is_one_that_is_used() -> None:
    used = {"unsubscribe", "preferences", "archive", "feed", "vote", "confirm", "form"}
    assert used == PURPOSES
    with pytest.raises(ValueError, match="unknown token purpose"):
        Signer(WEB_SECRET.encode()).token("signup", ADA)


def test_the_key_comes_from_the_environment_and_must_be_long(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import WebSection

    web = WebSection(secret_env="MY_KEY", old_secrets_env="MY_OLD_KEYS")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(WebError, match="set the environment variable MY_KEY"):
        signer(web)
    monkeypatch.setenv("MY_KEY", "too short")
    with pytest.raises(WebError, match="too short"):
        signer(web)
    monkeypatch.setenv("MY_KEY", WEB_SECRET)
    monkeypatch.setenv("MY_OLD_KEYS", f"{OLD_WEB_SECRET} short")
    with pytest.raises(WebError, match="MY_OLD_KEYS is too short"):
        signer(web)
    monkeypatch.setenv("MY_OLD_KEYS", OLD_WEB_SECRET)
    token = Signer(OLD_WEB_SECRET.encode()).token("feed", "ada@example.org")
    assert signer(web).subject("feed", token) == "ada@example.org"


def test_pages_come_from_the_template_override_folder_first(tmp_path: Path, web_server: Any) -> None:
    override = tmp_path / "my-templates" / "web"
    override.mkdir(parents=True)
    (override / "style.css").write_text("body { color: #123456; }\n")
    config = web_config(tmp_path, web_server.base_url, digest='templates = "my-templates"')
    served = web_server.start(config)
    assert served.client.get("/style.css").text.strip() == "body { color: #123456; }"
    page = served.client.get(f"/u/{Signer(WEB_SECRET.encode()).token('unsubscribe', 'ada@example.org')}")
    assert page.status_code == 200 and "Unsubscribe" in page.text  # the other pages: the built-in ones
