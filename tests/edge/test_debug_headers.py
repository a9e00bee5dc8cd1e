"""`debug_headers`: an untagged page says why in `X-Capi-Skipped`, so curl users see why."""

from __future__ import annotations

import pytest

from tests.edge.conftest import StartGateway
from tests.edge.test_pages import visit

CURL = "curl/8.5.0"


async def test_off_by_default_nothing_is_added(start: StartGateway) -> None:
    gw = await start()
    async with gw.session.get(gw.url + "/html", headers={"User-Agent": CURL}) as resp:
        assert "X-Capi-Skipped" not in resp.headers
        assert "/_capi/px.js" not in await resp.text()


@pytest.mark.parametrize(
    ("headers", "settings", "reason"),
    [
        ({"User-Agent": CURL}, {}, "bot"),
        ({"Sec-Fetch-Dest": "empty"}, {}, "fragment"),
        ({}, {"inject": False}, "inject-off"),
        ({}, {"consent": "consent"}, "consent"),
    ],
    ids=["curl-is-a-bot", "fetch", "inject-off", "no-consent"],
)
async def test_the_reason_is_named(
    start: StartGateway, headers: dict[str, str], settings: dict[str, object], reason: str
) -> None:
    gw = await start(debug_headers=True, **settings)
    sent = {"User-Agent": "Mozilla/5.0 Chrome/131.0", "Accept": "text/html", **headers}
    async with gw.session.get(gw.url + "/html", headers=sent) as resp:
        assert resp.headers.get("X-Capi-Skipped") == reason
        await resp.read()


async def test_a_tagged_page_and_a_non_html_answer_get_no_header(start: StartGateway) -> None:
    gw = await start(debug_headers=True)
    page = await visit(gw)
    assert page.tag is not None
    async with gw.session.get(gw.url + "/html", headers={"User-Agent": "Mozilla/5.0"}) as resp:
        assert "X-Capi-Skipped" not in resp.headers
    async with gw.session.get(gw.url + "/bytes/10", headers={"User-Agent": CURL}) as resp:
        assert "X-Capi-Skipped" not in resp.headers
