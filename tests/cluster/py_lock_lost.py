# SPDX-License-Identifier: MIT
"""A lock of the head's node held by a process on another node whose dragond is then killed
(t_python_lock_lost.sh does that when this says the lock is held): the head's acquire, waiting
on it, raises BrokenLockError naming that node, instead of waiting for ever."""
import multiprocessing as mp
import socket
import time

import dragon


def hold(lock, held):
    lock.acquire()
    held.set()
    time.sleep(600)


def main():
    here = socket.gethostname()
    far = [n for n, host, _ in dragon.nodes() if host != here][-1]
    lock, held = mp.Lock(), mp.Event()
    with dragon.Policy(node=far):
        holder = mp.Process(target=hold, args=(lock, held))
        holder.start()
    assert held.wait(60)
    print("py-lock-lost: held on node %d" % far, flush=True)
    start = time.monotonic()
    try:
        got = lock.acquire(timeout=60)
    except dragon.BrokenLockError as err:
        print("py-lock-lost: broken after %.2f s: %s" % (time.monotonic() - start, err), flush=True)
    else:
        print("py-lock-lost: not broken: acquire gave %s after %.2f s"
              % (got, time.monotonic() - start), flush=True)


if __name__ == "__main__":
    main()
