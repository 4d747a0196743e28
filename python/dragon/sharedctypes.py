# SPDX-License-Identifier: MIT
"""Value, Array, RawValue and RawArray in Dragon pool memory.

The ctypes objects are the stdlib's (``multiprocessing.sharedctypes``: synchronized wrappers,
``get_obj``, ``get_lock``, slicing...), laid over an allocation of this process's pool instead of
the stdlib's mmap arena. A child started with one attaches the pool through dragond and sees
the same bytes. The allocation is freed when the creator's object is collected (at the latest
when the creator exits normally). A creator that is killed frees nothing: its block stays until
its pool goes, which dragond releases once the creator and every process that attached the pool
have gone. That is the stdlib's lifetime (an arena lives while any process maps it), and it is
deliberate: a child may still be using the object, so a dead creator's block must not be
reclaimed and reused under it.

A process on another node cannot map the pool: what it is given there is a copy of the bytes in
its own pool (_RemoteBuffer), moved by RMA (Client::get/put). A Value or Array with a dragon
lock is kept coherent by that lock: when the process takes it (every synchronized access does,
and `with v.get_lock():` around several), the bytes are fetched from their home; when it lets it
go, they are written back. So `with v.get_lock(): v.value += 1` from processes on three nodes
gives the exact total. Raw memory (RawValue, RawArray, Value(lock=False), the stdlib's
heap.BufferWrapper, which dragon makes a PoolBuffer) is kept coherent at every synchronisation
point of the process instead (_coherence: fetched when it takes any lock or receives a message
or joins a child, its changed bytes written back when it lets a lock go, sends, or exits).
On their home node all of them stay plain shared memory."""
import ctypes

from multiprocessing import context, sharedctypes as _std, util

from . import _coherence, _native, _runtime


class PoolBuffer:
    """What the stdlib's heap.BufferWrapper is to its arena: `size` bytes of pool memory."""

    def __init__(self, size):
        pool = _runtime.pool()
        self._pool_descriptor = pool.descriptor
        self._offset = pool.alloc(max(size, 1))
        self._size = size
        self._view = pool.view(self._offset, max(size, 1))
        util.Finalize(self, _free, (pool, self._offset), exitpriority=-100)

    def create_memoryview(self):
        return memoryview(self._view)[:self._size]

    def __reduce__(self):
        context.assert_spawning(self)
        # The receiver decides: on this node it maps the bytes, elsewhere it makes a copy.
        return _rebuild, (self._pool_descriptor, self._offset, self._size,
                          getattr(self, "_guarded", False))

    remote = False  # the bytes are here: nothing to fetch or write back


class _RemoteBuffer:
    """Bytes of a pool of another node, as a copy in this process's pool. A guarded one (of a
    Value or Array with a dragon lock) is fetched from the home when its lock is taken and
    written back whole when the lock is let go (synchronize.Lock and RLock call fetch and
    flush). A raw one follows the process's synchronisation points (_coherence) and writes
    back only the bytes that changed."""

    remote = True

    def __init__(self, descriptor, offset, size, guarded):
        self._far = (descriptor, offset)
        self._size = size
        self._guarded = guarded
        pool = _runtime.pool()
        self._local = (pool.descriptor, pool.alloc(max(size, 1)))
        self._view = pool.view(self._local[1], max(size, 1))
        util.Finalize(self, _free, (pool, self._local[1]), exitpriority=-100)
        self._twin = None
        self.fetch()
        if not guarded:
            _coherence.hold(self)

    def create_memoryview(self):
        return memoryview(self._view)[:self._size]

    def _copy(self, put, start=0, end=None):
        end = self._size if end is None else end
        if end > start:
            _runtime.copy_memory(put, self._local[0], self._local[1], self._far[0],
                                 self._far[1], end - start, offset=start)

    def fetch(self):
        self._copy(False)
        if not self._guarded:
            self._twin = bytearray(self.create_memoryview())

    def flush(self):
        self._copy(True)

    def write_back(self):
        """Writes back the runs of bytes changed since the last fetch (raw copies)."""
        now = self.create_memoryview().cast("B")
        twin = memoryview(self._twin)
        for start, end in _coherence.changed_runs(now, twin):
            self._copy(True, start, end)
            twin[start:end] = now[start:end]

    def __reduce__(self):
        # Passed on to a process of any node: it maps the home's bytes there, or copies them.
        context.assert_spawning(self)
        return _rebuild, (self._far[0], self._far[1], self._size, self._guarded)


def _free(pool, offset):
    try:
        pool.free(offset)
    except Exception:  # the runtime is already gone at exit: the block goes with the pool
        pass


def _rebuild(descriptor, offset, size, guarded=False):
    if _native.home_node(descriptor) != _runtime.this_node():
        return _RemoteBuffer(descriptor, offset, size, guarded)
    b = PoolBuffer.__new__(PoolBuffer)
    b._guarded = guarded
    b._pool_descriptor = descriptor
    b._offset = offset
    b._size = size
    b._view = _runtime.attach_pool(descriptor).view(offset, max(size, 1))
    return b


def _new_value(type_):
    return _std.rebuild_ctype(type_, PoolBuffer(ctypes.sizeof(type_)), None)


def _zeroed(type_):
    obj = _new_value(type_)
    ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))
    return obj


def RawValue(typecode_or_type, *args):
    obj = _zeroed(_std.typecode_to_type.get(typecode_or_type, typecode_or_type))
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    type_ = _std.typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _zeroed(type_ * size_or_initializer)
    obj = _zeroed(type_ * len(size_or_initializer))
    obj.__init__(*size_or_initializer)
    return obj


def _locked(obj, lock, ctx):
    if lock is False:
        return obj
    if lock in (True, None):
        lock = (ctx or context.get_context("dragon")).RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    guard = getattr(lock, "_guard", None)
    if guard is not None:  # a dragon lock: on another node, it keeps the bytes coherent
        obj._wrapper._guarded = True
        guard(obj._wrapper)
    return _std.synchronized(obj, lock, ctx=ctx)


def Value(typecode_or_type, *args, lock=True, ctx=None):
    return _locked(RawValue(typecode_or_type, *args), lock, ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    return _locked(RawArray(typecode_or_type, size_or_initializer), lock, ctx)
