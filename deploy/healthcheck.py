"""Container health check: exit 0 when the gateway's `{prefix}/health?live` answers 200.

Liveness, not readiness: a gateway whose event buffer is full still serves the site it
sits in front of, and restarting it would not empty the buffer.

Reads the port from CAPIGW_LISTEN and the prefix from CAPIGW_PREFIX (the image's
defaults: 0.0.0.0:8080 and /_capi). Standard library only; never goes through a proxy.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    """Probe the health endpoint on loopback; 0 healthy, 1 not."""
    listen = os.environ.get("CAPIGW_LISTEN") or "0.0.0.0:8080"
    port = listen.rsplit(":", 1)[1]
    prefix = "/" + (os.environ.get("CAPIGW_PREFIX") or "/_capi").strip("/")
    url = f"http://127.0.0.1:{port}{prefix}/health?live"
    # An HTTP(S)_PROXY set for the gateway's egress must not capture the probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
