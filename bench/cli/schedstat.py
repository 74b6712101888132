#!/usr/bin/python3
"""schedstat.py OUT.json CMD...: runs CMD and samples /proc/PID/task/*/schedstat every 20 ms for
CMD and its descendants (CMD may be /usr/bin/time or taskset), keeping each thread's last values (a thread that exits loses at most one interval). Writes
{wall, on_cpu, runqueue_wait, machine_busy_other} in seconds to OUT.json: on_cpu / wall is the
CPU share the process got, (on_cpu + runqueue_wait) / wall the share it wanted (its threads
were runnable), and machine_busy_other the busy core-seconds of everything else (/proc/stat),
so a share lost to other processes tells itself apart from one the process left idle."""
import json
import os
import subprocess
import sys
import time


def machine_busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def family(pid):
    """pid and its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for tid in os.listdir(f"/proc/{pids[i]}/task"):
                pids += [int(c) for c in open(f"/proc/{pids[i]}/task/{tid}/children").read().split()]
        except OSError:
            pass
        i += 1
    return pids


def main():
    out, cmd = sys.argv[1], sys.argv[2:]
    t0, busy0 = time.monotonic(), machine_busy()
    p = subprocess.Popen(cmd)
    last = {}
    while p.poll() is None:
        for pid in family(p.pid):
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    try:
                        run, wait, _ = open(f"/proc/{pid}/task/{tid}/schedstat").read().split()
                        last[tid] = (int(run) / 1e9, int(wait) / 1e9)
                    except (OSError, ValueError):
                        pass
            except OSError:
                pass
        time.sleep(0.02)
    wall, busy = time.monotonic() - t0, machine_busy() - busy0
    on_cpu = sum(v[0] for v in last.values())
    json.dump({"wall": wall, "on_cpu": on_cpu, "runqueue_wait": sum(v[1] for v in last.values()),
               "machine_busy_other": max(0.0, busy - on_cpu)}, open(out, "w"))
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
