"""Start and stop `capi-gateway` and the fake Graph API as subprocesses on 127.0.0.1.

Shared by the subprocess tests (crash, shutdown, CLI) and by bench/bench_events.py, so it
needs only the standard library and aiohttp (no pytest). Failures raise AssertionError:
a test reports them as failures, the benchmark turns them into an exit message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CLI = Path(sys.executable).with_name("capi-gateway")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class CliResult:
    """What a `capi-gateway` command printed and the code it exited with."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


async def cli_in_thread(argv: list[str], env: Mapping[str, str]) -> CliResult:
    """`capi-gateway ARGV` run by `gateway.cli.main` in a thread of this process (the
    command runs its own event loop) with `env` as its whole environment: a spawned
    interpreter costs seconds of imports on a loaded machine. Paths must be absolute."""
    return await asyncio.to_thread(_cli_main, argv, dict(env))


def _cli_main(argv: list[str], env: dict[str, str]) -> CliResult:
    from gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env, clear=True),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without gateway settings (CAPIGW_*, META_*), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPIGW_", "META_"))}
    # Gateways under test send at once rather than hold events for copies (assembly_hold),
    # unless a test asks for a hold.
    env["CAPIGW_ASSEMBLY_HOLD"] = "0"
    env.update(extra)
    return env


def gateway_cmd() -> list[str]:
    """The `capi-gateway` script beside this interpreter, else `python -m gateway.cli`."""
    return [str(CLI)] if CLI.exists() else [sys.executable, "-m", "gateway.cli"]


def serve_args(port: int, buffer: Path, *more: str) -> list[str]:
    """`serve` on 127.0.0.1:`port` with `buffer`, then `more` arguments."""
    return ["serve", "--listen", f"{HOST}:{port}", "--buffer", str(buffer), *more]


def spawn(
    cmd: list[str], log: Path, *, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start `cmd` in `cwd` with stdout and stderr appended to `log` (default env: clean_env())."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else clean_env(),
        )


def stop_process(proc: subprocess.Popen[bytes] | None, *, grace: float = 0.0) -> int | None:
    """SIGTERM and wait up to `grace` s (0: none), then SIGKILL and reap; the exit code."""
    if proc is None:
        return None
    if grace > 0 and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return proc.returncode


@contextlib.contextmanager
def stop_at_exit() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to add subprocesses to; all are stopped (last first) when the block ends."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "<no log>"


@dataclass
class Fake:
    """The fake Graph API subprocess."""

    proc: subprocess.Popen[bytes]
    url: str

    async def control(self, session: aiohttp.ClientSession, spec: dict[str, Any]) -> None:
        """POST `spec` to /_fake/fail (failures, hangs, latency, token)."""
        async with session.post(f"{self.url}/_fake/fail", json=spec) as resp:
            assert resp.status == 200, await resp.text()

    async def get(self, session: aiohttp.ClientSession, what: str) -> Any:
        """GET /_fake/`what` (events, requests, stats) as JSON."""
        async with session.get(f"{self.url}/_fake/{what}") as resp:
            assert resp.status == 200, f"GET /_fake/{what}: {resp.status}"
            return await resp.json()


def listening_url(proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> str:
    """The URL a `tests.fakes` server prints (``listening on URL``) to `log` once it serves.

    If it exits or does not print it within `timeout` seconds, it is stopped and
    AssertionError names `what` did not start, with the end of its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                return line.removeprefix("listening on ").strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(proc)
    raise AssertionError(f"{what} did not start:\n{tail(log)}")


def start_fake(log: Path, *, token: str, count_only: bool = False, timeout: float = 20) -> Fake:
    """Start `python -m tests.fakes.graph` accepting only `token` and read the URL it prints."""
    cmd = [sys.executable, "-m", "tests.fakes.graph", "--port", "0", "--token", token]
    proc = spawn([*cmd, "--count-only"] if count_only else cmd, log)
    return Fake(proc, listening_url(proc, log, "the fake Graph API", timeout))


@dataclass
class Gateway:
    """One `capi-gateway serve` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_gateway(
    buffer: Path,
    graph_url: str,
    log: Path,
    *,
    pixel: str,
    token: str,
    api_key: str,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
) -> Gateway:
    """Start `capi-gateway serve` on a free port with settings `env` and more `args`, logging
    to `log`."""
    port = free_port()
    more = ["--pixel-id", pixel, "--access-token", token, "--graph-url", graph_url]
    cmd = [*gateway_cmd(), *serve_args(port, buffer, *more, "--api-key", api_key, *args)]
    proc = spawn(cmd, log, env=clean_env(**(env or {})))
    return Gateway(proc, f"http://{HOST}:{port}", log)


async def wait_healthy(
    gw: Gateway, session: aiohttp.ClientSession, timeout: float = 15, *, live: bool = False
) -> None:
    """Poll `/_capi/health` until 200 (`live`: `?live`, for a gateway whose site is down)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {gw.proc.returncode}:\n{tail(gw.log)}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{gw.url}/_capi/health{'?live' if live else ''}") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway did not become healthy:\n{tail(gw.log)}")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `capi-gateway ARGS` to completion with clean_env(); fail unless it exits 0."""
    done = subprocess.run(
        [*gateway_cmd(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"capi-gateway {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        )
    return done


def queue_stats(buffer: Path) -> dict[str, int]:
    """`capi-gateway queue stats --json` -> counts per state."""
    states: dict[str, int] = json.loads(
        run_cli("queue", "stats", "--json", "--buffer", str(buffer)).stdout
    )["states"]
    return states
