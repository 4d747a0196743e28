# SPDX-License-Identifier: MIT
"""Queues on Dragon channels. An object is one message (codec.cpp): pickled with protocol 5,
small ones copied into the channel's ring, large ones written once into a pool block that the
receiver reads in place; out-of-band buffers (numpy arrays...) arrive as views of that block."""
import collections
import queue
import struct
import threading
import time
import weakref
from multiprocessing import context, util

from . import _runtime
from ._coherence import acquired, held, released
from ._native import ChannelClosed
from ._pickling import dumps_inband
from .synchronize import signals_held

# A queue created without maxsize holds this many items in its channel; past that, a put()
# leaves the item with this process's feeder thread (as the stdlib's Queue does with all of
# them), which sends it once there is room: put() never blocks on an unbounded queue.
UNBOUNDED_CAPACITY = 4096


def _timeout(block, timeout):
    if not block:
        return 0
    if timeout is None:
        return None
    return max(timeout, 0)


class Queue:
    def __init__(self, maxsize=0, *, ctx=None):
        self._maxsize = maxsize
        self._channel = _runtime.new_channel(maxsize if maxsize > 0 else UNBOUNDED_CAPACITY)
        self._closed = False
        self._reset_feeder()

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._maxsize, self._channel.descriptor)

    def __setstate__(self, state):
        self._maxsize, descriptor = state
        self._channel = _runtime.attach_channel(descriptor)
        self._closed = False
        self._reset_feeder()

    def _reset_feeder(self):
        """This process's overflow of an unbounded queue (none yet): the items a put() left
        while the channel was full, oldest first, and the thread that sends them."""
        self._buffer = collections.deque()
        self._buffer_lock = threading.Lock()
        self._feeder = None
        self._joiner = None
        self._joincancelled = False
        util.register_after_fork(self, Queue._reset_feeder)  # a fork's copy has none of them

    def _overflow(self, obj):
        """Under _buffer_lock: `obj` waits in the buffer; the feeder runs."""
        self._buffer.append(obj)
        if self._feeder is None:
            self._feeder = threading.Thread(target=Queue._feed, args=(weakref.ref(self),),
                                            name="dragon-queue-feeder", daemon=True)
            self._feeder.start()
            # As the stdlib's: the process waits for it to send everything before it ends,
            # unless cancel_join_thread() was called.
            self._joiner = util.Finalize(self._feeder, Queue._join_feeder,
                                         [weakref.ref(self._feeder)], exitpriority=-5)
            if self._joincancelled:
                self._joiner.cancel()

    @staticmethod
    def _join_feeder(thread_ref):
        thread = thread_ref()
        if thread is not None:
            thread.join()

    @staticmethod
    def _feed(ref):
        while True:
            q = ref()
            if q is None:
                return
            with q._buffer_lock:
                if not q._buffer:
                    q._feeder = None
                    return
                obj = q._buffer[0]
                channel, on_error = q._channel, q._on_queue_feeder_error
            del q  # the queue may go while this waits for room
            try:
                channel.put(obj, True, None, on_error)
            except Exception as e:  # the channel closed or went: nothing more can be sent
                on_error(e, obj)
            q = ref()
            if q is None:
                return
            with q._buffer_lock:
                q._buffer.popleft()
            del q, obj

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        if held:  # raw memory of another node held here (see _coherence)
            released()
        if self._maxsize <= 0:
            # Straight into the channel while nothing of this process waits in the buffer (an
            # empty buffer means all put before is in the channel: the feeder drops an item
            # only once it has sent it), without the buffer's lock; else after what waits.
            if not self._buffer:
                try:
                    self._channel.put(obj, False, None, self._on_queue_feeder_error)
                    return
                except queue.Full:
                    pass
            with self._buffer_lock:
                self._overflow(obj)
            return
        # An object that cannot be pickled is reported and dropped, as by the stdlib's feeder.
        self._channel.put(obj, block, timeout, self._on_queue_feeder_error)

    def get(self, block=True, timeout=None):
        if self._closed:
            raise ValueError("Queue %r is closed" % self)
        try:
            obj = self._channel.get(block, timeout)
        except ChannelClosed:
            raise EOFError("the queue was closed") from None
        if held:
            acquired()
        return obj

    @staticmethod
    def _on_queue_feeder_error(e, obj):
        import traceback
        traceback.print_exception(e)  # called with no exception being handled

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get_nowait(self):
        return self.get(False)

    def qsize(self):
        return self._channel.size() + len(self._buffer)

    def _dragon_ready(self):
        """For connection.wait: a get would not block (or the queue is closed)."""
        return self._channel.readable() or self._channel.is_closed()

    def _dragon_channel(self):
        return self._channel

    @property
    def _reader(self):
        # Code written for the stdlib Queue waits on q._reader: here that is the queue itself.
        return self

    def empty(self):
        return not self._channel.readable()

    def full(self):
        return not self._channel.writable()

    def close(self):
        self._closed = True

    def join_thread(self):
        """Waits until the items this process's put() left in its buffer are sent (only an
        unbounded queue whose channel filled has any)."""
        thread = self._feeder
        if thread is not None:
            thread.join()

    def cancel_join_thread(self):
        self._joincancelled = True
        if self._joiner is not None:
            self._joiner.cancel()


class _Count:
    """An integer every process of the job shares: one 8-byte message in a channel of one slot
    (dragond keeps it while any process holds it), taken and put back by whoever holds the
    lock that guards it, with signals held off in between (an interrupt there would lose it; a
    process killed there dies holding the lock, which breaks). Unlike a semaphore's tokens it
    has no bound but the integer's."""

    _FORMAT = struct.Struct("=q")

    def __init__(self):
        self._channel = _runtime.new_channel(1, 8)
        self._channel.send(self._FORMAT.pack(0), 0)

    def __getstate__(self):
        context.assert_spawning(self)
        return self._channel.descriptor

    def __setstate__(self, descriptor):
        self._channel = _runtime.attach_channel(descriptor)

    def add(self, delta, floor=None):
        """Under the guarding lock: adds `delta` and returns the new value; or, where that would
        fall below `floor`, changes nothing and returns None."""
        with signals_held():
            try:
                value = self._FORMAT.unpack(self._channel.recv(0))[0]
            except TimeoutError:  # only a process that ended inside add() leaves it empty
                raise RuntimeError("the count of unfinished tasks was lost") from None
            new = value + delta
            if floor is not None and new < floor:
                new = None
            self._channel.send(self._FORMAT.pack(value if new is None else new), 0)
            return new


class JoinableQueue(Queue):
    def __init__(self, maxsize=0, *, ctx=None):
        super().__init__(maxsize, ctx=ctx)
        from .synchronize import Condition
        self._unfinished = _Count()
        self._cond = Condition(ctx=ctx)

    def __getstate__(self):
        return Queue.__getstate__(self) + (self._unfinished, self._cond)

    def __setstate__(self, state):
        Queue.__setstate__(self, state[:2])
        self._unfinished, self._cond = state[2:]

    def put(self, obj, block=True, timeout=None):
        # Put and counted under the lock (a consumer could otherwise take the item and call
        # task_done before it counts), but never waiting for room with the lock held: a
        # producer killed while a full queue blocks it must not take the queue's lock with it.
        # An unbounded one never waits: past its channel the item waits in this process's
        # buffer (Queue.put), counted already.
        end = None if not block or timeout is None else time.monotonic() + max(timeout, 0)
        while True:
            with self._cond:
                try:
                    super().put(obj, False)
                except queue.Full:
                    pass
                else:
                    self._unfinished.add(1)
                    return
            left = None if end is None else end - time.monotonic()
            if not block or (left is not None and left <= 0):
                raise queue.Full
            self._channel.wait_writable(left)

    def task_done(self):
        with self._cond:
            left = self._unfinished.add(-1, floor=0)
            if left is None:
                raise ValueError("task_done() called too many times")
            if left == 0:
                self._cond.notify_all()

    def join(self):
        with self._cond:
            if self._unfinished.add(0) != 0:
                self._cond.wait()


class SimpleQueue:
    """multiprocessing.SimpleQueue's shape (a one-way pipe and two locks, which Pool reaches
    into) on dragon channels."""

    def __init__(self, *, ctx=None):
        from .connection import Pipe
        from .synchronize import Lock
        self._reader, self._writer = Pipe(duplex=False)
        self._rlock = Lock(ctx=ctx)
        self._wlock = Lock(ctx=ctx)

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state):
        (self._reader, self._writer, self._rlock, self._wlock) = state

    def empty(self):
        return not self._reader.poll()

    # No lock around get and put: a channel hands each message whole to one receiver, where
    # the stdlib's pipe needs its reader and writer locks to keep messages from interleaving.
    # The locks stay for code that takes them (Pool drains its task queue under _rlock).
    def get(self):
        return self._reader.recv()

    def put(self, obj):
        self._writer.send(obj)

    def close(self):
        self._reader.close()
        self._writer.close()
