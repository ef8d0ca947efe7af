#!/usr/bin/env bash
# Set up this machine for fabmurder development, as root on Debian 12.
#
# Idempotent: installs only the Debian packages that are missing, creates
# .venv only if it is absent, and reinstalls the package into it only when
# pyproject.toml changed since the last run.
set -euo pipefail

cd "$(dirname "$0")/.."

# openssh-*, iproute2, util-linux, procps: the local test fleet (sshd per host, netns, tc, nsenter).
# iperf3: measures the fleet's rate caps. aria2, opentracker: interoperability tests.
# python3-venv: the fleet's hosts build their agent venv with Debian's /usr/bin/python3.
# rsync: the baseline of the delta benchmark (inv bench.delta).
PACKAGES=(openssh-server openssh-client iproute2 aria2 opentracker iperf3 curl procps psmisc
          python3-venv util-linux rsync)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: run as root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# Any Python 3.11+ will do for the control side; prefer the one on PATH.
python=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [[ -z $python ]]; then
    echo "bootstrap: no Python 3.11 or newer found" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap: creating .venv with $("$python" -V)"
    "$python" -m venv .venv
fi

stamp=.venv/.fabmurder-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "bootstrap: installing fabmurder[dev,docs,bench] into .venv"
    .venv/bin/python -m pip install -q -e '.[dev,docs,bench]'
    echo "$want" >"$stamp"
fi
echo "bootstrap: ready"
