"""Operator endpoints behind a proxy on the same host: every socket peer is loopback there,
so a forwarded request is judged by the client the trusted proxy names."""

from __future__ import annotations

from tests.admin.test_routes import ADMIN, ADMIN_TOKEN, HTML, Client
from tests.conftest import GatewayFactory

VISITOR = "203.0.113.9"


async def test_a_forwarded_request_is_not_local(gateway: GatewayFactory) -> None:
    client = await gateway()
    for path in ("/_capi/status", "/_capi/metrics", ADMIN):
        assert (await client.get(path, headers=HTML)).status == 200, path
        for header in ({"X-Forwarded-For": VISITOR}, {"Forwarded": f'for="{VISITOR}"'}):
            resp = await client.get(path, headers={**HTML, **header})
            assert resp.status == 403, (path, header)
            assert "proxy" in (await resp.json())["detail"]
        # A visitor cannot pass for loopback: the proxy appends the address it saw.
        forged = {"X-Forwarded-For": f"127.0.0.1, {VISITOR}"}
        assert (await client.get(path, headers={**HTML, **forged})).status == 403


async def test_a_local_client_through_a_trusted_local_proxy_still_gets_in(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    resp = await client.get("/_capi/status", headers={"X-Forwarded-For": "127.0.0.1"})
    assert resp.status == 200


async def test_forwarded_headers_from_an_untrusted_peer_are_refused(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(trusted_proxies=[])
    resp = await client.get("/_capi/status", headers={"X-Forwarded-For": "127.0.0.1"})
    assert resp.status == 403


async def login(client: Client, token: str, ip: str) -> int:
    resp = await client.post(
        f"{ADMIN}/login",
        data={"token": token},
        headers={**HTML, "X-Forwarded-For": ip},
        allow_redirects=False,
    )
    return int(resp.status)


async def test_one_clients_guesses_do_not_lock_out_another(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    attacker, operator = "198.51.100.66", "192.0.2.10"
    for _ in range(10):
        assert await login(client, "guess", attacker) == 403
    assert await login(client, "guess", attacker) == 429
    assert await login(client, ADMIN_TOKEN, attacker) == 429  # the guesser stays slowed
    assert await login(client, ADMIN_TOKEN, operator) == 303


async def test_correct_tokens_never_use_up_the_allowance(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    for _ in range(15):
        assert await login(client, ADMIN_TOKEN, "192.0.2.10") == 303
    assert await login(client, "guess", "192.0.2.10") == 403
