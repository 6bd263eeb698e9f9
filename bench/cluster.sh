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
  (cd "$repo" && cargo build --release -p dcos-exec-agent -p dcos-exec-cli -p dcos-exec-gateway \
    -p dcos-exec-cluster --example simulate 2>&1 | tail -1) || exit 1
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

# CLUSTER-SETUP
