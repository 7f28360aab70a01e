#!/usr/bin/env bash
# openstack.sh - a real Keystone and a real Nova API on loopback ports, for homeostat's
# tests and demo.
#
#   scripts/openstack.sh install            venvs + a bootstrapped Keystone template
#                                           (idempotent; cached; quiet)
#   scripts/openstack.sh start [RUN_DIR]    Keystone + Nova on ports of their own; prints
#                                           RUN_DIR/state.json when both are ready
#   scripts/openstack.sh stop [RUN_DIR]
#   scripts/openstack.sh compute stop|start HOST [RUN_DIR]
#                                           test-only: stop/start a nova-compute (a dead
#                                           compute, as Nova sees one); not Nova's API
#
# env: HOMEOSTAT_OPENSTACK_HOME   cache of venvs, pip downloads and the Keystone
#                                 template (default ~/.cache/homeostat-openstack)
#      HOMEOSTAT_WATCH_PID        the servers exit when this process is gone (tests)
#      PYTHON                     the interpreter the venvs are made from (python3)
#
# What runs: PyPI nova 34.0.0 (API microversions 2.1-2.104) with openstack-placement
# 16.0.0 as one process, the way Nova's functional tests run it: the real nova-api,
# conductor, scheduler and policy, two nova-compute services (compute1, compute2) on
# the fake live-migration driver; in-memory sqlite, so each start is an empty cloud.
# In front of it PyPI keystone 30.0.0 (sqlite, fernet tokens), validating every
# token through the real keystonemiddleware.
#
# Why Keystone from PyPI, not Debian's `keystone` package: Debian 12 ships keystone 22
# (2022), which its maintainer scripts configure through debconf/dbconfig-common and
# start as a system service (uwsgi under the init system); test machines and CI
# containers have no init system (PID 1 is not systemd), a harness needs several
# independent instances on ports of their own, and 22 is four releases older than the
# Nova it fronts. A venv with the release matching nova 34 runs unprivileged, per run.
# The bootstrap itself is the same: `keystone-manage db_sync` and
# `keystone-manage bootstrap` on sqlite.
#
# Clients read RUN_DIR/clouds.yaml and RUN_DIR/secure.yaml; clouds:
#   homeostat-admin (password, role admin), homeostat-member (password, role member),
#   homeostat-appcred (application credential, role member),
#   homeostat-admin-appcred (application credential, role admin);
# all scoped to project "homeostat", region RegionOne, interface public.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
H=${HOMEOSTAT_OPENSTACK_HOME:-$HOME/.cache/homeostat-openstack}
PY=${PYTHON:-python3}
export PIP_CACHE_DIR="$H/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { echo "openstack.sh: $*" >&2; }

# What an install is made of: the pins, and this number, raised when install() or the
# Keystone template change. A different stamp reinstalls (editing anything else here
# does not).
INSTALL_VERSION=1
stamp() { { cat "$HERE/openstack/nova-constraints.txt" "$HERE/openstack/keystone-constraints.txt"
    echo "$INSTALL_VERSION"; } | sha256sum | cut -c1-16; }

os_packages() {
  "$PY" -c 'import venv, ensurepip' 2>/dev/null && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    python3 python3-venv ca-certificates >/dev/null
}

venv() {  # dir constraints packages...
  local dir=$1 cons=$2; shift 2
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q -c "$cons" "$@"
}

install() {
  local want; want=$(stamp)
  if [ "$(cat "$H/installed" 2>/dev/null)" = "$want" ]; then return 0; fi
  log "installing Keystone and Nova into $H (once; about a minute)"
  mkdir -p "$H"; os_packages
  rm -f "$H/installed"
  # Two cores: the two venvs install side by side.
  venv "$H/nova" "$HERE/openstack/nova-constraints.txt" \
    nova==34.0.0 openstack-placement==16.0.0 oslotest testtools wsgi-intercept \
    > "$H/nova-install.log" 2>&1 &
  local nova_pid=$!
  venv "$H/keystone" "$HERE/openstack/keystone-constraints.txt" keystone==30.0.0 \
    > "$H/keystone-install.log" 2>&1 || { cat "$H/keystone-install.log" >&2; exit 1; }
  keystone_template
  wait "$nova_pid" || { cat "$H/nova-install.log" >&2; exit 1; }
  echo "$want" > "$H/installed"
}

keystone_conf() {  # dir -> keystone.conf for a Keystone whose files live in dir
  cat > "$1/keystone.conf" <<CONF
[DEFAULT]
log_file = $1/keystone.log
[database]
connection = sqlite:///$1/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = $1/fernet-keys
[fernet_receipts]
key_repository = $1/fernet-keys
[credential]
key_repository = $1/credential-keys
[identity]
# Test passwords: the cheapest bcrypt cost keeps user creation fast.
password_hash_rounds = 4
CONF
}

# A bootstrapped database and keys, copied by every start (bootstrapping takes ~10 s).
keystone_template() {
  local T="$H/keystone-template" M="$H/keystone/bin/keystone-manage"
  rm -rf "$T"; mkdir -p "$T"; chmod 700 "$T"
  keystone_conf "$T"
  local c=(--config-file "$T/keystone.conf") u="http://127.0.0.1:5000/v3"
  "$PY" -c 'import secrets;print(secrets.token_urlsafe(24))' > "$T/admin-password"
  "$PY" -c 'import secrets;print(secrets.token_urlsafe(24))' > "$T/nova-password"
  {
    "$M" "${c[@]}" db_sync
    "$M" "${c[@]}" fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
    "$M" "${c[@]}" credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
    # The endpoint URL is rewritten by every start (its port is the run's).
    "$M" "${c[@]}" bootstrap --bootstrap-password "$(cat "$T/admin-password")" \
      --bootstrap-username admin --bootstrap-project-name admin \
      --bootstrap-role-name admin --bootstrap-service-name keystone \
      --bootstrap-region-id RegionOne --bootstrap-admin-url "$u" \
      --bootstrap-public-url "$u" --bootstrap-internal-url "$u"
    # Nova's service user: keystonemiddleware validates tokens with it.
    "$M" "${c[@]}" bootstrap --bootstrap-password "$(cat "$T/nova-password")" \
      --bootstrap-username nova --bootstrap-project-name service \
      --bootstrap-role-name service
  } > "$H/keystone-bootstrap.log" 2>&1 || { cat "$H/keystone-bootstrap.log" >&2; exit 1; }
  rm -f "$T/keystone.log"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # pidfile
  alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

stop() {
  local R=$1
  stop_pid "$R/nova.pid"; stop_pid "$R/keystone.pid"
}

# Runs left behind by test processes that are gone: their servers exited with them.
sweep() {
  local d
  for d in "$H"/runs/*/; do
    [ -d "$d" ] || continue
    alive "$d/nova.pid" || alive "$d/keystone.pid" || rm -rf "$d"
  done
}

start() {
  local R=$1 t0; t0=$(date +%s%N)
  if [ "$(cat "$H/installed" 2>/dev/null)" != "$(stamp)" ]; then
    log "not installed (or installed from other pins): run scripts/openstack.sh install"; exit 3
  fi
  mkdir -p "$H/runs"; sweep
  stop "$R" 2>/dev/null || true
  rm -rf "$R/keystone" "$R"/{state.json,nova-ready,keystone-port,clouds.yaml,secure.yaml}
  mkdir -p "$R"; chmod 700 "$R"
  cp -r "$H/keystone-template" "$R/keystone"
  keystone_conf "$R/keystone"
  cp "$R/keystone/admin-password" "$R/admin-password"

  export HOMEOSTAT_WATCH_PID=${HOMEOSTAT_WATCH_PID:-}
  OS_KEYSTONE_CONFIG_FILES="$R/keystone/keystone.conf" \
  HOMEOSTAT_KEYSTONE_PORT_FILE="$R/keystone-port" \
    setsid "$H/keystone/bin/python" "$HERE/openstack/keystone_serve.py" \
    > "$R/keystone.out" 2>&1 < /dev/null &
  echo $! > "$R/keystone.pid"
  for _ in $(seq 1 100); do [ -f "$R/keystone-port" ] && break; sleep 0.05; done
  [ -f "$R/keystone-port" ] || { cat "$R/keystone.out" >&2; exit 1; }

  HOMEOSTAT_KEYSTONE_URL="http://127.0.0.1:$(cat "$R/keystone-port")/v3" \
  HOMEOSTAT_NOVA_SERVICE_PASSWORD="$(cat "$R/keystone/nova-password")" \
  HOMEOSTAT_NOVA_READY="$R/nova-ready" HOMEOSTAT_NOVA_LOG="$R/nova.log" \
  HOMEOSTAT_NOVA_COMPUTES=compute1,compute2 \
    setsid "$H/nova/bin/python" "$HERE/openstack/novaserver.py" \
    > "$R/nova.out" 2>&1 < /dev/null &
  echo $! > "$R/nova.pid"

  if ! "$PY" "$HERE/openstack/identity.py" "$R" > "$R/identity.out" 2>&1; then
    log "start failed; identity.out, keystone.out, nova.out:"
    tail -n 20 "$R/identity.out" "$R/keystone.out" "$R/nova.out" >&2
    stop "$R"; exit 1
  fi
  log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms: $R/state.json"
  echo "$R/state.json"
}

compute() {  # stop|start host run_dir
  local url; url=$("$PY" -c 'import json,sys;print(json.load(open(sys.argv[1]))["control_url"])' "$3/state.json")
  "$PY" -c 'import sys,urllib.request as u;print(u.urlopen(u.Request(sys.argv[1],method="POST")).read().decode())' \
    "$url/computes/$2/$1"
}

case "${1:-}" in
  install) install ;;
  start)   start "${2:-$H/runs/default}" ;;
  stop)    stop "${2:-$H/runs/default}" ;;
  compute) compute "${2:?stop|start}" "${3:?host}" "${4:-$H/runs/default}" ;;
  *) echo "usage: $0 install | start [RUN_DIR] | stop [RUN_DIR] | compute stop|start HOST [RUN_DIR]" >&2; exit 2 ;;
esac
