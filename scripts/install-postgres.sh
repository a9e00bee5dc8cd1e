#!/usr/bin/env bash
# Installs Debian's PostgreSQL server for the PostgreSQL store tests, if initdb is not there yet,
# and, as root, the unprivileged system user `capigw-pg` that runs the tests' throwaway
# clusters (initdb and postgres refuse to run as root).
# The tests start their own server in a temp dir (tests/postgres.py); nothing is started here
# and Debian's own cluster, if the package creates one, is left alone.
# Idempotent; only apt-get talks to the network.
set -euo pipefail

PG_USER=capigw-pg

# Debian keeps the server programs out of PATH, one folder per major version: the newest.
find_initdb() {
    local found
    found=$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -n 1 || true)
    if [ -n "$found" ]; then
        echo "$found"
    else
        command -v initdb || true
    fi
}

have_initdb() {
    [ -n "$(find_initdb)" ]
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=(false)
fi

if have_initdb; then
    echo "postgresql is installed: $(find_initdb)"
else
    if [ "${SUDO[0]:-}" = false ]; then
        echo "PostgreSQL's initdb is missing and this is not root (no sudo either). As root, run:" >&2
        echo "    apt-get update && apt-get install -y postgresql" >&2
        exit 1
    fi
    # The package would start Debian's own cluster: the tests start theirs, so refuse it.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" apt-get install -y --no-install-recommends postgresql
    if ! have_initdb; then
        echo "apt-get installed postgresql but initdb is still missing" >&2
        exit 1
    fi
    echo "postgresql is installed: $(find_initdb)"
fi

# Only root needs the unprivileged user: anyone else runs the cluster as themselves.
if [ "$(id -u)" -eq 0 ] && ! id -u "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
    echo "created system user $PG_USER (runs the tests' throwaway PostgreSQL clusters)"
fi
