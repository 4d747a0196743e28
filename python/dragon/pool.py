# SPDX-License-Identifier: MIT
"""multiprocessing.Pool on dragon objects, with the task hand-over made direct.

The stdlib Pool runs unchanged (workers, maxtasksperchild, initializer, terminate, the
result handler...), over dragon SimpleQueues. One thing differs: apply_async() puts its task
into the task channel from the calling thread, where the stdlib hands it to the task-handler
thread first. A channel takes puts from any thread or process at once, so the extra thread
hand-over (tens of microseconds of wake-up on every call) buys nothing here; only a task that
finds the channel full goes through the task handler, as every task does in the stdlib, so
that apply_async never blocks (and once one has, the next ones too, until it is in: the tasks
stay in order). Map-style calls
still go through the task handler, which feeds their chunks lazily as the stdlib does. And
the worker handler does not wake for each result (below). In a multi-node job its workers are
placed by the dragon.Policy in force when it is made.
"""
import functools
import threading
from multiprocessing import pool as _pool


def _make_process(policy, ctx, *args, **kwds):
    # Pool.Process, bound to the placement and not to the pool: the worker-handler thread
    # holds it, and a bound method would keep the pool (and its workers) alive for ever.
    p = ctx.Process(*args, **kwds)
    p._dragon_policy = policy
    return p


class _Handover:
    """apply_async tasks given to the task handler and not yet put into the task channel."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending = 0

    def one(self, task):
        # The task handler's sequence of one task: counted out once the handler has put it
        # (or dropped it: the pool stopped).
        try:
            yield task
        finally:
            with self.lock:
                self.pending -= 1


class Pool(_pool.Pool):
    def __init__(self, processes=None, *args, **kwargs):
        # In a multi-node job: the placement in force now (dragon.Policy, DRAGON_PLACEMENT)
        # places every worker, also the ones the worker-handler thread starts later; Pool()
        # starts one worker per CPU of the nodes it places on.
        from . import policy
        self._dragon_policy = policy.current()
        self.Process = functools.partial(_make_process, self._dragon_policy)
        self._dragon_handover = _Handover()
        if processes is None:
            processes = policy.cpus(self._dragon_policy)
        super().__init__(processes, *args, **kwargs)

    def __del__(self):
        # As the stdlib's, except for a pool collected after this process's handles were
        # closed at exit (a Pool left open: its finalizer has ended it already), whose change
        # notifier can no longer be written; the stdlib's pipe stays open until the process
        # ends.
        try:
            super().__del__()
        except OSError:
            pass

    def _get_sentinels(self):
        # The worker-handler thread wakes for worker exits and the change notifier (state
        # changes, the cache drained), as the stdlib's ThreadPool has it; not for every result
        # that reaches the result queue, where it would spin on the GIL against the result
        # handler and the caller until the result handler took the result.
        return [self._change_notifier._reader]

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        result = _pool.ApplyResult(self, callback, error_callback)
        task = (result._job, 0, func, args, kwds)
        h = self._dragon_handover
        try:
            with h.lock:
                if h.pending == 0 and self._inqueue._writer._try_send(task):
                    return result
                h.pending += 1
                self._taskqueue.put((h.one(task), None))
        except Exception as e:  # as the task handler does: the error is the task's result
            result._set(0, (False, e))
        return result
