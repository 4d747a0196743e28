# SPDX-License-Identifier: MIT
"""Pipe on two Dragon channels (one per direction; one for a one-way pipe)."""
import atexit
import itertools
import os
import socket
import time

from multiprocessing import context

from . import _runtime
from ._native import ChannelClosed
from ._pickling import dumps_inband

PIPE_CAPACITY = 1024


class Connection:
    """One end of a Pipe. The channel it sends on carries a count of the handles that can
    write to it, in every process (a dragon semaphore): taken when a handle is made or pickled
    for a child, given back when one is closed or its process exits. When the last writer goes
    the channel is closed, so the reader's recv() raises EOFError, as with an OS pipe.

    Each end also has a Unix socket of a socketpair (`fileno()`), lent to a child started with
    it, over which multiprocessing.reduction.send_handle/recv_handle pass file descriptors.
    Messages never travel on it: readiness is the channel's (connection.wait, poll)."""

    def __init__(self, recv_channel, send_channel, readable=True, writable=True, writers=None,
                 fd=None):
        self._recv = recv_channel
        self._send = send_channel
        self._readable = readable
        self._writable = writable
        self._writers = writers
        self._fd = fd
        self._closed = False

    def __getstate__(self):
        # Descriptors are valid in any process of the runtime: a Connection may travel through
        # a Queue or another Connection, not only to a child at its start.
        if self._send is not None and self._writers is not None and not self._closed:
            self._writers.release()  # the child's handle, counted before the parent can close
        fd = None
        popen = context.get_spawning_popen()
        if popen is not None and self._fd is not None and not self._closed:
            fd = popen.duplicate_for_child(self._fd)  # only a child at its start gets the socket
        return (self._recv.descriptor if self._recv else None,
                self._send.descriptor if self._send else None, self._readable, self._writable,
                self._writers, fd)

    def __setstate__(self, state):
        r, s, self._readable, self._writable, self._writers, self._fd = state
        self._recv = _runtime.attach_channel(r) if r else None
        self._send = _runtime.attach_channel(s) if s else None
        self._closed = False
        if self._send is not None:
            atexit.register(self.close)  # a process that exits gives back its handle

    def _close_fd(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    __del__ = _close_fd

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
        if self._fd is None:
            raise OSError("this end of a dragon Pipe reached this process through a queue or "
                          "pipe, not at a process start: it has no file descriptor here")
        return self._fd

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._close_fd()
        if self._send is None or self._writers is None:
            return
        try:
            self._writers.acquire(False)
            if self._writers.get_value() == 0:
                self._send.close()  # the last writer: the reader sees end of file
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
        self._send.send(m[offset:offset + size], None)

    def send(self, obj):
        self._check(False)
        self._send.send(dumps_inband(obj), None)

    def _recv_message(self, timeout=None):
        try:
            return self._recv.recv(timeout)
        except ChannelClosed:
            raise EOFError from None

    def recv_bytes(self, maxlength=None):
        self._check(True)
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._recv_message()
        if maxlength is not None and len(data) > maxlength:
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
        try:
            return self._recv.recv_object(None)  # unpickled from the message in place
        except ChannelClosed:
            raise EOFError from None

    def _dragon_ready(self):
        return self._recv is not None and (self._recv.readable() or self._recv.is_closed())

    def poll(self, timeout=0.0):
        self._check(True)
        return bool(wait([self], timeout))

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def _writer_count():
    from .synchronize import Semaphore
    return Semaphore(1)


def Pipe(duplex=True):
    s1, s2 = socket.socketpair()
    f1, f2 = s1.detach(), s2.detach()
    a = _runtime.new_channel(PIPE_CAPACITY)
    wa = _writer_count()
    if duplex:
        b = _runtime.new_channel(PIPE_CAPACITY)
        wb = _writer_count()
        return Connection(a, b, writers=wb, fd=f1), Connection(b, a, writers=wa, fd=f2)
    return (Connection(a, None, True, False, fd=f1),
            Connection(None, a, False, True, writers=wa, fd=f2))


def _backoff():
    return itertools.chain((0.0001, 0.0005, 0.001), itertools.repeat(0.005))


def wait(object_list, timeout=None):
    """multiprocessing.connection.wait that also takes dragon Connections and Queues (and a
    Queue's `_reader`): those are checked between bounded waits on the rest (fds: sentinels,
    sockets), which still wake it at once."""
    ours = [o for o in object_list if hasattr(o, "_dragon_ready")]
    if not ours:
        return _stdlib_wait(object_list, timeout)
    others = [o for o in object_list if not hasattr(o, "_dragon_ready")]
    end = None if timeout is None else time.monotonic() + timeout
    for delay in _backoff():
        ready = [o for o in ours if o._dragon_ready()]
        if others:
            ready += _stdlib_wait(others, 0)
        if ready:
            return ready
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            return []
        step = delay if left is None else min(delay, left)
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


__all__ = ["Connection", "Pipe", "wait"]
