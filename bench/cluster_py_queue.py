# SPDX-License-Identifier: MIT
"""Python Queue round trip between two nodes (bench/cluster.sh, under `srun ... dragon`): the
head (node 0) puts 8 B into a Queue that a process on node 1 gets from and echoes into a second
Queue, which the head gets from. Both queues live on the head's node, so each round trip is
one receive and one send of the far process across nodes. Prints the mean round trip."""
import multiprocessing as mp
import sys
import time

import dragon


def echo(inq, outq):
    for m in iter(inq.get, None):
        outq.put(m)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    far = dragon.nodes()[1][0]
    inq, outq = mp.Queue(), mp.Queue()
    with dragon.Policy(node=far):
        p = mp.Process(target=echo, args=(inq, outq))
        p.start()
    msg = b"x" * 8
    for _ in range(200):
        inq.put(msg)
        outq.get(timeout=30)
    t0 = time.perf_counter()
    for _ in range(n):
        inq.put(msg)
        outq.get(timeout=30)
    dt = time.perf_counter() - t0
    inq.put(None)
    p.join(30)
    print("py-queue-rtt 8B: %.2f us" % (dt / n * 1e6), flush=True)


if __name__ == "__main__":
    main()
