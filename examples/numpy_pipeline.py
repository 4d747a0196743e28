# SPDX-License-Identifier: MIT
"""A numpy pipeline through shared memory: the head process generates blocks of samples and
sends them through a Queue to worker processes, which reduce each block to a histogram and
add it into one shared Array under its lock. Under `dragon numpy_pipeline.py` each block is
written once into Dragon pool memory and the workers read it in place (no second copy); the
shared histogram lives in pool memory too. The result is checked against numpy's own
histogram of the same data.

    dragon examples/numpy_pipeline.py [--blocks N] [--block-mib N] [--workers N]
"""
import argparse
import multiprocessing as mp
import socket
import sys
import time

import numpy as np

BINS = 64


def reduce_blocks(blocks, hist, done):
    n = 0
    while True:
        block = blocks.get()
        if block is None:
            done.put((n, socket.gethostname()))
            return
        counts, _ = np.histogram(block, bins=BINS, range=(-4.0, 4.0))
        with hist.get_lock():
            shared = np.frombuffer(hist.get_obj(), dtype=np.int64)
            shared += counts
        n += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=256)
    ap.add_argument("--block-mib", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    per_block = (args.block_mib << 20) // 8
    hist = mp.Array("q", BINS)  # int64 counters, shared
    blocks, done = mp.Queue(8), mp.Queue()
    workers = [mp.Process(target=reduce_blocks, args=(blocks, hist, done))
               for _ in range(args.workers)]
    for w in workers:
        w.start()
    rng = np.random.default_rng(12345)
    expected = np.zeros(BINS, dtype=np.int64)
    t0 = time.perf_counter()
    for _ in range(args.blocks):
        block = rng.standard_normal(per_block)
        expected += np.histogram(block, bins=BINS, range=(-4.0, 4.0))[0]
        blocks.put(block)
    for _ in workers:
        blocks.put(None)
    reports = [done.get(timeout=120) for _ in workers]
    handled = sum(n for n, _ in reports)
    hosts = sorted({h for _, h in reports})
    for w in workers:
        w.join(60)
    dt = time.perf_counter() - t0
    got = np.frombuffer(hist.get_obj(), dtype=np.int64)
    mib = args.blocks * args.block_mib
    print(f"{handled} blocks ({mib} MiB of samples) reduced by {args.workers} workers in "
          f"{dt:.2f} s; {int(got.sum())} samples binned; "
          f"{mp.get_start_method()} start method; workers ran on {len(hosts)} host(s): "
          f"{', '.join(hosts)}")
    if handled != args.blocks or not np.array_equal(got, expected):
        print("error: the shared histogram differs from numpy's", file=sys.stderr)
        return 1
    print("histogram verified against numpy.histogram of the same samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
