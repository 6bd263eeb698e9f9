#!/usr/bin/env python3
"""Runs a command several times and splits its CPU time between the client process and the agent.

Client: user+sys of the reaped command (getrusage of children). Agent: utime+stime of the agent process itself,
and cutime+cstime, which grows when the agent reaps its per-session helpers (they in turn reap the command run in
the container, so that time is included there). Prints/writes JSON with per-run averages in milliseconds.
"""
import argparse, json, os, resource, subprocess, time
from common import emit

TICK = os.sysconf("SC_CLK_TCK")


def agent_times(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime=14, stime=15, cutime=16, cstime=17 (1-based)
    ut, st, cut, cst = (int(fields[i]) for i in (11, 12, 13, 14))
    return (ut + st) / TICK, (cut + cst) / TICK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent-pid", type=int, required=True)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0, c0 = agent_times(a.agent_pid)
    t0 = time.perf_counter()
    fails = 0
    for _ in range(a.runs):
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            fails += 1
    wall = time.perf_counter() - t0
    s1, c1 = agent_times(a.agent_pid)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = a.runs
    res = {
        "runs": n,
        "failures": fails,
        "wall_ms": wall / n * 1e3,
        "client_user_ms": (r1.ru_utime - r0.ru_utime) / n * 1e3,
        "client_sys_ms": (r1.ru_stime - r0.ru_stime) / n * 1e3,
        "agent_self_ms": (s1 - s0) / n * 1e3,
        "agent_children_ms": (c1 - c0) / n * 1e3,
        "tick_ms": 1e3 / TICK,
    }
    emit(res, a.out)


if __name__ == "__main__":
    main()
