"""The `capi-gateway` console script, run as a real subprocess with a clean environment."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from tests.fakes.processes import CLI, free_port, serve_args, spawn, stop_process

PIXEL = "123456789012345"
TOKEN = "EAAB-cli-secret-token-do-not-print"


def _script() -> str:
    if CLI.exists():
        return str(CLI)
    found = shutil.which("capi-gateway")
    assert found, "the capi-gateway console script is not installed"
    return found


SCRIPT = _script()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """Only what a process needs to run: no META_* or CAPIGW_* from the test runner."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 and exactly one `capi-gateway: config error: ...` line, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("capi-gateway: config error: ")
    for needle in needles:
        assert needle in line
    assert result.stdout == ""
    return line


# --version and check -----------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"capi-gateway {__version__}"


def test_check_ok_prints_a_masked_summary_and_never_the_token(tmp_path: Path) -> None:
    result = run(tmp_path, "check", META_PIXEL_ID=PIXEL, META_ACCESS_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("config OK: 1 pixel(s)")
    assert "1234****" in out
    assert PIXEL not in out
    assert "sending to https://graph.facebook.com" in out
    assert TOKEN not in out + result.stderr


def test_check_from_a_config_file_with_several_pixels(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'access_token = "{TOKEN}"\n'
        '[[pixels]]\nid = "111111111"\n'
        '[[pixels]]\nid = "222222222"\naccess_token = "other-secret-token"\n'
    )
    result = run(tmp_path, "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "2 pixel(s) [1111****, 2222****]" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert "other-secret-token" not in result.stdout + result.stderr


def test_check_precedence_env_file_flags(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('listen = "127.0.0.1:2002"\nbuffer = "from-file.db"\n')
    env = {"META_PIXEL_ID": PIXEL, "META_ACCESS_TOKEN": TOKEN}
    env_only = run(tmp_path, "check", CAPIGW_LISTEN="127.0.0.1:2001", **env)
    assert "listen 127.0.0.1:2001" in env_only.stdout
    with_file = run(
        tmp_path, "check", "--config", str(config), CAPIGW_LISTEN="127.0.0.1:2001", **env
    )
    assert "listen 127.0.0.1:2002" in with_file.stdout
    assert "buffer from-file.db" in with_file.stdout
    with_flag = run(
        tmp_path,
        "check",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:2003",
        CAPIGW_LISTEN="127.0.0.1:2001",
        **env,
    )
    assert "listen 127.0.0.1:2003" in with_flag.stdout
    assert "buffer from-file.db" in with_flag.stdout


def test_check_dry_run_needs_no_credentials(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout


def test_check_with_bad_toml(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('listen = "127.0.0.1:8080\npixel_id = 1\n')
    result = run(tmp_path, "check", "--config", str(config), META_ACCESS_TOKEN=TOKEN)
    assert_config_error(result, "broken.toml", "not valid TOML")


def test_check_with_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'pixel_id = "{PIXEL}"\naccess_tokn = "{TOKEN}"\n')
    result = run(tmp_path, "check", "--config", str(config))
    line = assert_config_error(result, "access_tokn", "gateway.toml", "unknown setting")
    assert TOKEN not in line


def test_check_with_unknown_env_key(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--dry-run", CAPIGW_BUFER="x.db")
    assert_config_error(result, "CAPIGW_BUFER")


def test_check_with_missing_token(tmp_path: Path) -> None:
    result = run(tmp_path, "check", META_PIXEL_ID=PIXEL)
    assert_config_error(result, "access_token", "META_ACCESS_TOKEN")


def test_check_with_no_pixel(tmp_path: Path) -> None:
    result = run(tmp_path, "check", META_ACCESS_TOKEN=TOKEN)
    line = assert_config_error(result, "pixel_id", "--dry-run")
    assert TOKEN not in line


def test_check_with_a_bad_flag_value(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--dry-run", "--listen", "everywhere")
    assert_config_error(result, "listen", "command line")


def test_check_with_missing_config_file(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--config", str(tmp_path / "absent.toml"))
    assert_config_error(result, "absent.toml", "--config")


def test_check_with_config_that_is_a_directory(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--dry-run", "--config", str(tmp_path))
    assert_config_error(result, str(tmp_path), "cannot read")


def test_check_with_config_from_capigw_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'pixel_id = "{PIXEL}"\nlisten = "127.0.0.1:2004"\n')
    result = run(tmp_path, "check", CAPIGW_CONFIG=str(config), META_ACCESS_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert "listen 127.0.0.1:2004" in result.stdout


# serve ------------------------------------------------------------------------------


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        buffer = tmp_path / "outbox.db"
        result = run(tmp_path, *serve_args(port, buffer, "--dry-run", "--log-format", "text"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("capi-gateway:")]
    assert len(errors) == 1, result.stderr
    assert "listen" in errors[0]
    assert str(port) in errors[0]
    assert "--listen" in errors[0]


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`serve --dry-run` with no credentials at all, on a free loopback port."""
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn(
        [SCRIPT, *serve_args(port, tmp_path / "outbox.db", "--dry-run")],
        log,
        env=clean_env(tmp_path, CAPIGW_SHUTDOWN_GRACE="2"),
        cwd=tmp_path,
    )
    try:
        yield proc, port, log
    finally:
        stop_process(proc)


def get_health(port: int, timeout: float = 10.0) -> tuple[int, dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/_capi/health")
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def test_serve_dry_run_without_credentials_starts_and_stops_on_sigterm(
    serving: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    proc, port, log = serving
    status, body = get_health(port)
    assert status == 200
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    output = log.read_text()
    assert "Traceback" not in output
    # The outbox and its generated key were created where --buffer points.
    assert (tmp_path / "outbox.db").exists()
    assert (tmp_path / "outbox.db.key").exists()


def test_serve_on_a_port_in_use_leaves_no_files_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            result = run(
                tmp_path,
                *serve_args(port, tmp_path / "outbox.db", "--dry-run", "--workers", workers),
            )
            assert result.returncode == 2, result.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert list(tmp_path.iterdir()) == []
