# SPDX-License-Identifier: MIT
"""Python across two or three nodes (bench/cluster.sh, under `srun ... dragon`). One mode per
run:

  rtt N      8 B into a Queue that a process on node 1 gets from and echoes into a second
             Queue, which the head gets from. Both queues live on the head's node, so each
             round trip is one receive and one send of the far process across nodes. Prints
             the mean round trip.
  bw N       N numpy arrays of 1 MiB put by a process on node 1 into a Queue of the head's
             node (a send across nodes, as the C++ channel-bench's), got by the head as views
             of its pool. Prints MB/s from the first array got to the last.
  poolmap N  Pool.map(chunksize=1) of N tasks of 10 ms, with Pool() made under
             Policy(node="local") (one worker per CPU of this node) and then under
             Policy(node="roundrobin") (one per CPU of the job, spread over its nodes). A task
             sleeps: the test cluster's nodes share this machine's cores, so a task that
             computes could not run faster on three of them. Prints tasks/s for each.
  startjoin N
             Process.start() + join() of a process that does nothing, N times on the head's
             node and N times on node 1 (after 20 of each, by which time the template of each
             node serves the starts). Prints the median of each, in ms.
  wait N     8 B through a duplex Pipe to a process on node 1 and back, 5 ms apart (the far
             process is asleep when each arrives), N times: the far process receives with
             recv(), then with connection.wait over its end and a Pipe of its own node before
             each recv(). Prints the mean round trip of each."""
import multiprocessing as mp
import sys
import time

import dragon


def echo(inq, outq):
    for m in iter(inq.get, None):
        outq.put(m)


def round_trips(send, receive, warm_up, n, gap=0.0):
    """The mean of n round trips of 8 B (send, then receive the echo), after warm_up of them,
    each `gap` seconds after the last (not timed)."""
    msg = b"x" * 8
    for _ in range(warm_up):
        send(msg)
        receive()
    total = 0.0
    for _ in range(n):
        if gap:
            time.sleep(gap)
        t0 = time.perf_counter()
        send(msg)
        receive()
        total += time.perf_counter() - t0
    return total / n


def rtt(n):
    far = dragon.nodes()[1][0]
    inq, outq = mp.Queue(), mp.Queue()
    with dragon.Policy(node=far):
        p = mp.Process(target=echo, args=(inq, outq))
        p.start()
    mean = round_trips(inq.put, lambda: outq.get(timeout=30), 200, n)
    inq.put(None)
    p.join(30)
    print("py-queue-rtt 8B: %.2f us" % (mean * 1e6), flush=True)


def producer(q, n, size):
    import numpy as np
    a = np.ones(size, dtype=np.uint8)
    for _ in range(n + 1):
        q.put(a)


def bw(n):
    import numpy as np
    size = 1 << 20
    far = dragon.nodes()[1][0]
    q = mp.Queue(16)
    with dragon.Policy(node=far):
        p = mp.Process(target=producer, args=(q, n, size))
        p.start()
    first = q.get(timeout=60)
    assert isinstance(first, np.ndarray) and first.nbytes == size
    t0 = time.perf_counter()
    total = 0
    for _ in range(n):
        a = q.get(timeout=60)
        total += a.nbytes
    dt = time.perf_counter() - t0
    p.join(60)
    assert total == n * size and p.exitcode == 0
    print("py-queue-bw 1MiB: %.1f MB/s" % (total / dt / 1e6), flush=True)


def task(x):
    time.sleep(0.01)
    return x


def pool_rate(placement, n):
    with dragon.Policy(node=placement):
        pool = mp.Pool()
    with pool:
        workers = pool._processes
        pool.map(task, range(2 * workers), chunksize=1)  # every worker up
        t0 = time.perf_counter()
        out = pool.map(task, range(n), chunksize=1)
        dt = time.perf_counter() - t0
        assert out == list(range(n))
    pool.join()
    print("py-pool-map 10ms %s: %.1f tasks/s with %d workers" % (placement, n / dt, workers),
          flush=True)


def nothing():
    pass


def start_join(n):
    far = dragon.nodes()[1][0]
    for where in ("local", far):
        times = []
        for i in range(20 + n):
            t0 = time.perf_counter()
            with dragon.Policy(node=where):
                p = mp.Process(target=nothing)
                p.start()
            p.join(30)
            assert p.exitcode == 0, p.exitcode
            if i >= 20:
                times.append(time.perf_counter() - t0)
        times.sort()
        print("py-start-join %s: %.3f ms" % ("local" if where == "local" else "remote",
                                             times[len(times) // 2] * 1e3), flush=True)


def pipe_echo(conn, mixed):
    from multiprocessing.connection import wait
    here_r, _here_w = mp.Pipe(duplex=False)  # never written: only waited on
    while True:
        if mixed:
            assert wait([conn, here_r], timeout=30) == [conn]
        m = conn.recv()
        if m is None:
            return
        conn.send(m)


def pipe_wait(n):
    far = dragon.nodes()[1][0]
    for mixed in (False, True):
        a, b = mp.Pipe()
        with dragon.Policy(node=far):
            p = mp.Process(target=pipe_echo, args=(b, mixed))
            p.start()
        mean = round_trips(a.send, a.recv, 20, n, gap=0.005)
        a.send(None)
        p.join(30)
        assert p.exitcode == 0, p.exitcode
        print("py-pipe-rtt %s: %.2f us" % ("wait-mixed" if mixed else "recv", mean * 1e6),
              flush=True)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "rtt"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    if mode == "rtt":
        rtt(n)
    elif mode == "bw":
        bw(n)
    elif mode == "poolmap":
        pool_rate("local", n)
        pool_rate("roundrobin", n)
    elif mode == "startjoin":
        start_join(n)
    elif mode == "wait":
        pipe_wait(n)
    else:
        raise SystemExit("cluster_py_queue.py rtt|bw|poolmap|startjoin|wait N")


if __name__ == "__main__":
    main()
