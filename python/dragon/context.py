# SPDX-License-Identifier: MIT
"""The ``dragon`` multiprocessing context."""
from multiprocessing import context as _ctx

from .process import DragonProcess


class DragonContext(_ctx.BaseContext):
    _name = "dragon"
    Process = DragonProcess

    def cpu_count(self):
        """The job's CPUs: in a multi-node job, the sum of what Slurm granted on each node."""
        import os
        if not os.environ.get("DRAGON_SOCKET"):
            return super().cpu_count()  # no runtime yet (its own would be of this node alone)
        from . import policy
        known = policy.nodes()
        if len(known) > 1:
            return sum(c if c > 0 else 1 for _, _, c in known)
        return super().cpu_count()

    def Queue(self, maxsize=0):
        from .queues import Queue
        return Queue(maxsize, ctx=self)

    def JoinableQueue(self, maxsize=0):
        from .queues import JoinableQueue
        return JoinableQueue(maxsize, ctx=self)

    def SimpleQueue(self):
        from .queues import SimpleQueue
        return SimpleQueue(ctx=self)

    def Pipe(self, duplex=True):
        from .connection import Pipe
        return Pipe(duplex)

    def Lock(self):
        from .synchronize import Lock
        return Lock(ctx=self)

    def RLock(self):
        from .synchronize import RLock
        return RLock(ctx=self)

    def Semaphore(self, value=1):
        from .synchronize import Semaphore
        return Semaphore(value, ctx=self)

    def BoundedSemaphore(self, value=1):
        from .synchronize import BoundedSemaphore
        return BoundedSemaphore(value, ctx=self)

    def Condition(self, lock=None):
        from .synchronize import Condition
        return Condition(lock, ctx=self)

    def Event(self):
        from .synchronize import Event
        return Event(ctx=self)

    def Barrier(self, parties, action=None, timeout=None):
        from .synchronize import Barrier
        return Barrier(parties, action, timeout, ctx=self)

    def RawValue(self, typecode_or_type, *args):
        from .sharedctypes import RawValue
        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        from .sharedctypes import RawArray
        return RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type, *args, lock=True):
        from .sharedctypes import Value
        return Value(typecode_or_type, *args, lock=lock, ctx=self)

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        from .sharedctypes import Array
        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self)

    def Manager(self):
        """A SyncManager whose server is a dragon process and whose connections (proxies to
        the server) are Dragon channels, whatever the default start method."""
        from multiprocessing.managers import SyncManager
        m = SyncManager(ctx=self.get_context(), serializer="dragon")
        m.start()
        return m

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild, context=self)
