# SPDX-License-Identifier: MIT
"""A process on a node whose dragond is killed while the head waits on it
(t_python_lock_lost.sh kills it when this says the lock is held): it holds a lock of the head's
node, the write end of a Pipe of the head's and a Queue of its node that the head found by
name. The head's acquire, waiting on the lock, raises BrokenLockError naming that node; then a
get from the Queue raises NodeLost, the read end gets end of file, the process's join gives
-SIGKILL (gone with its node) and a start on that node is refused, each at once, instead of
waiting for ever; and the head's exit, which polls another process of that node that it never
joined, raises nothing."""
import multiprocessing as mp
import socket
import time

import dragon


def hold(lock, held, w):
    from dragon import _runtime
    far_queue = mp.Queue()  # homed on this node; the head finds it by name
    _runtime.register_name("py-lock-lost-queue", far_queue._channel.descriptor)
    lock.acquire()
    held.set()
    time.sleep(600)
    w.send("never")


def timed(what, call):
    start = time.monotonic()
    try:
        got = call()
    except Exception as err:  # noqa: BLE001 (which error is what this reports)
        print("py-lock-lost: %s failed after %.2f s: %s: %s"
              % (what, time.monotonic() - start, type(err).__name__, err), flush=True)
    else:
        print("py-lock-lost: %s gave %r after %.2f s" % (what, got, time.monotonic() - start),
              flush=True)


def main():
    here = socket.gethostname()
    far = [n for n, host, _ in dragon.nodes() if host != here][-1]
    lock, held = mp.Lock(), mp.Event()
    r, w = mp.Pipe(duplex=False)
    with dragon.Policy(node=far):
        holder = mp.Process(target=hold, args=(lock, held, w))
        holder.start()
        bystander = mp.Process(target=time.sleep, args=(600,))  # never joined here: at exit
        bystander.start()
    w.close()
    assert held.wait(60)
    from dragon.queues import Queue
    far_queue = Queue.__new__(Queue)  # the holder's, found by its name
    far_queue.__setstate__((0, "py-lock-lost-queue"))
    print("py-lock-lost: held on node %d" % far, flush=True)
    start = time.monotonic()
    try:
        got = lock.acquire(timeout=60)
    except dragon.BrokenLockError as err:
        print("py-lock-lost: broken after %.2f s: %s" % (time.monotonic() - start, err), flush=True)
    else:
        print("py-lock-lost: not broken: acquire gave %s after %.2f s"
              % (got, time.monotonic() - start), flush=True)
    timed("queue get", lambda: far_queue.get(timeout=60))
    timed("pipe recv", lambda: r.recv() if r.poll(60) else "nothing in 60 s")
    holder.terminate()  # of a process gone with its node: nothing to do, as for one that ended
    timed("join", lambda: (holder.join(60), holder.exitcode, holder.is_alive())[1:])
    timed("a start there", lambda: start_on(far))


def start_on(node):
    with dragon.Policy(node=node):
        mp.Process(target=time.sleep, args=(0,)).start()


if __name__ == "__main__":
    main()
