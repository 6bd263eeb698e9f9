#!/usr/bin/env sh
# A CI smoke test in the style dcos-exec is made for: run checks inside a running test container and fail the
# job with a useful message when one fails. Needs DCOS_URL, DCOS_ACS_TOKEN and DCOS_SSL_VERIFY in the
# environment and a token whose ACL grants `exec` (and `exec:stdin` for the last check) on the task.
#
#   examples/ci-smoke-check.sh TASK_ID
set -eu
task=${1:?usage: ci-smoke-check.sh TASK_ID}

check() {
  name=$1
  shift
  if out=$(dcos task exec "$task" "$@" 2>&1); then
    echo "ok   $name"
  else
    code=$?
    echo "FAIL $name (exit $code): $out"
    # 115-125 are dcos's own failures (unreachable, TLS, token, ACL, unknown task...), not the check's.
    [ "$code" -ge 115 ] && [ "$code" -le 125 ] && echo "     (the check did not run: see the message above)"
    failed=1
  fi
}

failed=0
check "process 1 is alive" sh -c 'test -d /proc/1'
check "config is present" test -s /etc/passwd
check "tmp is writable" sh -c 'echo probe > /tmp/.smoke && rm /tmp/.smoke'
# stdin reaches the process and EOF ends it.
if [ "$(printf 'b\na\n' | dcos task exec -i "$task" sort | tr '\n' ' ')" = "a b " ]; then
  echo "ok   stdin round trip"
else
  echo "FAIL stdin round trip"
  failed=1
fi
exit "$failed"
