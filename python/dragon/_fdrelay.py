# SPDX-License-Identifier: MIT
"""File descriptors between nodes: what `multiprocessing.reduction.send_handle` sends over a
Pipe end's `fileno()` to a process on another node arrives there as a relayed fd.

No fd crosses nodes. A Pipe end lent to a child on another node (connection._lend) carries a
link of this process's relay instead of its socket; the child's end gets a socket of its own
when `fileno()` is first called, whose other end the child's relay holds. Each relay reads
what its process writes into such a socket (bytes and SCM_RIGHTS fds) and sends it, through
its peer's channel, to the relay of the other end, which writes it into its own socket. An fd
that comes with it is replaced on the receiving node by a pipe (the original open for reading
only, or writing only) or a socket pair (a socket, or an fd open for both), whose other end
that relay pumps to and from the original on the sending node: data in order, end of file
when the writer closes. A relayed fd is a stream: it cannot seek, and fstat describes the
pipe or socket, not the file.

A relay has a channel of its node and three daemon threads: `_take` takes the channel's
messages into per-fd buffers (it never blocks on a local fd, so a peer's sends always move),
`_write` writes the buffers into the local fds as they take them, `_read` reads the local fds
and sends what they give. Every fd operation is made under `lock` and does not block (after a
poll, or with MSG_DONTWAIT); a send, which waits while the peer's channel is full, is made
without it and gives up once the link is closed. When a child ends, its parent's relay takes
what the child sent first (a process's relay sends what its fds give before it exits,
`_flush`), writes what goes to files and to the socket, then closes the link's fds once their
buffers are written, as the kernel closes an ended process's fds; so a join() that returns
has what the child wrote to a file. A process that ends tells its peers ("gone"); a child
whose parent was killed finds it gone within a second.
"""
import array
import collections
import fcntl
import os
import queue
import select
import socket
import stat
import threading
import time

from . import _runtime

CHUNK = 64 * 1024
PIPE_CHUNK = 4096  # what a pipe that polls writable takes without blocking
MAX_FDS = 253  # SCM_MAX_FD
CAPACITY = 64  # messages a relay's channel holds before a sender waits
BUFFERED_MAX = 64 << 20  # bytes buffered for local fds before the relay stops taking messages
FD_FLOOR = 256  # where the fds this relay makes are put (_high)
CHECK_PEERS_EVERY = 1.0  # seconds: how often a relay looks whether its parent is still there
SEND_SLICE = 0.25  # seconds: a send to a full channel looks this often whether to give up
SETTLE_WAIT = 10.0  # seconds: how long a child's end waits for its files to be written
FLUSH_WAIT = 5.0  # seconds: how long an ending process sends what its fds give


class _Pump:
    """A local fd of a link: `reads`, the relay sends what it gives; `writes`, the relay
    writes the peer's data (`buf`) into it, then ends that direction once `eof` came."""
    __slots__ = ("fd", "reads", "writes", "sock", "regular", "buf", "eof", "closed")

    def __init__(self, fd, reads, writes):
        mode = os.fstat(fd).st_mode
        self.fd, self.reads, self.writes = fd, reads, writes
        self.sock, self.regular = stat.S_ISSOCK(mode), stat.S_ISREG(mode)
        self.buf = collections.deque()
        self.eof = False
        self.closed = False


class _Link:
    def __init__(self, key, sock, creator):
        self.key = key
        self.sock = sock          # the relay's end of the socket pair whose other end is fileno()
        self.creator = creator
        self.reading = True       # sock has not given end of file
        self.sockbuf = collections.deque()  # (bytes, [fds]) for sock
        self.sock_eof = False     # the peer's user closed its end: after sockbuf, pass it on
        self.peer = None          # the other relay's channel, once it is known
        self.parent = not creator  # joined in a child: its peer is the parent's relay
        self.pumps = {}
        self.pending = {}         # ids of fds announced by the peer -> the end the user gets
        self.next_id = 0 if creator else 1  # the creator's fd ids are even, the joiner's odd
        self.outbox = collections.deque()  # messages of the writing thread, sent by the reader
        self.ending = False       # nothing more comes: close once the buffers are written
        self.closed = False


def _mode(fd):
    """What the receiver of `fd` may do with its relayed copy: 'r', 'w' or 'rw'."""
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        return "rw"
    acc = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    return {os.O_RDONLY: "r", os.O_WRONLY: "w"}.get(acc, "rw")


def _own_description(fd, mode):
    """For a pipe, FIFO or terminal: the same file opened anew, non-blocking (an open file
    description of the relay's own: the user's process may read or write the original too, so
    a poll that said ready may be stale, and a read or write of it could block). A socket (its
    calls use MSG_DONTWAIT) and a regular file (never waits) are kept."""
    st = os.fstat(fd)
    if stat.S_ISSOCK(st.st_mode) or stat.S_ISREG(st.st_mode):
        return fd
    flags = {"r": os.O_RDONLY, "w": os.O_WRONLY}.get(mode, os.O_RDWR)
    try:
        own = os.open("/proc/self/fd/%d" % fd, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return fd  # as it is: a read or write after poll said ready
    _close(fd)
    return _high(own)


def _pair(kind):
    """A pipe (read end, write end) or a socket pair, both fds above 255."""
    if kind == "sock":
        a, b = socket.socketpair()
        return _high(a.detach()), _high(b.detach())
    return tuple(_high(fd) for fd in os.pipe2(os.O_CLOEXEC))


def _high(fd):
    """`fd` moved to a number above 255 (if the limit allows): these threads make fds while the
    process's own threads may take low numbers they found free (dup2 onto them, as a test of
    CPython's suite does), which would replace ours."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    except OSError:
        return fd
    os.close(fd)
    return high


def _ready(fd, events):
    p = select.poll()
    p.register(fd, events)
    try:
        return bool(p.poll(0))
    except OSError:
        return True  # the operation tells what is wrong with it


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


class _Relay:
    def __init__(self):
        from multiprocessing import util
        self.channel = _runtime.new_channel(CAPACITY)
        self.descriptor = self.channel.descriptor
        self.links = {}
        self.lock = threading.Lock()       # the links' state and every fd operation
        self.changed = threading.Condition(self.lock)
        self.in_lock = threading.Lock()    # messages are taken and handled in order
        self.send_lock = threading.Lock()  # local fds are read and what they give sent in order
        self.buffered = 0
        self.spares = {}  # kind ("pipe", "sock") -> a pair made ahead (join)
        self.pid = os.getpid()
        self.wakes = [tuple(_high(fd) for fd in os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK))
                      for _ in range(2)]  # (read, write) of the reader's and the writer's
        for target in (self._take, self._read, self._write):
            threading.Thread(target=target, daemon=True,
                             name="dragon-fd-relay" + target.__name__).start()
        # Before the process's end is reported, after its exit's joins of children (a negative
        # priority: a child still working with a relayed fd at its parent's exit keeps it).
        util.Finalize(None, self._flush, exitpriority=-100)

    # -- links ----------------------------------------------------------------------------

    def lend(self, sock_fd):
        """A link for the Pipe end whose socket is `sock_fd` (a dup this relay owns), lent to
        a child on another node; its key, which the child joins with."""
        key = int.from_bytes(os.urandom(8), "little") >> 1
        fd = _high(sock_fd)
        blocking = os.get_blocking(fd)  # of the user's socket too: kept as it is
        sock = socket.socket(fileno=fd)
        if os.get_blocking(fd) != blocking:
            os.set_blocking(fd, blocking)
        with self.lock:
            self.links[key] = _Link(key, sock, creator=True)
        return key

    def join(self, key, peer_descriptor):
        """Joins the link `key` of the relay `peer_descriptor` (in a child); the fd of the
        user's end of its socket."""
        with self.lock:
            if key in self.links:
                raise OSError("this Pipe end's relayed socket is in use already")
        # The taking thread asks parent_process().is_alive(), whose sentinel makes its pipe
        # and its connection on first use: made here, in the user's thread, they cannot take
        # numbers the user's thread found free a moment before (see Connection.fileno).
        from multiprocessing import process
        parent = process.parent_process()
        if parent is not None:
            parent.is_alive()
        a, b = socket.socketpair()
        ours, theirs = socket.socket(fileno=_high(a.detach())), b.detach()
        link = _Link(key, ours, creator=False)
        try:
            link.peer = _runtime.attach_channel(peer_descriptor)
            with self.send_lock:
                with self.lock:
                    if key in self.links:
                        raise OSError("this Pipe end's relayed socket is in use already")
                    self.links[key] = link
                self._send(link, ("join", key, self.descriptor))
        except BaseException:
            with self.lock:
                if self.links.get(key) is link:
                    del self.links[key]
            ours.close()
            os.close(theirs)
            raise
        with self.lock:
            # One pipe and one socket pair made ahead, here in the user's thread, for the first
            # fd that comes: made later by the taking thread, their first (low) numbers could
            # be taken by the user's dup2 onto numbers it found free (CPython's
            # test_large_fd_transfer fills every free fd below 256 right after fileno()).
            for kind in ("pipe", "sock"):
                if kind not in self.spares:
                    self.spares[kind] = _pair(kind)
        self._wake()
        return theirs

    def settle(self, key):
        """The child of link `key` has ended: what it sent is taken, what goes to files and to
        the socket written (for up to SETTLE_WAIT), and the link's fds are closed once their
        buffers are written (its socket, the originals its relayed fds stood for)."""
        with self.in_lock:
            # What the child sent is in the channel by now: at most what it holds now is
            # taken (another peer's steady sends cannot keep this going).
            self._drain(limit=False, count=self.channel.size())
        deadline = time.monotonic() + SETTLE_WAIT
        with self.lock:
            link = self.links.get(key)
            if link is None:
                return
            link.ending = True
            self._wake()
            while not link.closed and (link.sockbuf or any(
                    p.buf for p in link.pumps.values() if p.regular and p.writes)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            # What is written by now is ended here, not later by the writing thread: a link
            # whose buffers are empty is closed when settle returns, as its caller expects.
            if not link.closed:
                try:
                    self._write_link(link)
                except OSError:
                    pass  # the writing thread meets it again and ends the link

    # -- taking messages ------------------------------------------------------------------

    def _take(self):
        from multiprocessing import process
        while True:
            try:
                with self.lock:
                    if self.buffered > BUFFERED_MAX:
                        self.changed.wait(CHECK_PEERS_EVERY)
                if self.buffered <= BUFFERED_MAX:
                    self.channel.wait_readable(CHECK_PEERS_EVERY)
                    with self.in_lock:
                        self._drain(limit=True)
                parent = process.parent_process()
                if parent is not None and any(l.parent for l in list(self.links.values())):
                    if not parent.is_alive():
                        with self.lock:
                            for link in self.links.values():
                                if link.parent:
                                    self._end_link(link)
            except Exception:
                if not self._alive():
                    return  # the runtime went (the process is ending)
                time.sleep(0.01)

    def _alive(self):
        try:
            self.channel.readable()
            return True
        except Exception:
            return False

    def _drain(self, limit, count=None):
        failures = 0
        while (not limit or self.buffered <= BUFFERED_MAX) and (count is None or count > 0):
            if count is not None:
                count -= 1
            try:
                message = self.channel.get(block=False)
            except queue.Empty:
                return
            except Exception:
                failures += 1
                if failures > 100 or not self._alive():
                    raise
                continue  # a message that does not decode: dropped, the next ones still come
            try:
                peer = None
                if message[0] == "join":  # attached before the lock: a request to dragond
                    peer = _runtime.attach_channel(message[2])
                with self.lock:
                    self._handle(message, peer)
            except Exception:
                pass  # a malformed message: nothing else is hurt

    def _handle(self, message, peer=None):
        kind, key = message[0], message[1]
        link = self.links.get(key)
        if link is None or link.closed:
            return  # settled, or never ours
        if kind == "join":
            link.peer = peer
        elif kind == "fd":
            _, _, fid, mode = message
            if link.ending:
                return
            kind = "sock" if mode == "rw" else "pipe"
            a, b = self.spares.pop(kind, None) or _pair(kind)
            # A pipe is (read end, write end): the user writes ('w') or reads ('r').
            user, kept = (b, a) if mode == "w" else (a, b)
            os.set_blocking(kept, False)  # ours alone
            link.pumps[fid] = _Pump(kept, "w" in mode, "r" in mode)
            link.pending[fid] = user
        elif kind == "bytes":
            _, _, data, ids = message
            fds = [link.pending.pop(i) for i in ids if i in link.pending]
            link.sockbuf.append((bytes(data), fds))
            self.buffered += len(data)
        elif kind == "data":
            pump = link.pumps.get(message[2])
            if pump is not None and pump.writes and not pump.eof:
                pump.buf.append(bytes(message[3]))
                self.buffered += len(message[3])
        elif kind == "eof":
            pump = link.pumps.get(message[2])
            if pump is not None:
                pump.eof = True
        elif kind == "stop":
            pump = link.pumps.get(message[2])
            if pump is not None:
                pump.reads = False
                if not pump.writes:
                    self._close_pump(link, message[2])
        elif kind == "shut":
            link.sock_eof = True
        elif kind == "gone":
            link.ending = True
        self._wake()

    # -- waiting on local fds ---------------------------------------------------------------

    def _sleep(self, which, watched):
        """Waits until an fd of watched() (listed under lock, as (fd, events)) is ready or
        wake pipe `which` (0: the reader's, 1: the writer's) is written. What is ready is
        looked at again under lock: an fd listed here may have been closed since."""
        p = select.poll()
        p.register(self.wakes[which][0], select.POLLIN)
        with self.lock:
            for fd, events in watched():
                p.register(fd, events)
        try:
            p.poll()
        except OSError:
            pass
        _clear(self.wakes[which][0])

    def _to_write(self):
        for link in self.links.values():
            if link.sockbuf:
                yield link.sock.fileno(), select.POLLOUT
            for pump in link.pumps.values():
                if pump.buf and not pump.closed:
                    yield pump.fd, select.POLLOUT

    def _to_read(self):
        for link in self.links.values():
            if link.peer is None or link.ending:
                continue  # what the user sends waits in the socket until the peer joins
            if link.reading:
                yield link.sock.fileno(), select.POLLIN
            for pump in link.pumps.values():
                if pump.reads and not pump.closed:
                    yield pump.fd, select.POLLIN

    # -- writing local fds ----------------------------------------------------------------

    def _write(self):
        while True:
            self._sleep(1, self._to_write)
            try:
                with self.lock:
                    for link in list(self.links.values()):
                        self._write_link(link)
                    self.changed.notify_all()
            except Exception:
                pass

    def _write_link(self, link):
        """Writes what the link's fds take now, and ends what is done (called under lock)."""
        while link.sockbuf and _ready(link.sock.fileno(), select.POLLOUT):
            data, fds = link.sockbuf[0]
            try:
                if fds:
                    n = link.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", fds))],
                                          socket.MSG_DONTWAIT)
                    for fd in fds:
                        _close(fd)
                else:
                    n = link.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                n = len(data)  # the user's end is closed: as with a socket, what was sent is lost
                for fd in fds:
                    _close(fd)
            self.buffered -= n
            if n < len(data):
                link.sockbuf[0] = (data[n:], [])
            else:
                link.sockbuf.popleft()
        if link.sock_eof and not link.sockbuf and not link.creator:
            link.sock_eof = False
            try:
                link.sock.shutdown(socket.SHUT_WR)  # the child's recv_handle sees end of file
            except OSError:
                pass
        for fid, pump in list(link.pumps.items()):
            while pump.buf and not pump.closed:
                if not pump.regular and not _ready(pump.fd, select.POLLOUT):
                    break
                data = pump.buf[0]
                try:
                    if pump.sock:
                        n = _send_fd(pump.fd, data[:CHUNK])
                    else:
                        n = os.write(pump.fd, data if pump.regular else data[:PIPE_CHUNK])
                except BlockingIOError:
                    break
                except OSError:
                    self.buffered -= sum(len(b) for b in pump.buf)
                    pump.buf.clear()
                    pump.writes = False  # its reader has gone: what was sent is lost
                    # The sender stops reading the original and lets it go, so that its writer
                    # sees a broken pipe as it would if this reader were its last.
                    link.outbox.append(("stop", link.key, fid))
                    self._wake()
                    break
                self.buffered -= n
                if n < len(data):
                    pump.buf[0] = data[n:]
                else:
                    pump.buf.popleft()
            if pump.writes and pump.eof and not pump.buf:
                pump.writes = False
                if pump.sock:
                    _shutdown_write(pump.fd)
            if not pump.reads and not pump.writes or link.ending and not pump.buf:
                self._close_pump(link, fid)
        if link.ending and not link.sockbuf and not link.pumps:
            self._close_link(link)

    # -- reading local fds ----------------------------------------------------------------

    def _read(self):
        while True:
            self._sleep(0, self._to_read)
            try:
                with self.send_lock:
                    self._forward(None)
            except Exception:
                if not self._alive():
                    return

    def _forward(self, deadline):
        """Sends what the links' fds give now: one read of each ready fd, or (deadline) until
        none is ready or the deadline passes. Called with send_lock held."""
        budget = True
        while budget:
            budget = False
            for link in list(self.links.values()):
                if link.peer is None or link.ending or link.closed:
                    continue
                try:
                    with self.lock:
                        messages = self._read_link(link)
                    for m in messages:
                        self._send(link, m, deadline)
                    budget = budget or bool(messages)
                except Exception:
                    # Its peer is gone (ended, its node lost): so is the link, as a socket
                    # whose peer closed.
                    with self.lock:
                        self._end_link(link)
            if deadline is None or time.monotonic() > deadline:
                return

    def _read_link(self, link):
        """What the link's ready fds give now, as messages for the peer (called under lock)."""
        messages = list(link.outbox)
        link.outbox.clear()
        if link.reading and _ready(link.sock.fileno(), select.POLLIN):
            messages += self._read_socket(link)
        for fid, pump in list(link.pumps.items()):
            if not pump.reads or pump.closed or not _ready(pump.fd, select.POLLIN):
                continue
            try:
                # A socket the user may read too: never a read that waits (under lock).
                data = _recv_fd(pump.fd) if pump.sock else os.read(pump.fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                messages.append(("data", link.key, fid, data))
                continue
            messages.append(("eof", link.key, fid))
            pump.reads = False
            if not pump.writes:
                self._close_pump(link, fid)
        return messages

    def _read_socket(self, link):
        try:
            data, anc, _, _ = link.sock.recvmsg(
                CHUNK, socket.CMSG_SPACE(MAX_FDS * 4),
                socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return []
        except OSError:
            data, anc = b"", []
        fds = array.array("i")
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        if not data and not fds:
            link.reading = False  # the user's end closed
            return [("shut", link.key)]
        messages, ids = [], []
        for fd in fds:
            fd = _high(fd)
            try:
                mode = _mode(fd)
                fd = _own_description(fd, mode)
                pump = _Pump(fd, "r" in mode, "w" in mode)  # the receiver's the other way round
            except OSError:
                _close(fd)
                continue
            fid = link.next_id
            link.next_id += 2
            link.pumps[fid] = pump
            messages.append(("fd", link.key, fid, mode))
            ids.append(fid)
        messages.append(("bytes", link.key, data, ids))
        return messages

    def _send(self, link, message, deadline=None):
        """Puts `message` into the peer's channel, waiting while it is full until the link is
        closed or the deadline (monotonic) passes (then the message is dropped)."""
        while not link.closed and not link.ending:
            slice_ = SEND_SLICE
            if deadline is not None:
                slice_ = min(slice_, deadline - time.monotonic())
                if slice_ <= 0:
                    return
            try:
                link.peer.put(message, timeout=slice_)
                return
            except queue.Full:
                continue

    def _flush(self):
        """At this process's end: what its fds give now goes to the peers (for up to
        FLUSH_WAIT), then each peer is told this end is gone."""
        if os.getpid() != self.pid:
            return
        deadline = time.monotonic() + FLUSH_WAIT
        if not self.send_lock.acquire(timeout=FLUSH_WAIT):
            return
        try:
            self._forward(deadline)
            for link in list(self.links.values()):
                if link.peer is not None and not link.closed and not link.ending:
                    try:
                        link.peer.put(("gone", link.key), timeout=max(0.0, deadline -
                                                                      time.monotonic()))
                    except Exception:
                        pass
        finally:
            self.send_lock.release()

    # -- ending ---------------------------------------------------------------------------

    def _end_link(self, link):
        """Nothing more goes to or comes from the link's peer: its fds close once their
        buffers are written (called under lock)."""
        link.ending = True
        self._wake()

    def _close_pump(self, link, fid):
        pump = link.pumps.pop(fid)
        pump.closed = True
        self.buffered -= sum(len(b) for b in pump.buf)
        _close(pump.fd)

    def _close_link(self, link):
        """Closes a link's fds (called under lock)."""
        for fid in list(link.pumps):
            self._close_pump(link, fid)
        for fd in link.pending.values():
            _close(fd)
        link.pending.clear()
        for _, fds in link.sockbuf:
            for fd in fds:
                _close(fd)
        self.buffered -= sum(len(d) for d, _ in link.sockbuf)
        link.sockbuf.clear()
        link.sock.close()
        link.closed = True
        self.links.pop(link.key, None)
        self.changed.notify_all()

    def _wake(self):
        for _, w in self.wakes:
            try:
                os.write(w, b"x")
            except OSError:
                pass  # full: it is awake already

    def _after_fork(self):
        """In a forked child: this process's copies of the relay's fds are closed (a reader
        of a relayed pipe must not wait for them)."""
        for link in self.links.values():
            for pump in link.pumps.values():
                _close(pump.fd)
            for fd in link.pending.values():
                _close(fd)
            for _, fds in link.sockbuf:
                for fd in fds:
                    _close(fd)
            try:
                link.sock.close()
            except OSError:
                pass
        for pair in list(self.spares.values()) + self.wakes:
            for fd in pair:
                _close(fd)


def _on_socket(fd, call):
    """call(socket) on a socket object over `fd`, which stays open and in its blocking mode
    (the constructor may change it under socket.setdefaulttimeout)."""
    blocking = os.get_blocking(fd)
    s = socket.socket(fileno=fd)
    try:
        return call(s)
    finally:
        s.detach()
        if os.get_blocking(fd) != blocking:
            os.set_blocking(fd, blocking)


def _send_fd(fd, data):
    return _on_socket(fd, lambda s: s.send(data, socket.MSG_DONTWAIT))


def _recv_fd(fd):
    return _on_socket(fd, lambda s: s.recv(CHUNK, socket.MSG_DONTWAIT))


def _shutdown_write(fd):
    def shut(s):
        try:
            s.shutdown(socket.SHUT_WR)  # its reader sees end of file
        except OSError:
            pass
    _on_socket(fd, shut)


def _clear(fd):
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


_relay = None
_relay_lock = threading.Lock()


def relay():
    """This process's relay, started on first use."""
    global _relay
    with _relay_lock:
        if _relay is None or _relay.pid != os.getpid():
            _relay = _Relay()
        return _relay


def _after_fork_in_child():
    global _relay, _relay_lock
    if _relay is not None:
        try:
            _relay._after_fork()
        except Exception:
            pass
    _relay = None  # its threads stayed in the parent
    _relay_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
