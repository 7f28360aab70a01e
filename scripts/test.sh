#!/usr/bin/env bash
# Runs every homeostat test, installing what the tests need first: the tests start a
# real Prometheus (and backfill it with promtool) on loopback ports of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in prometheus promtool; do
    command -v "$tool" >/dev/null 2>&1 || need+=(prometheus)
done
if ((${#need[@]})); then
    echo "test.sh: installing ${need[0]} (Debian package)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[0]}" >/dev/null
fi

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
