# SPDX-License-Identifier: MIT
"""Pipe on two Dragon channels (one per direction; one for a one-way pipe)."""
import io
import itertools
import time

from multiprocessing import context
from multiprocessing.reduction import ForkingPickler

from . import _runtime
from ._native import ChannelClosed

PIPE_CAPACITY = 1024


class Connection:
    def __init__(self, recv_channel, send_channel, readable=True, writable=True):
        self._recv = recv_channel
        self._send = send_channel
        self._readable = readable
        self._writable = writable
        self._closed = False

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._recv.descriptor if self._recv else None,
                self._send.descriptor if self._send else None, self._readable, self._writable)

    def __setstate__(self, state):
        r, s, self._readable, self._writable = state
        self._recv = _runtime.attach_channel(r) if r else None
        self._send = _runtime.attach_channel(s) if s else None
        self._closed = False

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
        raise OSError("a dragon Connection has no file descriptor")

    def close(self):
        if not self._closed:
            self._closed = True
            if self._send is not None and self._writable:
                try:
                    self._send.close()  # the peer's recv now ends with EOFError
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
        self._send.send(ForkingPickler.dumps(obj), None)

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
        return ForkingPickler.loads(self._recv_message())

    def poll(self, timeout=0.0):
        self._check(True)
        if self._recv.readable() or self._recv.is_closed():
            return True
        if timeout is not None and timeout <= 0:
            return False
        end = None if timeout is None else time.monotonic() + timeout
        # Bounded sleeps until the channel is readable (a wait-any over channels is the next
        # step: libdragon has it, the Python layer does not expose it yet).
        for delay in itertools.chain((0.0001, 0.0005, 0.001), itertools.repeat(0.005)):
            if self._recv.readable() or self._recv.is_closed():
                return True
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(delay if end is None else max(0, min(delay, end - time.monotonic())))

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def Pipe(duplex=True):
    a = _runtime.new_channel(PIPE_CAPACITY)
    if duplex:
        b = _runtime.new_channel(PIPE_CAPACITY)
        return Connection(a, b), Connection(b, a)
    return Connection(a, None, True, False), Connection(None, a, False, True)


__all__ = ["Connection", "Pipe", "io"]
