"""A real Postfix on loopback ports, configured per test, for the tests that need a real MTA.

``running_postfix(tmp_path, ...)`` starts a private Postfix instance (``postfix -c DIR start``)
with its own ``main.cf``, ``master.cf``, queue and data directories; the system's Postfix is
never configured, started or stopped (of ``/etc/postfix`` only the package's
``postfix-files`` and ``dynamicmaps.cf`` are read, through ``meta_directory``). Its smtpd
listens on 127.0.0.1 only: ``smtp_port`` speaks plain SMTP with optional STARTTLS,
``smtps_port`` implicit TLS (RFC 8314), with a certificate for 127.0.0.1 and localhost signed
by a CA made for the test (``ca_file``). AUTH PLAIN and LOGIN come from a private Dovecot
(``dovecot -F -c FILE``, auth only) answering Postfix's ``smtpd_sasl_type = dovecot`` on a
socket in the instance's queue directory; the users are a passwd-file of ``auth_users``.

Every message Postfix accepts is delivered by its own ``virtual`` agent into one Maildir
whatever the domain (``virtual_mailbox_domains = static:all``), with ``Delivered-To`` naming
the envelope recipient: no relay, no second server, nothing that can defer. ``messages()``
waits until the queue is empty and reads that Maildir; ``log_lines()`` reads Postfix's own
log (``maillog_file``, Postfix 3.4+, so no syslog). No DNS is used anywhere
(``smtp_dns_support_level = disabled``, ``smtpd_peername_lookup = no``).

Why it is shaped so (each seen on Postfix 3.7.11 and Dovecot 2.3.19 here):

- The instance lives in a short directory under /tmp, not in pytest's ``tmp_path``: the
  daemons drop root for the ``postfix``, ``dovecot`` and ``nobody`` users, which cannot
  enter ``/tmp/pytest-of-root`` (mode 0700), and a UNIX socket path must stay under 108
  bytes. The CA file goes to ``tmp_path``, and the logs are copied there at the end.
- Postfix's master refuses a ``data_directory`` it does not own (``open lock file
  .../master.lock: Permission denied``); the queue subdirectories ``postfix start`` makes.
- Postfix treats a configuration file changed within the last second as one still being
  edited: it sleeps 300 ms and reads it again, which made every start take ~2 s. The files
  are written dated a minute ago.
- ``maillog_file`` must start with one of ``maillog_file_prefixes`` (default ``/var,
  /dev/stdout``), so the instance's own directory is added there.
- ``smtpd_client_event_limit_exceptions`` defaults to ``$mynetworks``, which would exempt
  127.0.0.1 from ``smtpd_client_connection_count_limit``: it is emptied.
- Dovecot delays a failed AUTH (``auth_failure_delay``, 2 s) and then adds a per-IP
  penalty (4 s more for the second failure: ``smtplib.login`` tries PLAIN, then LOGIN).
  The delay is set to 0, which 2.3.19 still rounds up to its 0.5 s failure tick, and the
  penalty is off because the auth process may not open anvil's penalty socket.
- ``postfix stop`` sends SIGTERM to the master and then polls once a second; the harness
  sends the same signal and polls every 20 ms (the master takes its process group down
  with it), then SIGKILLs the group as ``postfix stop`` does after 5 seconds. Dovecot's
  master alone waits about a second for its children, so its whole group gets the SIGTERM.
"""

from __future__ import annotations

import email
import email.policy
import functools
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

HOST = "127.0.0.1"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
QUEUES_IN_FLIGHT = ("maildrop", "incoming", "active")
TlsMode = Literal["starttls", "tls", "both"]


class PostfixError(RuntimeError):
    """The private Postfix or Dovecot did not start, stop or deliver as asked."""


def _binary(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def _version(text: str) -> tuple[int, ...]:
    digits = text.strip().split()[0].split("-")[0]
    return tuple(int(p) for p in digits.split(".") if p.isdigit())


@functools.cache
def postfix_available(*, sasl: bool = True) -> str | None:
    """None when a private Postfix (and, with ``sasl``, Dovecot) can run here, else why not."""
    if os.geteuid() != 0:
        return "Postfix's master daemon must be started as root"
    for name in ("postfix", "postconf") + (("dovecot",) if sasl else ()):
        if _binary(name) is None:
            package = "dovecot-core" if name == "dovecot" else "postfix"
            return f"{name} not found (Debian package {package})"
    users = ["postfix", "nobody"] + (["dovecot", "dovenull"] if sasl else [])
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"no {user} user (is the package installed?)"
    version = subprocess.run(
        [str(_binary("postconf")), "-dh", "mail_version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0 or _version(version.stdout) < (3, 4):
        return f"Postfix 3.4 or later needed for maillog_file, found {version.stdout.strip() or '?'}"
    try:
        import trustme  # noqa: F401  (the test extras have it; it makes the CA and certificate)
    except ImportError:
        return "the trustme package is missing (pip install -e '.[test]')"
    return None


@dataclass
class PostfixServer:
    """A running private Postfix: where to connect, what it trusts, what it delivered."""

    host: str
    smtp_port: int
    smtps_port: int | None
    ca_file: Path | None
    root: Path
    auth_users: Mapping[str, str] = field(default_factory=dict)
    _pgids: list[int] = field(default_factory=list)
    _dovecot: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The plain/STARTTLS port, under the name conftest's ``smtp_section`` reads."""
        return self.smtp_port

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "sink"

    def log_lines(self) -> list[str]:
        """Postfix's log so far (postlogd writes it a moment after the event)."""
        log = self.root / "maillog"
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 5.0) -> list[str]:
        """The log lines containing ``text``, once there are ``count`` of them (postlogd may
        write a line a moment after the reply the client saw). Raises PostfixError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_lines() if text in line]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise PostfixError(f"{len(lines)} of {count} log lines with {text!r}\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Postfix's log and of Dovecot's, for failure messages."""
        parts = ["--- maillog ---", *self.log_lines()[-lines:]]
        dovecot_log = self.root / "dovecot" / "dovecot.log"
        if dovecot_log.exists():
            parts += ["--- dovecot.log ---", *dovecot_log.read_text(errors="replace").splitlines()[-lines:]]
        stdout = self.root / "dovecot" / "stdout"
        if stdout.exists() and stdout.stat().st_size:
            parts += ["--- dovecot stdout ---", *stdout.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(parts)

    def _queued(self, *queues: str) -> list[Path]:
        queue = self.root / "queue"
        return [f for q in queues if (queue / q).is_dir() for f in (queue / q).rglob("*") if f.is_file()]

    def messages(self, *, count: int | None = None, timeout: float = 10.0) -> list[EmailMessage]:
        """Every message delivered so far, oldest first, once the queue is empty (and at least
        ``count`` arrived). Raises PostfixError when one was deferred or time ran out."""
        deadline = time.monotonic() + timeout
        while True:
            files = self._delivered()
            if not self._queued(*QUEUES_IN_FLIGHT) and (count is None or len(files) >= count):
                break
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"queue not empty or fewer than {count} messages after {timeout} s "
                    f"({len(files)} delivered)\n{self.log_tail()}"
                )
            time.sleep(0.02)
        if self._queued("deferred", "hold"):
            raise PostfixError(f"Postfix deferred a message it accepted\n{self.log_tail()}")
        return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]

    def to(self, address: str, *, count: int | None = None, timeout: float = 10.0) -> list[EmailMessage]:
        """The delivered messages whose envelope recipient was ``address`` (waits as ``messages``)."""
        return [m for m in self.messages(count=count, timeout=timeout) if m["Delivered-To"] == address]

    def _delivered(self) -> list[Path]:
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        return sorted(new.iterdir(), key=lambda f: (f.stat().st_mtime_ns, f.name))

    def leftover_processes(self) -> list[str]:
        """Live (not zombie) processes of this instance: its process groups, or any process
        whose environment names its Postfix configuration directory."""
        marker = f"MAIL_CONFIG={self.root / 'conf'}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
                if state == "Z":
                    continue
                mine = int(pgrp) in self._pgids or marker in (proc / "environ").read_bytes().split(b"\0")
                if mine:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{proc.name} {command}")
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _main_cf(
    root: Path,
    *,
    starttls: bool,
    tls_required: bool,
    any_tls: bool,
    sasl: bool,
    auth_required: bool,
    recipient_access: Mapping[str, str] | None,
    message_size_limit: int | None,
    client_connection_limit: int | None,
    extra: Mapping[str, str] | None,
) -> dict[str, str]:
    cf = {
        "compatibility_level": "3.6",
        "queue_directory": f"{root}/queue",
        "data_directory": f"{root}/data",
        # postfix-files and dynamicmaps.cf come with the package; only they are read from /etc.
        "meta_directory": "/etc/postfix",
        "maillog_file": f"{root}/maillog",
        "maillog_file_prefixes": str(root),
        "inet_interfaces": HOST,
        "inet_protocols": "ipv4",
        "myhostname": "localhost",
        "mydomain": "localdomain",
        "myorigin": "localhost",
        "mydestination": "",
        "mynetworks": "127.0.0.0/8",
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        "smtpd_banner": "$myhostname ESMTP Postfix (digest test instance)",
        "smtpd_error_sleep_time": "0",
        "in_flow_delay": "0",
        # Every domain is "ours": delivered to one Maildir by the virtual agent as nobody.
        "virtual_mailbox_domains": "static:all",
        "virtual_mailbox_base": f"{root}/mail",
        "virtual_mailbox_maps": "static:sink/",
        "virtual_uid_maps": f"static:{pwd.getpwnam('nobody').pw_uid}",
        "virtual_gid_maps": f"static:{pwd.getpwnam('nobody').pw_gid}",
        "virtual_mailbox_limit": "0",
        "mailbox_size_limit": "0",
        "smtpd_client_event_limit_exceptions": "",
        "smtpd_relay_restrictions": (
            "permit_sasl_authenticated, reject"
            if auth_required
            else "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
        ),
        "smtpd_recipient_restrictions": (
            f"check_recipient_access texthash:{root}/conf/recipient_access, permit"
            if recipient_access
            else "permit"
        ),
    }
    if message_size_limit is not None:
        cf["message_size_limit"] = str(message_size_limit)
    if client_connection_limit is not None:
        cf["smtpd_client_connection_count_limit"] = str(client_connection_limit)
    if any_tls:
        cf |= {
            "smtpd_tls_chain_files": f"{root}/tls/server.pem",
            "smtpd_tls_security_level": ("encrypt" if tls_required else "may") if starttls else "none",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_auth_only": "yes",
        }
    if sasl:
        cf |= {
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": "private/auth",  # relative to queue_directory, where Dovecot puts it
        }
    cf |= dict(extra or {})
    return cf


# Only what this setup uses; chroot is off everywhere (the instance is not a chroot jail).
MASTER_CF = """\
pickup     unix  n  -  n  60     1  pickup
cleanup    unix  n  -  n  -      0  cleanup
qmgr       unix  n  -  n  300    1  qmgr
tlsmgr     unix  -  -  n  1000?  1  tlsmgr
rewrite    unix  -  -  n  -      -  trivial-rewrite
bounce     unix  -  -  n  -      0  bounce
defer      unix  -  -  n  -      0  bounce
trace      unix  -  -  n  -      0  bounce
verify     unix  -  -  n  -      1  verify
flush      unix  n  -  n  1000?  0  flush
proxymap   unix  -  -  n  -      -  proxymap
proxywrite unix  -  -  n  -      1  proxymap
smtp       unix  -  -  n  -      -  smtp
relay      unix  -  -  n  -      -  smtp
showq      unix  n  -  n  -      -  showq
error      unix  -  -  n  -      -  error
retry      unix  -  -  n  -      -  error
discard    unix  -  -  n  -      -  discard
virtual    unix  -  n  n  -      -  virtual
anvil      unix  -  -  n  -      1  anvil
scache     unix  -  -  n  -      1  scache
postlog    unix-dgram n - n  -   1  postlogd
"""


def _dovecot_conf(root: Path) -> str:
    d = root / "dovecot"
    return f"""\
# A private Dovecot that only authenticates, for Postfix's smtpd_sasl_type = dovecot.
protocols =
instance_name = {root.name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# a wrong password is answered at the auth process's next 0.5 s tick, not after 2 seconds
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
# The auth process finds no penalty socket it may use, so it turns its per-IP penalty off
# (else a second wrong password from 127.0.0.1 waits 4 s, and smtplib.login tries two mechanisms).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  unix_listener {root}/queue/private/auth {{
    mode = 0666
  }}
}}
"""


def _write_tls(root: Path, tmp_path: Path) -> Path:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = root / "tls"
    tls.mkdir(mode=0o700)
    # smtpd_tls_chain_files: the key first, then the certificate chain (Postfix 3.4+).
    server_pem = tls / "server.pem"
    server_pem.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    server_pem.chmod(0o600)
    ca_file = tmp_path / "postfix-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


def _greet(port: int, *, implicit_tls: bool, ca_file: Path | None, timeout: float) -> None:
    """Connect, read the 220 greeting, QUIT: proof that smtpd answers on ``port``."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if implicit_tls:
            context = ssl.create_default_context(cafile=str(ca_file))
            sock = context.wrap_socket(raw, server_hostname=HOST)
        reader = sock.makefile("rb")
        greeting = reader.readline()
        if not greeting.startswith(b"220"):
            raise PostfixError(f"port {port} greeted with {greeting!r}")
        sock.sendall(b"QUIT\r\n")
        reader.readline()


def _wait_ready(server: PostfixServer, *, sasl: bool, timeout: float) -> None:
    """Until Dovecot's socket exists and every port greets with 220; fail fast on a fatal log line."""
    deadline = time.monotonic() + timeout

    def check(what: str, error: BaseException | None = None) -> None:
        fatal = [line for line in server.log_lines() if " fatal: " in line or " panic: " in line]
        if fatal:
            raise PostfixError(f"{fatal[0]}\n{server.log_tail()}") from error
        if server._dovecot is not None and server._dovecot.poll() is not None:
            raise PostfixError(f"dovecot exited with {server._dovecot.returncode}\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise PostfixError(f"{what} after {timeout} s\n{server.log_tail()}") from error
        time.sleep(0.02)

    auth_socket = server.root / "queue" / "private" / "auth"
    while sasl and not auth_socket.exists():
        check(f"no Dovecot auth socket {auth_socket}")
    ports = [(server.smtp_port, False)] + ([(server.smtps_port, True)] if server.smtps_port else [])
    for port, implicit in ports:
        while True:
            try:
                _greet(port, implicit_tls=implicit, ca_file=server.ca_file, timeout=2.0)
                break
            except (OSError, PostfixError) as error:
                check(f"no 220 on port {port} ({error})", error)
    # smtpd tells anvil of a disconnect before it logs "disconnect from": once every probe is
    # logged, no probe still counts against smtpd_client_connection_count_limit.
    while sum("disconnect from" in line for line in server.log_lines()) < len(ports):
        check("the readiness probes' disconnects not logged")


def _master_pid(root: Path) -> int | None:
    with suppress(OSError, ValueError):
        return int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
    return None


def _runs_with_config(pid: int, conf: Path) -> bool:
    """Whether process ``pid`` is a Postfix daemon of this configuration (not a reused pid)."""
    try:
        return f"MAIL_CONFIG={conf}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                state, _ppid, pgrp = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                if int(pgrp) == pgid and state != "Z":
                    return True
    return False


def _stop_group(pgid: int, leader: int | None, grace: float = 5.0) -> None:
    """SIGTERM the leader (or the group), wait up to ``grace`` seconds, then SIGKILL the group."""
    with suppress(ProcessLookupError):
        if leader is not None:
            os.kill(leader, signal.SIGTERM)
        else:
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _group_alive(pgid):
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _write_settled(path: Path, text: str) -> None:
    """Write a configuration file dated a minute ago. Postfix reads a file changed within the
    last second as one still being edited: it waits 300 ms and reads again, up to ~2 s."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    root.chmod(0o755)
    for sub in ("conf", "queue", "data", "mail", "dovecot", "dovecot/run", "dovecot/state"):
        (root / sub).mkdir(exist_ok=True)
    postfix = pwd.getpwnam("postfix")
    nobody = pwd.getpwnam("nobody")
    os.chown(root / "data", postfix.pw_uid, postfix.pw_gid)
    os.chown(root / "mail", nobody.pw_uid, nobody.pw_gid)
    return root


@contextmanager
def running_postfix(
    tmp_path: Path,
    *,
    tls: bool | TlsMode = False,
    tls_required: bool = False,
    auth_users: Mapping[str, str] | None = None,
    auth_required: bool = False,
    recipient_access: Mapping[str, str] | None = None,
    message_size_limit: int | None = None,
    client_connection_limit: int | None = None,
    main_cf: Mapping[str, str] | None = None,
    start_timeout: float = 15.0,
) -> Iterator[PostfixServer]:
    """A private Postfix on 127.0.0.1 for the length of the block.

    ``tls``: False (plain only); True or "starttls" (STARTTLS on ``smtp_port``); "tls" (an
    implicit-TLS ``smtps_port`` beside a plain ``smtp_port``); "both". With TLS on, AUTH is
    offered only over TLS (``smtpd_tls_auth_only``); ``tls_required`` makes STARTTLS
    mandatory. ``auth_users`` (login -> password) turns on AUTH PLAIN/LOGIN through Dovecot;
    ``auth_required`` rejects unauthenticated clients at RCPT (``554 5.7.1 ... Access
    denied``). ``recipient_access`` maps an address to an access(5) action: ``"450 4.2.0 try
    later"``, ``"550 5.1.1 no such user"``, ``"REJECT"``. ``main_cf`` adds or overrides any
    main.cf parameter.
    """
    reason = postfix_available(sasl=bool(auth_users))
    if reason is not None:
        raise PostfixError(f"cannot run Postfix here: {reason}")
    if auth_required and not auth_users:
        raise ValueError("auth_required needs auth_users")
    mode: TlsMode | None = "starttls" if tls is True else (tls or None)
    starttls, implicit = mode in ("starttls", "both"), mode in ("tls", "both")
    root = _make_root()
    server = PostfixServer(HOST, 0, None, None, root, dict(auth_users or {}))
    with ExitStack() as cleanup:
        cleanup.callback(_discard_root, root, tmp_path)
        if mode is not None:
            server.ca_file = _write_tls(root, tmp_path)
        if recipient_access:
            _write_settled(
                root / "conf" / "recipient_access",
                "".join(f"{address} {action}\n" for address, action in recipient_access.items()),
            )
        cf = _main_cf(
            root,
            starttls=starttls,
            tls_required=tls_required,
            any_tls=mode is not None,
            sasl=bool(auth_users),
            auth_required=auth_required,
            recipient_access=recipient_access,
            message_size_limit=message_size_limit,
            client_connection_limit=client_connection_limit,
            extra=main_cf,
        )
        _write_settled(root / "conf" / "main.cf", "".join(f"{key} = {value}\n" for key, value in cf.items()))

        if auth_users:
            _write_settled(
                root / "dovecot" / "passwd",
                "".join(f"{user}:{{PLAIN}}{password}\n" for user, password in auth_users.items()),
            )
            _write_settled(root / "dovecot" / "dovecot.conf", _dovecot_conf(root))

        _start_postfix(server, implicit=implicit, cleanup=cleanup)
        if auth_users:
            _start_dovecot(server, cleanup=cleanup)
        _wait_ready(server, sasl=bool(auth_users), timeout=start_timeout)
        yield server
    leftovers = server.leftover_processes()
    if leftovers:
        raise PostfixError("processes left behind: " + "; ".join(leftovers))


def _start_postfix(server: PostfixServer, *, implicit: bool, cleanup: ExitStack) -> None:
    """``postfix -c DIR start`` on free ports; a port taken meanwhile means another try."""
    root = server.root
    for attempt in range(3):
        server.smtp_port = _free_port()
        server.smtps_port = _free_port() if implicit else None
        listeners = f"{HOST}:{server.smtp_port} inet n - n - - smtpd\n"
        if server.smtps_port:
            listeners += (
                f"{HOST}:{server.smtps_port} inet n - n - - smtpd\n"
                "  -o smtpd_tls_wrappermode=yes\n  -o smtpd_tls_security_level=encrypt\n"
            )
        _write_settled(root / "conf" / "master.cf", listeners + MASTER_CF)
        started = subprocess.run(
            [str(_binary("postfix")), "-c", str(root / "conf"), "start"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        pid = _master_pid(root)
        if pid is not None and _runs_with_config(pid, root / "conf"):
            server._pgids.append(pid)  # the master runs in a session (and group) of its own
            cleanup.callback(_stop_group, pid, pid)
            if started.returncode == 0:
                return
        log = server.log_tail()
        if "Address already in use" not in log or attempt == 2:
            raise PostfixError(
                f"postfix start failed ({started.returncode}): {started.stderr.strip()}\n{log}"
            )
        (root / "maillog").unlink(missing_ok=True)


def _start_dovecot(server: PostfixServer, *, cleanup: ExitStack) -> None:
    conf = server.root / "dovecot" / "dovecot.conf"
    out = (server.root / "dovecot" / "stdout").open("wb")
    cleanup.callback(out.close)
    process = subprocess.Popen(
        [str(_binary("dovecot")), "-F", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: stopped (or killed) as one
        cwd=server.root,
    )
    server._pgids.append(process.pid)
    server._dovecot = process

    def stop() -> None:
        # Dovecot's master, told alone, waits about a second for its children: tell them all.
        _stop_group(process.pid, None)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2)

    cleanup.callback(stop)


def _discard_root(root: Path, tmp_path: Path) -> None:
    """Keep the logs beside the test's other files, then remove the instance."""
    logs = tmp_path / "postfix-logs"
    logs.mkdir(exist_ok=True)
    for name in ("maillog", "dovecot/dovecot.log", "dovecot/stdout", "conf/main.cf", "conf/master.cf"):
        with suppress(OSError):
            shutil.copyfile(root / name, logs / name.replace("/", "-"))
    shutil.rmtree(root, ignore_errors=True)
