"""The deployment files: Dockerfile, .dockerignore, health check, systemd unit, k8s, nginx.

No Docker engine runs here, so the image is not built: its Dockerfile is checked for the
properties the README promises, its build context against .dockerignore, and its health
check script against a live gateway. The systemd unit, the Kubernetes manifest and the
nginx snippet go through their own tools when those are installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import build_parser
from gateway.config import Sources, load_settings
from gateway.settings import Settings
from tests.conftest import make_settings
from tests.fakes.graph import FakeGraph
from tests.fakes.processes import free_port, tail
from tests.fakes.upstream import run_gateway, start_upstream

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DEPLOY = ROOT / "deploy"
DEFAULTS = Settings()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        logical = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in steps:
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in args.split()))
    return env


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!"))
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


# -- Dockerfile -------------------------------------------------------------------------------


def test_image_runs_serve_as_a_non_root_user_with_a_data_volume() -> None:
    steps = final_stage()
    words = dict(steps)
    assert json.loads(words["ENTRYPOINT"]) == ["capi-gateway", "serve"]
    user = words["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "a numeric uid works with runAsNonRoot"
    assert json.loads(words["VOLUME"]) == ["/data"]
    env = env_of(steps)
    # Everything the gateway writes is on the volume: the root filesystem can be read-only.
    assert env["CAPIGW_BUFFER"].startswith("/data/") and words["WORKDIR"] == "/data"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # Listening beyond the container's loopback, on the port it exposes.
    assert env["CAPIGW_LISTEN"] == f"0.0.0.0:{words['EXPOSE']}"
    for word, args in instructions(DOCKERFILE):
        if word == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), image


def test_image_health_check_is_the_deploy_script() -> None:
    steps = final_stage()
    health = dict(steps)["HEALTHCHECK"]
    assert "--timeout=" in health and "--interval=" in health
    command = json.loads(health.split("CMD", 1)[1])
    assert command[0] == "python" and command[1] == "/opt/capi-gateway/healthcheck.py"
    copies = [args for word, args in instructions(DOCKERFILE) if word == "COPY"]
    assert "deploy/healthcheck.py /opt/capi-gateway/healthcheck.py" in copies


def test_build_context_holds_what_the_image_needs_and_nothing_private() -> None:
    sources = []
    for word, args in instructions(DOCKERFILE):
        if word == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources, "the Dockerfile copies from the build context"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is copied but excluded by .dockerignore"
    # The package, its data files and the README pyproject.toml refers to are all in.
    package_files = [p for p in (ROOT / "gateway").rglob("*") if "__pycache__" not in p.parts]
    assert package_files
    for path in package_files:
        assert not dockerignored(path.relative_to(ROOT).as_posix()), path
    for private in (
        ".venv/bin/python",
        ".git/config",
        "capi-gateway.db",
        "capi-gateway.db.key",
        "capi-gateway-demo.db-wal",
        "tests/conftest.py",
        "gateway/__pycache__/app.cpython-311.pyc",
        "deploy/nginx.conf",
    ):
        assert dockerignored(private), private


async def test_health_check_script_against_a_live_gateway(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    script = DEPLOY / "healthcheck.py"

    async def probe(listen: str, prefix: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            env={
                "PATH": "/usr/bin:/bin",
                "CAPIGW_LISTEN": listen,
                "CAPIGW_PREFIX": prefix,
                # An egress proxy for the gateway must not capture the probe.
                "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
                "http_proxy": f"http://127.0.0.1:{free_port()}",
            },
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode is not None
        return proc.returncode, err.decode()

    settings = make_settings(tmp_path, fake_graph.url, prefix="/track")
    async with run_gateway(settings) as front:
        assert await probe(f"0.0.0.0:{front.port}", "/track") == (0, "")
        code, err = await probe(f"0.0.0.0:{front.port}", "/_capi")
        assert code == 1 and "/_capi/health" in err
    code, err = await probe(f"[::]:{free_port()}", "/track")
    assert code == 1 and err.startswith("unhealthy: http://127.0.0.1:")


# -- systemd ----------------------------------------------------------------------------------


def unit_values(key: str) -> list[str]:
    text = (DEPLOY / "capi-gateway.service").read_text()
    return re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)


def test_systemd_unit_runs_a_valid_command_and_reloads_with_sighup() -> None:
    (exec_start,) = unit_values("ExecStart")
    binary, *args = exec_start.split()
    assert binary.endswith("/capi-gateway")
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve" and parsed.config == Path("/etc/capi-gateway/gateway.toml")
    assert unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert int(unit_values("TimeoutStopSec")[0]) > DEFAULTS.shutdown_grace
    (buffer,) = unit_values("Environment")
    state = unit_values("StateDirectory")[0]
    assert buffer.startswith(f"CAPIGW_BUFFER=/var/lib/{state}/")
    assert unit_values("ProtectSystem") == ["strict"] and unit_values("NoNewPrivileges") == ["yes"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = (DEPLOY / "capi-gateway.service").read_text()
    # verify insists on an existing binary: point it at this checkout's script.
    script = Path(sys.executable).with_name("capi-gateway")
    unit = tmp_path / "capi-gateway.service"
    unit.write_text(text.replace("/opt/capi-gateway/bin/capi-gateway", str(script)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    # Unknown or misspelt keys are only warnings: any output is a failure here.
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


# -- Kubernetes -------------------------------------------------------------------------------

MANIFEST = (DEPLOY / "kubernetes" / "sidecar.yaml").read_text()


def test_kubernetes_sidecar_configuration_is_valid_for_the_gateway() -> None:
    (args,) = re.findall(r"^\s+args: (\[.*\])$", MANIFEST, flags=re.MULTILINE)
    parsed = build_parser().parse_args(["serve", *json.loads(args)])
    env = dict(re.findall(r'- name: (CAPIGW_\w+)\n\s+value: "([^"]*)"', MANIFEST))
    secret_block = MANIFEST.split("stringData:\n", 1)[1].split("---", 1)[0]
    secret = dict(re.findall(r'^\s+(\w+): "([^"]*)"$', secret_block, flags=re.MULTILINE))
    assert "META_ACCESS_TOKEN" in secret and "CAPIGW_SECRET" in secret
    # The image's own environment, then the manifest's: the gateway accepts every key.
    image_env = env_of(final_stage())
    settings = load_settings(
        Sources(environ={**image_env, **secret, **env}, flags={"upstream": parsed.upstream})
    )
    settings.check_ready_to_send()
    health = f"{settings.prefix}/health"
    assert MANIFEST.count(f"path: {health}") == 2
    assert settings.buffer.parent == Path("/data") and "mountPath: /data" in MANIFEST
    uid = dict(final_stage())["USER"].split(":")[0]
    assert f"runAsUser: {uid}" in MANIFEST and "runAsNonRoot: true" in MANIFEST
    assert "readOnlyRootFilesystem: true" in MANIFEST and "volumeClaimTemplates:" in MANIFEST
    (grace,) = re.findall(r"terminationGracePeriodSeconds: (\d+)", MANIFEST)
    (pause,) = re.findall(r'command: \["sleep", "(\d+)"\]', MANIFEST)
    assert int(grace) > int(pause) + settings.shutdown_grace


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubernetes_manifest_parses(tmp_path: Path) -> None:
    (tmp_path / "sidecar.yaml").write_text(MANIFEST)
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - sidecar.yaml\n")
    done = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    kinds = re.findall(r"^kind: (\w+)$", done.stdout, flags=re.MULTILINE)
    assert sorted(kinds) == ["Secret", "Service", "StatefulSet"]


# -- nginx ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
async def test_nginx_snippet_in_front_of_the_gateway(tmp_path: Path, fake_graph: FakeGraph) -> None:
    """The documented nginx block, on plain HTTP: ids and client addresses reach the gateway."""
    snippet = (DEPLOY / "nginx.conf").read_text()
    assert "server 127.0.0.1:8080;" in snippet and DEFAULTS.listen == "127.0.0.1:8080"
    port = free_port()
    async with start_upstream() as site:
        settings = make_settings(tmp_path, fake_graph.url, upstream=site.url, inject=False)
        async with run_gateway(settings) as front:
            site_conf = (
                snippet.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{front.port};")
                .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port};")
                .replace("ssl_certificate ", "# ")
                .replace("ssl_certificate_key ", "# ")
            )
            (tmp_path / "site.conf").write_text(site_conf)
            (tmp_path / "nginx.conf").write_text(
                f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                "daemon off;\nmaster_process off;\nevents {}\nhttp {\n"
                f"  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
                f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/site.conf;\n}}\n"
            )
            nginx = subprocess.Popen(
                ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
            )
            try:
                body, request_id = await _get_through(port, nginx, tmp_path / "error.log")
            finally:
                nginx.terminate()
                nginx.wait(timeout=10)
    seen = dict(body["headers"])
    # nginx's $request_id reached the site through the gateway, which believed it (loopback).
    assert re.fullmatch(r"[0-9a-f]{32}", seen["X-Request-ID"])
    # The client (as nginx saw it), then nginx (as the gateway saw it).
    assert seen["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert request_id is None  # the site's own response is passed on unchanged


async def _get_through(
    port: int, nginx: subprocess.Popen[bytes], log: Path
) -> tuple[Any, str | None]:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if nginx.poll() is not None:
                raise AssertionError(f"nginx exited:\n{tail(log)}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/echo") as resp:
                    assert resp.status == 200, await resp.text()
                    return await resp.json(), resp.headers.get("X-Request-ID")
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
    raise AssertionError("nginx did not start")
