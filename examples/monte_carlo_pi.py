# SPDX-License-Identifier: MIT
"""Estimates pi with a multiprocessing Pool: each task throws darts at the unit square and
counts those inside the quarter circle. An ordinary multiprocessing program: under
`dragon monte_carlo_pi.py` its pool's workers are dragond processes and its tasks and results
travel through Dragon channels; under `srun --mpi=pmix -N3 dragon monte_carlo_pi.py` the pool
has a worker per CPU of the job, spread over its nodes (it prints the hosts its tasks ran on).

    dragon examples/monte_carlo_pi.py [--tasks N] [--darts N] [--workers N]
"""
import argparse
import math
import multiprocessing as mp
import random
import socket
import sys
import time


def throw(args):
    seed, darts = args
    rng = random.Random(seed)
    inside = 0
    for _ in range(darts):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside, socket.gethostname()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--darts", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=mp.cpu_count())
    args = ap.parse_args()
    t0 = time.perf_counter()
    inside, hosts = 0, set()
    with mp.Pool(args.workers) as pool:
        for n, host in pool.imap_unordered(throw, ((s, args.darts) for s in range(args.tasks))):
            inside += n
            hosts.add(host)
    total = args.tasks * args.darts
    estimate = 4.0 * inside / total
    # Three standard deviations of the estimate: a correct run lands inside this.
    bound = 3 * 4.0 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / total)
    print(f"pi ~ {estimate:.6f} from {total} darts in {args.tasks} tasks on {args.workers} "
          f"workers ({mp.get_start_method()} start method), {time.perf_counter() - t0:.2f} s; "
          f"tasks ran on {len(hosts)} host(s): {', '.join(sorted(hosts))}")
    if abs(estimate - math.pi) > bound:
        print(f"error: the estimate is off by more than {bound:.6f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
