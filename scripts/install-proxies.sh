#!/usr/bin/env bash
# Installs what the front-proxy and deployment tests run (tests/front, tests/test_deploy.py) when
# it is not there yet: nginx, Caddy, kubectl (kustomize builds) and systemd-analyze (the unit). The tests run their own nginx/Caddy on 127.0.0.1 with configs in a
# temp dir: the packages' own services are never started (a policy-rc.d refuses them during the
# install when the machine has none).
# Idempotent; only apt-get talks to the network.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have nginx || missing+=(nginx)
have caddy || missing+=(caddy)
have kubectl || missing+=(kubectl)
have systemd-analyze || missing+=(systemd)
if [ ${#missing[@]} -eq 0 ]; then
    echo "nginx, caddy, kubectl and systemd-analyze are installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "${missing[*]} missing and this is not root (no sudo either). As root, run:" >&2
    echo "    apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
for tool in nginx caddy kubectl systemd-analyze; do
    have "$tool" || { echo "apt-get ran but $tool is still missing" >&2; exit 1; }
done
echo "nginx, caddy, kubectl and systemd-analyze are installed"
