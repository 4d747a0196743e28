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

A relay runs two daemon threads: one takes its channel's messages and writes them into local
fds (`_in`), one waits on its local fds and sends what they give (`_out`). When a child ends,
its parent's relay first handles what the child sent (dragond reports the end after the
child's sends are done: a process's relay sends all it can read before it exits, see
`_flush`), then closes the link's fds, as the kernel closes an ended process's fds; so a
join() that returns has what the child wrote. A process that ends tells its peers ("gone");
a child whose parent was killed finds it gone within a second.
"""
import array
import fcntl
import os
import select
import socket
import stat
import threading

from . import _runtime

CHUNK = 64 * 1024
MAX_FDS = 253  # SCM_MAX_FD
CAPACITY = 64  # messages a relay's channel holds before a sender waits
FD_FLOOR = 256  # where the fds this relay makes are put (_high)
CHECK_PEERS_EVERY = 1.0  # seconds: how often a relay looks whether its parent is still there


class _Pump:
    """A local fd of a link: `reads`, the relay sends what it gives; `writes`, the relay
    writes the peer's data into it."""
    __slots__ = ("fd", "reads", "writes", "sock")

    def __init__(self, fd, reads, writes, sock):
        self.fd, self.reads, self.writes, self.sock = fd, reads, writes, sock


class _Link:
    def __init__(self, key, sock, creator):
        self.key = key
        self.sock = sock        # the relay's end of the socket pair whose other end is fileno()
        self.reading = True     # sock has not given end of file
        self.peer = None        # the other relay's channel, once it is known
        self.parent = not creator  # joined in a child: its peer is the parent's relay
        self.pumps = {}
        self.pending = {}       # ids of fds announced by the peer -> the end the user gets
        self.next_id = 0 if creator else 1  # the creator's fd ids are even, the joiner's odd


def _mode(fd):
    """What the receiver of `fd` may do with its relayed copy: 'r', 'w' or 'rw'."""
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        return "rw"
    acc = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    return {os.O_RDONLY: "r", os.O_WRONLY: "w"}.get(acc, "rw")


def _high(fd):
    """`fd` moved to a number above 255 (if the limit allows): this thread makes fds while the
    process's own threads may take low numbers they found free (dup2 onto them, as a test of
    CPython's suite does), which would replace ours."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    except OSError:
        return fd
    os.close(fd)
    return high


def _ready(fd):
    p = select.poll()
    p.register(fd, select.POLLIN)
    try:
        return bool(p.poll(0))
    except OSError:
        return True  # a read tells what is wrong with it


class _Relay:
    def __init__(self):
        from multiprocessing import util
        self.channel = _runtime.new_channel(CAPACITY)
        self.descriptor = self.channel.descriptor
        self.links = {}
        self.in_lock = threading.Lock()   # messages are taken and handled in order
        self.out_lock = threading.Lock()  # local fds are read and what they give sent in order
        self.pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        for target in (self._in, self._out):
            threading.Thread(target=target, daemon=True,
                             name="dragon-fd-relay" + target.__name__).start()
        # Before the process's end is reported: what it wrote reaches its peers first.
        # After the exit's joins of children (a negative priority), so a child still working
        # with a relayed fd at its parent's exit keeps it.
        util.Finalize(None, self._flush, exitpriority=-100)

    # -- links ----------------------------------------------------------------------------

    def lend(self, sock_fd):
        """A link for the Pipe end whose socket is `sock_fd` (a dup this relay owns), lent to
        a child on another node; its key, which the child joins with."""
        key = int.from_bytes(os.urandom(8), "little") >> 1
        with self.out_lock:
            self.links[key] = _Link(key, socket.socket(fileno=sock_fd), creator=True)
        return key

    def join(self, key, peer_descriptor):
        """Joins the link `key` of the relay `peer_descriptor` (in a child); the fd of the
        user's end of its socket."""
        ours, theirs = socket.socketpair()
        peer = _runtime.attach_channel(peer_descriptor)
        link = _Link(key, ours, creator=False)
        link.peer = peer
        with self.out_lock:
            self.links[key] = link
            peer.put(("join", key, self.descriptor))
        self._wake()
        return theirs.detach()

    def settle(self, key):
        """The child of link `key` has ended: what it sent is handled, then the link's fds are
        closed (its socket, the originals its relayed fds stood for)."""
        with self.in_lock:
            self._drain()
            with self.out_lock:
                link = self.links.pop(key, None)
                if link is not None:
                    self._close_link(link)
        self._wake()

    # -- the thread that takes messages ---------------------------------------------------

    def _in(self):
        from multiprocessing import process
        while True:
            try:
                self.channel.wait_readable(CHECK_PEERS_EVERY)
                with self.in_lock:
                    self._drain()
                parent = process.parent_process()
                if parent is not None and any(l.parent for l in list(self.links.values())):
                    if not parent.is_alive():
                        with self.out_lock:
                            for link in [l for l in self.links.values() if l.parent]:
                                self._close_link(self.links.pop(link.key))
                        self._wake()
            except Exception:
                return  # the runtime went (the process is ending)

    def _drain(self):
        import queue
        while True:
            try:
                message = self.channel.get(block=False)
            except queue.Empty:
                return
            try:
                self._handle(message)
            except Exception:
                pass  # a malformed message, or a local fd that went: nothing else is hurt

    def _handle(self, message):
        kind, key = message[0], message[1]
        link = self.links.get(key)
        if link is None:
            return  # settled, or never ours
        if kind == "join":
            link.peer = _runtime.attach_channel(message[2])
            self._wake()  # its socket is read from now on
        elif kind == "fd":
            _, _, fid, mode = message
            if mode == "rw":
                a, b = socket.socketpair()
                user, kept = _high(a.detach()), _high(b.detach())
            else:
                r, w = (_high(fd) for fd in os.pipe2(os.O_CLOEXEC))
                user, kept = (w, r) if mode == "w" else (r, w)
            with self.out_lock:
                link.pumps[fid] = _Pump(kept, "w" in mode, "r" in mode, mode == "rw")
                link.pending[fid] = user
            self._wake()
        elif kind == "bytes":
            _, _, data, ids = message
            fds = [link.pending.pop(i) for i in ids if i in link.pending]
            try:
                if fds:
                    link.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", fds))])
                else:
                    link.sock.sendall(data)
            except OSError:
                pass  # the user's end is closed: as with a socket, what was sent is lost
            finally:
                for fd in fds:
                    os.close(fd)
        elif kind == "data":
            pump = link.pumps.get(message[2])
            if pump is not None and pump.writes:
                try:
                    view = memoryview(message[3])
                    while view:
                        view = view[os.write(pump.fd, view):]
                except OSError:
                    self._done(link, message[2], writes=True)
        elif kind == "eof":
            pump = link.pumps.get(message[2])
            if pump is not None and pump.sock:
                s = socket.socket(fileno=pump.fd)
                try:
                    s.shutdown(socket.SHUT_WR)  # its reader sees end of file
                except OSError:
                    pass
                finally:
                    s.detach()
            self._done(link, message[2], writes=True)
        elif kind == "gone":
            with self.out_lock:
                self.links.pop(key, None)
                self._close_link(link)
            self._wake()

    def _done(self, link, fid, reads=False, writes=False):
        """One direction of a pump is over; its fd closes when both are."""
        with self.out_lock:
            pump = link.pumps.get(fid)
            if pump is None:
                return
            pump.reads = pump.reads and not reads
            pump.writes = pump.writes and not writes
            if not pump.reads and not pump.writes:
                del link.pumps[fid]
                os.close(pump.fd)
        self._wake()

    # -- the thread that reads local fds --------------------------------------------------

    def _watched(self):
        with self.out_lock:
            fds = [self.wake_r]
            for link in self.links.values():
                if link.peer is None:
                    continue  # what the user sends waits in the socket until the peer joins
                if link.reading:
                    fds.append(link.sock.fileno())
                fds.extend(p.fd for p in link.pumps.values() if p.reads)
            return fds

    def _out(self):
        while True:
            p = select.poll()
            for fd in self._watched():
                p.register(fd, select.POLLIN)
            try:
                p.poll()  # what is ready is read under the lock below, after a fresh look
            except OSError:
                pass
            try:
                os.read(self.wake_r, 4096)
            except OSError:
                pass
            try:
                with self.out_lock:
                    self._forward(once=True)
            except Exception:
                return  # the runtime went (the process is ending)

    def _forward(self, once):
        """Sends what the links' fds give now (once: one read of each ready fd; else until
        none is ready)."""
        progress = True
        while progress:
            progress = False
            for link in list(self.links.values()):
                if link.peer is None:
                    continue
                try:
                    while link.reading and _ready(link.sock.fileno()):
                        self._forward_socket(link)
                        progress = True
                        if once:
                            break
                    for fid, pump in list(link.pumps.items()):
                        while pump.reads and _ready(pump.fd):
                            self._forward_pump(link, fid, pump)
                            progress = True
                            if once:
                                break
                except Exception:
                    # Its peer is gone (ended, its node lost): so is the link, as a socket
                    # whose peer closed.
                    self.links.pop(link.key, None)
                    self._close_link(link)
            if once:
                return

    def _forward_socket(self, link):
        try:
            data, anc, _, _ = link.sock.recvmsg(CHUNK, socket.CMSG_SPACE(MAX_FDS * 4),
                                                socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        fds = array.array("i")
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        if not data and not fds:
            link.reading = False  # the user's end closed; the peer's stays open
            return
        ids = []
        for fd in fds:
            mode = _mode(fd)
            fid = link.next_id
            link.next_id += 2
            # The receiver writes what its user writes into it ('w'), reads what this one
            # gives ('r'), or both; here it is the other way round.
            link.pumps[fid] = _Pump(fd, "r" in mode, "w" in mode,
                                    stat.S_ISSOCK(os.fstat(fd).st_mode))
            link.peer.put(("fd", link.key, fid, mode))
            ids.append(fid)
        link.peer.put(("bytes", link.key, data, ids))

    def _forward_pump(self, link, fid, pump):
        try:
            data = os.read(pump.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            link.peer.put(("data", link.key, fid, data))
            return
        link.peer.put(("eof", link.key, fid))
        pump.reads = False
        if not pump.writes:
            del link.pumps[fid]
            os.close(pump.fd)

    def _flush(self):
        """At this process's end: what its fds give now goes to the peers, then each peer is
        told this end is gone."""
        if os.getpid() != self.pid:
            return
        try:
            with self.out_lock:
                self._forward(once=False)
                for link in self.links.values():
                    if link.peer is not None:
                        link.peer.put(("gone", link.key))
        except Exception:
            pass

    # -- helpers ----------------------------------------------------------------------------

    def _close_link(self, link):
        """Closes a link's fds (called with out_lock held)."""
        for fd in [p.fd for p in link.pumps.values()] + list(link.pending.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        link.pumps.clear()
        link.pending.clear()
        link.sock.close()

    def _wake(self):
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass  # full: it is awake already


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
    _relay = None  # its threads stayed in the parent
    _relay_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
