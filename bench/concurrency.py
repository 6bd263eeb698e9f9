#!/usr/bin/env python3
"""N concurrent sessions on one agent.

Launches N copies of CMD at once (asyncio subprocesses), and for each measures the time from its own launch to the
first byte of its stdout, and whether it succeeded (exit 0 and stdout exactly "x\\n"). Meanwhile a thread samples
the agent: VmRSS every 50 ms (and VmHWM, reset before the run through /proc/PID/clear_refs), and every second its
direct children (the per-session helpers), their summed Rss and Pss, its thread and descriptor counts. CPU time of
the agent (self, and reaped children) and of all client processes is taken over the whole run.
"""
import argparse, asyncio, json, os, resource, statistics, threading, time
from common import pct, emit

TICK = os.sysconf("SC_CLK_TCK")




def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / TICK, (int(x[13]) + int(x[14])) / TICK


def children(pid):
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def rollup(pid):
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class Monitor(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.peak_rss = 0
        self.peak = {"helpers": 0, "helpers_rss_kib": 0, "helpers_pss_kib": 0, "threads": 0, "fds": 0}
        self.agent_pss_at_peak_helpers = None

    def run(self):
        last_slow = 0.0
        while not self.stop.is_set():
            r = status_kib(self.pid, "VmRSS")
            if r:
                self.peak_rss = max(self.peak_rss, r)
            now = time.monotonic()
            if now - last_slow >= 1.0:
                last_slow = now
                kids = children(self.pid)
                rss = pss = 0
                for k in kids:
                    a, b = rollup(k)
                    rss, pss = rss + a, pss + b
                p = self.peak
                if len(kids) > p["helpers"]:
                    self.agent_pss_at_peak_helpers = rollup(self.pid)[1]
                p["helpers"] = max(p["helpers"], len(kids))
                p["helpers_rss_kib"] = max(p["helpers_rss_kib"], rss)
                p["helpers_pss_kib"] = max(p["helpers_pss_kib"], pss)
                p["threads"] = max(p["threads"], status_kib(self.pid, "Threads") or 0)
                try:
                    p["fds"] = max(p["fds"], len(os.listdir(f"/proc/{self.pid}/fd")))
                except OSError:
                    pass
            self.stop.wait(0.05)


async def session(cmd):
    t0 = time.perf_counter()
    try:
        p = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        return {"ok": False, "ttfb": None, "rc": None, "err": f"spawn: {e}"}
    first = await p.stdout.read(1)
    t1 = time.perf_counter()
    rest, err = await p.communicate()
    rc = p.returncode
    out = first + rest
    return {"ok": rc == 0 and out == b"x\n", "ttfb": (t1 - t0) if first else None, "rc": rc,
            "err": err.decode(errors="replace").strip()[-300:], "end": time.perf_counter()}


async def run_all(cmd, n):
    return await asyncio.gather(*(session(cmd) for _ in range(n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent-pid", type=int, required=True)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--out")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    pid = a.agent_pid

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:  # one pidfd per child instead of one thread per child
        w = asyncio.PidfdChildWatcher()
        w.attach_loop(loop)
        asyncio.set_child_watcher(w)
    except Exception:
        pass

    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
    except OSError:
        pass
    rss_before = status_kib(pid, "VmRSS")
    mon = Monitor(pid)
    mon.start()
    c0 = cpu(pid)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = loop.run_until_complete(run_all(cmd, a.sessions))
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    c1 = cpu(pid)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    mon.stop.set()
    mon.join()
    hwm = status_kib(pid, "VmHWM")
    rss_after = status_kib(pid, "VmRSS")
    time.sleep(1.5)
    rss_settled = status_kib(pid, "VmRSS")

    ttfb = [r["ttfb"] * 1e3 for r in res if r["ttfb"] is not None]
    ok = sum(r["ok"] for r in res)
    errs = {}
    for r in res:
        if not r["ok"]:
            key = f"rc={r['rc']}: {r['err'][-160:]}"
            errs[key] = errs.get(key, 0) + 1
    out = {
        "sessions": a.sessions,
        "succeeded": ok,
        "failed": a.sessions - ok,
        "errors": sorted(errs.items(), key=lambda kv: -kv[1])[:5],
        "wall_s": wall,
        "ttfb_ms": {"median": statistics.median(ttfb) if ttfb else None, "p10": pct(ttfb, 10),
                    "p90": pct(ttfb, 90), "p99": pct(ttfb, 99), "max": max(ttfb) if ttfb else None},
        "agent_rss_before_kib": rss_before,
        "agent_rss_peak_sampled_kib": mon.peak_rss,
        "agent_vmhwm_kib": hwm,
        "agent_rss_after_kib": rss_after,
        "agent_rss_settled_kib": rss_settled,
        "agent_pss_at_peak_kib": mon.agent_pss_at_peak_helpers,
        "peak": mon.peak,
        "agent_cpu_self_s": c1[0] - c0[0],
        "agent_cpu_children_s": c1[1] - c0[1],
        "clients_cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
    }
    emit(out, a.out)


if __name__ == "__main__":
    main()
