"""A real Dovecot IMAP server on loopback ports, started per test, for the bounce mailbox tests.

``running_dovecot(tmp_path)`` starts a private instance (``dovecot -F -c FILE``) with its own
base, state and mail directories; the system's Dovecot is never configured, started or
stopped. It listens on 127.0.0.1 only: ``imaps_port`` speaks implicit TLS, ``imap_port``
STARTTLS (plain-text logins refused before it), both with a certificate for 127.0.0.1 and
localhost signed by a CA made for the test (``ca_file``). One user (a passwd-file) has a
Maildir (``maildir``), so a test can look at the files themselves as well as over IMAP.

Why it is shaped so (Dovecot 2.3.19 here):

- As root, the instance lives in a short directory under /tmp, not in pytest's ``tmp_path``:
  Dovecot's processes drop root (login as ``dovenull``, the mail process as ``nobody``), and
  they cannot enter ``/tmp/pytest-of-root`` (mode 0700). The CA file goes to ``tmp_path`` and
  the log is copied there at the end. As another user, everything runs as that user.
- ``auth_failure_delay = 0`` and anvil's penalty socket closed: a wrong password is answered
  at once, not after seconds (as in tests/postfix_server.py).
- Stopping sends SIGTERM to the whole process group (the master alone waits about a second
  for its children), then SIGKILL after 5 seconds.
"""

from __future__ import annotations

import functools
import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class DovecotError(RuntimeError):
    """The private Dovecot did not start or stop as asked."""


def _binary(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


@functools.cache
def dovecot_available() -> str | None:
    """None when a private Dovecot IMAP server can run here, else why not."""
    if _binary("dovecot") is None:
        return "dovecot not found (Debian packages dovecot-core and dovecot-imapd)"
    libexec = Path("/usr/lib/dovecot")
    if not (libexec / "imap").exists() or not (libexec / "imap-login").exists():
        return "Dovecot's imap server is missing (Debian package dovecot-imapd)"
    if os.geteuid() == 0:
        for user in ("dovecot", "dovenull", "nobody"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"no {user} user (is dovecot-core installed?)"
    try:
        import trustme  # noqa: F401  (the test extras have it)
    except ImportError:
        return "the trustme package is missing (pip install -e '.[test]')"
    return None


@dataclass
class DovecotServer:
    """A running private Dovecot: where to connect, whom as, what it trusts, where mail is."""

    host: str
    imap_port: int  # STARTTLS
    imaps_port: int  # implicit TLS
    ca_file: Path
    user: str
    password: str
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        """The user's Maildir (INBOX); folders are its ``.Name`` sub-directories."""
        return self.root / "mail" / self.user

    def client(self) -> imaplib.IMAP4_SSL:
        """A logged-in IMAP connection over verified TLS (log it out when done)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=context, timeout=10)
        conn.login(self.user, self.password)
        return conn

    def append(self, data: bytes, folder: str = "INBOX") -> None:
        conn = self.client()
        try:
            status, reply = conn.append(folder, None, None, data)
            if status != "OK":
                raise DovecotError(f"APPEND to {folder} failed: {reply!r}")
        finally:
            conn.logout()

    def folder(self, folder: str = "INBOX") -> list[bytes]:
        """Every message in ``folder`` not marked deleted, in UID order (empty if no folder)."""
        conn = self.client()
        try:
            status, _ = conn.select(f'"{folder}"', readonly=True)
            if status != "OK":
                return []
            _, found = conn.uid("SEARCH", "UNDELETED")
            out = []
            for uid in (found[0] or b"").split():
                _, parts = conn.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
                out += [p[1] for p in parts if isinstance(p, tuple)]
            return out
        finally:
            conn.logout()

    def log_tail(self, lines: int = 30) -> str:
        log = self.root / "dovecot.log"
        text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        return "\n".join(["--- dovecot.log ---", *text])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _conf(server: DovecotServer) -> str:
    root = server.root
    if os.geteuid() == 0:
        users = "uid=nobody gid=nogroup"
        internal = ""
    else:
        me = pwd.getpwuid(os.geteuid()).pw_name
        users = f"uid={os.geteuid()} gid={os.getegid()}"
        internal = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
    return f"""\
# A private Dovecot IMAP server for one test.
protocols = imap
listen = {HOST}
instance_name = {root.name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{internal}ssl = required
ssl_cert = <{root}/tls/cert.pem
ssl_key = <{root}/tls/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = {users} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {server.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {server.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def _write_tls(root: Path, tmp_path: Path) -> Path:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = root / "tls"
    tls.mkdir(mode=0o700)
    cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tls / "key.pem"))
    ca_file = tmp_path / "dovecot-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


def _make_root(user: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="dv-", dir="/tmp"))
    root.chmod(0o755)
    for sub in ("run", "state", "mail", f"mail/{user}"):
        (root / sub).mkdir()
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for sub in ("mail", f"mail/{user}"):
            os.chown(root / sub, nobody.pw_uid, nobody.pw_gid)
    return root


def _wait_ready(server: DovecotServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(server.ca_file))
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise DovecotError(f"dovecot exited with {server.process.returncode}\n{server.log_tail()}")
        try:
            with imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=context, timeout=2) as conn:
                conn.noop()
            with socket.create_connection((server.host, server.imap_port), timeout=2) as sock:
                if not sock.recv(100).startswith(b"* OK"):
                    raise OSError("no IMAP greeting on the STARTTLS port")
            return
        except (OSError, imaplib.IMAP4.error) as exc:
            if time.monotonic() > deadline:
                raise DovecotError(f"no IMAP server after {timeout} s ({exc})\n{server.log_tail()}") from exc
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                state, _ppid, pgrp = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                if int(pgrp) == pgid and state != "Z":
                    return True
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _group_alive(process.pid):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2)


def _discard_root(root: Path, tmp_path: Path) -> None:
    with suppress(OSError):
        shutil.copyfile(root / "dovecot.log", tmp_path / "dovecot.log")
    shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_dovecot(
    tmp_path: Path, *, user: str = "bounces", password: str = "b0unce-pass", start_timeout: float = 15.0
) -> Iterator[DovecotServer]:
    """A private Dovecot IMAP server on 127.0.0.1 for the length of the block."""
    reason = dovecot_available()
    if reason is not None:
        raise DovecotError(f"cannot run Dovecot here: {reason}")
    root = _make_root(user)
    with ExitStack() as cleanup:
        cleanup.callback(_discard_root, root, tmp_path)
        ca_file = _write_tls(root, tmp_path)
        server = DovecotServer(HOST, _free_port(), _free_port(), ca_file, user, password, root)
        (root / "passwd").write_text(f"{user}:{{PLAIN}}{password}\n")
        (root / "dovecot.conf").write_text(_conf(server))
        out = (root / "stdout").open("wb")
        cleanup.callback(out.close)
        server.process = subprocess.Popen(
            [str(_binary("dovecot")), "-F", "-c", str(root / "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped (or killed) as one
            cwd=root,
        )
        cleanup.callback(_stop, server.process)
        _wait_ready(server, start_timeout)
        yield server
