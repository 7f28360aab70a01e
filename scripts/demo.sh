#!/usr/bin/env bash
# homeostat demo: a real Prometheus on loopback with eight days of backfilled history
# for a few signals, a live exporter that turns one series anomalous after a while,
# and homeostat in dry-run watching it. Shows the anomaly, the plan and the audit log,
# stops everything it started, and exits 0.
#
# Environment: ANOMALY_AFTER (seconds, default 25), ANOMALY_FOR (seconds, default 30),
# DEMO_TIMEOUT (seconds, default 150),
# DEMO_DIR (default .demo in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO_DIR=${DEMO_DIR:-$ROOT/.demo}
ANOMALY_AFTER=${ANOMALY_AFTER:-25}
ANOMALY_FOR=${ANOMALY_FOR:-30}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-150}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# --- what the demo needs -------------------------------------------------------------
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

say "building homeostat (release)"
cargo build --release --locked --quiet
HOMEOSTAT=$ROOT/target/release/homeostat

# Loopback ports nobody else uses right now (never Prometheus' default 9090).
read -r PROM_PORT EXPORTER_PORT AGENT_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/prometheus-data"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say "backfilling 8 days of history into a fresh Prometheus TSDB"
python3 scripts/demo_data.py history --out "$DEMO_DIR/history.om" --days 8
promtool tsdb create-blocks-from openmetrics "$DEMO_DIR/history.om" "$DEMO_DIR/prometheus-data" >"$DEMO_DIR/promtool.log" 2>&1 \
    || { cat "$DEMO_DIR/promtool.log"; exit 1; }

say "starting the live exporter (anomaly in ${ANOMALY_AFTER}s) and Prometheus on 127.0.0.1:$PROM_PORT"
python3 scripts/demo_data.py serve --port "$EXPORTER_PORT" --anomaly-after "$ANOMALY_AFTER" --anomaly-for "$ANOMALY_FOR" &
pids+=($!)
cat >"$DEMO_DIR/prometheus.yml" <<YAML
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: demo
    static_configs:
      - targets: ["127.0.0.1:$EXPORTER_PORT"]
YAML
prometheus --config.file="$DEMO_DIR/prometheus.yml" --storage.tsdb.path="$DEMO_DIR/prometheus-data" \
    --storage.tsdb.retention.time=30d --web.listen-address="127.0.0.1:$PROM_PORT" >"$DEMO_DIR/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null || { tail -20 "$DEMO_DIR/prometheus.log"; exit 1; }

cat >"$DEMO_DIR/homeostat.toml" <<TOML
# Written by scripts/demo.sh.
playbooks = ["$ROOT/playbooks/restart-on-error-spike.rhai"]

[prometheus]
url = "http://127.0.0.1:$PROM_PORT"
timeout = "5s"

[agent]
interval = "2s"
listen = "127.0.0.1:$AGENT_PORT"
audit_log = "audit.jsonl"
max_backoff = "10s"

[detection]
history = "7d"
history_step = "5m"

[[signals]]
name = "node_cpu"
query = 'max by (node) (demo_node_cpu_utilisation)'
direction = "up"
min_spread = 0.02

[[signals]]
name = "http_p99_latency"
query = 'max by (service) (demo_http_p99_latency_seconds)'
direction = "up"

[[signals]]
name = "deployment_restarts"
query = 'max by (namespace, deployment) (demo_deployment_restarts)'
direction = "up"
min_spread = 1

[[signals]]
name = "http_error_ratio"
query = 'max by (namespace, deployment) (demo_http_error_ratio)'
direction = "up"
min_spread = 0.002
TOML

say "homeostat check"
"$HOMEOSTAT" check --config "$DEMO_DIR/homeostat.toml"

say "homeostat run (dry-run; metrics on http://127.0.0.1:$AGENT_PORT/metrics)"
AUDIT_LOG=$DEMO_DIR/audit.jsonl
RUST_LOG=${RUST_LOG:-info} "$HOMEOSTAT" run --config "$DEMO_DIR/homeostat.toml" &
agent=$!
pids+=("$agent")

deadline=$((SECONDS + DEMO_TIMEOUT))
# The incident ends when the restart's verification held (or escalation was handled).
until grep -qE '"kind":"(incident_done|escalation_limit)"' "$AUDIT_LOG" 2>/dev/null; do
    if ((SECONDS > deadline)); then
        echo "demo: the incident did not finish within ${DEMO_TIMEOUT}s" >&2
        exit 1
    fi
    kill -0 "$agent" 2>/dev/null || { echo "demo: homeostat exited early" >&2; exit 1; }
    sleep 1
done
sleep 2

say "what /metrics says about that series now"
curl -fsS "http://127.0.0.1:$AGENT_PORT/metrics" | grep -E '^homeostat_(anomaly_score|expected_(lower|upper)|anomaly_open)\{signal="http_error_ratio",deployment="cart"'

say "stopping homeostat (SIGTERM)"
kill -TERM "$agent"
wait "$agent"

say "audit records"
"$HOMEOSTAT" audit list --log "$AUDIT_LOG"
say "audit chain"
"$HOMEOSTAT" audit verify --log "$AUDIT_LOG"

cleanup
trap - EXIT
echo
echo "audit log: $AUDIT_LOG"
