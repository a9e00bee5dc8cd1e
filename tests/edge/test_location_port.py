"""A redirect to the site's own origin, its port written `:018082`, still lands on the
public origin with its path whole (yarl normalises the port, the text keeps the zero)."""

from __future__ import annotations

from yarl import URL

from gateway.edge.headers import rewrite_location
from tests.conftest import UA
from tests.fakes.upstream import Front


def test_the_path_survives_a_port_with_a_leading_zero() -> None:
    upstream = URL("http://127.0.0.1:18082")
    got = rewrite_location("http://127.0.0.1:018082/a/b?c=1#d", upstream, "https://shop.example")
    assert got == "https://shop.example/a/b?c=1#d"
    assert rewrite_location("http://127.0.0.1:018082", upstream, "https://s") == "https://s"
    assert rewrite_location("http://127.0.0.1:18082?q=1", upstream, "https://s") == "https://s?q=1"


async def test_a_redirect_through_the_proxy(gw: Front) -> None:
    headers = {"User-Agent": UA, "Host": "shop.example"}
    async with gw.session.get(
        gw.url + "/redirect?to=zero-port", headers=headers, allow_redirects=False
    ) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "http://shop.example/landing?x=1"
