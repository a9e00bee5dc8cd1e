"""`front-config` with `[[sites]]`: one server block per site (or one site with `--site`),
in real nginx and Caddy in front of a gateway serving two sites.

Each site's hosts reach its own upstream; a path one site's rule reads goes through the
gateway on that site only, and straight to the other site; assets bypass the gateway on
both; documents of both are tagged; a host no site claims is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.processes import (
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    run_cli,
    serve_args,
    spawn,
    stop_process,
    tail,
    wait_healthy,
)
from tests.front.test_front_proxies import (
    BROWSER,
    CADDY,
    FETCH,
    NGINX,
    RULES,
    Site,
    need,
    run_front,
    start_site,
)

API_RULE = (
    '[[rule]]\nname = "api-cart"\nevent = "AddToCart"\nmethod = "POST"\npath = "/api/cart"\n'
    '[rule.extract]\ncontent_type = "product"\n'
)


def sites_config(tmp_path: Path, a: Site, b: Site) -> Path:
    rules_b = tmp_path / "rules-b"
    rules_b.mkdir()
    (rules_b / "api.toml").write_text(API_RULE)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "dry_run = true\n\n"
        f'[[sites]]\nname = "alpha"\nhosts = ["alpha.example", "*.alpha.example"]\n'
        f'upstream = "{a.url}"\nrules = "{RULES}"\npixel_id = ["111111111111"]\n\n'
        f'[[sites]]\nname = "beta-shop"\nhosts = ["beta.example"]\n'
        f'upstream = "{b.url}"\nrules = "{rules_b}"\npixel_id = ["222222222222"]\n'
    )
    return config


@contextlib.contextmanager
def sites_gateway(tmp_path: Path, config: Path) -> Iterator[Gateway]:
    port = free_port()
    cmd = [
        *gateway_cmd(),
        *serve_args(port, tmp_path / "outbox.db", "--dry-run", "--config", str(config)),
    ]
    log = tmp_path / "gateway.log"
    proc = spawn(cmd, log, env=clean_env(CAPIGW_PAGEVIEW_HOLD="0"))
    try:
        yield Gateway(proc, f"http://127.0.0.1:{port}", log)
    finally:
        stop_process(proc, grace=5)


async def get(
    s: aiohttp.ClientSession, front: str, host: str, path: str, method: str = "GET", **kw: object
) -> tuple[int, str]:
    headers = {**FETCH, "Host": host, **kw.pop("headers", {})}  # type: ignore[dict-item]
    async with s.request(method, front + path, headers=headers, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.text()


def site_rules(buffer: Path, config: Path) -> set[tuple[str, str | None]]:
    out: set[tuple[str, str | None]] = set()
    for site in ("alpha", "beta-shop"):
        rows = run_cli(
            "queue",
            "list",
            "--json",
            "--buffer",
            str(buffer),
            "--config",
            str(config),
            "--site",
            site,
            "--limit",
            "500",
        ).stdout
        out |= {(site, json.loads(line)["rule"]) for line in rows.splitlines() if line.strip()}
    return out


@pytest.mark.parametrize("flavor", ["nginx", "caddy"])
async def test_each_site_gets_its_own_server_block_routes_and_upstream(
    tmp_path: Path, flavor: str
) -> None:
    need(NGINX if flavor == "nginx" else CADDY, flavor, "see bench/README.md")
    port = free_port()
    listen = f"127.0.0.1:{port}" if flavor == "nginx" else f"http://:{port}"
    front = f"http://127.0.0.1:{port}"
    alpha, beta = f"alpha.example:{port}", f"beta.example:{port}"
    async with start_site() as a, start_site() as b:
        config = sites_config(tmp_path, a, b)
        with sites_gateway(tmp_path, config) as gw:
            async with aiohttp.ClientSession(headers=BROWSER) as s:
                await wait_healthy(gw, s)
                args = ["front-config", flavor, "--config", str(config), "--gateway", gw.url]
                text = run_cli(*args, "--listen", listen).stdout
                (tmp_path / "front.conf").write_text(text)
                checked = run_cli(
                    "check", "--config", str(config), "--front-config", str(tmp_path / "front.conf")
                ).stdout
                assert "not covered" not in checked and "no server block" not in checked
                with run_front(flavor, text, tmp_path) as proc:
                    log = tmp_path / flavor / "error.log"
                    for _ in range(200):
                        assert proc.poll() is None, tail(log)
                        with contextlib.suppress(aiohttp.ClientError):
                            if (await get(s, front, alpha, "/static/ping"))[0] == 200:
                                break
                        await asyncio.sleep(0.05)
                    nav = {"Accept": "text/html", "Sec-Fetch-Dest": "document"}
                    for host, site in ((alpha, a), (beta, b)):
                        status, page = await get(s, front, host, "/", headers=nav)
                        assert status == 200 and "/_capi/px.js" in page, (host, page[:200])
                        assert site.hops("GET", "/") == [2]
                        assert (await get(s, front, host, "/static/app.js"))[0] == 200
                        assert site.hops("GET", "/static/app.js") == [1]
                        assert (await get(s, front, host, "/_capi/px.js"))[0] == 200
                        status, _ = await get(s, front, host, "/api/cart", "POST", data=b"{}")
                        assert status == 200
                    # Only beta's rules read POST /api/cart: through the gateway there only.
                    assert a.hops("POST", "/api/cart") == [1]
                    assert b.hops("POST", "/api/cart") == [2]
                    # alpha's rules read /search: through the gateway on alpha, not on beta.
                    for host in (alpha, beta):
                        assert (await get(s, front, host, "/search?q=mug"))[0] == 200
                    assert a.hops("GET", "/search") == [2]
                    assert b.hops("GET", "/search") == [1]
                    if flavor == "nginx":
                        status, _ = await get(s, front, f"nobody.example:{port}", "/static/x")
                        assert status == 421
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                fired = await asyncio.to_thread(site_rules, tmp_path / "outbox.db", config)
                if {("beta-shop", "api-cart"), ("alpha", "search")} <= fired:
                    break
                assert asyncio.get_running_loop().time() < deadline, fired
                await asyncio.sleep(0.25)
            assert ("alpha", "api-cart") not in fired


def test_one_sites_file_names_everything_after_the_site(tmp_path: Path) -> None:
    """`--site S` files of several sites can sit side by side in one nginx."""
    need(NGINX, "nginx", "bench/install-nginx.sh")
    a, b = Site(url="http://127.0.0.1:9001"), Site(url="http://127.0.0.1:9002")
    config = sites_config(tmp_path, a, b)
    files = []
    for name in ("alpha", "beta-shop"):
        text = run_cli("front-config", "nginx", "--config", str(config), "--site", name).stdout
        assert f"# site: {name}" in text
        other = "beta-shop" if name == "alpha" else "alpha"
        assert f"# site: {other}" not in text
        path = tmp_path / f"{name}.conf"
        path.write_text(text)
        files.append(path)
    work = tmp_path / "nginx"
    work.mkdir()
    includes = "".join(f"  include {path};\n" for path in files)
    (work / "nginx.conf").write_text(
        f"pid {work}/nginx.pid;\nerror_log {work}/error.log;\nevents {{}}\nhttp {{\n"
        f"  access_log off;\n  client_body_temp_path {work}/body;\n"
        f"  proxy_temp_path {work}/proxy;\n{includes}}}\n"
    )

    done = subprocess.run(
        [NGINX or "nginx", "-t", "-p", str(work), "-c", str(work / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    checked = run_cli("check", "--config", str(config), "--front-config", str(files[0])).stdout
    assert "site 'beta-shop' has no server block" in checked
    assert "site 'alpha'" not in checked
