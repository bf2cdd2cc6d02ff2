"""SpamAssassin (Debian ``spamassassin``) scores a signed digest no worse than the same digest
unsigned, and its own DKIM verifier (Mail::DKIM, not dkimpy) finds the signature valid.

SpamAssassin looks the key up in DNS: a DNS server on loopback, started here, answers the
record ``digest dkim-record`` prints and NXDOMAIN to everything else; every other network
test (blocklists, Razor, Pyzor, DCC) is off. One SpamAssassin run per message (each takes
seconds to start), two messages.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from click.testing import Result
from test_dkim_sign import _config

pytestmark = pytest.mark.skipif(
    shutil.which("spamassassin") is None,
    reason="spamassassin is not installed (apt-get install spamassassin)",
)


@contextmanager
def dns_server(records: dict[str, list[str]]) -> Iterator[int]:
    """A UDP DNS server on 127.0.0.1 answering TXT ``records`` (name -> strings); its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
                query = dns.message.from_wire(data)
            except (TimeoutError, dns.exception.DNSException):
                continue
            response = dns.message.make_response(query)
            question = query.question[0]
            strings = records.get(question.name.to_text().lower())
            if strings and question.rdtype == dns.rdatatype.TXT:
                text = " ".join(f'"{s}"' for s in strings)
                response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "TXT", text))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        sock.close()


def _score(message: bytes, port: int, home: Path) -> tuple[float, set[str]]:
    """SpamAssassin's score and rules for ``message`` (test mode, a private home, no learning)."""
    options = [
        f"dns_server [127.0.0.1]:{port}",
        "dns_available yes",
        "skip_rbl_checks 1",
        "use_razor2 0",
        "use_pyzor 0",
        "use_dcc 0",
        "use_bayes 0",
        "use_auto_welcomelist 0",
    ]
    done = subprocess.run(
        ["spamassassin", "-t", *(a for o in options for a in ("--cf", o))],
        input=message,
        capture_output=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        timeout=120,
        check=True,
    )
    report = done.stdout.decode(errors="replace").split("Content analysis details:", 1)[1]
    score = float(re.search(r"\((-?[\d.]+) points", report).group(1))  # type: ignore[union-attr]
    return score, set(re.findall(r"^\s*-?[\d.]+ ([A-Z][A-Z0-9_]+)\s", report, re.M))


def test_a_signed_digest_scores_no_worse_and_spamassassin_verifies_it(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    for name in ("signed", "unsigned"):
        (tmp_path / name).mkdir()
    signed_config = _config(tmp_path / "signed", "rsa-sha256")
    unsigned_config = _config(tmp_path / "unsigned", "rsa-sha256")
    unsigned_config.write_text(
        unsigned_config.read_text(encoding="utf-8").split("[dkim]")[0], encoding="utf-8"
    )
    messages = {}
    for name, config in (("signed", signed_config), ("unsigned", unsigned_config)):
        assert cli("--config", config, "send").exit_code == 0
        first = sorted((config.parent / "outbox" / "new").iterdir())[0]
        messages[name] = first.read_bytes()
    assert messages["signed"].startswith(b"DKIM-Signature:")
    printed = cli("--config", signed_config, "dkim-record").output
    record, strings = re.fullmatch(r"(\S+) IN TXT (.*)\n", printed).groups()  # type: ignore[union-attr]
    home = tmp_path / "home"
    home.mkdir()
    with dns_server({record: re.findall(r'"([^"]*)"', strings)}) as port:
        signed, signed_rules = _score(messages["signed"], port, home)
        unsigned, unsigned_rules = _score(messages["unsigned"], port, home)
    assert {"DKIM_SIGNED", "DKIM_VALID", "DKIM_VALID_AU"} <= signed_rules, signed_rules
    assert "DKIM_INVALID" not in signed_rules
    assert signed <= unsigned, (signed, signed_rules, unsigned, unsigned_rules)
