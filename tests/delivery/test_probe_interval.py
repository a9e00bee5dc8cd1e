"""A blocked pixel's token is re-checked every `blocked_probe_interval`, even when that is
shorter than the sender's one-minute maintenance round."""

from __future__ import annotations

from tests.conftest import GatewayFactory, web_event
from tests.delivery.test_sender import post, settled
from tests.fakes.graph import FakeGraph


async def test_a_short_probe_interval_releases_a_granted_pixel_soon(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(blocked_probe_interval=0.5)
    # A permission error (code 200) parks the pixel; the permission is then granted
    # without a new token, so only the probe can notice.
    fake_graph.fail_next(1, status=403, code=200, message="Permissions error")
    await post(client, [web_event(event_id="g1")])
    await settled(client, blocked=1)
    await settled(client, sent=1)  # within 5 s, not the next minute's maintenance
    assert fake_graph.event_ids() == ["g1"]
