#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/browser), if it is not there yet.
# Playwright drives it at /usr/bin/chromium: no browser is downloaded by Playwright itself.
# Idempotent; only apt-get talks to the network.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium is installed: $CHROMIUM"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "$CHROMIUM is missing and this is not root (no sudo either). As root, run:" >&2
    echo "    apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "apt-get installed chromium but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "chromium is installed: $CHROMIUM"
