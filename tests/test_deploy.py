"""The deployment files: Dockerfile, .dockerignore, health check, systemd unit, k8s, nginx.

No Docker engine runs here, so the image is not built: its Dockerfile is checked for the
properties the README promises, its build context against .dockerignore, and its health
check script against a live gateway. The systemd unit, the Kubernetes manifest and the
nginx snippet go through their own tools when those are installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import Sources, load_settings
from gateway.settings import ConfigError, Settings
from tests.conftest import make_settings
from tests.fakes.graph import FakeGraph
from tests.fakes.processes import free_port, tail
from tests.fakes.upstream import run_gateway, start_upstream

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DEPLOY = ROOT / "deploy"
DEFAULTS = Settings()


def needs(tool: str) -> pytest.MarkDecorator:
    """Skip without `tool` outside CI; in CI (`CI=true`) the test runs and fails instead:
    scripts/install-proxies.sh installs what these tests need."""
    return pytest.mark.skipif(
        shutil.which(tool) is None and not os.environ.get("CI"),
        reason=f"{tool} not installed (scripts/install-proxies.sh installs it)",
    )


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


@needs("systemd-analyze")
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


@needs("kubectl")
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


@needs("nginx")
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


# -- Kubernetes: replicas on one PostgreSQL ---------------------------------------------------

REPLICAS = DEPLOY / "kubernetes" / "replicas.yaml"
# The shared-store contract of issue 15: every replica takes these from one Secret.
SHARED_KEYS = ("CAPIGW_BUFFER", "CAPIGW_ENCRYPTION_KEY", "CAPIGW_SECRET", "META_ACCESS_TOKEN")


def replicas_documents() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(REPLICAS.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one document of each kind"
    return by_kind


def test_kubernetes_replicas_share_one_database_through_one_secret() -> None:
    docs = replicas_documents()
    assert sorted(docs) == ["Deployment", "PodDisruptionBudget", "Secret", "Service"]
    deployment, secret = docs["Deployment"], docs["Secret"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    # Everything shared comes from the Secret, nothing of it from plain values.
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    values = {item["name"]: item["value"] for item in container.get("env", [])}
    data = secret["stringData"]
    for key in SHARED_KEYS:
        assert data.get(key) and key not in values, key
    url = urlsplit(data["CAPIGW_BUFFER"])
    assert url.scheme == "postgresql" and url.hostname and url.path.strip("/"), url
    # No volume for the buffer: the only one is /tmp, in memory.
    assert "volumeClaimTemplates" not in spec
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert [v.get("emptyDir", {}).get("medium") for v in pod["volumes"]] == ["Memory"]
    # The placeholder key is refused (an unfilled Secret cannot start); a real one loads.
    image_env = env_of(final_stage())
    parsed = build_parser().parse_args(["serve", *container["args"]])
    flags = {"upstream": parsed.upstream}
    with pytest.raises(ConfigError, match="encryption_key"):
        load_settings(Sources(environ={**image_env, **data, **values}, flags=flags))
    filled = {**data, "CAPIGW_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()}
    settings = load_settings(Sources(environ={**image_env, **filled, **values}, flags=flags))
    settings.check_ready_to_send()
    assert settings.upstream == "http://shop:3000"
    # Probes: liveness, both (see test_kubernetes_probe_paths_answer_as_the_manifest_says).
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == f"{settings.prefix}/health?live" and get["port"] == "http"
    (port,) = container["ports"]
    assert port["name"] == "http" and values["CAPIGW_LISTEN"].endswith(f":{port['containerPort']}")
    # Graceful: the preStop pause plus shutdown_grace fit in the grace period.
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pause[1]) + settings.shutdown_grace
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    uid = int(dict(final_stage())["USER"].split(":")[0])
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_kubernetes_replicas_budget_and_service_select_the_pods() -> None:
    docs = replicas_documents()
    spec = docs["Deployment"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    budget = docs["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    # A drain never takes every replica at once.
    assert 0 < budget["maxUnavailable"] < spec["replicas"]
    # A rollout never lowers capacity.
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] == "http"


async def test_kubernetes_probe_paths_answer_as_the_manifest_says(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    """The probes stay 200 while the gateway is not ready to store events: a full buffer (or
    a shared database that is away) never takes the site out of rotation."""
    (container,) = replicas_documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    paths = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    async with start_upstream() as site:
        # A buffer bound smaller than an empty outbox file: never ready.
        settings = make_settings(tmp_path, fake_graph.url, upstream=site.url, max_buffer_mb=0.001)
        async with run_gateway(settings) as front, aiohttp.ClientSession() as session:
            async with session.get(f"{front.url}{settings.prefix}/health") as resp:
                assert resp.status == 503 and not (await resp.json())["ready"]
            for path in paths:
                async with session.get(f"{front.url}{path}") as resp:
                    assert resp.status == 200, path


@needs("kubectl")
def test_kubernetes_replicas_manifest_builds(tmp_path: Path) -> None:
    (tmp_path / "replicas.yaml").write_text(REPLICAS.read_text())
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - replicas.yaml\n")
    done = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    kinds = re.findall(r"^kind: (\w+)$", done.stdout, flags=re.MULTILINE)
    assert sorted(kinds) == ["Deployment", "PodDisruptionBudget", "Secret", "Service"]


# -- docker compose: three replicas, PostgreSQL, nginx ----------------------------------------

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
LB_CONF = (COMPOSE_DIR / "nginx.conf").read_text()


def interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` / `${NAME}` with nothing set: the defaults."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def gateway_services() -> dict[str, dict[str, Any]]:
    services = COMPOSE["services"]
    return {name: s for name, s in services.items() if s.get("command", [""])[0] == "--upstream"}


def test_compose_runs_three_replicas_on_one_database() -> None:
    services = COMPOSE["services"]
    gateways = gateway_services()
    count = sum(s.get("deploy", {}).get("replicas", 1) for s in gateways.values())
    assert count == 3
    first = next(iter(gateways.values()))
    # One image, one database URL, one key, one secret, one set of rules for all of them.
    for service in gateways.values():
        assert service["environment"] == first["environment"]
        assert service["image"] == first["image"] and service["build"] == first["build"]
        assert service["volumes"] == first["volumes"] and service["read_only"] is True
    env = {k: interpolate(str(v)) for k, v in first["environment"].items()}
    for key in SHARED_KEYS[:3]:
        assert env[key], key
    # The URL names the compose database, its user, password and database name.
    url = urlsplit(env["CAPIGW_BUFFER"])
    postgres = services[url.hostname]
    db_env = {k: interpolate(str(v)) for k, v in postgres["environment"].items()}
    assert url.scheme == "postgresql" and url.port == 5432
    assert (url.username, url.password) == (db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"])
    assert url.path == f"/{db_env['POSTGRES_DB']}"
    # The official image, a pinned major version, data on a named volume, a health check.
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres" and tag and tag != "latest"
    (data,) = postgres["volumes"]
    volume, _, mount = data.partition(":")
    assert volume in COMPOSE["volumes"] and mount == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for service in gateways.values():
        assert service["depends_on"][url.hostname] == {"condition": "service_healthy"}
    # Graceful stop: longer than shutdown_grace.
    assert int(first["stop_grace_period"].rstrip("s")) > DEFAULTS.shutdown_grace


def test_compose_replica_settings_load(tmp_path: Path) -> None:
    """The replicas' command and environment (with the file's defaults) are a valid config,
    and the rules they mount are the repository's, which validate."""
    first = next(iter(gateway_services().values()))
    parsed = build_parser().parse_args(["serve", *first["command"]])
    env = {k: interpolate(str(v)) for k, v in first["environment"].items()}
    mounts = {}
    for volume in first["volumes"]:
        source, target, mode = volume.split(":")
        assert mode == "ro"
        mounts[target] = (COMPOSE_DIR / source).resolve()
    env["CAPIGW_RULES"] = str(mounts[env["CAPIGW_RULES"]])
    assert Path(env["CAPIGW_RULES"]) == ROOT / "rules"
    settings = load_settings(
        Sources(environ={**env_of(final_stage()), **env}, flags={"upstream": parsed.upstream})
    )
    settings.check_ready_to_send()
    assert settings.dry_run, "out of the box nothing leaves the machine"
    assert settings.upstream == f"http://shop:{shop_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "--rules", env["CAPIGW_RULES"]],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env, "CAPIGW_BUFFER": str(tmp_path / "check.db")},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The example webhooks have their secrets: no hook answers 503.
    assert "answers 503" not in done.stdout + done.stderr


def shop_port() -> int:
    entry = COMPOSE["services"]["shop"]["entrypoint"]
    return int(entry[entry.index("-P") + 1])


def test_compose_load_balancer_fronts_exactly_the_replicas() -> None:
    services = COMPOSE["services"]
    gateways = gateway_services()
    (lb,) = (s for s in services.values() if str(s.get("image", "")).startswith("nginx:"))
    (mount,) = lb["volumes"]
    source, target, _ = mount.split(":")
    assert (COMPOSE_DIR / source).resolve() == COMPOSE_DIR / "nginx.conf"
    assert target.startswith("/etc/nginx/conf.d/")
    assert lb["ports"], "the load balancer is what the user opens"
    for name in gateways:
        assert lb["depends_on"][name] == {"condition": "service_healthy"}
        assert "ports" not in gateways[name], "replicas are reached through the balancer"
    listen = DEFAULTS.listen.rsplit(":", 1)[1]
    upstream_block = LB_CONF.split("upstream capi_gateway {", 1)[1].split("}", 1)[0]
    servers = re.findall(r"^\s*server ([\w-]+):(\d+)", upstream_block, flags=re.MULTILINE)
    assert sorted(servers) == sorted((name, listen) for name in gateways)
    # Round robin: no hash, ip_hash or least_conn pins a visitor to one replica.
    assert not re.search(r"^\s*(hash|ip_hash|least_conn|sticky)\b", upstream_block, re.M)
    # The replicas trust the balancer's network, and only the balancer is on it from outside.
    (network,) = lb["networks"]
    (subnet,) = (c["subnet"] for c in COMPOSE["networks"][network]["ipam"]["config"])
    for service in gateways.values():
        assert service["environment"]["CAPIGW_TRUSTED_PROXIES"] == subnet
        assert network in service["networks"]
    on_network = {name for name, s in services.items() if network in s.get("networks", [])}
    assert on_network == {*gateways, *(n for n, s in services.items() if s is lb)}
    # The database and the site are on an internal network only.
    for name in ("postgres", "shop"):
        for net in services[name]["networks"]:
            assert COMPOSE["networks"][net].get("internal") is True, (name, net)


async def test_compose_shop_command_serves_the_demo_shop() -> None:
    """The `shop` service's entrypoint, on loopback: the demo shop's pages answer."""
    entry = list(COMPOSE["services"]["shop"]["entrypoint"])
    assert entry[:3] == ["python", "-m", "aiohttp.web"]
    port = free_port()
    entry[entry.index("-H") + 1] = "127.0.0.1"
    entry[entry.index("-P") + 1] = str(port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *entry[1:], cwd=ROOT, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as session:
            # Bounded in time, not tries: a loaded machine starts Python slowly.
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                assert proc.returncode is None, "the shop exited"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/product/tee-01") as resp:
                        assert resp.status == 200
                        assert "Loopback T-shirt" in await resp.text()
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the shop did not start")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@needs("nginx")
async def test_compose_nginx_round_robins_over_the_replicas(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    """The compose file's nginx config (names swapped for loopback ports) in front of three
    live gateways: requests go round robin, with the forwarded headers the replicas trust."""
    names = sorted(gateway_services())
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        sites, conf = [], LB_CONF.replace("listen 80;", f"listen 127.0.0.1:{port};")
        for name in names:
            # Each replica in front of its own site, so the site that answered names it.
            site = await stack.enter_async_context(start_upstream())
            (tmp_path / name).mkdir()
            settings = make_settings(
                tmp_path / name, fake_graph.url, upstream=site.url, inject=False
            )
            front = await stack.enter_async_context(run_gateway(settings))
            conf = conf.replace(f"server {name}:8080", f"server 127.0.0.1:{front.port}")
            sites.append(site)
        assert "gateway-" not in conf
        (tmp_path / "lb.conf").write_text(conf)
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            "daemon off;\nmaster_process off;\nevents {}\nhttp {\n"
            f"  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
            f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/lb.conf;\n}}\n"
        )
        test = subprocess.run(
            ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert test.returncode == 0, test.stderr
        nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
        try:
            bodies = [await _get_through(port, nginx, tmp_path / "error.log") for _ in range(6)]
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
        counts = [sum(1 for r in site.requests if r.path == "/echo") for site in sites]
    assert counts == [2, 2, 2]
    for body, _ in bodies:
        seen = dict(body["headers"])
        assert re.fullmatch(r"[0-9a-f]{32}", seen["X-Request-ID"])
        assert seen["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1"
        assert seen["X-Forwarded-Proto"] == "http"
        # The port the visitor used survives (redirects from the site keep it).
        assert seen["X-Forwarded-Host"] == f"127.0.0.1:{port}"
