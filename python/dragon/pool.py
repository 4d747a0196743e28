# SPDX-License-Identifier: MIT
"""multiprocessing.Pool on dragon objects, with the task hand-over made direct.

The stdlib Pool runs unchanged (workers, maxtasksperchild, initializer, terminate, the
result handler...), over dragon SimpleQueues. One thing differs: apply_async() puts its task
into the task channel from the calling thread, where the stdlib hands it to the task-handler
thread first. A channel takes puts from any thread or process at once, so the extra thread
hand-over (tens of microseconds of wake-up on every call) buys nothing here. Map-style calls
still go through the task handler, which feeds their chunks lazily as the stdlib does. And
the worker handler does not wake for each result (below). In a multi-node job its workers are
placed by the dragon.Policy in force when it is made.
"""
from multiprocessing import pool as _pool


class Pool(_pool.Pool):
    def __init__(self, processes=None, *args, **kwargs):
        # In a multi-node job: the placement in force now (dragon.Policy, DRAGON_PLACEMENT)
        # places every worker, also the ones the worker-handler thread starts later; Pool()
        # starts one worker per CPU of the nodes it places on.
        from . import policy
        self._dragon_policy = policy.current()
        if processes is None:
            processes = policy.cpus(self._dragon_policy)
        super().__init__(processes, *args, **kwargs)

    def Process(self, ctx, *args, **kwds):
        p = ctx.Process(*args, **kwds)
        p._dragon_policy = self._dragon_policy
        return p

    def _get_sentinels(self):
        # The worker-handler thread wakes for worker exits and the change notifier (state
        # changes, the cache drained), as the stdlib's ThreadPool has it; not for every result
        # that reaches the result queue, where it would spin on the GIL against the result
        # handler and the caller until the result handler took the result.
        return [self._change_notifier._reader]

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        result = _pool.ApplyResult(self, callback, error_callback)
        try:
            self._quick_put((result._job, 0, func, args, kwds))
        except Exception as e:  # as the task handler does: the error is the task's result
            result._set(0, (False, e))
        return result
