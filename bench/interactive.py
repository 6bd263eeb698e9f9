#!/usr/bin/env python3
"""Keystroke-to-echo latency of an interactive terminal session.

Runs CMD on a fresh pseudo-terminal (raw mode from the start, so the local line discipline never echoes). CMD must
print READY once the remote side is in raw mode without echo and `cat` is about to run (for example
`sh -c 'stty raw -echo; echo READY; exec cat'`). Then, SAMPLES times, writes one byte to the terminal and times
until that byte comes back. Results in microseconds.
"""
import argparse, json, os, pty, select, signal, statistics, sys, time, tty
from common import pct, emit




def read_until(fd, want, deadline, buf=b""):
    while want not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"waiting for {want!r}, got {buf[-200:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"EOF waiting for {want!r}, got {buf[-200:]!r}")
            buf += chunk
    return buf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--out")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    pid, fd = pty.fork()
    if pid == 0:
        tty.setraw(0)
        os.execvp(cmd[0], cmd)
    samples = []
    try:
        t_start = time.perf_counter()
        read_until(fd, b"READY", time.monotonic() + 30)
        ready_ms = (time.perf_counter() - t_start) * 1e3
        time.sleep(0.2)
        while select.select([fd], [], [], 0)[0]:
            os.read(fd, 4096)
        for i in range(a.samples):
            ch = bytes([ord("a") + i % 26])
            t0 = time.perf_counter_ns()
            os.write(fd, ch)
            read_until(fd, ch, time.monotonic() + 10)
            samples.append((time.perf_counter_ns() - t0) / 1000)
            time.sleep(0.002)
    finally:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
        os.close(fd)
        for _ in range(50):
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    res = {
        "samples": len(samples),
        "median_us": statistics.median(samples),
        "p10_us": pct(samples, 10),
        "p90_us": pct(samples, 90),
        "p99_us": pct(samples, 99),
        "max_us": max(samples),
        "session_ready_ms": ready_ms,
    }
    emit(res, a.out)


if __name__ == "__main__":
    sys.exit(main())
