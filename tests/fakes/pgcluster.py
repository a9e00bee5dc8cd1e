"""A throwaway PostgreSQL cluster in a temp dir, on a free 127.0.0.1 port, for tests and benches.

initdb and pg_ctl from Debian's `postgresql` package (scripts/install-postgres.sh). initdb and
postgres refuse to run as root, so a root process (CI, the sessions) runs them as the
unprivileged user `capigw-pg` the install script creates, or `nobody` without it; the data
dir is a fresh temp dir that user owns. The superuser gets a random password and the server
listens on loopback only, without a Unix socket, so nothing else on the machine can use it.

Standard library only (no pytest): tests/postgres.py wraps it in fixtures, and benchmarks can
start one the same way.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# Where Debian puts each major version's server programs (not on PATH).
DEBIAN_INITDB = "/usr/lib/postgresql/*/bin/initdb"
RUN_AS = ("capigw-pg", "nobody")
SUPERUSER = "capigw"
INSTALL_HINT = "run `bash scripts/install-postgres.sh` (installs Debian's postgresql package)"
SERVER_OPTIONS = (
    "listen_addresses=127.0.0.1",
    "unix_socket_directories=",
    "max_connections=200",
    "shared_buffers=32MB",
    "log_min_messages=warning",
)
# For tests: durability off (a crash loses nothing we keep), quicker on a shared machine.
# Benchmarks keep PostgreSQL's defaults (`durable=True`) to measure what production costs.
FAST_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


PREFIX = "capigw-pg-"
# The pid of the process that made the cluster: when it is gone, so is the cluster's use.
OWNER_FILE = "owner.pid"


class PostgresMissing(Exception):
    """No PostgreSQL server programs on this machine."""


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest version's."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(
        glob.glob(DEBIAN_INITDB),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        raise PostgresMissing(f"PostgreSQL's initdb was not found: {INSTALL_HINT}")
    return Path(found[-1]).parent


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster; `dsn` reaches its `postgres` database as superuser."""

    bindir: Path
    root: Path
    port: int
    password: str
    user: pwd.struct_passwd | None
    options: tuple[str, ...] = SERVER_OPTIONS + FAST_OPTIONS
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "server.log"

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URL for `database` on this cluster."""
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def pg_ctl(self, *args: str, timeout: float = 60.0) -> None:
        """Run pg_ctl on this cluster (as its user); raises with the server log on failure."""
        options = " ".join(f"-c {opt}" for opt in (f"port={self.port}", *self.options))
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log)]
            + (["-o", options] if args[0] in ("start", "restart") else [])
            + list(args),
            timeout=timeout,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.pg_ctl("start", "-w", "-t", "60")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back open transactions, close connections)."""
        self.pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def restart(self) -> None:
        """Stop and start again on the same port: every open connection is cut."""
        self.pg_ctl("restart", "-w", "-t", "60", "-m", "fast")

    def running(self) -> bool:
        """Whether the server's postmaster is up."""
        try:
            self.pg_ctl("status")
        except subprocess.CalledProcessError:
            return False
        return True

    def _run(self, cmd: Sequence[str], *, timeout: float) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "HOME": str(self.root),
            "TZ": "UTC",
        }
        # As root: drop to the cluster's user for good (its uid, its group, no other groups).
        result = subprocess.run(
            list(cmd),
            cwd=self.root,
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise subprocess.CalledProcessError(
                result.returncode,
                cmd,
                output=result.stdout,
                stderr=result.stderr + b"\n--- server log ---\n" + log.encode(),
            )


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in RUN_AS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresMissing(f"no unprivileged user to run PostgreSQL as: {INSTALL_HINT}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(tmpdir: Path | None = None) -> list[Path]:
    """Stop and delete the throwaway clusters whose maker is gone; the dirs removed.

    A test run killed by a timeout (SIGTERM, SIGKILL) never reaches its teardown and leaves
    its server running; the next run cleans up after it. A dir without an owner file (one
    being set up this instant) or whose owner lives (another run) is left alone.
    """
    reaped = []
    for root in Path(tmpdir or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
            # SIGQUIT: PostgreSQL's immediate shutdown; its children follow it.
            os.kill(postmaster, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while _alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@contextlib.contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """initdb a cluster in a temp dir, start it on a free port; stop and delete it after.

    `durable=False` (tests) turns fsync and synchronous commit off. Clusters earlier runs
    left behind (see `reap_orphans`) are removed first.
    """
    bindir = find_bindir()
    user = _run_as()
    reap_orphans()
    # Not under pytest's tmp_path: that is private to root, and the server's user must
    # reach its data dir.
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    cluster: Cluster | None = None
    try:
        (root / OWNER_FILE).write_text(str(os.getpid()))
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        options = SERVER_OPTIONS if durable else SERVER_OPTIONS + FAST_OPTIONS
        cluster = Cluster(bindir, root, 0, password, user, options)
        cluster._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(cluster.datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )
        pwfile.unlink()
        # A port taken between free_port() and the server's bind: try another one.
        for attempt in range(3):
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
        yield cluster
    finally:
        if cluster is not None and (cluster.datadir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
