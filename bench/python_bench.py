#!/usr/bin/python3
"""The python group of bench/run: Dragon's multiprocessing objects against stock fork, spawn
and forkserver, measured in one run on this machine.

Prints `metric py_<method>_<name> <value> <unit>` for every method, and
`metric py_stock_<name> ...` with the best stock method's figure, which bench/goals.py
compares Dragon's with. Each figure is the median of ROUNDS rounds (the methods measured one
after another for each metric, in rotating order), each the median of REPS repetitions.

    /usr/bin/python3 bench/python_bench.py [--methods fork,spawn,forkserver,dragon] [--quick]
"""
import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

REPS = 5
ROUNDS = 3


def _noop():
    pass


def _put(q, x):
    q.put(x)


def _square(x):
    return x * x


def _echo(inq, outq, n):
    for _ in range(n):
        outq.put(inq.get())


def _pipe_echo(conn, n):
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def _producer(q, ready, go, n, payload):
    ready.put(None)  # running, its payload unpickled (and numpy imported): start the clock
    go.wait()
    for _ in range(n):
        q.put(payload)


def _sink(q, n, done):
    for _ in range(n):
        q.get()
    done.put(time.perf_counter())


class Bench:
    """The measurements of one start method (a context)."""

    def __init__(self, ctx, quick):
        self.ctx = ctx
        self.scale = 0.2 if quick else 1.0

    def n(self, count):
        return max(10, int(count * self.scale))

    def queue_rtt(self, size):
        """Mean round trip of a `size`-byte bytes object through two queues, in us."""
        n = self.n(2000)
        a, b = self.ctx.Queue(), self.ctx.Queue()
        p = self.ctx.Process(target=_echo, args=(a, b, n + 100))
        p.start()
        payload = b"x" * size
        for _ in range(100):  # warm-up: the child is running and both ends are set up
            a.put(payload)
            b.get()
        reps = []
        for _ in range(REPS):
            m = n // REPS
            t0 = time.perf_counter()
            for _ in range(m):
                a.put(payload)
                b.get()
            reps.append((time.perf_counter() - t0) / m * 1e6)
        left = n - (n // REPS) * REPS
        for _ in range(left):
            a.put(payload)
            b.get()
        p.join()
        return statistics.median(reps), "us"

    def pipe_rtt(self):
        n = self.n(4000)
        here, there = self.ctx.Pipe()
        p = self.ctx.Process(target=_pipe_echo, args=(there, n + 100))
        p.start()
        for _ in range(100):
            here.send_bytes(b"12345678")
            here.recv_bytes()
        reps = []
        m = n // REPS
        for _ in range(REPS):
            t0 = time.perf_counter()
            for _ in range(m):
                here.send_bytes(b"12345678")
                here.recv_bytes()
            reps.append((time.perf_counter() - t0) / m * 1e6)
        for _ in range(n - m * REPS):
            here.send_bytes(b"12345678")
            here.recv_bytes()
        p.join()
        return statistics.median(reps), "us"

    def queue_tput(self, size, producers, total, kind="bytes"):
        """Messages (or bytes) per second from `producers` processes into one consumer; the
        payload is a bytes object, or a float64 numpy array of that many bytes."""
        total = self.n(total)
        per = max(1, total // producers)
        if kind == "numpy":
            import numpy
            payload = numpy.ones(size // 8)
        else:
            payload = b"x" * size
        reps = []
        for _ in range(REPS):
            q = self.ctx.Queue()
            ready = self.ctx.Queue()
            go = self.ctx.Event()
            ps = [self.ctx.Process(target=_producer, args=(q, ready, go, per, payload))
                  for _ in range(producers)]
            for p in ps:
                p.start()
            for _ in ps:  # throughput, not process start: every producer is running
                ready.get()
            t0 = time.perf_counter()
            go.set()
            for _ in range(per * producers):
                q.get()
            dt = time.perf_counter() - t0
            for p in ps:
                p.join()
            reps.append(per * producers / dt)
        rate = statistics.median(reps)
        if size >= 1 << 20:
            return rate * size / 1e9, "GB/s"
        return rate / 1e3, "kmsg/s"

    def start_join(self):
        """Start and join of a process with a no-op target, in ms."""
        n = self.n(20)
        for _ in range(2):  # warm-up (forkserver starts its server, dragon its runtime)
            p = self.ctx.Process(target=_noop)
            p.start()
            p.join()
        reps = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            for _ in range(max(1, n // REPS)):
                p = self.ctx.Process(target=_noop)
                p.start()
                p.join()
            reps.append((time.perf_counter() - t0) / max(1, n // REPS) * 1e3)
        return statistics.median(reps), "ms"

    def start_many(self):
        """1000 processes started back to back, each putting one item on a Queue, then
        collected and joined: seconds for the whole (what starting many at once costs)."""
        n = self.n(1000)
        q = self.ctx.Queue()
        for _ in range(2):  # warm-up (forkserver starts its server, dragon its template)
            p = self.ctx.Process(target=_put, args=(q, -1))
            p.start()
            q.get(timeout=60)
            p.join()
        t0 = time.perf_counter()
        ps = [self.ctx.Process(target=_put, args=(q, i)) for i in range(n)]
        for p in ps:
            p.start()
        got = sorted(q.get(timeout=120) for _ in range(n))
        for p in ps:
            p.join()
        elapsed = time.perf_counter() - t0
        assert got == list(range(n)) and all(p.exitcode == 0 for p in ps)
        return elapsed, "s"

    def pool_map(self):
        n = self.n(20000)
        with self.ctx.Pool(2) as pool:
            pool.map(_square, range(200), chunksize=1)
            reps = []
            for _ in range(REPS):
                t0 = time.perf_counter()
                out = pool.map(_square, range(n // REPS), chunksize=1)
                reps.append(len(out) / (time.perf_counter() - t0) / 1e3)
                assert out[-1] == (n // REPS - 1) ** 2
        return statistics.median(reps), "ktasks/s"

    def apply_rtt(self):
        n = self.n(2000)
        with self.ctx.Pool(2) as pool:
            for i in range(100):
                pool.apply_async(_square, (i,)).get()
            reps = []
            for _ in range(REPS):
                t0 = time.perf_counter()
                for i in range(n // REPS):
                    assert pool.apply_async(_square, (i,)).get(timeout=60) == i * i
                reps.append((time.perf_counter() - t0) / (n // REPS) * 1e6)
        return statistics.median(reps), "us"


def _copy_bandwidth(size, quick):
    import numpy
    src = numpy.ones(size // 8)
    dst = numpy.empty_like(src)
    n = max(4, (2 if quick else 10) * (64 << 20) // size)
    reps = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(n):
            numpy.copyto(dst, src)
        reps.append(n * size / (time.perf_counter() - t0) / 1e9)
    return statistics.median(reps)


# name -> (how to measure it, True when higher is better)
METRICS = {
    "queue_rtt_8B": (lambda b: b.queue_rtt(8), False),
    "queue_rtt_4KiB": (lambda b: b.queue_rtt(4096), False),
    "pipe_rtt_8B": (lambda b: b.pipe_rtt(), False),
    "queue_tput_64B": (lambda b: b.queue_tput(64, 1, 100000), True),
    "queue_tput_64B_4prod": (lambda b: b.queue_tput(64, 4, 100000), True),
    "queue_tput_1MiB": (lambda b: b.queue_tput(1 << 20, 1, 400, "numpy"), True),
    "queue_tput_16MiB": (lambda b: b.queue_tput(16 << 20, 1, 40, "numpy"), True),
    "queue_tput_1MiB_bytes": (lambda b: b.queue_tput(1 << 20, 1, 400), True),
    "queue_tput_16MiB_bytes": (lambda b: b.queue_tput(16 << 20, 1, 40), True),
    "start_join": (lambda b: b.start_join(), False),
    "start_1000": (lambda b: b.start_many(), False),
    "pool_map_c1": (lambda b: b.pool_map(), True),
    "apply_async_rtt": (lambda b: b.apply_rtt(), False),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="fork,spawn,forkserver,dragon")
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = ap.parse_args()
    methods = args.methods.split(",")
    names = args.metrics.split(",")
    if "dragon" in methods:
        import dragon  # noqa: F401  (registers the start method)
    # Every metric is measured for all methods one after another, in ROUNDS rounds whose
    # method order rotates, and each method's figure is the median of its rounds: this VM's
    # speed drifts over a run, and measuring one method's metrics all before the next would
    # put that drift into the ratios.
    rounds = 1 if args.quick else ROUNDS
    benches = {m: Bench(mp.get_context(m), args.quick) for m in methods}
    results = {}
    for name in names:
        seen = {m: [] for m in methods}
        unit = None
        for r in range(rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            for method in order:
                value, unit = METRICS[name][0](benches[method])
                seen[method].append(value)
                print(f"# round {r + 1}: {method} {name} {value:.4g} {unit}", file=sys.stderr,
                      flush=True)
        for method in methods:
            value = statistics.median(seen[method])
            results[(method, name)] = (value, unit)
            print(f"metric py_{method}_{name} {value:.4g} {unit}", flush=True)
    # The ceiling of a transfer that copies once: numpy.copyto between two arrays of the size,
    # in this process (what one put of an array costs at the least; context, never judged).
    if any(n in names for n in ("queue_tput_1MiB", "queue_tput_16MiB")):
        for size, label in ((1 << 20, "1MiB"), (16 << 20, "16MiB")):
            value = _copy_bandwidth(size, args.quick)
            print(f"metric py_copyto_{label} {value:.4g} GB/s", flush=True)
    stock = [m for m in methods if m != "dragon"]
    for name in names:
        if not stock:
            break
        higher = METRICS[name][1]
        vals = [(results[(m, name)][0], m) for m in stock]
        value, best = max(vals) if higher else min(vals)
        unit = results[(best, name)][1]
        print(f"metric py_stock_{name} {value:.4g} {unit}", flush=True)
        print(f"# best stock method for {name}: {best}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
