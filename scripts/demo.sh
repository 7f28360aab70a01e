#!/usr/bin/env bash
# homeostat demo: a real Prometheus on loopback with eight days of backfilled history
# for a few signals, a live exporter that turns one series anomalous after a while,
# and homeostat in dry-run watching it. Shows the anomaly, the plan and the audit log,
# stops everything it started, and exits 0.
#
# And one real action: a real Keystone and the real Nova API (scripts/openstack.sh,
# installed on first use, about a minute and a half) with a booted server "web-1"
# whose heartbeat drops for a while; the reboot-unresponsive-vm playbook (in auto
# mode, triggered by that anomaly) reboots it in Nova through an application
# credential. Nova's own record of the reboot is shown beside the audit log.
# DEMO_OPENSTACK=0 leaves this part out.
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
DEMO_OPENSTACK=${DEMO_OPENSTACK:-1}

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
read -r PROM_PORT EXPORTER_PORT AGENT_PORT VM_EXPORTER_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/prometheus-data"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$DEMO_OPENSTACK" = 1 ]; then scripts/openstack.sh stop "$DEMO_DIR/openstack" || true; fi
}
trap cleanup EXIT

incidents=1
scrape_vm=""
if [ "$DEMO_OPENSTACK" = 1 ]; then
    incidents=2
    say "starting a real Keystone and the real Nova API (scripts/openstack.sh)"
    scripts/openstack.sh install
    HOMEOSTAT_WATCH_PID=$$ scripts/openstack.sh start "$DEMO_DIR/openstack" >/dev/null
    OS_STATE=$DEMO_DIR/openstack/state.json
    say "booting server web-1 in Nova (as the project's member)"
    SERVER_ID=$(python3 scripts/openstack/demo_nova.py "$OS_STATE" boot web-1)
    echo "web-1 is $SERVER_ID"
    # Its heartbeat: eight days of history, then live, dropping for a while.
    python3 - "$DEMO_DIR/vm-history.om" "$SERVER_ID" <<'PY'
import math, random, sys, time
out, sid = sys.argv[1], sys.argv[2]
rng, now, step = random.Random(11), time.time(), 300
start = math.ceil((now - 8 * 86400) / step) * step
with open(out, "w") as f:
    f.write("# TYPE demo_vm_heartbeat gauge\n")
    t = start
    while t < now - 120:
        f.write(f'demo_vm_heartbeat{{server_id="{sid}"}} {100 + rng.uniform(-2, 2):.3f} {t}\n')
        t += step
    f.write("# EOF\n")
PY
    promtool tsdb create-blocks-from openmetrics "$DEMO_DIR/vm-history.om" "$DEMO_DIR/prometheus-data" >>"$DEMO_DIR/promtool.log" 2>&1 \
        || { cat "$DEMO_DIR/promtool.log"; exit 1; }
    python3 - "$VM_EXPORTER_PORT" "$SERVER_ID" "$((ANOMALY_AFTER + 10))" "$ANOMALY_FOR" <<'PY' &
import random, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
port, sid, after, length = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
t0 = time.time()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        down = after <= time.time() - t0 < after + length
        v = 0.0 if down else 100 + random.uniform(-2, 2)
        body = f'demo_vm_heartbeat{{server_id="{sid}"}} {v}\n'.encode()
        self.send_response(200); self.send_header("Content-Type", "text/plain")
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
    pids+=($!)
    scrape_vm=", \"127.0.0.1:$VM_EXPORTER_PORT\""
fi

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
      - targets: ["127.0.0.1:$EXPORTER_PORT"$scrape_vm]
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
# auto: each playbook's own mode applies (restart-on-error-spike stays dry-run).
mode = "auto"
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

if [ "$DEMO_OPENSTACK" = 1 ]; then
    # reboot-unresponsive-vm as shipped, but triggered by the heartbeat anomaly (the
    # shipped one waits for Alertmanager's InstanceDown).
    sed -e 's|#{ alertname: "InstanceDown", labels: #{ server_id: "=~.+" } },|#{ signal: "vm_heartbeat", labels: #{ server_id: "=~.+" }, min_score: 0.999, min_duration: "0s", direction: "down" },|' \
        -e 's|`up{server_id="${id}"} == 1`, within: "5m"|`min by (server_id) (demo_vm_heartbeat{server_id="${id}"}) > 50`, within: "2m"|' \
        playbooks/reboot-unresponsive-vm.rhai >"$DEMO_DIR/reboot-unresponsive-vm.rhai"
    grep -q 'signal: "vm_heartbeat"' "$DEMO_DIR/reboot-unresponsive-vm.rhai"
    grep -q 'demo_vm_heartbeat{server_id' "$DEMO_DIR/reboot-unresponsive-vm.rhai"
    sed -i "s|^playbooks = \[\(.*\)\]|playbooks = [\1, \"$DEMO_DIR/reboot-unresponsive-vm.rhai\"]|" "$DEMO_DIR/homeostat.toml"
    cat >>"$DEMO_DIR/homeostat.toml" <<TOML

# min: the backfilled history has no job/instance labels and stays in Prometheus'
# lookback beside the live series for a few minutes; the drop must win.
[[signals]]
name = "vm_heartbeat"
query = 'min by (server_id) (demo_vm_heartbeat)'
direction = "down"

[openstack]
cloud = "homeostat-appcred"
clouds_file = "$DEMO_DIR/openstack/clouds.yaml"
action_timeout = "2m"
TOML
fi

say "homeostat check"
"$HOMEOSTAT" check --config "$DEMO_DIR/homeostat.toml"

say "homeostat run (dry-run; metrics on http://127.0.0.1:$AGENT_PORT/metrics)"
AUDIT_LOG=$DEMO_DIR/audit.jsonl
RUST_LOG=${RUST_LOG:-info} "$HOMEOSTAT" run --config "$DEMO_DIR/homeostat.toml" &
agent=$!
pids+=("$agent")

deadline=$((SECONDS + DEMO_TIMEOUT))
# The incident ends when the restart's verification held (or escalation was handled).
# (Until the agent has written its log there is nothing to count: zero.)
until finished=$(grep -cE '"kind":"(incident_done|escalation_limit)"' "$AUDIT_LOG" 2>/dev/null)
    [ "${finished:-0}" -ge "$incidents" ]; do
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

if [ "$DEMO_OPENSTACK" = 1 ]; then
    say "what Nova recorded for web-1 (its own instance actions)"
    python3 scripts/openstack/demo_nova.py "$OS_STATE" actions "$SERVER_ID"
    python3 - "$AUDIT_LOG" <<'PY' || { echo "demo: no done reboot in the audit log" >&2; exit 1; }
import json, sys
records = [json.loads(l) for l in open(sys.argv[1])]
done = [r for r in records if r["kind"] == "action_outcome"
        and r["data"].get("kind") == "openstack.server_reboot" and r["data"].get("outcome") == "done"]
intent = [r for r in records if r["kind"] == "action_intent"
          and r["data"]["action"]["kind"] == "openstack.server_reboot"]
assert done and intent, "no reboot"
print("audit: intent #%d sent %s %s %s; outcome #%d: done, Nova's request %s"
      % (intent[0]["seq"], intent[0]["data"]["requests"][0]["method"],
         intent[0]["data"]["requests"][0]["path"],
         json.dumps(intent[0]["data"]["requests"][0]["body"]), done[0]["seq"],
         done[0]["data"]["detail"]["responses"][0]["request_id"]))
PY
fi

cleanup
trap - EXIT
echo
echo "audit log: $AUDIT_LOG"
