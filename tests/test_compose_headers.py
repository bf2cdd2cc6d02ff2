"""The headers every digest carries, whatever the digest's title: List-Id (RFC 2919) stays one
header with an ASCII identifier, List-Unsubscribe names the subscriber, and the text part
ends with a real signature separator. Through the real transports: SMTP (aiosmtpd) and the
Maildir."""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import ONE_PAPER_FEED, SmtpServer, body_text, smtp_section
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.compose import digest_message
from pipeline.config import Settings
from pipeline.deliver import MaildirTransport, SmtpTransport
from pipeline.models import Digest, OutgoingMessage, RenderedDigest
from pipeline.web.tokens import Signer

ISSUE_TITLE = "Résumé hebdomadaire des nouveaux articles de recherche"
ISSUE_SLUG = "resume-hebdomadaire-des-nouveaux-articles-de-recherche"
# What every digest carries once (List-Unsubscribe-Post only with a base_url).
HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
)
# RFC 2919: list-id = list-label "." list-id-namespace, both dot-atom-text (RFC 5322 3.2.3).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
LIST_ID_SHAPE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})+")
TITLES = [
    ISSUE_TITLE,
    "A" * 101,  # over the 100-character cap: the cap adds "…"
    "Weekly digest of new papers in machine learning, robotics and the theory of computation!",
    "週刊 研究論文ダイジェスト、機械学習・ロボット工学・計算理論の新着論文をお届けします" * 2,
    'Doe, "Johnny" <x@y> (ops) =?utf-8?q?hi?=',
    "🚀 " * 60,
    "x" * 200,
]


def _settings(title: str, smtp: dict[str, Any] | None = None, **outbox: str) -> Settings:
    data: dict[str, Any] = {"digest": {"title": title}, "outbox": outbox}
    if smtp is not None:
        data["smtp"] = smtp
    return Settings.model_validate(data)


def _message(settings_: Settings) -> bytes:
    digest = Digest(
        subscriber="ada@example.org",
        name="Ada",
        sections=(),
        topics=("Spiking neural networks",),
        created_at=datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
        message_id="<20261130070000.abc@example.net>",
    )
    rendered = RenderedDigest(
        subject=f"[{settings_.digest.title}] nothing new",
        html="<p>nothing new</p>\n",
        text="nothing new\n\n-- \nUnsubscribe: mailto:digest@example.net\n",
    )
    return digest_message(settings_, digest, rendered).data


def _outgoing(data: bytes) -> OutgoingMessage:
    return OutgoingMessage("digest@example.net", "ada@example.org", "<20261130070000.abc@example.net>", data)


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_headers_sound(data: bytes, settings_: Settings) -> None:
    """One of each header, the block ended only by its blank line, a valid ASCII list id."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert all(line.strip() for line in lines), "an empty header line ends the header block early"
    assert all(len(line) <= 998 for line in lines)
    message = _parse(data)
    assert message.defects == []
    for name in HEADERS:
        assert len(message.get_all(name) or []) == 1, (name, list(message.keys()))
    assert set(message.keys()) <= {*HEADERS, "List-Unsubscribe-Post"}
    ident = str(message["List-Id"]).rpartition("<")[2].rstrip(">")
    assert ident.isascii() and LIST_ID_SHAPE.fullmatch(ident), ident
    assert settings_.list_id.endswith(f" <{ident}>")
    assert len(ident.partition(".")[0]) <= 60
    # Folded between words only: each List-Id line fits in 78 characters, or is one word.
    start = next(i for i, line in enumerate(lines) if line.startswith(b"List-Id:"))
    folded = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith((b" ", b"\t")):
            break
        folded.append(line)
    for line in folded:
        assert len(line) <= 78 or len(line.removeprefix(b"List-Id: ").split()) == 1, line


_SMTP = {"host": "127.0.0.1", "security": "none", "from": "Test Digest <digest@example.net>"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.text(min_size=1, max_size=200))
@example(title=ISSUE_TITLE)
@example(title="A" * 101)
@example(title=" ")
def test_any_title_gives_one_list_id_with_an_ascii_identifier_over_smtp_and_in_a_maildir(
    title: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    over_smtp = _settings(title, {**_SMTP, "port": smtp_server.port})
    data = _message(over_smtp)
    assert_headers_sound(data, over_smtp)
    assert over_smtp.smtp is not None
    transport = SmtpTransport(over_smtp.smtp)
    try:
        transport.send(_outgoing(data))
    finally:
        transport.close()
    received = smtp_server.handler.messages[-1]
    assert received.defects == [] and len(received.get_all("List-Id") or []) == 1
    assert str(received["Message-ID"]) == "<20261130070000.abc@example.net>"

    in_maildir = _settings(title, maildir=str(tmp_path / "outbox"))
    data = _message(in_maildir)
    assert_headers_sound(data, in_maildir)
    box = MaildirTransport(tmp_path / "outbox")
    try:
        box.send(_outgoing(data))
    finally:
        box.close()
    newest = max((tmp_path / "outbox" / "new").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert_headers_sound(newest.read_bytes(), in_maildir)
    newest.unlink()


def test_the_list_identifier_is_an_ascii_slug_and_the_idna_domain() -> None:
    settings_ = _settings(ISSUE_TITLE, {**_SMTP, "from": "Revue <revue@例え.jp>"})
    assert settings_.list_id == f"{ISSUE_TITLE} <{ISSUE_SLUG}.xn--r8jz45g.jp>"
    assert _settings("日本語").list_id == "日本語 <digest.localhost.localdomain>"
    long = _settings("word " * 40).list_id.rpartition("<")[2].rstrip(">")
    assert long == "word-" * 11 + "word.localhost.localdomain"


def _config(tmp_path: Path, title: str, smtp: str = "", digest: str = "") -> Path:
    (tmp_path / "feed.xml").write_text(ONE_PAPER_FEED)
    config = tmp_path / "digest.toml"
    config.write_text(
        f'[digest]\ntitle = {json.dumps(title, ensure_ascii=False)}\nlookback = "3650d"\n{digest}\n'
        '[[feeds]]\nname = "one"\nurl = "feed.xml"\n\n'
        '[topics.snn]\nkeywords = ["SNN"]\n\n'
        '[[subscribers]]\nemail = "user0@example.org"\ntopics = ["snn"]\n\n'
        f"{smtp}",
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize("title", TITLES)
def test_digest_send_over_smtp_keeps_every_header_in_the_header_block(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, title: str
) -> None:
    config = _config(tmp_path, title, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    (message,) = smtp_server.handler.messages
    assert message.defects == []
    for name in HEADERS:
        assert len(message.get_all(name) or []) == 1, (name, list(message.keys()))
    ident = str(message["List-Id"]).rpartition("<")[2].rstrip(">")
    assert ident.isascii() and LIST_ID_SHAPE.fullmatch(ident) and ident.endswith(".example.net")
    assert message.get_body(("plain",)) is not None and message.get_body(("html",)) is not None


@pytest.mark.parametrize("title", TITLES)
def test_digest_send_into_the_maildir_keeps_every_header_in_the_header_block(
    cli: Callable[..., Result], tmp_path: Path, title: str
) -> None:
    config = _config(tmp_path, title)
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    (file,) = (tmp_path / "outbox" / "new").iterdir()
    data = file.read_bytes()
    head = data.partition(b"\n\n")[0] if b"\r\n\r\n" not in data else data.partition(b"\r\n\r\n")[0]
    assert all(line.strip() for line in head.splitlines())
    message = _parse(data)
    assert message.defects == []
    for name in HEADERS:
        assert len(message.get_all(name) or []) == 1, (name, list(message.keys()))
    ident = str(message["List-Id"]).rpartition("<")[2].rstrip(">")
    assert ident.isascii() and LIST_ID_SHAPE.fullmatch(ident)
    assert ident.endswith(".localhost.localdomain")


def test_the_issue_title_comes_back_whole_in_list_id(cli: Callable[..., Result], tmp_path: Path) -> None:
    config = _config(tmp_path, ISSUE_TITLE)
    assert cli("--config", config, "send").exit_code == 0
    (file,) = (tmp_path / "outbox" / "new").iterdir()
    message = _parse(file.read_bytes())
    # (Python's parser keeps the space between encoded words; RFC 2047 drops it)
    assert "".join(str(message["List-Id"]).split()) == "".join(
        f"{ISSUE_TITLE} <{ISSUE_SLUG}.localhost.localdomain>".split()
    )


def test_list_unsubscribe_mailto_names_the_subscriber_as_the_footer_does(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = _config(tmp_path, "T", smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    (message,) = smtp_server.handler.messages
    mailto = "mailto:digest@example.net?subject=unsubscribe%20user0%40example.org"
    assert str(message["List-Unsubscribe"]).strip() == f"<{mailto}>"
    assert mailto in body_text(message).split()  # the footer's link: the same target


def test_list_unsubscribe_with_a_base_url_has_both_and_the_mailto_names_the_subscriber(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGEST_WEB_SECRET", "k" * 32)
    config = _config(
        tmp_path, "T", smtp_section(smtp_server), digest='base_url = "https://digest.example.net"'
    )
    assert cli("--config", config, "send").exit_code == 0
    (message,) = smtp_server.handler.messages
    token = Signer(b"k" * 32).token("unsubscribe", "user0@example.org")
    assert str(message["List-Unsubscribe"]).strip() == (
        f"<https://digest.example.net/u/{token}>, "
        "<mailto:digest@example.net?subject=unsubscribe%20user0%40example.org>"
    )


def test_the_text_part_has_the_signature_separator_dash_dash_space(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = _config(tmp_path, "T", smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    (message,) = smtp_server.handler.messages
    lines = body_text(message).replace("\r\n", "\n").split("\n")
    assert "-- " in lines  # RFC 3676 4.3: exactly dash, dash, space
    assert "--" not in lines
    footer = lines[lines.index("-- ") + 1]
    assert footer.startswith("You get this digest because user0@example.org follows")
