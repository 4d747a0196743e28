# SPDX-License-Identifier: MIT
"""A producer/consumer pipeline on multiprocessing Queues: a producer emits records, a stage
of workers transforms them, a collector checks that every record arrived exactly once.
Under `dragon queue_pipeline.py` every queue is a Dragon channel in shared memory.

    dragon examples/queue_pipeline.py [--records N] [--workers N]
"""
import argparse
import hashlib
import multiprocessing as mp
import socket
import sys
import time

STOP = None


def produce(out, n, workers):
    for i in range(n):
        out.put((i, f"record-{i}".encode()))
    for _ in range(workers):
        out.put(STOP)


def transform(inq, outq):
    done = 0
    while True:
        item = inq.get()
        if item is STOP:
            outq.put(("done", (done, socket.gethostname())))
            return
        i, payload = item
        outq.put((i, hashlib.sha256(payload).hexdigest()))
        done += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    raw, cooked = mp.Queue(1024), mp.Queue(1024)
    producer = mp.Process(target=produce, args=(raw, args.records, args.workers))
    stage = [mp.Process(target=transform, args=(raw, cooked)) for _ in range(args.workers)]
    for p in [producer, *stage]:
        p.start()
    seen = {}
    finished, per_worker, hosts = 0, [], set()
    while finished < args.workers:
        key, value = cooked.get(timeout=120)
        if key == "done":
            finished += 1
            per_worker.append(value[0])
            hosts.add(value[1])
        else:
            seen[key] = value
    for p in [producer, *stage]:
        p.join(60)
    dt = time.perf_counter() - t0
    bad = [i for i in range(args.records)
           if seen.get(i) != hashlib.sha256(f"record-{i}".encode()).hexdigest()]
    print(f"{len(seen)} of {args.records} records through {args.workers} workers "
          f"(shares {per_worker}) in {dt:.2f} s, {args.records / dt:,.0f} records/s, "
          f"{mp.get_start_method()} start method; workers ran on {len(hosts)} host(s): "
          f"{', '.join(sorted(hosts))}")
    if bad or len(seen) != args.records or any(p.exitcode != 0 for p in [producer, *stage]):
        print(f"error: {len(bad)} records missing or wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
