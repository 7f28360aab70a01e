#!/usr/bin/env bash
# Runs every homeostat test, installing what the tests need first: the tests start a
# real Prometheus (backfilled with promtool) and a real Alertmanager on loopback ports
# of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
if ((${#need[@]})); then
    echo "test.sh: installing ${need[*]} (Debian packages)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The OpenStack tests run a real Keystone and the real Nova API (PyPI, in venvs cached
# under ~/.cache/homeostat-openstack): installed once, silent when already there.
scripts/openstack.sh install

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
