# SPDX-License-Identifier: MIT
"""This process's link to dragond: one client for requests, a pool for its objects.

Under the launcher (``dragon app.py``) dragond's socket is in ``DRAGON_SOCKET``. A plain
``python3 app.py`` that selects the dragon start method with no dragond around starts a private
one on first use and stops it at exit, as the launcher would.
"""
import atexit
import os
import shutil
import stat
import subprocess
import threading
import weakref

from . import _native

_lock = threading.RLock()
_client = None
_pool = None
_private = None
_lifeline = None  # the write end of the private dragond's --exit-with-fd pipe
_waiters = []  # spare clients for blocking waits, so that one wait does not hold the others

# A process's pool: large, and lazy (dragond does not fault it in), so it costs memory only
# where objects and messages are; large messages sent to this process's queues live here.
POOL_SIZE = int(os.environ.get("DRAGON_PY_POOL_SIZE", str(4 << 30)))
PREFAULT = os.environ.get("DRAGON_PY_PREFAULT", "0") not in ("0", "false", "no")


def _daemon_path():
    env = os.environ.get("DRAGON_DAEMON")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    # The build tree: build/python/dragon -> build/daemon/dragond.
    candidate = os.path.normpath(os.path.join(here, "..", "..", "daemon", "dragond"))
    if os.access(candidate, os.X_OK):
        return candidate
    try:
        from ._paths import BINDIR
        candidate = os.path.join(BINDIR, "dragond")
        if os.access(candidate, os.X_OK):
            return candidate
    except ImportError:
        pass
    return shutil.which("dragond") or "dragond"


def _start_private():
    global _private
    rundir = _native.default_runtime_dir()
    os.makedirs(rundir, mode=0o700, exist_ok=True)
    sock = os.path.join(rundir, "py-%d.sock" % os.getpid())
    r, w = os.pipe()
    # dragond ends with this process however it ends (--exit-with-fd: it holds the read end,
    # we the write end, which nothing else inherits but forks of this process).
    life_r, life_w = os.pipe()
    proc = subprocess.Popen(
        [_daemon_path(), "--standalone", "--socket", sock, "--ready-fd", str(w),
         "--exit-with-fd", str(life_r)],
        pass_fds=(w, life_r), stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    os.close(life_r)
    global _lifeline
    _lifeline = life_w
    with os.fdopen(r, "rb") as ready:
        if ready.read(5) != b"ready":
            proc.wait()
            raise _native.DragonError("could not start a private dragond (see its message above)")
    _private = proc
    global _private_owner
    _private_owner = os.getpid()
    os.environ["DRAGON_SOCKET"] = sock
    atexit.register(_stop_private)
    return sock


_private_owner = None  # the process that started the private dragond


def _stop_private():
    global _client, _private
    if _private is None or os.getpid() != _private_owner:
        return  # an os.fork() child's exit: the dragond and its job are its parent's
    # At exit (registered after multiprocessing's exit function, so run before it): first
    # what the launcher's runtime has done by the time its dragond goes, in the same order:
    # multiprocessing's finalizers (a Pool left open) and this process's Pipe handles closed
    # (its peers see end of file), then multiprocessing's exit (queues flushed, daemonic
    # children terminated, the others joined: a program may end without joining them). Both
    # are idempotent; their own atexit calls do nothing then.
    from multiprocessing import util
    from .connection import _at_exit
    _at_exit()
    util._exit_function()
    with _lock:
        if _client is not None:
            try:
                _client.end_job()
            except Exception:
                pass
        _client = None
        _waiters.clear()
    _private.terminate()
    _private.wait()
    _private = None


_socket = None  # the dragond this process (and a fork of it) talks to, once known


def _connect():
    global _socket
    name = "python %d" % os.getpid()
    sock = _socket or os.environ.get("DRAGON_SOCKET")
    if not sock:
        # As the launcher looks: where dragon.yaml (socket, runtime_dir) puts dragond, then the
        # default place (the system's per-user dragond listens where its unit says).
        sock = _native.default_socket_path()
        configured = _native.configured_socket_path()
        if configured and configured != sock:
            try:
                c = _native.Client(configured, name, PREFAULT)
            except LookupError:
                pass
            else:
                _socket = os.environ["DRAGON_SOCKET"] = configured
                return c
    # Pools map lazily: a process touches only the pages of the objects it uses, so a child
    # that attaches its parent's 64 MiB pool starts in microseconds, not milliseconds.
    c = _native.Client(sock, name, PREFAULT)
    _socket = sock
    # Its children use the same dragond (and look for it no more), as under the launcher.
    os.environ["DRAGON_SOCKET"] = sock
    return c


def client():
    """The client of this process (connecting, or starting a private dragond, on first use)."""
    global _client
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _reset_after_fork()
            try:
                _client = _connect()
            except LookupError:
                if os.environ.get("DRAGON_SOCKET"):
                    raise
                _start_private()
                _client = _connect()
        return _client


_client_pid = os.getpid()


def _reset_after_fork():
    global _client, _pool, _client_pid
    if _client_pid != os.getpid():
        _client = None
        _pool = None
        _waiters.clear()
        _attached_pools.clear()
        _client_pid = os.getpid()


def pool():
    """The pool this process creates its objects in."""
    global _pool
    with _lock:
        c = client()
        if _pool is None:
            _pool = c.create_pool(POOL_SIZE, lazy=True)
        return _pool


def _release(descriptor, pid):
    """A channel object of this process was collected: its reference at dragond goes, so that
    dragond frees the channel once no process holds it."""
    if pid != os.getpid() or _client is None or _client_pid != pid:
        return
    try:
        with _lock:
            _client.detach_later(descriptor)  # nobody waits for it
    except Exception:  # dragond is gone (shutdown): it frees everything itself
        pass


def _released_when_collected(ch):
    f = weakref.finalize(ch, _release, ch.descriptor, os.getpid())
    f.atexit = False  # at exit the connection closes, which releases everything at once
    return ch


def new_channel(capacity=0, inline_size=0, track_holder=False, holder_owns=False):
    """A channel of this node's pool. track_holder: dragond remembers who received last (a
    lock's token) and breaks the channel when that process is killed or fails, or its node is
    lost; holder_owns: also when it exits with status 0 (only the holder may give it back)."""
    with _lock:
        p = pool()
        return _released_when_collected(
            client().create_channel(p, capacity, inline_size, track_holder=track_holder,
                                    holder_owns=holder_owns))


_attached_pools = {}


def attach_pool(descriptor):
    """The pool of `descriptor`, mapped once per process (this process's own pool included)."""
    with _lock:
        p = pool()
        if descriptor == p.descriptor:
            return p
        found = _attached_pools.get(descriptor)
        if found is None:
            found = _attached_pools[descriptor] = client().attach_pool(descriptor)
        return found


def register_name(name, descriptor, scoped=False, replace=False):
    with _lock:
        client().register_name(name, descriptor, scoped, replace)


def lookup_name(name):
    with _lock:
        return client().lookup_name(name)


def attach_channel(descriptor):
    """A channel, by descriptor ("dragon:...") or by name. This process's client holds its
    reference, given back when the object is collected; the operations on one of another node
    run on a few connections the process shares (edge.hpp, OpConnections)."""
    with _lock:
        return _released_when_collected(client().attach_channel(descriptor, _socket or ""))


def nodes():
    """[(node, hostname, cpus)]: the job's live nodes (this one alone, cpus 0, on one node)."""
    with _lock:
        return client().nodes()


def this_node():
    with _lock:
        return client().node


def copy_memory(put, local_pool, local_allocation, far_pool, far_allocation, length,
                timeout=None, offset=0):
    """Copies `length` bytes from `offset` in an allocation of this node's pool to the same
    offset in one of any node's (put), or back."""
    with _lock:
        return client().copy_memory(put, local_pool, local_allocation, far_pool,
                                    far_allocation, length, timeout, offset, offset)


def create_pool(size, name="", lazy=False):
    """A pool of its own (not this process's object pool), optionally named."""
    with _lock:
        return client().create_pool(size, name, lazy)


def attach_named_pool(name):
    """The pool of that name, mapped anew (not kept by attach_pool's cache)."""
    with _lock:
        return client().attach_pool(name)


def detach(descriptor):
    with _lock:
        client().detach(descriptor)


def destroy(descriptor):
    with _lock:
        client().destroy(descriptor)


def spawn(argv, env, cwd, **kwargs):
    # As bytes (os.fsencode): an environment value or a directory name that is not UTF-8 is
    # held by Python as surrogate escapes, which no str conversion to C++ takes.
    argv = [os.fsencode(a) for a in argv]
    env = [os.fsencode(e) for e in env]
    with _lock:
        return client().spawn(argv, env, os.fsencode(cwd), **kwargs)


def adopt(pid, argv, idle=False, stdout_fd=-1, stderr_fd=-1):
    """Puts this process's own child in dragond's process table (see Client.adopt); its puid.
    stdout_fd/stderr_fd: the read ends of the pipes of its output, for dragond to read."""
    with _lock:
        return client().adopt(pid, argv, idle, stdout_fd, stderr_fd)


def captured_streams():
    """(stdout, stderr): whether each of this process's fds 1 and 2 is still the pipe dragond
    reads that stream from (DRAGON_CAPTURED_PIPES, set by dragond). A child's stream is then
    captured as well, under the child's own puid, rather than written into this one's pipe."""
    try:
        inodes = [int(x) for x in os.environ.get("DRAGON_CAPTURED_PIPES", "").split(",")]
    except ValueError:
        return False, False
    if len(inodes) != 2:
        return False, False
    out = []
    for fd, inode in zip((1, 2), inodes):
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        out.append(inode != 0 and st is not None and stat.S_ISFIFO(st.st_mode) and
                   st.st_ino == inode)
    return out[0], out[1]


def report_started(puid, label):
    with _lock:
        client().report_started(puid, label)


def report_exited(puid, returncode):
    """An adopted child's end, reaped: returncode as Popen's (-N for signal N)."""
    with _lock:
        client().report_exited(puid, max(returncode, 0), max(-returncode, 0))


def signal(puids, sig):
    with _lock:
        client().signal(puids, sig)


def wait(puids, timeout=None):
    """Waits on a client of its own: a long wait does not stall other threads' requests."""
    if timeout is not None and timeout <= 0:
        with _lock:
            return client().wait(puids, 0)
    with _lock:
        client()
        w = _waiters.pop() if _waiters else _connect()
    try:
        return w.wait(puids, timeout)
    finally:
        with _lock:
            if _client_pid == os.getpid():
                _waiters.append(w)
