#!/usr/bin/env bash
# Install nginx and wrk from Debian packages for bench/bench_proxy.py.
#
#   sudo bash bench/install-nginx.sh      (or as root)
#
# Idempotent: installs only what is missing, runs `apt-get update` once and only then, and
# touches no other network. The package's own nginx service is not started (the benchmark
# runs its own nginx on 127.0.0.1 with a config in a temp dir): when the machine has no
# /usr/sbin/policy-rc.d, one that refuses service starts is put there for the install and
# removed afterwards.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
if ! have nginx; then
    # `nginx` is the plain server on Debian 12 and later (`nginx-light` only adds the echo
    # module there); fall back to `nginx-light` where `nginx` has no candidate.
    missing+=(nginx)
fi
have wrk || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-nginx.sh: nginx and wrk are already installed."
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    echo "install-nginx.sh: run as root to install: ${missing[*]}" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap 'as_root rm -f "$policy"' EXIT
fi

echo "install-nginx.sh: installing ${missing[*]} ..."
as_root apt-get update -qq
packages=()
for name in "${missing[@]}"; do
    # (the policy is read first: `grep -q` closing the pipe early would fail it under pipefail)
    if [ "$name" = nginx ] && ! grep -q 'Candidate: [0-9]' <<<"$(apt-cache policy nginx)"; then
        name=nginx-light
    fi
    packages+=("$name")
done
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${packages[@]}"

for tool in nginx wrk; do
    have "$tool" || { echo "install-nginx.sh: $tool is still missing" >&2; exit 1; }
done
echo "install-nginx.sh: done ($( (nginx -v || /usr/sbin/nginx -v) 2>&1 ), $(wrk -v 2>&1 | head -1))."
