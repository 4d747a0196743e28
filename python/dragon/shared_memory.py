# SPDX-License-Identifier: MIT
"""multiprocessing.shared_memory on Dragon pools.

With the dragon start method selected, a SharedMemory block is a pool of its own at dragond,
named after the block: creating it creates the pool (lazy: it costs memory where it is
written), attaching maps it by name from any process of the runtime, close() drops this
process's mapping and reference, and unlink() removes the name (processes that have it mapped
keep using it, as with shm_unlink). A block lives until it is unlinked or dragond ends.

A name that no dragon block has is looked up as a POSIX segment, so a dragon program still
attaches blocks that stock Python processes made. ShareableList and SharedMemoryManager build
on SharedMemory and so use dragon blocks unchanged.
"""
import errno
import os
from multiprocessing import shared_memory as _stock

from . import _native, _runtime
from .policy import multi_node
from .connection import _dragon_selected

_NAME_PREFIX = "mp.shm:"
# A block's job-wide name, made in a multi-node job, by which another node learns its home.
_HOME_PREFIX = "mp.shm-home:"

# Room for the pool's own header and the block's, on top of the block.
_POOL_OVERHEAD = 64 << 10


def _not_found(name):
    return FileNotFoundError(errno.ENOENT, "No such file or directory: %r" % (name,))


class SharedMemory(_stock.SharedMemory):
    __doc__ = _stock.SharedMemory.__doc__

    _dragon = False
    _pool = None

    @staticmethod
    def _use_dragon():
        return _dragon_selected()

    def __init__(self, name=None, create=False, size=0):
        if not self._use_dragon():
            super().__init__(name, create, size)
            return
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        flags = self._flags
        if create:
            flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        if name is None and not flags & os.O_EXCL:
            raise ValueError("'name' can only be None if create=True")
        if name is None:
            while True:
                full = _stock._make_filename()
                if self._create(full, size):
                    break
            return
        full = "/" + name if self._prepend_leading_slash else name
        if flags & os.O_CREAT and size > 0 and self._create(full, size):
            return
        if flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, "File exists: %r" % (name,))
        if not self._attach(full):
            # No dragon block of that name: a POSIX segment of stock Python processes?
            super().__init__(name, False, size)

    def _key(self, full):
        return _NAME_PREFIX + (full[1:] if self._prepend_leading_slash else full)

    def _create(self, full, size):
        """True if it made the block; False if the name is taken."""
        try:
            pool = _runtime.create_pool(size + _POOL_OVERHEAD, self._key(full), lazy=True)
        except FileExistsError:
            return False
        offset = pool.alloc(size, shared=True)
        try:
            # Pool names are a node's, as POSIX names are a host's; this job-wide name only
            # lets an attach from another node say where the block is (it goes with this
            # process). Outside a multi-node job there is no other node to tell.
            if multi_node():
                _runtime.register_name(_HOME_PREFIX + self._key(full), pool.descriptor,
                                       scoped=True, replace=True)
        except Exception:
            pass  # another node's block of the same name has it: an attach says not found
        self._open(full, pool, offset, size)
        return True

    def _attach(self, full):
        try:
            pool = _runtime.attach_named_pool(self._key(full))
        except LookupError:
            self._refuse_if_of_another_node(full)
            return False
        blocks = pool.allocations()
        if len(blocks) != 1:
            self._detach(pool)
            raise OSError(errno.EIO, "%r is a dragon pool, not a shared memory block" % full)
        offset, size = blocks[0]
        self._open(full, pool, offset, size)
        return True

    def _refuse_if_of_another_node(self, full):
        """A block of another node of the job (names are job-wide) cannot be mapped here: an
        OSError that names its node, never a private copy or the POSIX fallback."""
        try:
            descriptor = _runtime.lookup_name(_HOME_PREFIX + self._key(full))
        except LookupError:
            return
        home, here = _native.home_node(descriptor), _runtime.this_node()
        if home != here:
            raise OSError(errno.EREMOTE, "shared memory %r is memory of node %d, which a process "
                          "on node %d cannot map (a Queue, an Array or a Value with a lock "
                          "crosses nodes)" % (full, home, here))

    def _open(self, full, pool, offset, size):
        self._dragon = True
        self._name = full
        self._size = size
        self._pool = pool
        self._buf = memoryview(pool.view(offset, size))

    @staticmethod
    def _detach(pool):
        try:
            _runtime.detach(pool.descriptor)
        except Exception:  # dragond is gone (exit): nothing is left to give back
            pass

    def __reduce__(self):
        if self._dragon:
            return (_attach_dragon, (self.name,))
        return super().__reduce__()

    def close(self):
        if not self._dragon:
            return super().close()
        if self._buf is not None:
            # Views of it (slices, numpy arrays over it) keep the pool mapped and stay valid.
            self._buf.release()
            self._buf = None
        pool, self._pool = self._pool, None
        if pool is not None:
            self._detach(pool)

    def unlink(self):
        if not self._dragon:
            return super().unlink()
        try:
            _runtime.destroy(_runtime.lookup_name(self._key(self._name)))
        except LookupError:
            raise _not_found(self.name) from None


class _DragonSharedMemory(SharedMemory):
    @staticmethod
    def _use_dragon():
        return True


def _attach_dragon(name):
    return _DragonSharedMemory(name)


def _install():
    """multiprocessing.shared_memory.SharedMemory becomes this class (dragon blocks when the
    dragon start method is selected, stock ones otherwise)."""
    if _stock.SharedMemory is not SharedMemory:
        _stock.SharedMemory = SharedMemory


__all__ = ["SharedMemory"]
