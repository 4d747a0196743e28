# SPDX-License-Identifier: MIT
"""An unchanged multiprocessing program whose work fills every bounded buffer on its way several
times over: a ProcessPoolExecutor's wake-up pipe (one empty message per submit), a one-way Pipe
filled to what an OS pipe holds before anyone reads, a bounded and an unbounded Queue, Pool.map's
task and result queues, and the job's output. Run by test_fill_buffers both as `dragon app.py`
and as `python3 app.py`; it prints one line per stage and checks every result itself."""
import concurrent.futures as cf
import multiprocessing as mp
import sys

import dragon  # noqa: F401  (registers the "dragon" start method for `python3 app.py`)

FUTURES = 20_000       # wake-ups: far more than a 1024-slot channel, more than an OS pipe holds
PIPE_MESSAGES = 16_000  # 4-byte frames: 64,000 bytes, what an OS pipe holds (65,536)
QUEUE_ITEMS = 50_000
LINES = 20_000          # per writer, three writers


def square(x):
    return x * x


def flood(w, n):
    for _ in range(n):
        w.send_bytes(b"")
    w.send_bytes(b"end")
    w.close()


def produce(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)


def shout(tag, n):
    # One write per line: writers that share the job's stdout interleave at their buffers'
    # boundaries otherwise (as with stock; print() writes each item on its own when
    # PYTHONUNBUFFERED is set).
    for i in range(n):
        sys.stdout.write("%s %d\n" % (tag, i))
        sys.stdout.flush()


def drain(q):
    got = []
    while (x := q.get(timeout=60)) is not None:
        got.append(x)
    return got


def main():
    ctx = mp.get_context("dragon")
    with cf.ProcessPoolExecutor(max_workers=3, mp_context=ctx) as ex:
        futures = [ex.submit(square, i) for i in range(FUTURES)]
        total = sum(f.result() for f in cf.as_completed(futures, timeout=120))
    assert total == sum(i * i for i in range(FUTURES)), total
    print("stage executor", FUTURES)

    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=flood, args=(w, PIPE_MESSAGES))
    p.start()
    w.close()
    p.join(60)  # the writer ends before anyone reads: the pipe holds it all, as an OS pipe does
    assert p.exitcode == 0, ("a one-way pipe did not hold what an OS pipe holds", p.exitcode)
    frames = [r.recv_bytes() for _ in range(PIPE_MESSAGES + 1)]
    assert frames[:-1] == [b""] * PIPE_MESSAGES and frames[-1] == b"end"
    print("stage pipe", PIPE_MESSAGES)

    for maxsize in (8, 0):
        q = ctx.Queue(maxsize)
        p = ctx.Process(target=produce, args=(q, QUEUE_ITEMS))
        p.start()
        assert drain(q) == list(range(QUEUE_ITEMS))
        p.join(60)
        assert p.exitcode == 0
        print("stage queue", maxsize, QUEUE_ITEMS)

    with ctx.Pool(3) as pool:
        assert pool.map(square, range(FUTURES), chunksize=1) == [i * i for i in range(FUTURES)]
        assert sorted(pool.imap_unordered(square, range(FUTURES), 7)) == \
            sorted(i * i for i in range(FUTURES))
    print("stage pool", FUTURES)

    writers = [ctx.Process(target=shout, args=("line%d" % k, LINES)) for k in range(3)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    print("stage output", 3 * LINES)


if __name__ == "__main__":
    if "--default" in sys.argv:
        # As under `dragon app.py`: module-level objects (multiprocessing.Pipe(), which the
        # executor's wake-up uses) are dragon's too.
        mp.set_start_method("dragon")
    main()
