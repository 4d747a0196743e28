#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Where the CPU of starting many processes goes (docs/performance.md): 1000 processes started
back to back, each given a Queue (or nothing, with --bare) and putting one item on it, then
joined; prints the wall time and the CPU seconds of dragond, the template, the template's
children and this head process. Run under the launcher:

    build/daemon/dragon bench/start_cost.py [--bare] [-n N]
    /usr/bin/python3 bench/start_cost.py --method fork   # the stock baseline: parent, children
"""
import argparse
import multiprocessing as mp
import os
import time


def _put(q, i):
    q.put(i)


def _noop():
    pass


def _cpu(pid):
    """(own, reaped children's) CPU seconds of pid."""
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / tick, (int(f[13]) + int(f[14])) / tick


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="dragon")
    ap.add_argument("--bare", action="store_true", help="children get no Queue")
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    if args.method == "dragon":
        import dragon  # noqa: F401
    ctx = mp.get_context(args.method)
    q = ctx.Queue()
    for _ in range(2):  # warm-up: dragon's template is ready after the first start
        p = ctx.Process(target=_put, args=(q, -1))
        p.start()
        q.get(timeout=60)
        p.join()
    parts = {"head": os.getpid()}
    if args.method == "dragon":
        from dragon import process
        parts["dragond"] = os.getppid()  # the launcher's dragond started this head
        parts["template"] = process._template._pid
    before = {k: _cpu(pid) for k, pid in parts.items()}
    t0 = time.perf_counter()
    if args.bare:
        ps = [ctx.Process(target=_noop) for _ in range(args.n)]
    else:
        ps = [ctx.Process(target=_put, args=(q, i)) for i in range(args.n)]
    for p in ps:
        p.start()
    if not args.bare:
        assert sorted(q.get(timeout=120) for _ in range(args.n)) == list(range(args.n))
    for p in ps:
        p.join()
    wall = time.perf_counter() - t0
    after = {k: _cpu(pid) for k, pid in parts.items()}
    per = 1e3 / args.n
    line = ["%s: wall %.2f s" % (args.method, wall)]
    for k in parts:
        line.append("%s %.2f ms" % (k, (after[k][0] - before[k][0]) * per))
    kids = "template" if args.method == "dragon" else "head"
    line.append("children %.2f ms" % ((after[kids][1] - before[kids][1]) * per))
    print(", ".join(line) + " (CPU per process started)")


if __name__ == "__main__":
    main()
