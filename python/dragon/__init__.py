# SPDX-License-Identifier: MIT
"""Dragon: Python multiprocessing on Dragon's runtime.

``import dragon`` registers the multiprocessing start method ``"dragon"``. With it selected
(``multiprocessing.set_start_method("dragon")``, or by running a script as ``dragon app.py``),
processes are started by dragond with spawn's clean state, and queues, pipes and locks are
Dragon channels in shared-memory pools.
"""
import multiprocessing.context as _mpcontext

from ._native import ChannelClosed, DragonError, NodeLost, PeerLost  # noqa: F401
from .synchronize import BrokenLockError  # noqa: F401
from .context import DragonContext
from .policy import Policy, nodes

__all__ = ["BrokenLockError", "ChannelClosed", "DragonContext", "DragonError", "NodeLost",
           "PeerLost", "Policy", "nodes"]

if "dragon" not in _mpcontext._concrete_contexts:
    _mpcontext._concrete_contexts["dragon"] = DragonContext()

    # multiprocessing.Queue() and friends are bound methods of the default context, which build
    # the stdlib's objects whatever the start method. With "dragon" selected they must build
    # dragon objects: route them through the selected context.
    import multiprocessing as _mp

    def _routed(name, original):
        def call(*args, **kwargs):
            ctx = _mpcontext._default_context.get_context()
            if isinstance(ctx, DragonContext):
                return getattr(ctx, name)(*args, **kwargs)
            return original(*args, **kwargs)

        call.__name__ = name
        call.__qualname__ = name
        call.__doc__ = original.__doc__
        return call

    from . import _hooks
    from .connection import (_install_listener_client, _install_wait, _patch_managers,
                             _patch_resource_sharer)

    def _patch_shared_memory(module):
        from .shared_memory import _install
        _install()

    def _patch_heap(module):
        # Raw shared memory of the stdlib (sharedctypes' buffers, and code that makes its own
        # BufferWrapper): pool memory under the dragon start method, which crosses nodes (as
        # a copy kept coherent at synchronisation points); the stdlib's mmap arena otherwise.
        stock = module.BufferWrapper

        class BufferWrapper(stock):
            __doc__ = stock.__doc__

            # Unpickling (a stock buffer sent to a spawn or forkserver child) calls
            # __new__(cls) without a size: then it is the stock buffer being rebuilt.
            def __new__(cls, size=None):
                if size is not None and _dragon_is_global():
                    from .sharedctypes import PoolBuffer
                    return PoolBuffer(size)
                return super().__new__(cls)

        # Pickled by reference, as the stock class is: found again under its module's name.
        BufferWrapper.__module__ = stock.__module__
        BufferWrapper.__qualname__ = stock.__qualname__
        module.BufferWrapper = BufferWrapper

    def _patch_queues(module):
        # The stdlib's Queue and SimpleQueue classes made with the dragon context
        # (concurrent.futures' call queue is a subclass of Queue, and so may a program's be):
        # their pipe is a dragon Pipe, as multiprocessing.Pipe() is, so that they reach
        # processes on other nodes (an OS pipe's fds cannot); their locks and semaphore
        # already come from the context.
        def dragon_pipe(queue):
            from .connection import Pipe, _open_handles
            queue._reader.close()
            queue._writer.close()
            queue._reader, queue._writer = Pipe(duplex=False)
            # Closed by the queue's feeder thread once it has flushed what was put (at exit,
            # multiprocessing.util's exit function has it do so), not by the handles' own
            # closing at exit, which runs first and would drop the items still buffered.
            _open_handles.discard(queue._writer)

        queue_init = module.Queue.__init__
        simple_init = module.SimpleQueue.__init__

        def __init__(self, maxsize=0, *, ctx):
            queue_init(self, maxsize, ctx=ctx)
            if isinstance(ctx, DragonContext):
                dragon_pipe(self)
                self._reset()

        def simple__init__(self, *, ctx):
            simple_init(self, ctx=ctx)
            if isinstance(ctx, DragonContext):
                dragon_pipe(self)
                self._poll = self._reader.poll

        module.Queue.__init__ = __init__
        module.SimpleQueue.__init__ = simple__init__

    _install_wait()
    _install_listener_client()
    # Modules imported only by some programs are patched when (and if) they are imported.
    _hooks.after_import("multiprocessing.managers", _patch_managers)
    _hooks.after_import("multiprocessing.resource_sharer", _patch_resource_sharer)
    _hooks.after_import("multiprocessing.shared_memory", _patch_shared_memory)
    _hooks.after_import("multiprocessing.heap", _patch_heap)
    _hooks.after_import("multiprocessing.queues", _patch_queues)

    for _name in ("Queue", "JoinableQueue", "SimpleQueue", "Pipe", "Lock", "RLock", "Semaphore",
                  "BoundedSemaphore", "Condition", "Event", "Barrier", "Value", "Array",
                  "RawValue", "RawArray", "Pool", "Manager", "cpu_count"):
        setattr(_mp, _name, _routed(_name, getattr(_mp, _name)))

    # A stock spawn or forkserver child of a process whose start method is "dragon" calls
    # set_start_method("dragon") in spawn.prepare(): it must have imported dragon first.
    import os as _os
    from multiprocessing import forkserver as _forkserver, spawn as _spawn

    _package_parent = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _stock_command_line = _spawn.get_command_line
    _stock_ensure_running = _forkserver.ForkServer.ensure_running

    def _dragon_is_global():
        from .connection import _dragon_in_force
        return _dragon_in_force()

    def get_command_line(**kwds):
        cmd = _stock_command_line(**kwds)
        if _dragon_is_global() and len(cmd) >= 3 and cmd[-3] == "-c":
            cmd[-2] = "import sys; sys.path.insert(0, %r); import dragon; %s" % (
                _package_parent, cmd[-2])
        return cmd

    def ensure_running(self):
        if _dragon_is_global() and "dragon" not in self._preload_modules:
            self._preload_modules = list(self._preload_modules) + ["dragon"]
        return _stock_ensure_running(self)

    get_command_line.__doc__ = _stock_command_line.__doc__
    _spawn.get_command_line = get_command_line
    _forkserver.ForkServer.ensure_running = ensure_running
