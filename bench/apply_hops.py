#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Where an apply_async round trip's time goes (docs/performance.md): the caller to the worker
(task handling and the task's trip), the worker to the parent's result-handler thread (the
result's trip), and the result handler to the caller (the stdlib's ApplyResult event, a thread
hand-off under the GIL), in microseconds, for each start method given:

    PYTHONPATH=build/python /usr/bin/python3 bench/apply_hops.py dragon forkserver
"""
import multiprocessing as mp
import multiprocessing.pool as mpp
import statistics
import sys
import time


def _stamp(x):
    return time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes


def measure(method, n=2000):
    ctx = mp.get_context(method)
    set_at = {}
    orig = mpp.ApplyResult._set

    def _set(self, i, obj):
        set_at[self._job] = time.perf_counter()
        orig(self, i, obj)

    mpp.ApplyResult._set = _set
    try:
        with ctx.Pool(2) as pool:
            for i in range(200):
                pool.apply_async(_stamp, (i,)).get(timeout=60)
            hops = ([], [], [], [])
            for i in range(n):
                t0 = time.perf_counter()
                r = pool.apply_async(_stamp, (i,))
                at_worker = r.get(timeout=60)
                t1 = time.perf_counter()
                hops[0].append(at_worker - t0)
                hops[1].append(set_at[r._job] - at_worker)
                hops[2].append(t1 - set_at[r._job])
                hops[3].append(t1 - t0)
    finally:
        mpp.ApplyResult._set = orig
    for name, v in zip(("caller->worker", "worker->result handler", "result handler->caller",
                        "round trip"), hops):
        v = sorted(v)
        print("%-11s %-24s median %6.1f us  p90 %6.1f us  mean %6.1f us" % (
            method, name, statistics.median(v) * 1e6, v[len(v) * 9 // 10] * 1e6,
            statistics.mean(v) * 1e6))


def main():
    methods = sys.argv[1:] or ["dragon", "forkserver"]
    if "dragon" in methods:
        import dragon  # noqa: F401
    for m in methods:
        measure(m)


if __name__ == "__main__":
    main()
