"""`make bench`: digests per second, ours against the SMTP ceiling and against rss2email.

In one run, on this machine, against Postfix's smtp-sink on loopback:

- ours: `digest send` end to end (fetch over loopback HTTP, parse, match, render, deliver),
  in a fresh process and a fresh state database each repetition;
- ceiling: the very messages ours produced, pre-built, sent with plain smtplib over the same
  number of connections;
- peer: rss2email (in its own virtualenv, never a project dependency) mailing the same
  entries as HTML to the same sink.

The three run in rounds (ours, ceiling, peer; again...). Prints medians of --reps
repetitions with min and max, the ratios, then a scaling table. ``--dkim ALGORITHM``
(repeatable) adds ours with ``[dkim]`` signing to each round, and its ratio to ours unsigned.
"""

from __future__ import annotations

import argparse
import compileall
import http.server
import os
import re
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

PEER_VENV = HERE / ".venv-peer"
RSS2EMAIL = "rss2email==3.14"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- servers ----------------------------------------------------------------------------------


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """An http.server on loopback serving ``folder``; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Sink:
    """Postfix's smtp-sink on loopback, counting the messages it accepts."""

    def __init__(self) -> None:
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(binary).exists():
            install_postfix()
        self.port = free_port()
        self.out = tempfile.NamedTemporaryFile(prefix="sink-", suffix=".log", delete=False)  # noqa: SIM115
        user = ["-u", "root"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [binary, *user, "-c", f"127.0.0.1:{self.port}", "1000"], stdout=self.out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("smtp-sink did not start") from None
                time.sleep(0.05)

    def count(self) -> int:
        """Messages accepted so far (smtp-sink -c prints a running mesg=N)."""
        time.sleep(0.2)
        found = re.findall(rb"mesg=(\d+)", Path(self.out.name).read_bytes())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        Path(self.out.name).unlink(missing_ok=True)


def install_postfix() -> None:
    """smtp-sink comes with Debian's postfix package: install it, or say how."""
    how = "apt-get install postfix (choose 'No configuration')"
    if not shutil.which("apt-get"):
        raise SystemExit(f"smtp-sink is missing: install Postfix ({how})")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    print("installing postfix for smtp-sink ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        [*prefix, "debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=False,
    )
    done = subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-q", "postfix"], env=env, capture_output=True
    )
    if done.returncode != 0:
        raise SystemExit(f"could not install postfix; run: {how}\n{done.stderr.decode()[-500:]}")


# --- measuring a process -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    peak_rss_mb: float
    output: str


def tree_rss_kb(pid: int) -> int:
    """The resident memory of a process and all its descendants (its helpers), in kB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            found = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{current}/status").read_text())
            total += int(found.group(1)) if found else 0
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def measure(command: list[str], cwd: Path | None = None) -> Run:
    """Wall time and peak RSS of a child process with its helpers; fails loudly when it fails.

    The peak is the sum over its process tree, sampled every 50 ms. Not wait4's ``ru_maxrss``:
    Linux carries a process's high-water mark across exec, so a child started by this process
    reports at least this process's own size (at 10,000 subscribers the ceiling's pre-built
    messages make that ~700 MB).
    """
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], tree_rss_kb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status = os.waitpid(process.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return Run(seconds, peak[0] / 1024, output)


# --- the three contenders ----------------------------------------------------------------------


def ours(
    work: Path,
    feed_url: str,
    subscribers: int,
    port: int,
    connections: int,
    workers: int | None = None,
    *,
    verbose: bool = False,
    base_url: str | None = None,
    dkim: tuple[str, Path] | None = None,
) -> Run:
    """`digest send` as a user runs it; ``verbose``: with -v, for its stage timings (a log line
    per digest costs ~30 us: verbose runs are not the timed ones)."""
    folder = Path(tempfile.mkdtemp(dir=work))
    config = corpus.config(
        folder,
        feed_url=feed_url,
        subscribers=subscribers,
        smtp_port=port,
        connections=connections,
        render_workers=workers,
        base_url=base_url,
    )
    if dkim is not None:  # (algorithm, key file): every digest signed
        algorithm, key = dkim
        with config.open("a") as file:
            file.write(
                f'\n[dkim]\ndomain = "example.net"\nselector = "bench"\nkey_file = "{key}"\n'
                f'algorithm = "{algorithm}"\n'
            )
    flags = ["-v"] if verbose else []
    return measure([sys.executable, "-m", "pipeline.cli", "--config", str(config), *flags, "send"])


def our_messages(work: Path, feed_url: str, subscribers: int) -> list[tuple[str, bytes]]:
    """The messages ours sends, captured through its Maildir outbox, for the ceiling run."""
    folder = Path(tempfile.mkdtemp(dir=work))
    config = corpus.config(folder, feed_url=feed_url, subscribers=subscribers, smtp_port=None)
    measure([sys.executable, "-m", "pipeline.cli", "--config", str(config), "send"])
    out = []
    for file in sorted((folder / "outbox" / "new").iterdir()):
        data = file.read_bytes()
        to = re.search(rb"^To: (?:.*<)?([^<>\s]+@[^<>\s]+)>?\r?$", data, re.M)
        assert to is not None
        out.append((to.group(1).decode(), data))
    return out


def ceiling(messages: list[tuple[str, bytes]], port: int, connections: int) -> float:
    """Seconds to send pre-built messages with plain smtplib, one reused connection per thread."""
    shares = [messages[i::connections] for i in range(connections)]

    def send(share: list[tuple[str, bytes]]) -> None:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for to, data in share:
                smtp.sendmail("digest@example.net", [to], data)

    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def peer_venv() -> Path:
    r2e = PEER_VENV / "bin" / "r2e"
    if not r2e.exists():
        print(
            f"installing {RSS2EMAIL} into {PEER_VENV} (the benchmark's own environment) ...", file=sys.stderr
        )
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", RSS2EMAIL], check=True)
    return r2e


def rss2email(work: Path, r2e: Path, feed_url: str, port: int) -> Run:
    folder = Path(tempfile.mkdtemp(dir=work))
    config = folder / "r2e.cfg"
    config.write_text(
        "[DEFAULT]\nfrom = bench@example.net\nto = reader@example.org\nemail-protocol = smtp\n"
        f"smtp-server = 127.0.0.1\nsmtp-port = {port}\nsmtp-auth = False\nsmtp-ssl = False\n"
        "html-mail = True\n\n"
        f"[feed.bench]\nurl = {feed_url}\n"
    )
    return measure([str(r2e), "-c", str(config), "-d", str(folder / "data.json"), "run"])


def dkim_key(work: Path, algorithm: str) -> Path:
    """A fresh private key for ``[dkim]``: RSA-2048 or Ed25519."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "rsa-sha256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    path = work / f"dkim-{algorithm}.pem"
    encoding, form = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    path.write_bytes(key.private_bytes(encoding, form, serialization.NoEncryption()))
    return path


# --- report --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    mails: int
    seconds: list[float]
    rss_mb: float | None

    @property
    def rate(self) -> float:
        return self.mails / statistics.median(self.seconds)

    def line(self) -> str:
        s = self.seconds
        rss = f"{self.rss_mb:7.0f}" if self.rss_mb is not None else "      -"
        return (
            f"{self.name:<34}{self.mails:>7}{statistics.median(s):>9.2f}{min(s):>8.2f}{max(s):>8.2f}"
            f"{self.rate:>10.0f}{rss}"
        )


HEADER = f"{'':<34}{'mails':>7}{'median s':>9}{'min':>8}{'max':>8}{'mails/s':>10}{'RSS MB':>7}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--render-workers", type=int, help="[digest] render_workers (default: automatic)")
    parser.add_argument("--no-peer", action="store_true", help="skip rss2email")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="also time ours with this [digest] base_url (reader links: signed unsubscribe and "
        "preferences, vote links beside every entry), in the same rounds",
    )
    parser.add_argument(
        "--dkim",
        action="append",
        default=[],
        choices=["rsa-sha256", "ed25519-sha256"],
        help="also time ours signing with [dkim] (RSA-2048 or Ed25519 key), in the same rounds",
    )
    args = parser.parse_args()
    if args.base_url:  # (a throw-away signing key for the reader links; children inherit it)
        os.environ.setdefault("DIGEST_WEB_SECRET", "bench-signing-key-" + "0123456789" * 4)
    # Our package's bytecode, as an installed package (and rss2email, installed by pip) has it:
    # with PYTHONDONTWRITEBYTECODE set, as on these machines, every run would compile it anew.
    compileall.compile_dir(HERE.parent / "pipeline", quiet=1)

    work = Path(tempfile.mkdtemp(prefix="digest-bench-"))
    site = work / "www"
    site.mkdir()
    papers = corpus.papers(max(args.entries, 5000))
    (site / "feed.xml").write_text(corpus.rss(papers[: args.entries]))
    sink = Sink()
    try:
        with serve_folder(site) as base:
            feed = f"{base}/feed.xml"
            runs: list[Run] = []
            peer_runs: list[Run] = []

            keys = {algorithm: dkim_key(work, algorithm) for algorithm in args.dkim}
            signed_runs: dict[str, list[Run]] = {}

            def one_ours(base_url: str | None = None, algorithm: str | None = None) -> float:
                before = sink.count()
                run = ours(
                    work,
                    feed,
                    args.subscribers,
                    sink.port,
                    args.connections,
                    args.render_workers,
                    base_url=base_url,
                    dkim=(algorithm, keys[algorithm]) if algorithm else None,
                )
                (signed_runs.setdefault(algorithm, []) if algorithm else runs).append(run)
                sent = sink.count() - before
                if sent != args.subscribers:
                    raise SystemExit(f"ours delivered {sent} of {args.subscribers}:\n{run.output[-2000:]}")
                return run.seconds

            def one_peer(r2e: Path) -> float:
                before = sink.count()
                run = rss2email(work, r2e, feed, sink.port)
                peer_runs.append(run)
                sent = sink.count() - before
                if sent != args.entries:
                    raise SystemExit(f"rss2email delivered {sent} of {args.entries}:\n{run.output[-2000:]}")
                return run.seconds

            messages = our_messages(work, feed, args.subscribers)
            size = statistics.mean(len(m) for _, m in messages) / 1024
            r2e = None if args.no_peer else peer_venv()
            # In rounds (ours, ceiling, peer; again...): on a machine whose speed drifts (these are
            # shared virtual machines) each ratio then compares runs made close together.
            seconds: dict[str, list[float]] = {"ours": [], "ceiling": [], "peer": [], "linked": []}
            for _ in range(args.reps):
                seconds["ours"].append(one_ours())
                if args.base_url:
                    seconds["linked"].append(one_ours(args.base_url))
                for algorithm in args.dkim:
                    seconds.setdefault(algorithm, []).append(one_ours(algorithm=algorithm))
                seconds["ceiling"].append(ceiling(messages, sink.port, args.connections))
                if r2e is not None:
                    seconds["peer"].append(one_peer(r2e))
            rows = [
                Row(
                    f"ours: digest send, {args.connections} conn",
                    args.subscribers,
                    seconds["ours"],
                    max(r.peak_rss_mb for r in runs),
                ),
                Row(
                    f"ceiling: smtplib, pre-built, {args.connections} conn",
                    len(messages),
                    seconds["ceiling"],
                    None,
                ),
            ]
            if args.base_url:
                linked = Row("ours, with base_url (reader links)", args.subscribers, seconds["linked"], None)
                rows.insert(1, linked)
            for algorithm in args.dkim:
                rows.append(
                    Row(
                        f"ours, DKIM {algorithm}",
                        args.subscribers,
                        seconds[algorithm],
                        max(r.peak_rss_mb for r in signed_runs[algorithm]),
                    )
                )
            if r2e is not None:
                rows.append(
                    Row(
                        "peer: rss2email 3.14, html-mail",
                        args.entries,
                        seconds["peer"],
                        max(r.peak_rss_mb for r in peer_runs),
                    )
                )

            print(
                f"\n{args.subscribers} subscribers (3 of 20 topics each), {args.entries}-entry feed over "
                f"loopback HTTP, Postfix smtp-sink on loopback; {args.reps} repetitions; "
                f"mean message {size:.0f} KB\n"
            )
            print(HEADER)
            for row in rows:
                print(row.line())
            ceiling_row = next(r for r in rows if r.name.startswith("ceiling"))
            print(f"\nours / ceiling   = {rows[0].rate / ceiling_row.rate:.2f}   (target >= 0.75)")
            if r2e is not None:
                print(f"ours / rss2email = {rows[0].rate / rows[-1].rate:.2f}   (target >= 1.5)")
            if args.base_url:
                print(f"with base_url / without = {rows[1].rate / rows[0].rate:.3f}   (reader links' cost)")
            for algorithm in args.dkim:
                slower = statistics.median(seconds[algorithm]) / statistics.median(seconds["ours"])
                print(f"DKIM {algorithm} / unsigned = {slower:.3f}   (time; target <= 1.15)")
            logged = ours(
                work, feed, args.subscribers, sink.port, args.connections, args.render_workers, verbose=True
            )
            stages = re.findall(r"timings (.*)", logged.output)
            if stages:
                print(f"ours, time per stage (one more run, with -v): {stages[-1]}")

            if not args.no_scaling:
                print("\nScaling (ours, one run each; per-subscriber cost should stay flat)\n")
                print(
                    f"{'subscribers':>11}{'entries':>9}{'seconds':>9}{'mails/s':>9}"
                    f"{'ms/subscriber':>15}{'RSS MB':>8}"
                )
                for subs, entries in [
                    (1000, 500),
                    (5000, 500),
                    (20000, 500),
                    (2000, 100),
                    (2000, 1000),
                    (2000, 5000),
                ]:
                    folder = work / f"www-{entries}"
                    folder.mkdir(exist_ok=True)
                    (folder / "feed.xml").write_text(corpus.rss(papers[:entries]))
                    with serve_folder(folder) as scale_base:
                        before = sink.count()
                        run = ours(
                            work,
                            f"{scale_base}/feed.xml",
                            subs,
                            sink.port,
                            args.connections,
                            args.render_workers,
                        )
                        sent = sink.count() - before
                    print(
                        f"{subs:>11}{entries:>9}{run.seconds:>9.2f}{sent / run.seconds:>9.0f}"
                        f"{1000 * run.seconds / subs:>15.2f}{run.peak_rss_mb:>8.0f}"
                    )
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
