#!/usr/bin/env bash
# Section 7 of bench/run: the cluster. A three-member etcd on loopback, an agent registered in it, a gateway, and
# the same container reached directly and through the gateway; then 1000 simulated nodes with 100 tasks each
# (cluster/examples/simulate.rs, the real Registrar and Directory) for the directory's scale.
#
#   bench/cluster.sh W R BIN_DIR CONTAINER_ID     (called by bench/run, which owns W, R and the container)
#   bench/cluster.sh                              (alone, as root: its own directory, container and results,
#                                                  printed at the end; for working on this section)
#
# Writes into R: hop_*.json, gwtput_*.json (hyperfine), gwconc_1000.json (concurrency.py against the gateway),
# list_*.json (hyperfine of dcos task list through the gateway over 100 000 tasks), sim.json (simulate.rs), and
# facts (etcd CPU and size, gateway RSS) in facts.tsv.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
note() { printf '%s\t%s\n' "$1" "$2" >> "$R/facts.tsv"; }
fail() { log "FAILED: $1: $2"; printf '%s\t%s\n' "$1" "$2" >> "$R/failures.tsv"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# cpu_s PID...: user+system seconds of these processes so far
cpu_s() { for p in "$@"; do cut -d')' -f2 "/proc/$p/stat" | awk '{print $12 + $13}'; done | awk -v t="$(getconf CLK_TCK)" '{s += $1} END {printf "%.2f", s / t}'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

standalone=0
if [ $# -eq 0 ]; then
  standalone=1
  [ "$(id -u)" = 0 ] || { echo "bench/cluster.sh: run as root" >&2; exit 1; }
  W="$(mktemp -d /tmp/dcos-bench-cluster.XXXXXX)"
  R="$W/results"
  mkdir -p "$R" "$W/bin"
  log "building release binaries and the simulation"
  (cd "$repo" && cargo build --release -p dcos-exec-agent -p dcos-exec-cli -p dcos-exec-gateway 2>&1 | tail -1 &&
    cargo build --release -p dcos-exec-cluster --example simulate 2>&1 | tail -1) || exit 1
  cp "$repo"/target/release/{dcos,dcos-exec-agent,dcos-exec-gateway} "$repo/target/release/examples/simulate" "$W/bin/"
  BIN="$W/bin"
  id="benchc-$$"
  rootfs="$W/$id/rootfs"
  mkdir -p "$rootfs/bin" "$rootfs"/{proc,sys,dev,etc,tmp,root}
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"; done
  (cd "$W/$id" && runc spec)
  sed -i 's/"terminal": true/"terminal": false/; s/^\(\s*\)"sh"$/\1"sleep", "1000000"/' "$W/$id/config.json"
  runc run -d --bundle "$W/$id" "$id" </dev/null >/dev/null 2>"$W/runc.err" || { cat "$W/runc.err"; exit 1; }
  ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
else
  W="$1" R="$2" BIN="$3" id="$4"
fi
C="$W/cluster"
mkdir -p "$C"
DCOS="$BIN/dcos"
etcd_pids=() agent_pid="" gw_pid="" sim_pid=""

cleanup() {
  set +e
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ $standalone = 1 ]; then
    runc delete -f "$id" >/dev/null 2>&1
    log "results in $R:"; for f in "$R"/*; do echo "== $f"; cat "$f"; echo; done
    [ "${BENCH_KEEP:-0}" = 1 ] && log "kept $W" || rm -rf "$W"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# -------------------------------------------------------------------------------------------------- etcd x3
log "a three-member etcd on loopback"
ports=() cluster_def=""
for i in 1 2 3; do
  cp_="$(free_port)" pp="$(free_port)"
  ports+=("$cp_")
  cluster_def+="${cluster_def:+,}m$i=http://127.0.0.1:$pp"
  eval "peer_$i=$pp"
done
endpoints=""
for i in 1 2 3; do
  pp_var="peer_$i"
  etcd --name "m$i" --data-dir "$C/etcd-m$i" \
    --listen-client-urls "http://127.0.0.1:${ports[$((i-1))]}" --advertise-client-urls "http://127.0.0.1:${ports[$((i-1))]}" \
    --listen-peer-urls "http://127.0.0.1:${!pp_var}" --initial-advertise-peer-urls "http://127.0.0.1:${!pp_var}" \
    --initial-cluster "$cluster_def" --initial-cluster-state new --initial-cluster-token "bench-$$" \
    --quota-backend-bytes 8589934592 --max-txn-ops 128 >"$C/etcd-m$i.log" 2>&1 &
  etcd_pids+=("$!")
  endpoints+="${endpoints:+,}http://127.0.0.1:${ports[$((i-1))]}"
done
ETCDCTL=(env ETCDCTL_API=3 etcdctl --endpoints "$endpoints")
for _ in $(seq 100); do "${ETCDCTL[@]}" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
"${ETCDCTL[@]}" endpoint health >/dev/null 2>&1 || { fail cluster "etcd did not become healthy: $(tail -3 "$C/etcd-m1.log")"; exit 0; }
note etcd_version "$(etcd --version | head -1)"

# ------------------------------------------------------------------------------------- certificates, agent, gateway
log "cluster CA and certificates"
pki="$C/pki"
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=bench cluster CA" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || { fail cluster "openssl CA"; exit 0; }
# issue NAME USAGE [SANS]
issue() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null &&
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' "$2" \
    "${3:+subjectAltName=$3}" > "$pki/$1.ext" &&
  openssl x509 -req -days 2 -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
# The agent's certificate names its node: gateways relay only to the agent of the record's node.
issue agent serverAuth "IP:127.0.0.1,URI:urn:dcos-exec:node:bench-node" && issue gateway serverAuth "IP:127.0.0.1,DNS:localhost" &&
  issue gateway-client clientAuth || { fail cluster "openssl certificates"; exit 0; }

log "an agent registered in etcd, and a gateway"
aport="$(free_port)"
"$BIN/dcos-exec-agent" init --dir "$C/agent" --listen "127.0.0.1:$aport" >/dev/null || { fail cluster "agent init"; exit 0; }
eps_toml="endpoints = [\"${endpoints//,/\", \"}\"]"
# Certificates of the cluster CA; one admin token opens the 1000 concurrent sessions: per-user caps lifted.
sed -i "s|^tls_cert = .*|tls_cert = \"$pki/agent.crt\"|; s|^tls_key = .*|tls_key = \"$pki/agent.key\"|;
  s/^max_sessions_per_user = .*/max_sessions_per_user = 5000/; s/^max_unauthenticated = .*/max_unauthenticated = 5000/" \
  "$C/agent/agent.toml"
printf '\n[cluster]\nnode = "bench-node"\nurl = "https://127.0.0.1:%s"\ngateway_ca = "%s"\n\n[cluster.etcd]\n%s\n' \
  "$aport" "$pki/ca.crt" "$eps_toml" >> "$C/agent/agent.toml"
"$BIN/dcos-exec-agent" run --config "$C/agent/agent.toml" 2>"$C/agent.log" &
agent_pid=$!
wait_port "$aport" || { fail cluster "the cluster agent did not listen: $(tail -3 "$C/agent.log")"; exit 0; }
gport="$(free_port)"
mkdir -p "$C/gateway"
printf '%s\n' "listen = \"127.0.0.1:$gport\"" "tls_cert = \"$pki/gateway.crt\"" "tls_key = \"$pki/gateway.key\"" \
  "cluster_ca = \"$pki/ca.crt\"" "client_cert = \"$pki/gateway-client.crt\"" "client_key = \"$pki/gateway-client.key\"" \
  "token_public_key = \"$C/agent/token-signing.pub\"" "acl = \"$C/agent/acl.toml\"" \
  "audit_log = \"$C/gateway/audit.log\"" "max_unauthenticated = 5000" "" "[etcd]" "$eps_toml" \
  > "$C/gateway/gateway.toml"
"$BIN/dcos-exec-gateway" run --config "$C/gateway/gateway.toml" 2>"$C/gateway.log" &
gw_pid=$!
wait_port "$gport" || { fail cluster "the gateway did not listen: $(tail -3 "$C/gateway.log")"; exit 0; }
TOKEN="$(cat "$C/agent/admin.token")"
DIRECT=(env DCOS_URL="https://127.0.0.1:$aport" DCOS_SSL_VERIFY="$pki/ca.crt" DCOS_ACS_TOKEN="$TOKEN" "$DCOS")
VIA=(env DCOS_URL="https://127.0.0.1:$gport" DCOS_SSL_VERIFY="$pki/ca.crt" DCOS_ACS_TOKEN="$TOKEN" "$DCOS")
for _ in $(seq 100); do "${VIA[@]}" task list 2>/dev/null | grep -q "$id" && break; sleep 0.1; done
"${VIA[@]}" task exec "$id" true || { fail cluster "exec through the gateway: $(tail -3 "$C/gateway.log")"; exit 0; }
sleep 0.5
note gw_idle_rss_kib "$(rss_kib "$gw_pid")"

# ------------------------------------------------------------------------------------------------- measurements
HF=(hyperfine -N --style none --warmup 3)
log "7a. the gateway hop: exec round trip direct and through the gateway"
"${HF[@]}" --runs 100 --export-json "$R/hop.json" "${DIRECT[*]} task exec $id true" "${VIA[*]} task exec $id true" \
  >/dev/null 2>&1 || fail hop "hyperfine failed"

log "7b. stdout throughput direct and through the gateway (2 GiB, dd bs=1M)"
dd="dd if=/dev/zero bs=1M count=2048 status=none"
hyperfine -N --style none --runs 3 --export-json "$R/gwtput.json" "${DIRECT[*]} task exec $id $dd" "${VIA[*]} task exec $id $dd" \
  >/dev/null 2>&1 || fail gwtput "hyperfine failed"

log "7c. 1000 concurrent sessions through one gateway"
timeout 300 python3 "$here/concurrency.py" --agent-pid "$gw_pid" --sessions 1000 --out "$R/gwconc_1000.json" \
  -- "${VIA[@]}" task exec "$id" sh -c 'echo x; sleep 2' >/dev/null || fail gwconc_1000 "concurrency run failed or timed out"
sleep 2

log "7d. directory scale: 1000 simulated nodes with 100 tasks each"
db_size() { "${ETCDCTL[@]}" endpoint status -w json 2>/dev/null | python3 -c 'import json,sys; print(max(s["Status"]["dbSize"] for s in json.load(sys.stdin)))'; }
note etcd_db_before "$(db_size)"
e0="$(cpu_s "${etcd_pids[@]}")" t0="$(date +%s.%N)"
"$BIN/simulate" --endpoints "$endpoints" --nodes 1000 --tasks 100 --hold 900 >"$R/sim.out" 2>"$C/sim.err" &
sim_pid=$!
for _ in $(seq 1200); do grep -q '"ready":true' "$R/sim.out" 2>/dev/null && break; kill -0 "$sim_pid" 2>/dev/null || break; sleep 0.5; done
if grep -q '"ready":true' "$R/sim.out"; then
  head -1 "$R/sim.out" > "$R/sim.json"
  e1="$(cpu_s "${etcd_pids[@]}")" t1="$(date +%s.%N)"
  note etcd_cpu_register_s "$(python3 -c "print(round($e1 - $e0, 2))")"
  note etcd_register_wall_s "$(python3 -c "print(round($t1 - $t0, 2))")"
  note etcd_db_loaded "$(db_size)"
  # The gateway's directory has caught up once its node list holds every simulated node.
  for _ in $(seq 600); do [ "$("${VIA[@]}" node list 2>/dev/null | grep -c 'node-')" -ge 1000 ] && break; sleep 0.5; done
  note gw_loaded_rss_kib "$(rss_kib "$gw_pid")"
  log "    steady state: 20 s of keep-alives"
  e2="$(cpu_s "${etcd_pids[@]}")" s2="$(cpu_s "$sim_pid")"
  sleep 20
  e3="$(cpu_s "${etcd_pids[@]}")" s3="$(cpu_s "$sim_pid")"
  note etcd_cpu_steady_per_s "$(python3 -c "print(round(($e3 - $e2) / 20, 3))")"
  note sim_cpu_steady_per_s "$(python3 -c "print(round(($s3 - $s2) / 20, 3))")"
  log "    dcos task list and exec through the gateway with 100 000 tasks in the directory"
  hyperfine -N --style none --warmup 1 --runs 5 --export-json "$R/list_all.json" "${VIA[*]} task list" \
    >/dev/null 2>&1 || fail list_all "hyperfine failed"
  note list_all_rows "$("${VIA[@]}" task list | wc -l)"
  hyperfine -N --style none --warmup 1 --runs 10 --export-json "$R/list_node.json" "${VIA[*]} task list --node node-0042" \
    >/dev/null 2>&1 || fail list_node "hyperfine failed"
  "${HF[@]}" --runs 30 --export-json "$R/hop_loaded.json" "${DIRECT[*]} task exec $id true" "${VIA[*]} task exec $id true" \
    >/dev/null 2>&1 || fail hop_loaded "hyperfine failed"
  note gw_final_rss_kib "$(rss_kib "$gw_pid")"
  note gw_hwm_kib "$(awk '/VmHWM/ {print $2}' "/proc/$gw_pid/status")"
else
  fail sim "the simulation did not get ready: $(tail -3 "$C/sim.err")"
fi
kill "$sim_pid" 2>/dev/null; wait "$sim_pid" 2>/dev/null; sim_pid=""
