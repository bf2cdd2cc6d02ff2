"""DKIM: every digest and alert is signed, and dkimpy's own verifier accepts the bytes that
arrive: what an SMTP server (aiosmtpd on loopback) received, and the Maildir's files.

The DNS answer the verifier gets is the record ``digest dkim-record`` prints (its strings
joined, as a resolver joins them), so a wrong record fails these tests too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import dkim
import pytest
from click.testing import Result
from conftest import SmtpHandler, SmtpServer, opened, serving_smtp, smtp_section
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pipeline import run

ALGORITHMS = ["rsa-sha256", "ed25519-sha256"]
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TITLE = "Révue hebdomadaire des préprints — apprentissage automatique, robotique et neurosciences"
# Titles a feed may send: encoded-word look-alikes, line breaks, header syntax, long non-ASCII.
HOSTILE = [
    "=?utf-8?q?Bcc=3A_victim=40example=2Eorg?= spiking networks",
    "Spiking networks\r\nBcc: victim@example.org",
    "Spiking networks: ünïcödé " + "très long titre " * 12,
    "Spiking networks <script>alert(1)</script> ; b=; h=from",
]
RSA_512 = """-----BEGIN PRIVATE KEY-----
MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA10DiT5YtUYkOs4FQ
yQnP28GFfLBlzsz342UqpFB5qPFoHcgxAx7Iw76D2d6+zXdWJg0mOHP8WMvHxHMP
0h4X7wIDAQABAkAPmr2NRXbNlWECdFp16IcwCCx0KJmIz2UdEAVyWf8n1w4rStQx
iNMhCVVRZ54ecIWaCfmPLOwPBGbXm6gRwfCJAiEA/7HVIb63iedyY+QgxSnpBBbP
T+lod9pLHtph148HuA0CIQDXgrA30mKTaTs9gIyW+a5TNvn3OTI/QdvkWODnXFu0
6wIhAONAo4OtZKStTs6XJ8T0XcQjnbeRZCb5ncBbKZCS77JVAiEAsBsZSORgrTkG
scFEIXMyosmABif1CYAV4klGr4jnX7UCIHC746cV2HaIGSUSw2A96xFxa9e3zDKr
yQ6/ZwDawfxB
-----END PRIVATE KEY-----
"""
NAME = "Ægidius Þórðarson-Müller von und zu Überlangernamensträgerhausen, Dr. rer. nat."


def _feed(path: Path) -> Path:
    items = "".join(
        f"<item><title>{_xml(title)}</title><link>https://example.org/{i}</link>"
        f"<guid>https://example.org/{i}</guid><description>Spiking neural networks, item {i}: "
        f"a  text with\ttabs and  double  spaces.</description>"
        f"<pubDate>Sun, 29 Nov 2026 0{i}:00:00 +0000</pubDate></item>"
        for i, title in enumerate(HOSTILE)
    )
    path.write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    )
    return path


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r\n", "&#13;&#10;")


def _key(folder: Path, algorithm: str) -> Path:
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "rsa-sha256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    path = folder / "keys" / f"{algorithm}.pem"
    path.parent.mkdir(exist_ok=True)
    encoding, form = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    path.write_bytes(key.private_bytes(encoding, form, serialization.NoEncryption()))
    return path


def _config(folder: Path, algorithm: str, *, smtp: str = "", digest: str = "", fetch: str = "") -> Path:
    _key(folder, algorithm)
    _feed(folder / "feed.xml")
    path = folder / "digest.toml"
    path.write_text(
        f'[digest]\ntitle = "{TITLE}"\ndatabase = "state.db"\nlookback = "3650d"\n{digest}\n'
        f"[fetch]\n{fetch}\n"
        '[outbox]\nfrom = "Équipe du digest <digest@example.org>"\n\n'
        '[[feeds]]\nname = "papers"\nurl = "feed.xml"\n\n'
        '[topics.snn]\ntitle = "Réseaux de neurones à impulsions"\nkeywords = ["spiking"]\n\n'
        f'[[subscribers]]\nemail = "ada@example.org"\nname = "{NAME}"\ntopics = ["snn"]\n\n'
        '[[subscribers]]\nemail = "bob@example.org"\ntopics = ["snn"]\n\n'
        f'[dkim]\ndomain = "example.org"\nselector = "d2026"\nkey_file = "keys/{algorithm}.pem"\n'
        f'algorithm = "{algorithm}"\n\n' + smtp,
        encoding="utf-8",
    )
    return path


def _dns(cli: Callable[..., Result], config: Path) -> Callable[..., bytes | None]:
    """A DNS lookup for dkimpy answering with the record ``digest dkim-record`` prints."""
    printed = cli("--config", config, "dkim-record")
    assert printed.exit_code == 0, printed.output
    name, strings = re.fullmatch(r'(\S+) IN TXT ((?:"[^"]{1,255}" ?)+)\n', printed.output).groups()  # type: ignore[union-attr]
    value = "".join(re.findall(r'"([^"]*)"', strings)).encode()

    def lookup(query: bytes, timeout: int = 5) -> bytes | None:
        return value if query.decode() == name else None

    return lookup


def _needs_verifier(algorithm: str) -> None:
    if algorithm == "ed25519-sha256":
        pytest.importorskip("nacl", reason="dkimpy verifies Ed25519 with PyNaCl (pip install -e '.[test]')")


def _assert_verifies(raw: bytes, lookup: Callable[..., bytes | None], *, one_click: bool) -> None:
    assert raw.startswith(b"DKIM-Signature: v=1; a="), raw[:200]
    assert dkim.verify(raw, dnsfunc=lookup), raw[:3000]
    signature = message_from_bytes(raw, policy=default)["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", " ", str(signature)).split(";") if t.strip())
    signed = tags["h"].replace(" ", "").split(":")
    assert "c" in tags and tags["c"] == "relaxed/relaxed"
    assert signed[0] == "from" and signed[-1] == "from"  # (From oversigned)
    for name in ("to", "subject", "date", "message-id", "list-id", "list-unsubscribe", "mime-version"):
        assert name in signed
    assert ("list-unsubscribe-post" in signed) is one_click
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[:12])
    # Tampering breaks it: a body byte, a signed header, a second From on top.
    head, body = raw.split(b"\r\n\r\n", 1)
    changed = body.replace(b"Spiking", b"Spikinh", 1)
    assert changed != body and not dkim.verify(head + b"\r\n\r\n" + changed, dnsfunc=lookup)
    assert not dkim.verify(raw.replace(b"\r\nDate: ", b"\r\nDate:  Mon,", 1), dnsfunc=lookup)
    assert not dkim.verify(b"From: evil@example.net\r\n" + raw, dnsfunc=lookup)
    # Relaxed: refolding white space on the way does not.
    assert dkim.verify(raw.replace(b"\r\nMIME-Version: 1.0", b"\r\nMIME-Version:   1.0 ", 1), dnsfunc=lookup)


class RawHandler(SmtpHandler):
    """Keeps the bytes received (after the server's dot-unstuffing), as a verifier sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    def _store(self, envelope: Any) -> None:
        self.raw.append(envelope.content)
        super()._store(envelope)


@pytest.fixture
def raw_smtp() -> Iterator[SmtpServer]:
    with serving_smtp(RawHandler()) as server:
        yield server


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("one_click", [False, True], ids=["mailto", "base_url"])
def test_digests_sent_over_smtp_verify_with_dkimpy(
    cli: Callable[..., Result],
    tmp_path: Path,
    raw_smtp: SmtpServer,
    algorithm: str,
    one_click: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _needs_verifier(algorithm)
    monkeypatch.setenv("DIGEST_WEB_SECRET", "a-test-signing-key-for-reader-links-0123456789")
    digest = 'base_url = "https://digest.example.org"' if one_click else ""
    config = _config(tmp_path, algorithm, smtp=smtp_section(raw_smtp), digest=digest)
    sent = cli("--config", config, "send")
    assert sent.exit_code == 0, sent.output
    handler = raw_smtp.handler
    assert isinstance(handler, RawHandler)
    assert len(handler.raw) == 2
    lookup = _dns(cli, config)
    for raw in handler.raw:
        _assert_verifies(raw, lookup, one_click=one_click)
    ada = next(m for m in handler.messages if "ada@" in str(m["To"]))
    # (encoded and folded, and signed so; the email package puts a space where a name's encoded
    # words meet within a word, hence the comparison without spaces)
    assert "".join(NAME.split()) in "".join(str(ada["To"]).split())
    assert "".join(TITLE.split()) in "".join(str(ada["List-Id"]).split())
    assert "Bcc" not in ada and "Bcc: victim" not in str(ada["Subject"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digests_in_the_maildir_verify_with_dkimpy(
    cli: Callable[..., Result], tmp_path: Path, algorithm: str
) -> None:
    _needs_verifier(algorithm)
    config = _config(tmp_path, algorithm)
    assert cli("--config", config, "send").exit_code == 0
    files = sorted((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 2
    lookup = _dns(cli, config)
    for file in files:
        _assert_verifies(file.read_bytes(), lookup, one_click=False)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_large_send_signs_in_the_render_helpers_and_they_verify(
    cli: Callable[..., Result], tmp_path: Path, algorithm: str
) -> None:
    """300 subscribers or more: digests are rendered, composed and signed in helper processes."""
    _needs_verifier(algorithm)
    config = _config(tmp_path, algorithm, digest="render_workers = 2")
    people = "".join(
        f'[[subscribers]]\nemail = "reader{i}@example.org"\nname = "Lecteur n°{i}"\ntopics = ["snn"]\n\n'
        for i in range(320)
    )
    config.write_text(config.read_text(encoding="utf-8") + people, encoding="utf-8")
    assert cli("--config", config, "send").exit_code == 0
    files = sorted((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 322
    lookup = _dns(cli, config)
    for file in files[::40]:
        assert dkim.verify(file.read_bytes(), dnsfunc=lookup)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("over_smtp", [False, True], ids=["maildir", "smtp"])
def test_feed_alerts_are_signed_too(
    cli: Callable[..., Result], tmp_path: Path, raw_smtp: SmtpServer, algorithm: str, over_smtp: bool
) -> None:
    _needs_verifier(algorithm)
    config = _config(
        tmp_path,
        algorithm,
        smtp=smtp_section(raw_smtp) if over_smtp else "",
        digest='admin = "ops@example.org"',
        fetch='alert_after = "1h"',
    )
    (tmp_path / "feed.xml").unlink()  # the feed fails from now on
    with opened(config) as (settings, store):
        for hours in (0, 1.5):
            run.fetch_all(settings, store, clock=lambda h=hours: T0 + timedelta(hours=h), force=True)
    if over_smtp:
        assert isinstance(raw_smtp.handler, RawHandler)
        (raw,) = raw_smtp.handler.raw
    else:
        (file,) = (tmp_path / "outbox" / "new").iterdir()
        raw = file.read_bytes()
    assert b"feed papers has been failing" in raw.replace(b"\r\n ", b" ") or b"=?utf-8?" in raw
    lookup = _dns(cli, config)
    assert raw.startswith(b"DKIM-Signature: ")
    assert dkim.verify(raw, dnsfunc=lookup)
    assert not dkim.verify(raw.replace(b"failed 2 time", b"failed 3 time"), dnsfunc=lookup)


def test_the_signature_is_computed_over_the_final_message(tmp_path: Path) -> None:
    """A message that is not CRLF yet (an alert built elsewhere) is made so before it is
    signed, and the bytes that go out are the bytes signed."""
    from pipeline.models import OutgoingMessage
    from pipeline.sign import DkimSigner

    key = ed25519.Ed25519PrivateKey.generate()
    signer = DkimSigner("example.org", "s1", key)
    message = OutgoingMessage(
        "a@example.org",
        "b@example.org",
        "<1@example.org>",
        b"From: a@example.org\nSubject: x\n\nline  one\n.dot",
    )
    signed = signer.sign(message)
    assert b"\n" not in signed.data.replace(b"\r\n", b"") and signed.data.endswith(b"\r\n.dot\r\n")
    record = signer.record_value().encode()
    if _has_nacl():
        assert dkim.verify(signed.data, dnsfunc=lambda name, timeout=5: record)


def _has_nacl() -> bool:
    try:
        import nacl  # noqa: F401
    except ImportError:
        return False
    return True


# --- the key and the record ---------------------------------------------------------------------------


def test_dkim_record_prints_the_txt_record_in_strings_of_at_most_255_bytes(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    config = _config(tmp_path, "rsa-sha256")
    printed = cli("--config", config, "dkim-record").output.strip()
    assert printed.startswith('d2026._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MIIB')
    strings = re.findall(r'"([^"]*)"', printed)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    checked = cli("--config", config, "check")
    assert checked.exit_code == 0, checked.output
    assert "DKIM: signing as d=example.org s=d2026 (rsa-sha256, RSA 2048 bits)" in checked.output
    assert printed in checked.output
    config = _config(tmp_path, "ed25519-sha256")
    printed = cli("--config", config, "dkim-record").output.strip()
    assert re.fullmatch(
        r'd2026\._domainkey\.example\.org\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="', printed
    )


def test_dkim_record_without_a_dkim_section_says_so(cli: Callable[..., Result], tmp_path: Path) -> None:
    config = _config(tmp_path, "rsa-sha256")
    config.write_text(config.read_text(encoding="utf-8").split("[dkim]")[0], encoding="utf-8")
    printed = cli("--config", config, "dkim-record")
    assert printed.exit_code == 2 and "has no [dkim] section" in printed.output


def _write(path: Path, key: Any, encryption: Any = None) -> None:
    encoding, form = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    path.write_bytes(key.private_bytes(encoding, form, encryption or serialization.NoEncryption()))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "key file {key} does not exist"),
        ("ed25519 for rsa", 'holds an Ed25519 key, but dkim.algorithm is "rsa-sha256"'),
        ("small rsa", "holds an RSA key of 512 bits: verifiers refuse keys under 1024 bits"),
        ("encrypted", "is encrypted: digest needs it unencrypted"),
        ("public", "holds a public key: key_file is the private one"),
        ("garbage", "is not a private key in PEM or DER form"),
        ("unreadable", "cannot read key file {key}"),
    ],
)
def test_an_unusable_key_is_named_with_its_file_and_line_by_check_and_send(
    cli: Callable[..., Result], tmp_path: Path, case: str, expected: str
) -> None:
    config = _config(tmp_path, "rsa-sha256")
    key = tmp_path / "keys" / "rsa-sha256.pem"
    if case == "missing":
        key.unlink()
    elif case == "ed25519 for rsa":
        _write(key, ed25519.Ed25519PrivateKey.generate())
    elif case == "small rsa":
        key.write_text(RSA_512)  # (cryptography no longer makes keys this small)
    elif case == "encrypted":
        _write(key, ed25519.Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"pw"))
    elif case == "public":
        public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        key.write_bytes(
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    elif case == "garbage":
        key.write_text("not a key\n")
    else:
        key.unlink()
        key.mkdir()  # (reading a folder fails, even as root)
    line = config.read_text(encoding="utf-8").splitlines().index('key_file = "keys/rsa-sha256.pem"') + 1
    want = f"{config}:{line}: dkim.key_file: " if case in ("missing", "unreadable") else f"{config}:{line}: "
    for verb in ("check", "send", "dkim-record"):
        result = cli("--config", config, verb)
        assert result.exit_code == 2, (verb, result.output)
        assert want in result.output and expected.format(key=key) in result.output, result.output
    assert not (tmp_path / "outbox" / "new").exists() or not list((tmp_path / "outbox" / "new").iterdir())
    with opened(config) as (_, store):
        assert store.count_due(T0 + timedelta(days=3650)) == 0  # nothing planned, nothing committed


def test_the_readme_openssl_commands_make_keys_digest_takes(tmp_path: Path) -> None:
    """The key generation commands of the README, run as written."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^(openssl genpkey .*)$", readme, re.M)
    assert len(commands) == 2, commands
    from pipeline.sign import load_key

    for command, algorithm in zip(commands, ["rsa-sha256", "ed25519-sha256"], strict=True):
        subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True)
        path = tmp_path / re.search(r"-out (\S+)", command).group(1)  # type: ignore[union-attr]
        key = load_key(str(path), algorithm)
        assert (key.key_size == 2048) if isinstance(key, rsa.RSAPrivateKey) else algorithm == "ed25519-sha256"
    assert sys.executable
