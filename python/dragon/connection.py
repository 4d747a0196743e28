# SPDX-License-Identifier: MIT
"""multiprocessing.connection on Dragon: Pipe on two Dragon channels (one per direction; one
for a one-way pipe), connection.wait over channels, and Listener/Client (below)."""
import atexit
import collections
import errno
import ipaddress
import itertools
import multiprocessing.connection as _mpc
import os
import queue
import socket
import threading
import time
import weakref

from multiprocessing import context

from . import _native, _runtime
from ._coherence import acquired, held, released
from ._native import ChannelClosed
from ._pickling import dumps_inband

# What a Pipe's channels hold before a sender blocks. A stock duplex Pipe is a socketpair, which
# blocks a writer after a few hundred small messages: 1024 holds more. A stock one-way Pipe (and
# so a SimpleQueue) is an OS pipe, which holds 64 KiB: 16384 of the smallest messages
# (send_bytes(b"") writes a 4-byte header). Programs lean on that: CPython 3.11's
# ProcessPoolExecutor sends one empty wake-up per submit() while holding the lock its manager
# thread needs to drain them (gh-105829), and a one-way channel that held 1024 deadlocked a few
# thousand submits. Only under `dragon app.py`: there "dragon" is the default start method, so
# the module-level multiprocessing.Pipe() that the executor's wake-up uses is a dragon Pipe;
# `python3 app.py` with get_context("dragon") keeps it an OS pipe. A one-way Pipe's ring therefore has 16384 slots of 256 bytes (messages up
# to 224 bytes, a Pool's task tuples among them, travel inline): 4 MiB of the process's lazy
# pool (_runtime.POOL_SIZE), faulted in only as the ring is used.
PIPE_CAPACITY = 1024
ONE_WAY_PIPE_CAPACITY = 16384
ONE_WAY_PIPE_INLINE = 224


class Connection:
    """One end of a Pipe. Each channel has a handle record in its pool (below) that counts the
    handles, in every process, that can write to it and read from it: taken when a handle is
    made or pickled for another process, given back when one is closed, collected, or its
    process exits. When the last writer goes the channel is closed, so the reader's recv()
    raises EOFError, as with an OS pipe. A writer killed before it could give its handles back
    is found by a reader that has waited for a second (its pid is in the record): its handles
    are dropped, and the reader sees end of file once no writer is left, as an OS pipe's
    reader would once the kernel closed the killed process's fds. Likewise a writer that has
    waited a second for room drops the handles of killed readers, and gets BrokenPipeError
    once no reader is left.

    Each end of a Pipe also has a Unix socket of a socketpair (`fileno()`), lent to a child
    started with it, over which multiprocessing.reduction.send_handle/recv_handle pass file
    descriptors. Messages never travel on it: readiness is the channel's (connection.wait,
    poll)."""

    def __init__(self, recv_channel, send_channel, readable=True, writable=True, wrec=None,
                 rrec=None, fd=None):
        self._recv = recv_channel
        self._send = send_channel
        self._readable = readable
        self._writable = writable
        self._wrec = wrec  # the send channel's handle record (an offset in its pool)
        self._rrec = rrec  # the recv channel's
        self._fd = fd
        self._closed = False
        self._pid = os.getpid()  # a forked copy of this object holds no handle
        self._writers_checked = 0.0  # when _writers_gone() last looked
        self._readers_checked = 0.0  # when _readers_gone() last looked
        # Of another node's channels: its handles are held by the process that started this
        # one, on their node (_lend), or it is _owned.
        self._borrowed = False
        self._owned = False
        self._link = None  # (relay descriptor, key) of an end lent from another node
        _open_handles.add(self)

    def _forget(self):
        """Drops this object without giving its handles back: they went with its state to a
        process of another node (_RemoteEnd)."""
        self._closed = True
        self._close_fd()
        _open_handles.discard(self)

    def _home_node(self):
        ch = self._recv if self._recv is not None else self._send
        return ch.home_node if ch is not None else -1

    def _lend(self, lend):
        pid = os.getpid()
        send = self._send if self._wrec is not None else None
        recv = self._recv if self._rrec is not None else None
        if send is not None:
            send.pool.add_u64(self._wrec, 1)
            _writer_slot(send.pool, self._wrec, pid, 1)  # if this process is killed, they go
        if recv is not None:
            recv.pool.add_u64(self._rrec, _READER)
            _reader_slot(recv.pool, self._rrec, pid, 1)
        lend(lambda: _give_back(send, self._wrec, recv, self._rrec, pid))
        link = None
        if self._fd is not None:
            # Its socket stays here: the child's fileno() is a socket of its node, joined to
            # this one by the relays (_fdrelay), which pass fds as relayed copies.
            from . import _fdrelay
            relay = _fdrelay.relay()
            key = relay.lend(os.dup(self._fd))
            lend(lambda: relay.settle(key))
            link = (relay.descriptor, key)
        return (self._recv.descriptor if self._recv else None,
                self._send.descriptor if self._send else None, self._readable, self._writable,
                None, None, None, False, link)

    def __getstate__(self):
        # Descriptors are valid in any process of the runtime: a Connection may travel through
        # a Queue or another Connection, not only to a child at its start.
        if self._closed:
            raise OSError("handle is closed")
        popen = context.get_spawning_popen()
        if self._borrowed or self._owned:
            # Its handles are held on its node for this process (until it ends): a child
            # started with it shares them, uncounted (a child that outlives this process may
            # see the channel closed under it).
            if popen is None:
                raise ValueError("a Pipe end of node %d reaches another process from node %d "
                                 "only as an argument of a Process it starts"
                                 % (self._home_node(), _runtime.this_node()))
            return (self._recv.descriptor if self._recv else None,
                    self._send.descriptor if self._send else None, self._readable,
                    self._writable, None, None, None)
        lend = getattr(popen, "lend_handles", None)
        if lend is not None:
            # A child on another node: its handle records are memory of this node, so this
            # process holds the child's handles and gives them back when dragond reports
            # the child's end (as the kernel closes a child's fds when it exits).
            return self._lend(lend)
        # The other process's handles, counted before this one can close.
        send = self._send if self._wrec is not None else None
        recv = self._recv if self._rrec is not None else None
        if send is not None:
            send.pool.add_u64(self._wrec, 1)
        if recv is not None:
            recv.pool.add_u64(self._rrec, _READER)
        counted = getattr(popen, "counted_for_child", None)
        if counted is not None and (send is not None or recv is not None):
            # Given back (under no pid) if the child's payload is never made.
            wrec, rrec = self._wrec, self._rrec
            counted(lambda: _give_back(send, wrec, recv, rrec, 0))
        fd = None
        if popen is not None and self._fd is not None:
            fd = popen.duplicate_for_child(self._fd)  # only a child at its start gets the socket
        return (self._recv.descriptor if self._recv else None,
                self._send.descriptor if self._send else None, self._readable, self._writable,
                self._wrec, self._rrec, fd)

    def __setstate__(self, state):
        r, s, self._readable, self._writable, self._wrec, self._rrec, self._fd = state[:7]
        # An end a Listener handed to a client on another node: its own, closed by its close().
        self._owned = len(state) > 7 and state[7]
        # An end lent by a process of another node: its fileno() joins that process's relay.
        self._link = state[8] if len(state) > 8 else None
        self._recv = _runtime.attach_channel(r) if r else None
        self._send = _runtime.attach_channel(s) if s else None
        far = any(ch is not None and ch.is_remote for ch in (self._recv, self._send))
        # No handle record: its handles are counted for it elsewhere (_lend, _RemoteEnd).
        self._borrowed = self._wrec is None and self._rrec is None and not self._owned
        if far and (self._wrec is not None or self._rrec is not None):
            # Sent to a process that runs already (through a Queue...): nothing of this node
            # can hold its handles until it ends.
            raise ValueError("a Pipe end of node %d reaches another node only with a process "
                             "started there (as an argument of Process)" % self._home_node())
        self._closed = False
        self._pid = os.getpid()
        self._writers_checked = 0.0
        self._readers_checked = 0.0
        if self._send is not None and self._wrec is not None:
            _writer_slot(self._send.pool, self._wrec, self._pid, 1)
        if self._recv is not None and self._rrec is not None:
            _reader_slot(self._recv.pool, self._rrec, self._pid, 1)
        _open_handles.add(self)  # a process that exits gives back its handles

    def _close_fd(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self):
        # Like an fd: a handle that is collected is closed (the peer may see end of file).
        # At interpreter exit the modules it uses may be gone already: then nothing is left
        # to do (the process's exit closes everything).
        try:
            if not getattr(self, "_closed", True):
                self.close()
            self._close_fd()
        except Exception:
            pass

    @property
    def closed(self):
        return self._closed

    @property
    def readable(self):
        return self._readable

    @property
    def writable(self):
        return self._writable

    def _check(self, reading):
        if self._closed:
            raise OSError("handle is closed")
        if reading and not self._readable:
            raise OSError("connection is write-only")
        if not reading and not self._writable:
            raise OSError("connection is read-only")

    def fileno(self):
        if self._closed:
            raise OSError("handle is closed")
        if self._fd is None and getattr(self, "_link", None) is not None and \
                self._pid == os.getpid():  # a fork's copy does not take the link over
            from . import _fdrelay
            # The lowest free number is kept for the user's end: a caller that found it free
            # just before calling fileno() (CPython's test_large_fd_transfer dup2s fileno()
            # onto every free fd below 256) must not replace an fd the relay keeps there.
            spot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fd = _fdrelay.relay().join(self._link[1], self._link[0])
            except BaseException:
                os.close(spot)
                raise
            if fd > spot:
                os.dup2(fd, spot, inheritable=False)
                os.close(fd)
                fd = spot
            else:
                os.close(spot)
            self._fd = fd
        if self._fd is None:
            raise OSError("this dragon connection has no file descriptor here: only a Pipe end "
                          "lent to a child at its start has one (connection.wait and poll "
                          "work without it)")
        return self._fd

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._close_fd()
        _open_handles.discard(self)
        if self._pid != os.getpid():
            return  # a copy a stock fork made: its handles are the parent's
        if self._owned and self._send is not None:
            try:
                self._send.close()  # the peer sees end of file
            except Exception:
                pass
            return
        # A borrowed end's handles go back when this process ends (_lend).
        try:
            _give_back(self._send, self._wrec, self._recv, self._rrec, self._pid)
        except Exception:
            pass

    def send_bytes(self, buf, offset=0, size=None):
        self._check(False)
        m = memoryview(buf).cast("B")
        if offset < 0 or offset > len(m):
            raise ValueError("offset is out of range")
        if size is None:
            size = len(m) - offset
        if size < 0 or offset + size > len(m):
            raise ValueError("size is out of range")
        if held:  # raw memory of another node held here (see _coherence)
            released()
        self._send_message(m[offset:offset + size])

    def send(self, obj):
        self._check(False)
        data = dumps_inband(obj)
        if held:
            released()
        self._send_message(data)

    def _try_send(self, obj):
        """send(obj) if the channel has room for it now; False (nothing sent) if not."""
        self._check(False)
        data = dumps_inband(obj)
        if held:
            released()
        try:
            return self._send.try_send(data)
        except ChannelClosed:
            raise BrokenPipeError(errno.EPIPE, "the other end of the Pipe is closed") from None

    def _send_message(self, data):
        """Sends; BrokenPipeError, as an OS pipe's writer gets, once no process holds the
        other end for reading: the last reader's _give_back closes the channel, which also
        wakes a writer waiting on it full. A writer that waits for room looks each
        _WRITER_CHECK for readers that were killed (_readers_gone), as the kernel would have
        closed their fds."""
        while True:
            try:
                self._send.send(data, None if self._wrec is None else _WRITER_CHECK)
                return
            except ChannelClosed:
                raise BrokenPipeError(errno.EPIPE, "the other end of the Pipe is closed") from None
            except TimeoutError:
                self._readers_gone()  # closes the channel: the next send raises

    def _readers_gone(self):
        """True once every reader has gone, counting the ones that were killed (whose handles
        this drops, closing the channel for every writer)."""
        return self._peers_gone(self._send, self._wrec, _READERS, "_readers_checked")

    def _peers_gone(self, channel, record, part, stamp):
        """True once no handle of `part` of `channel`'s record is left, counting the ones of
        killed processes (dropped here; the channel is then closed for everyone). Looks at
        most once a _WRITER_CHECK (attribute `stamp`: when it last looked)."""
        now = time.monotonic()
        if now < getattr(self, stamp) + _WRITER_CHECK:
            return False
        setattr(self, stamp, now)
        try:
            if _drop_dead(channel.pool, record, part):
                channel.close()
                return True
        except Exception:
            pass
        return False

    def _recv_message(self, timeout=None):
        if self._rrec is not None:
            data = self._watching_writers(self._recv.recv)
        else:
            try:
                data = self._recv.recv(timeout)
            except ChannelClosed:
                raise EOFError from None
        if held:
            acquired()
        return data

    def _writers_gone(self):
        """True once every writer has gone, counting the ones that were killed (whose handles
        this drops, closing the channel for every reader). Looks at most once a _WRITER_CHECK
        (a poll() loop does not pay a kill() per writer each time round)."""
        if self._recv is None or self._rrec is None or self._closed:
            return False
        return self._peers_gone(self._recv, self._rrec, _WRITERS, "_writers_checked")

    def _watching_writers(self, receive):
        """receive(timeout) until a message comes or the channel closes, checking each
        _WRITER_CHECK seconds for writers that were killed."""
        while True:
            try:
                return receive(_WRITER_CHECK)
            except ChannelClosed:
                raise EOFError from None
            except TimeoutError:
                self._writers_gone()  # closes the channel: the next receive drains, then EOF

    def recv_bytes(self, maxlength=None):
        self._check(True)
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._recv_message()
        if maxlength is not None and len(data) > maxlength:
            # As the stdlib's: the message is lost, and so is this end for reading.
            if self._writable:
                self._readable = False
            else:
                self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf, offset=0):
        self._check(True)
        m = memoryview(buf).cast("B")
        if offset < 0 or offset > len(m):
            raise ValueError("negative offset" if offset < 0 else "offset too large")
        data = self._recv_message()
        if len(data) > len(m) - offset:
            from multiprocessing import BufferTooShort
            raise BufferTooShort(data)
        m[offset:offset + len(data)] = data
        return len(data)

    def recv(self):
        self._check(True)
        if self._rrec is not None:
            obj = self._watching_writers(self._recv.recv_object)
        else:
            try:
                obj = self._recv.recv_object(None)  # unpickled from the message in place
            except ChannelClosed:
                raise EOFError from None
        if held:
            acquired()
        return obj

    def _dragon_ready(self):
        return self._recv is not None and (self._recv.readable() or self._recv.is_closed()
                                           or self._writers_gone())

    def _dragon_channel(self):
        """The channel connection.wait sleeps on (None: this end never becomes readable)."""
        return self._recv

    def poll(self, timeout=0.0):
        self._check(True)
        return bool(wait([self], timeout))

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


# A channel's handle record: a shared allocation in the channel's pool (it outlives the
# process that made it; whoever gives back the last handle frees it).
#   word 0: the handles in every process: writers in the low 32 bits, readers in the high 32
#           (handles pickled for another process are counted before they arrive);
#   then, for the writers and then for the readers, a part of 1 + 2 * _SLOTS words:
#     word 0: 1 once a handle found no free slot (then killed holders are not looked for);
#     words 1, 2 ...: _SLOTS pairs (pid, handles that process holds); a pid is _DEAD once a
#           peer dropped the handles of that killed process.
_SLOTS = 6
_PART_WORDS = 1 + 2 * _SLOTS
_WRITERS = (1, 1)  # (first word of the part, the unit of its count in word 0)
_READERS = (1 + _PART_WORDS, 1 << 32)
_RECORD_WORDS = 1 + 2 * _PART_WORDS
_READER = _READERS[1]
_LOW = (1 << 32) - 1
_DEAD = (1 << 64) - 1
# How often a receive (a send) that waits looks for killed writers (readers).
_WRITER_CHECK = 1.0


def _new_record(channel, pid):
    """The record of a new channel: one writer handle and one reader handle, held by pid."""
    pool = channel.pool
    offset = pool.alloc(8 * _RECORD_WORDS, shared=True)
    for i in range(1, _RECORD_WORDS):
        pool.store_u64(offset, 0, i)
    for base, _ in (_WRITERS, _READERS):
        pool.store_u64(offset, pid, base + 1)
        pool.store_u64(offset, 1, base + 2)
    pool.store_u64(offset, 1 + _READER, 0)
    return offset


def _slot(pool, offset, pid, delta, part):
    """Adds delta (+1, -1) to the handles of `part` (_WRITERS, _READERS) that `pid` holds in
    its slot (+1 takes a free slot when it has none; with no free slot left, killed holders of
    that part are no longer looked for)."""
    base = part[0]
    for i in range(_SLOTS):
        w = base + 1 + 2 * i
        if pool.load_u64(offset, w) == pid and (delta > 0 or pool.load_u64(offset, w + 1) > 0):
            pool.add_u64(offset, delta, w + 1)
            return
    if delta < 0:
        return
    for i in range(_SLOTS):
        w = base + 1 + 2 * i
        if pool.cas_u64(offset, 0, pid, w):
            pool.add_u64(offset, 1, w + 1)
            return
    pool.store_u64(offset, 1, base)


def _writer_slot(pool, offset, pid, delta):
    _slot(pool, offset, pid, delta, _WRITERS)


def _reader_slot(pool, offset, pid, delta):
    _slot(pool, offset, pid, delta, _READERS)


def _drop_dead(pool, offset, part):
    """Drops the handles of `part` (_WRITERS, _READERS) held by processes that were killed;
    True if none of that part is left. The caller holds a handle of the other part, so the
    record is not freed meanwhile."""
    base, unit = part
    if pool.load_u64(offset, base) == 0:
        for i in range(_SLOTS):
            w = base + 1 + 2 * i
            pid = pool.load_u64(offset, w)
            if pid in (0, _DEAD) or pool.load_u64(offset, w + 1) == 0 or _process_alive(pid):
                continue
            if pool.cas_u64(offset, pid, _DEAD, w):
                pool.add_u64(offset, -unit * pool.load_u64(offset, w + 1))  # its count is still now
    return pool.load_u64(offset) // unit & _LOW == 0


class _RemoteEnd:
    """One end of a Listener's connection for a client on another node, which cannot count
    handles in this node's memory: the client owns it alone, and its close() closes the channel
    it writes to. Its handles here stay counted (the records stay until the pool goes)."""

    def __init__(self, conn):
        self.state = (conn._recv.descriptor, conn._send.descriptor, True, True, None, None, None,
                      True)
        conn._forget()

    def __reduce__(self):
        return _owned_end, (self.state,)


def _owned_end(state):
    c = Connection.__new__(Connection)
    c.__setstate__(state)
    return c


def _give_back(send, wrec, recv, rrec, pid):
    """Gives back a writer handle of `send` that `pid` holds (with wrec) and a reader handle of
    `recv` (with rrec). The last writer closes the channel (its reader sees end of file), so
    does the last reader (its writers get BrokenPipeError); the last handle frees the
    record."""
    if send is not None and wrec is not None:
        pool = send.pool
        _writer_slot(pool, wrec, pid, -1)
        left = pool.add_u64(wrec, -1)
        if left & _LOW == 0:
            send.close()
        if left == 0:
            pool.free(wrec)
    if recv is not None and rrec is not None:
        pool = recv.pool
        _reader_slot(pool, rrec, pid, -1)
        left = pool.add_u64(rrec, -_READER)
        if left & ~_LOW == 0:
            recv.close()  # no reader is left, and none can come: its writers get EPIPE
        if left == 0:
            pool.free(rrec)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead too
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


# The handles of this process: closed when it exits, so that peers see end of file at once.
_open_handles = weakref.WeakSet()


def _close_open_handles():
    for c in list(_open_handles):
        c.close()


def _at_exit():
    """This process's handles closed at exit, so that its peers see end of file at once, as
    the kernel closes a stdlib Pipe's fds. multiprocessing's exit finalizers of priority >= 0
    run first (a Pool left open is terminated by its finalizer, which still sends over its
    queues): multiprocessing's own atexit function, registered before this one, would run
    them after it. The rest of that function (daemonic children ended, the others joined)
    runs later, with the handles closed, as before."""
    from multiprocessing import util
    util._run_finalizers(0)
    _close_open_handles()


atexit.register(_at_exit)


def _channel_pair(fds=(None, None)):
    """The two ends of a duplex Pipe (with fds, its socketpair's), or of a Listener's
    connection (without)."""
    a = _runtime.new_channel(PIPE_CAPACITY)
    b = _runtime.new_channel(PIPE_CAPACITY)
    pid = os.getpid()
    ra, rb = _new_record(a, pid), _new_record(b, pid)
    return (Connection(a, b, wrec=rb, rrec=ra, fd=fds[0]),
            Connection(b, a, wrec=ra, rrec=rb, fd=fds[1]))


def Pipe(duplex=True):
    s1, s2 = socket.socketpair()
    fds = (s1.detach(), s2.detach())
    if duplex:
        return _channel_pair(fds)
    a = _runtime.new_channel(ONE_WAY_PIPE_CAPACITY, ONE_WAY_PIPE_INLINE)
    ra = _new_record(a, os.getpid())
    return (Connection(a, None, True, False, rrec=ra, fd=fds[0]),
            Connection(None, a, False, True, wrec=ra, fd=fds[1]))


def _backoff():
    return itertools.chain((0.0001, 0.0005, 0.001), itertools.repeat(0.005))


_MAX_WAIT_CHANNELS = 64  # what one Channel::waitAny takes; more are polled


def _fd_of(o):
    return o if isinstance(o, int) else o.fileno()


def wait(object_list, timeout=None):
    """multiprocessing.connection.wait that also takes dragon Connections and Queues (and a
    Queue's `_reader`). Their channels are waited on with their futexes, with the GIL
    released (those of another node by a wait parked at their homes through dragond); the
    other objects' fds (sentinels, sockets) are polled in between, at most 5 ms apart. A
    connection is also checked each second for writers that were killed."""
    ours = [o for o in object_list if hasattr(o, "_dragon_ready")]
    if not ours:
        return _stdlib_wait(object_list, timeout)
    others = [o for o in object_list if not hasattr(o, "_dragon_ready")]
    end = None if timeout is None else time.monotonic() + timeout
    channels = [o._dragon_channel() for o in ours]
    channels = [c for c in channels if c is not None]
    check_writers = any(getattr(o, "_rrec", None) is not None for o in ours)
    try:
        fds = [_fd_of(o) for o in others]
    except (AttributeError, OSError, ValueError):
        fds = None  # something without a usable fd: let the stdlib's wait report it
    remote = [c for c in channels if c.is_remote]
    if remote and len(ours) == 1 and not others:
        # One object of another node (a Queue, a Pipe end): the wait is parked at its home.
        return ours if remote[0].wait_readable(timeout) else []
    # With channels of another node among them, one wait goes to dragond, which parks it at
    # their homes while this process sleeps on the local ones (at most 63 channels; more are
    # polled, each round of the loop below).
    native = (bool(channels) and fds is not None
              and len(channels) <= (_MAX_WAIT_CHANNELS - 1 if remote else _MAX_WAIT_CHANNELS))
    backoff = _backoff()
    while True:
        ready = [o for o in ours if o._dragon_ready()]
        if others:
            ready += _stdlib_wait(others, 0)
        if ready:
            return ready
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            return []
        if native:
            step = left
            if check_writers:
                step = _WRITER_CHECK if step is None else min(step, _WRITER_CHECK)
            _native.wait_any(channels, fds, step)
            continue
        step = next(backoff) if left is None else min(next(backoff), left)
        if others:
            woke = _stdlib_wait(others, step)
            if woke:
                return [o for o in ours if o._dragon_ready()] + woke
        else:
            time.sleep(step)


_stdlib_wait = None


def _install_wait():
    """Routes multiprocessing.connection.wait (and Pool's copy of it) through ours."""
    global _stdlib_wait
    import multiprocessing.connection as mpconnection
    import sys
    if _stdlib_wait is None:
        _stdlib_wait = mpconnection.wait
        mpconnection.wait = wait
        pool = sys.modules.get("multiprocessing.pool")
        if pool is not None and getattr(pool, "wait", None) is _stdlib_wait:
            pool.wait = wait


__all__ = ["Connection", "Pipe", "wait", "Listener", "Client"]


# --- Listener and Client --------------------------------------------------------------------
#
# A Listener binds the OS socket its address names, as the stdlib's does (the address is
# reserved, a port of 0 is chosen, a taken address is an OSError), and also names an accept
# channel at dragond after the address, with a scoped name that goes when the listening process
# does. A dragon Client looks that name up: if a dragon Listener has the address, it hands the
# listener a request with its reply channel, gets one end of a pair of channels back, and both
# ends then talk over Dragon channels. Otherwise (a stock server, another host) it connects the
# OS socket, and so do stock clients of a dragon Listener, which a thread of the Listener
# accepts. The authkey challenge runs over either, unchanged.

_LISTENER_PREFIX = "mp.listener:"


def _listener_name(node, key):
    # Names are job-wide; addresses are a host's: the node is part of the name.
    return "%s%d:%s" % (_LISTENER_PREFIX, node, key)


def _lookup_nodes():
    """Where a Client looks an address up, in order: its own node, the node its process was
    started from (a process on another node was given that node's addresses: a Listener's of
    its parent...), then the job's other nodes (a manager's server placed on another node by
    its parent). The first node where a dragon Listener has the address wins."""
    here = _runtime.this_node()
    yield here
    origin = os.environ.get("DRAGON_ORIGIN_NODE", "")
    origin = int(origin) if origin.isdigit() else here
    if origin != here:
        yield origin
    from .policy import multi_node
    if multi_node():
        for node, _, _ in _runtime.nodes():
            if node not in (here, origin):
                yield node
class _ThreadFlag(threading.local):
    """True in this thread within a `with` of it (nests)."""
    depth = 0

    def __enter__(self):
        self.depth += 1

    def __exit__(self, *exc):
        self.depth -= 1

    def __bool__(self):
        return self.depth > 0


# Within it, this thread's Listeners and Clients are the OS socket ones (resource_sharer).
_os_sockets = _ThreadFlag()
_stock_mpc_client = _mpc.Client


def _dragon_in_force():
    """True when the start method in force is dragon: the one set, or else the default one
    (``dragon app.py`` makes dragon the default without setting it, so that the script may
    still choose another, as under plain python3)."""
    default = context._default_context
    ctx = default._actual_context or default._default_context
    return ctx is not None and ctx.get_start_method() == "dragon"


def _dragon_selected():
    return not _os_sockets and _dragon_in_force()


def _address_keys(address, family, listening):
    """The names a listening address is known by: one for a Listener, the ones to look up in
    order for a Client. None: no dragon name (the OS socket only)."""
    if family == "AF_UNIX":
        raw = os.fsencode(address)
        if not raw:
            return None
        if raw[:1] != b"\0":
            raw = os.fsencode(os.path.abspath(os.fsdecode(raw)))
        return ["unix:" + raw.hex()]
    if family not in ("AF_INET", "AF_INET6") or not isinstance(address, tuple):
        return None
    fam = getattr(socket, family)
    host, port = address[0], address[1]
    try:
        ip = socket.getaddrinfo(host or None, port, fam, socket.SOCK_STREAM,
                                0, socket.AI_PASSIVE if listening else 0)[0][4][0]
    except (OSError, UnicodeError):
        return None
    key = "%s:%s:%d" % (family, ip, port)
    if listening:
        return [key]
    keys = [key]
    if _is_local(ip):
        keys.append("%s:%s:%d" % (family, "0.0.0.0" if family == "AF_INET" else "::", port))
    return keys


_local_ips = None


def _is_local(ip):
    global _local_ips
    try:
        if ipaddress.ip_address(ip).is_loopback:
            return True
    except ValueError:
        return False
    if _local_ips is None:
        found = set()
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                found.add(info[4][0])
        except OSError:
            pass
        _local_ips = found
    return ip in _local_ips


_StockListener = _mpc.Listener
_REPLY_CACHE = 8  # clients' reply channels a Listener keeps attached


class Listener(_StockListener):
    """multiprocessing.connection.Listener whose connections from dragon Clients are Dragon
    channels (see above). accept() takes both kinds; last_accepted is the peer's socket address
    for a socket connection, and for a dragon one what an unnamed peer has: '' for AF_UNIX,
    (the host it asked for, 0) for AF_INET.

    Two daemon threads serve the address while the Listener is open, as the kernel serves a
    socket's backlog: one accepts on the socket, one answers dragon connection requests. A
    request carries the client's reply channel; the answer is the client's end of a pair of
    channels this process creates (and so keeps alive: a client may send and exit before its
    connection is accepted, as with a socket)."""

    ACCEPT_CAPACITY = 256
    _dragon = False  # stock subclasses reach these methods without __init__

    @staticmethod
    def _use_dragon():
        return True

    def __init__(self, address=None, family=None, backlog=1, authkey=None):
        self._dragon = self._use_dragon()
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")  # before binding: no socket left
        super().__init__(address, family, backlog, authkey)  # binds, or raises what stock does
        if not self._dragon:
            return
        self._family = family or (address and _mpc.address_type(address)) or _mpc.default_family
        self._requests = None
        self._ready = queue.SimpleQueue()  # (connection, last_accepted); None: closed
        self._last = None
        self._closing = False
        keys = _address_keys(self._listener._address, self._family, True)
        if keys is not None:
            try:
                ch = _runtime.new_channel(self.ACCEPT_CAPACITY)
                # This process holds the bound socket, so a dragon Listener that had the address
                # is gone (its process not yet seen out by dragond, or its socket closed
                # without close()): its name is stale, and taken over.
                _runtime.register_name(_listener_name(_runtime.this_node(), keys[0]),
                                       ch.descriptor, scoped=True, replace=True)
            except FileExistsError:
                self._listener.close()
                raise OSError(98, "the address is in use by another dragon Listener: %r"
                              % (self._listener._address,)) from None
            except BaseException:
                self._listener.close()
                raise
            self._requests = ch
            threading.Thread(target=self._serve_requests, args=(ch,),
                              name="dragon-listener-requests", daemon=True).start()
        threading.Thread(target=self._serve_socket, args=(self._listener,),
                          name="dragon-listener-socket", daemon=True).start()

    @property
    def last_accepted(self):
        if not getattr(self, "_dragon", False) or self._listener is None:
            return _StockListener.last_accepted.fget(self)
        return self._last

    def _serve_socket(self, listener):
        while True:
            try:
                s, peer = listener._socket.accept()
            except OSError:
                return  # shut down by close()
            s.setblocking(True)
            self._ready.put((_mpc.Connection(s.detach()), peer))
            if self._closing:
                self._discard_ready()

    def _serve_requests(self, requests):
        try:
            self._answer_requests(requests)
        finally:
            # This thread is the last here to use the channel: only now may its reference go
            # (with the scoped name). Dropped by close() while this thread was still in get(),
            # the channel could be destroyed and its memory reused under the thread's feet.
            try:
                _runtime.detach(requests.descriptor)
            except Exception:
                pass

    def _answer_requests(self, requests):
        replies = collections.OrderedDict()  # clients' reply channels, attached lately
        spare = None
        while True:
            if spare is None:
                try:
                    spare = _channel_pair()  # made ahead: a request waits only for its hand-over
                except Exception:
                    pass
            try:
                reply, rid, host = requests.get()
            except Exception:  # closed (and drained)
                return
            to_client = replies.pop(reply, None)
            if to_client is None:
                try:
                    to_client = _runtime.attach_channel(reply)
                except LookupError:
                    continue  # the client gave up
            replies[reply] = to_client
            if len(replies) > _REPLY_CACHE:  # each keeps a client's pool mapped here
                replies.popitem(last=False)
            if self._closing:
                _refuse(to_client, rid)
                continue
            try:
                mine, theirs = spare if spare is not None else _channel_pair()
            except Exception:
                _refuse(to_client, rid)
                continue
            spare = None
            try:
                if to_client.is_remote:
                    to_client.put((rid, _RemoteEnd(theirs)))
                else:
                    to_client.put((rid, theirs))
            except Exception:
                replies.pop(reply, None)
                mine.close()
                continue
            finally:
                theirs.close()
            self._ready.put((mine, "" if self._family == "AF_UNIX" else (host, 0)))
            if self._closing:
                self._discard_ready()

    def _discard_ready(self):
        """Closes the connections made but not accepted. The mark of a closed Listener (None)
        stays: a serving thread that discards after close() must not take the wake-up of an
        accept() blocked in another thread."""
        closed = False
        while True:
            try:
                item = self._ready.get_nowait()
            except Exception:
                break
            if item is None:
                closed = True
            else:
                item[0].close()
        if closed:
            self._ready.put(None)

    def accept(self):
        if not getattr(self, "_dragon", False):  # also stock subclasses
            return _StockListener.accept(self)
        if self._listener is None:
            raise OSError("listener is closed")
        item = self._ready.get()
        if item is None:
            self._ready.put(None)  # for the next accept() of another thread
            raise OSError("listener is closed")
        c, self._last = item
        if self._authkey:
            try:
                _mpc.deliver_challenge(c, self._authkey)
                _mpc.answer_challenge(c, self._authkey)
            except BaseException:
                c.close()
                raise
        return c

    def close(self):
        if not getattr(self, "_dragon", False):  # also stock subclasses
            return _StockListener.close(self)
        if self._listener is None:
            return
        self._closing = True
        requests, self._requests = self._requests, None
        listener = self._listener
        if requests is not None:
            # No more requests (a client's hand-over now fails: connection refused); the
            # request thread refuses what is queued, then drops this process's reference, with
            # the scoped name (_serve_requests).
            try:
                requests.close()
            except Exception:
                pass
        try:
            listener._socket.shutdown(socket.SHUT_RDWR)  # wakes the socket thread
        except OSError:
            pass
        super().close()
        # Connections made but not accepted are closed: their clients read end of file.
        self._discard_ready()
        self._ready.put(None)


def _refuse(to_client, rid):
    try:
        to_client.put((rid, None))
    except Exception:
        pass


def Client(address, family=None, authkey=None):
    """multiprocessing.connection.Client: Dragon channels to a dragon Listener of the address,
    the OS socket to anything else."""
    family = family or _mpc.address_type(address)
    _mpc._validate_family(family)
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    c = _dragon_connect(address, family)
    if c is None:
        return _stock_mpc_client(address, family, authkey)
    if authkey is not None:
        try:
            _mpc.answer_challenge(c, authkey)
            _mpc.deliver_challenge(c, authkey)
        except BaseException:
            c.close()
            raise
    return c


# While it waits for its answer, a client checks this often that the Listener is still there.
_LIVENESS_INTERVAL = 1.0


class _ConnectState(threading.local):
    """A thread's reply channel (reused by its connects) and the request ids it sent."""
    pid = None
    reply = None
    next_id = 0


_connect_state = _ConnectState()
# name -> (pid, attached accept channel of a dragon Listener), the most recent last. A Listener
# that went away leaves its channel closed (by dragond, or by its close()): such entries are
# dropped, and at most ACCEPT_CACHE are kept, since each keeps its Listener's pool mapped.
_accept_channels = collections.OrderedDict()
ACCEPT_CACHE = 16


def _accept_channel(name, fresh):
    pid = os.getpid()
    for key in [k for k, (p, ch) in _accept_channels.items() if p != pid or ch.is_closed()]:
        del _accept_channels[key]
    found = None if fresh else _accept_channels.get(name)
    if found is not None:
        _accept_channels.move_to_end(name)
        return found[1]
    try:
        ch = _runtime.attach_channel(name)
    except LookupError:
        _accept_channels.pop(name, None)
        return None
    _accept_channels[name] = (pid, ch)
    if len(_accept_channels) > ACCEPT_CACHE:
        _accept_channels.popitem(last=False)
    return ch


def _dragon_connect(address, family):
    keys = _address_keys(address, family, False)
    if not keys:
        return None
    st = _connect_state
    if st.pid != os.getpid():
        st.pid, st.reply, st.next_id = os.getpid(), _runtime.new_channel(4), 0
    refused = ConnectionRefusedError(111, "the dragon Listener of %r closed" % (address,))
    host = address[0] if isinstance(address, tuple) else ""
    # A Listener that was cached but has closed since (or whose process ended: dragond closes
    # its channel) refuses the hand-over at once: then the name is looked up again.
    for fresh in (False, True):
        requests = name = None
        for node in _lookup_nodes():
            for key in keys:
                name = _listener_name(node, key)
                requests = _accept_channel(name, fresh)
                if requests is not None:
                    break
            if requests is not None:
                break
        if requests is None:
            return None
        st.next_id += 1
        rid = st.next_id
        try:
            requests.put((st.reply.descriptor, rid, host))
            break
        except ChannelClosed:
            _accept_channels.pop(name, None)
    else:
        raise refused
    expected = requests.descriptor
    del requests
    while True:
        try:
            got, conn = st.reply.get(True, _LIVENESS_INTERVAL)
        except queue.Empty:  # a queue's get: the Listener has not answered yet
            try:
                alive = _runtime.lookup_name(name) == expected
            except LookupError:
                alive = False
            if not alive and not st.reply.readable():
                _accept_channels.pop(name, None)
                raise refused from None
            continue
        if got == rid:
            break
        if conn is not None:
            conn.close()  # the late answer to a request this thread gave up on
    if conn is None:
        raise refused
    return conn


class _RoutedListener(Listener):
    """What multiprocessing.connection.Listener is once dragon is imported: dragon's when the
    dragon start method is selected, the stock one otherwise."""

    @staticmethod
    def _use_dragon():
        return _dragon_selected()


_RoutedListener.__name__ = _RoutedListener.__qualname__ = "Listener"


class _RoutedXmlListener(_RoutedListener):
    """multiprocessing.connection.XmlListener (a manager's 'xmlrpclib' serializer) once dragon
    is imported: a routed Listener, so that its clients reach it from any node, whose
    connections speak XML-RPC as the stock one's do."""

    def accept(self):
        import xmlrpc.client
        _mpc.xmlrpclib = xmlrpc.client  # what the stock accept() sets for _xml_dumps/_xml_loads
        return _mpc.ConnectionWrapper(_RoutedListener.accept(self), _mpc._xml_dumps,
                                      _mpc._xml_loads)


_RoutedXmlListener.__name__ = _RoutedXmlListener.__qualname__ = "XmlListener"


def _routed_client(address, family=None, authkey=None):
    if _dragon_selected():
        return Client(address, family, authkey)
    return _stock_mpc_client(address, family, authkey)


_routed_client.__name__ = _routed_client.__qualname__ = "Client"
_routed_client.__doc__ = Client.__doc__


def _with_os_sockets(fn):
    def call(*args, **kwargs):
        with _os_sockets:
            return fn(*args, **kwargs)
    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _install_listener_client():
    """multiprocessing.connection's Listener and Client become the routed ones."""
    if _mpc.Listener is not _RoutedListener:
        _mpc.Listener = _RoutedListener
        _mpc.XmlListener = _RoutedXmlListener
        _mpc.Client = _routed_client  # also what the stock XmlClient calls


def _patch_managers(managers):
    """The managers' copies of Listener and Client: routed for the 'pickle' serializer, and
    always dragon's for 'dragon' (the dragon context's Manager). A manager started with the
    dragon context gets its server's address back over a dragon Pipe, not an OS pipe."""
    managers.listener_client["pickle"] = (_RoutedListener, _routed_client)
    managers.listener_client["xmlrpclib"] = (_RoutedXmlListener, _mpc.XmlClient)
    managers.listener_client["dragon"] = (Listener, Client)
    stock_start = managers.BaseManager.start

    def start(self, initializer=None, initargs=()):
        from .context import DragonContext
        if not isinstance(getattr(self, "_ctx", None), DragonContext):
            return stock_start(self, initializer, initargs)
        with _dragon_pipes:
            return stock_start(self, initializer, initargs)

    start.__doc__ = stock_start.__doc__
    managers.BaseManager.start = start
    if _mpc.Pipe is _stock_mpc_pipe:
        _mpc.Pipe = _routed_pipe


# multiprocessing.connection.Pipe is a dragon Pipe only inside a dragon manager's start(): other
# stdlib code that calls it (a stock context's Queue) keeps OS pipes.
_dragon_pipes = _ThreadFlag()
_stock_mpc_pipe = _mpc.Pipe


def _routed_pipe(duplex=True):
    if _dragon_pipes:
        return Pipe(duplex)
    return _stock_mpc_pipe(duplex)


_routed_pipe.__doc__ = _stock_mpc_pipe.__doc__


def _patch_resource_sharer(resource_sharer):
    """resource_sharer passes file descriptors, which only the OS socket can carry: it keeps
    the stock Listener and Client."""
    rs = resource_sharer._ResourceSharer
    rs._start = _with_os_sockets(rs._start)
    rs.stop = _with_os_sockets(rs.stop)
    rs.get_connection = staticmethod(_with_os_sockets(rs.get_connection))
