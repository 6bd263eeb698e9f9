#!/usr/bin/env sh
# A CI smoke test in the style dcos-exec is made for: run checks inside a running test container and fail the
# job with a useful message when one fails. Needs DCOS_URL, DCOS_ACS_TOKEN and DCOS_SSL_VERIFY in the
# environment (or a dcos.toml profile, with DCOS_PROFILE) and a token whose ACL grants `exec` (and `exec:stdin`
# for the last check) on the task.
#
#   examples/ci-smoke-check.sh TASK_ID
#
# The dcos binary: $DCOS if set, else `dcos` on PATH, else a build of this checkout (target/release, then
# target/debug).
set -eu
task=${1:?usage: ci-smoke-check.sh TASK_ID}

here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${DCOS:-}" ]; then
  dcos=$DCOS
elif command -v dcos >/dev/null 2>&1; then
  dcos=dcos
elif [ -x "$here/../target/release/dcos" ]; then
  dcos=$here/../target/release/dcos
elif [ -x "$here/../target/debug/dcos" ]; then
  dcos=$here/../target/debug/dcos
else
  echo "ci-smoke-check: dcos not found: put it on PATH (scripts/install, or cargo install --path cli)," \
    "or set DCOS=/path/to/dcos" >&2
  exit 2
fi

failed=0
# Prints ok or FAIL with the exit code and what the command printed, and tells a failing check from a
# session that never ran (115-125 are dcos's own failures: unreachable, TLS, token, ACL, unknown task...).
report() {
  name=$1 code=$2 out=$3
  if [ "$code" -eq 0 ]; then
    echo "ok   $name"
    return
  fi
  failed=1
  echo "FAIL $name (exit $code)"
  [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/     | /'
  if [ "$code" -ge 115 ] && [ "$code" -le 125 ]; then
    echo "     the check did not run: dcos could not run it (see its message above)"
  elif [ "$code" -eq 127 ]; then
    echo "     the check's command is not in the container"
  fi
  return 0
}

check() {
  name=$1
  shift
  code=0
  out=$("$dcos" task exec "$task" "$@" 2>&1) || code=$?
  report "$name" "$code" "$out"
}

check "process 1 is alive" sh -c 'test -d /proc/1 || { echo "no /proc/1"; exit 1; }'
check "config is present" sh -c 'test -s /etc/passwd || { echo "/etc/passwd is missing or empty"; exit 1; }'
# The root filesystem may be read-only (runc spec's default): any of the usual scratch places will do.
check "a scratch directory is writable" sh -c '
  for d in "${TMPDIR:-}" /tmp /dev/shm /run; do
    [ -n "$d" ] && [ -d "$d" ] || continue
    if (echo probe > "$d/.smoke.$$") 2>/dev/null; then rm -f "$d/.smoke.$$"; echo "$d"; exit 0; fi
  done
  echo "none of \$TMPDIR, /tmp, /dev/shm, /run is writable"; exit 1'
# stdin reaches the process and EOF ends it.
code=0
out=$(printf 'b\na\n' | "$dcos" task exec -i "$task" sort 2>&1) || code=$?
if [ "$code" -eq 0 ] && [ "$(printf '%s' "$out" | tr '\n' ' ')" != "a b" ]; then
  code=1
  out="expected \"a b\" from sort, got: $out"
fi
report "stdin round trip" "$code" "$out"
exit "$failed"
