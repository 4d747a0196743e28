# SPDX-License-Identifier: MIT
"""Python processes on every node of a 3-node job (run as `dragon py_across.py` under srun by
t_python_across.sh): workers placed with dragon.Policy on each node take items from one Queue
and put results on another; exit codes, terminate, is_alive and the sentinel of a process on
another node; a Lock held across nodes; Event, Semaphore, Condition, Barrier and JoinableQueue
used from the 3 nodes; Pipes and a SimpleQueue across nodes under connection.wait, with end of
file; a round-robin Pool and a ProcessPoolExecutor; a Value and an Array under their locks from
3 nodes; a Manager, one speaking XML-RPC and a Listener/Client across nodes; 200 queues of
another node used over a few sockets; raw memory (RawValue, RawArray, the stdlib heap's
buffers) kept coherent across nodes at synchronisation points, SharedMemory refused for another
node with a clear error naming its node; processes of another node forked by the parent's
template there, which ends with its parent, is made once however many threads start at once,
starts a process with arguments larger than one message between nodes carries, and once
killed is not waited for; parent_process() of a process whose parent is on another node, alive
and then ended; 40 MiB queue items and a 30 MiB Pipe message both ways across nodes; fds sent
with reduction.send_handle to and from another node, relayed (check_fd_relay). Prints "py-across: ok ..." or fails with a traceback."""
import fcntl
import multiprocessing as mp
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from multiprocessing import reduction
from multiprocessing.connection import wait
from multiprocessing.managers import BaseManager

import dragon


def worker(inq, outq, node):
    outq.put((node, socket.gethostname(), "ready", None))
    for item in iter(inq.get, None):
        outq.put((node, socket.gethostname(), item, item * item))
    print("py-across: worker on node %d (%s) done" % (node, socket.gethostname()), flush=True)


def exiter(code):
    sys.exit(code)


def qsize_probe(q):
    # A queue of another node: its size is not known there (as where sem_getvalue is missing).
    try:
        q.qsize()
    except NotImplementedError:
        sys.exit(0)
    sys.exit(1)


def read_to_eof(r):
    """Every message of a Pipe end until its writers are gone (EOFError)."""
    got = []
    while True:
        try:
            got.append(r.recv())
        except EOFError:
            return got


def pipe_reader(r, outq):
    # Reads a Pipe of another node to its end.
    outq.put(("read", read_to_eof(r)))


def pipe_echo(conn, sq):
    # A duplex Pipe end and a SimpleQueue of another node; connection.wait over both.
    for _ in range(2):
        ready = wait([conn, sq._reader], timeout=60)
        assert ready, "wait over objects of another node timed out"
        for r in ready:
            if r is conn:
                msg = conn.recv()
                conn.send(("echo", msg))
            else:
                sq_item = sq.get()
                conn.send(("sq", sq_item))
    assert wait([conn], timeout=0.2) == [], "ready with nothing sent"
    # The same wait with a Pipe of this node and a plain fd beside them: each is reported
    # ready alone, and nothing is when none is.
    lr, lw = mp.Pipe(duplex=False)
    rfd, wfd = os.pipe()
    try:
        assert wait([conn, sq._reader, lr, rfd], timeout=0.2) == [], "ready with nothing sent"
        lw.send("local")
        assert wait([conn, sq._reader, lr, rfd], timeout=60) == [lr], "the local Pipe was not seen"
        assert lr.recv() == "local"
        os.write(wfd, b"x")
        assert wait([conn, sq._reader, lr, rfd], timeout=60) == [rfd], "the fd was not seen"
        os.read(rfd, 1)
        conn.send("waiting")  # the parent sends once this wait below has begun, or before
        assert wait([lr, conn, rfd], timeout=60) == [conn], "the remote Pipe was not seen"
        assert conn.recv() == "after"
    finally:
        os.close(rfd)
        os.close(wfd)
    conn.send_bytes(b"bytes " * 1000)
    conn.close()


def sync_user(node, go, done, sem, cond, barrier, jq, outq):
    # Event, Semaphore, Condition, Barrier and JoinableQueue of the head's node, used here.
    assert go.wait(60), "the event was not seen set"
    assert go.is_set()
    with sem:  # 2 tokens, 3 users: at most 2 inside at once
        outq.put(("in", node))
        time.sleep(0.05)
        outq.put(("out", node))
    with cond:
        outq.put(("waiting", node))
        assert cond.wait_for(lambda: done.is_set(), 60), "no notify seen"
    barrier.wait(60)
    for item in iter(jq.get, None):
        outq.put(("job", item))
        jq.task_done()
    jq.task_done()


def event_then_raw(arr, ev, outq):
    # Raw memory of the head's node read after Event.is_set() says yes: that is a
    # synchronisation point, as the stdlib's is_set (which takes the Event's lock) is.
    outq.put("ready")  # its copy of the bytes is made: the head writes after this
    deadline = time.monotonic() + 60
    while not ev.is_set():
        assert time.monotonic() < deadline, "the event was not seen set"
        time.sleep(0.01)
    outq.put(arr[0])


def counter(v, arr, slot, n):
    # A Value and an Array of the head's node, under their locks, from every node.
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    arr[slot] = slot + 0.5
    with arr.get_lock():
        arr[3] += 1


def raw_user(v, arr, lo, hi, inq, outq):
    # Raw memory of the head's node, no lock: this process's writes go home when it sends (and
    # only its own bytes: the other writer's slice survives), the head's when it receives.
    for i in range(lo, hi):
        arr[i] = i * i
    outq.put("wrote")
    inq.get(timeout=60)
    outq.put(v.value)


def heap_counter(buf, lock, n):
    # A stdlib heap buffer (the CPython suite's DummyList) counted under a lock from 3 nodes.
    view = buf.create_memoryview().cast("i")
    for _ in range(n):
        with lock:
            view[0] += 1


def manager_user(d, lst, node):
    # Proxies of a manager on the head's node: its server is reached across nodes.
    d[node] = socket.gethostname()
    lst.append(node)


_xml_queue = queue.Queue()


class XmlQueueManager(BaseManager):
    pass


def _get_xml_queue():
    return _xml_queue


XmlQueueManager.register("get_queue", callable=_get_xml_queue)


def xml_putter(address, authkey):
    # A client of a manager of another node that speaks XML-RPC: XmlClient to its XmlListener.
    m = XmlQueueManager(address=address, authkey=authkey, serializer="xmlrpclib")
    m.connect()
    m.get_queue().put(("hello from", socket.gethostname()))


def client_of(address, authkey):
    # A Listener of the head's node (an address of that node), connected to from here.
    from multiprocessing.connection import Client
    with Client(address, authkey=authkey) as c:
        c.send(("hello from", socket.gethostname()))
        assert c.recv() == "welcome"
        c.send_bytes(b"z" * 100000)


def shm_attacher(name, home):
    # A shared memory block of another node: a clear OSError naming its node.
    from multiprocessing import shared_memory
    try:
        shared_memory.SharedMemory(name)
    except OSError as err:
        assert "node %d" % home in str(err), err
        print("py-across: shared memory refused: %s" % err, flush=True)
        sys.exit(0)
    sys.exit(1)


def recurse(w, ident):
    # A Pipe end of the head's node, passed on by a process on another node to its children
    # (placed round-robin: on any node), as CPython's test_recursion does.
    w.send(ident)
    if len(ident) < 2:
        for i in range(2):
            p = mp.Process(target=recurse, args=(w, ident + [i]))
            p.start()
            p.join(60)
            assert p.exitcode == 0, p.exitcode


def report_host(q):
    q.put(socket.gethostname())


def pool_init(q):
    q.put(socket.gethostname())


def pool_task(x):
    return socket.gethostname(), x * x


def slow_task(x):
    time.sleep(0.002)  # long enough that no worker can take every task alone
    return socket.gethostname(), x * x


def sleeper():
    time.sleep(600)


def many_queues_user(queues, outq):
    # Puts into each of many queues of another node, from two threads at once, and says how
    # many connections to dragond it holds: a few shared ones, not one per queue.
    import threading

    def put_index(pairs):
        for i, q in pairs:
            q.put(i)

    pairs = list(enumerate(queues))
    half = len(pairs) // 2
    ts = [threading.Thread(target=put_index, args=(part,)) for part in (pairs[:half], pairs[half:])]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink("/proc/self/fd/" + fd))
        except OSError:  # the fd listdir had open
            pass
    outq.put(sum(1 for link in links if link.startswith("socket:")))


def locker(lock, outq, node):
    with lock:
        outq.put(("locked", node))
        time.sleep(0.3)
        outq.put(("unlocked", node))


def hold_lock(lock, held):
    lock.acquire()
    held.set()
    time.sleep(600)


def wait_broken(lock, started, outq, node):
    started.set()
    try:
        outq.put(("acquired", node, lock.acquire(timeout=120)))
    except dragon.BrokenLockError as err:
        outq.put(("broken", node, str(err)))


def check_broken_lock(holder_node, waiter_nodes, outq):
    """A lock of this node held by a process on holder_node, waited on from waiter_nodes:
    the holder is killed, and every waiter hears at once that the lock is broken."""
    lock, held = mp.Lock(), mp.Event()
    with dragon.Policy(node=holder_node):
        holder = mp.Process(target=hold_lock, args=(lock, held))
        holder.start()
    assert held.wait(60)
    waiters = []
    for node in waiter_nodes:
        started = mp.Event()
        with dragon.Policy(node=node):
            waiters.append(mp.Process(target=wait_broken, args=(lock, started, outq, node)))
            waiters[-1].start()
        assert started.wait(60)
    holder.kill()
    holder.join(60)
    assert holder.exitcode == -9, holder.exitcode
    heard = sorted(outq.get(timeout=60) for _ in waiters)
    assert [h[:2] for h in heard] == [("broken", n) for n in sorted(waiter_nodes)], heard
    assert all("pid %d on node %d" % (holder.pid, holder_node) in h[2] for h in heard), heard
    try:
        lock.acquire(timeout=60)
    except dragon.BrokenLockError:
        pass
    else:
        raise AssertionError("a lock whose holder was killed was acquired")
    for w in waiters:
        w.join(60)
        assert w.exitcode == 0, (w, w.exitcode)


def report_ppid(q):
    q.put(os.getppid())


def start_until_forked(node, limit=100):
    """Starts processes on `node`, one after another, until one is forked by this process's
    template there (its parent is the template: the first start there is a fresh interpreter
    that node's dragond starts, and starts the template). The template's puid."""
    from dragon import process as dp
    q = mp.Queue()
    for _ in range(limit):
        with dragon.Policy(node=node):
            p = mp.Process(target=report_ppid, args=(q,))
            p.start()
        ppid = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        template = dp._remote_templates.get(node)
        if template is not None and template.ready() and ppid == template.pid:
            return template._puid
    raise AssertionError("no process on node %d was forked by the template there" % node)


def template_user(node, outq, then):
    """Has a template of its own on `node` fork a process, says which (its puid), then exits
    (then == "exit") or waits to be killed."""
    outq.put(start_until_forked(node))
    if then == "wait":
        time.sleep(600)


def sentinel_child(q, ready, go, checked):
    parent = mp.parent_process()
    first = parent.is_alive()  # its sentinel is made here
    ready.set()
    go.wait(60)  # a round trip through the parent: a sentinel that fired early shows now
    q.put(("alive", first, parent.is_alive()))
    checked.set()
    parent.join(60)  # on its sentinel
    q.put(("after", parent.is_alive()))


def sentinel_middle(q, events, node):
    ready, go, checked = events
    with dragon.Policy(node=node):
        mp.Process(target=sentinel_child, args=(q, ready, go, checked)).start()
    ready.wait(60)
    go.set()
    checked.wait(60)
    os._exit(0)  # not joining the child, which waits for this process's end


def check_parent_sentinel(nodes, outq):
    """parent_process() of a process whose parent is on a third node: alive, then its join
    returns once that parent has ended."""
    events = (mp.Event(), mp.Event(), mp.Event())
    with dragon.Policy(node=nodes[1][0]):
        middle = mp.Process(target=sentinel_middle, args=(outq, events, nodes[2][0]))
        middle.start()
    assert outq.get(timeout=60) == ("alive", True, True)
    middle.join(60)
    assert middle.exitcode == 0, middle.exitcode
    assert outq.get(timeout=60) == ("after", False)


def large_user(q_in, q_out, conn):
    """On another node than the queues: a 40 MiB item got, its digest and a 40 MiB numpy
    array put back, and 30 MiB sent through a Pipe (each more than one message between nodes
    carries, so moved in parts)."""
    import hashlib

    import numpy
    data = q_in.get(timeout=120)
    q_out.put(hashlib.sha256(data).hexdigest())
    q_out.put(numpy.arange(5 << 20, dtype=numpy.float64))  # 40 MiB
    conn.send_bytes(data[:30 << 20])


def check_large_across(far):
    import hashlib

    import numpy
    q_in, q_out = mp.Queue(), mp.Queue()
    r, w = mp.Pipe(duplex=False)
    data = os.urandom(40 << 20)
    q_in.put(data)
    with dragon.Policy(node=far):
        p = mp.Process(target=large_user, args=(q_in, q_out, w))
        p.start()
    w.close()
    assert q_out.get(timeout=120) == hashlib.sha256(data).hexdigest()
    a = q_out.get(timeout=120)
    assert isinstance(a, numpy.ndarray) and a.nbytes == 40 << 20
    assert numpy.array_equal(a, numpy.arange(5 << 20, dtype=numpy.float64))
    assert r.recv_bytes() == data[:30 << 20]
    p.join(60)
    assert p.exitcode == 0, p.exitcode


def fd_writer(conn, data):
    fd = reduction.recv_handle(conn)
    os.write(fd, data)
    os.close(fd)


def fd_writer_filling(conn, data):
    # As CPython's test_large_fd_transfer: every free fd below 256 made a copy of fileno()
    # first (fds that the relay's threads made meanwhile would be replaced), then the fd.
    for i in range(256):
        try:
            os.fstat(i)
        except OSError:
            os.dup2(conn.fileno(), i)
    fd_writer(conn, data)


def fd_reader(conn, out):
    fd = reduction.recv_handle(conn)
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    out.send_bytes(b"".join(chunks))


def fd_echo(conn):
    s = socket.socket(fileno=reduction.recv_handle(conn))
    while True:
        b = s.recv(4096)
        if not b:
            break
        s.sendall(b.upper())
    s.close()


def fd_sender(conn):
    r, w = os.pipe()
    os.write(w, b"from the child")
    os.close(w)
    reduction.send_handle(conn, r, os.getppid())
    os.close(r)
    conn.recv()  # until the parent has read it


def fd_eof_reader(conn, out):
    try:
        reduction.recv_handle(conn)
    except EOFError:
        out.send("eof")
    else:
        out.send("an fd")


def fd_file_sender(conn, path):
    with open(path, "rb") as f:
        reduction.send_handle(conn, f.fileno(), os.getppid())


def fd_write_then_hang(conn, ready):
    fd = reduction.recv_handle(conn)
    os.write(fd, b"partial")
    ready.set()
    time.sleep(600)


def fd_first_reader(conn, out, first):
    fd = reduction.recv_handle(conn)
    got = os.read(fd, 100)
    first.set()
    while True:
        b = os.read(fd, 100)
        if not b:
            break
        got += b
    out.send_bytes(got)


def fd_middle(far, out, first):
    """Sends the read end of a pipe it keeps writable to a process on node `far`, then waits
    to be killed: that process's relayed fd must end."""
    r, w = os.pipe()
    conn, child = mp.Pipe()
    with dragon.Policy(node=far):
        p = mp.Process(target=fd_first_reader, args=(child, out, first))
        p.start()
    os.write(w, b"before the kill")
    reduction.send_handle(conn, r, p.pid)
    time.sleep(600)


def check_fd_relay(far):
    """An fd sent with reduction.send_handle to a process on another node arrives as a relayed
    fd: a file written there, a 5 MiB file read there, a socket echoed with end of file both
    ways, an fd sent back from there; a child killed with a relayed pipe end closes it here (the
    reader sees end of file), and a relayed fd whose sender is killed ends there."""
    path = "/tmp/py_across_fd.%d" % os.getpid()
    try:
        conn, child = mp.Pipe()
        with dragon.Policy(node=far):
            p = mp.Process(target=fd_writer, args=(child, b"written on another node"))
            p.start()
        with open(path, "wb") as f:
            reduction.send_handle(conn, f.fileno(), p.pid)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        with open(path, "rb") as f:  # join returned: what the child wrote is in the file
            assert f.read() == b"written on another node"

        # The same from children that fill every free fd below 256 with their Pipe end's
        # fileno() (1 run in 7 of these lost the fd, or its child hung, while the relay and
        # the parent's sentinel made fds in their threads at numbers the child found free).
        for i in range(40):
            conn, child = mp.Pipe()
            with dragon.Policy(node=far):
                p = mp.Process(target=fd_writer_filling, args=(child, b"filled %d" % i))
                p.start()
            with open(path, "wb") as f:
                high = fcntl.fcntl(f.fileno(), fcntl.F_DUPFD, 256)
                try:
                    reduction.send_handle(conn, high, p.pid)
                finally:
                    os.close(high)
            p.join(30)
            assert p.exitcode == 0, "run %d: exit code %s" % (i, p.exitcode)
            with open(path, "rb") as f:
                assert f.read() == b"filled %d" % i, "run %d" % i
            conn.close()

        data = os.urandom(5 << 20)
        with open(path, "wb") as f:
            f.write(data)
        conn, child = mp.Pipe()
        r, w = mp.Pipe(duplex=False)
        with dragon.Policy(node=far):
            p = mp.Process(target=fd_reader, args=(child, w))
            p.start()
        with open(path, "rb") as f:
            reduction.send_handle(conn, f.fileno(), p.pid)
        assert r.recv_bytes() == data, "a relayed file read on another node differs"
        p.join(60)
    finally:
        os.unlink(path)

    conn, child = mp.Pipe()
    a, b = socket.socketpair()
    with dragon.Policy(node=far):
        p = mp.Process(target=fd_echo, args=(child,))
        p.start()
    reduction.send_handle(conn, b.fileno(), p.pid)
    b.close()
    a.settimeout(60)
    a.sendall(b"through the relay")
    got = b""
    while len(got) < 17:
        got += a.recv(100)
    assert got == b"THROUGH THE RELAY", got
    a.shutdown(socket.SHUT_WR)
    assert a.recv(100) == b"", "no end of file from a relayed socket"
    p.join(60)
    assert p.exitcode == 0, p.exitcode

    conn, child = mp.Pipe()
    with dragon.Policy(node=far):
        p = mp.Process(target=fd_sender, args=(child,))
        p.start()
    fd = reduction.recv_handle(conn)
    assert os.read(fd, 100) == b"from the child"
    os.close(fd)
    conn.send("read")
    p.join(60)
    assert p.exitcode == 0, p.exitcode

    # The parent closes its end: the child's recv_handle sees end of file, not a hang.
    conn, child = mp.Pipe()
    out_r, out_w = mp.Pipe(duplex=False)
    with dragon.Policy(node=far):
        p = mp.Process(target=fd_eof_reader, args=(child, out_w))
        p.start()
    conn.close()
    assert out_r.poll(30) and out_r.recv() == "eof", "no end of file through the relay"
    p.join(60)

    # A child sends an 8 MiB file and ends before the parent reads any of it: the parent
    # reads it all after the join, then end of file.
    path = "/tmp/py_across_fd_big.%d" % os.getpid()
    data = os.urandom(8 << 20)
    with open(path, "wb") as f:
        f.write(data)
    try:
        conn, child = mp.Pipe()
        with dragon.Policy(node=far):
            p = mp.Process(target=fd_file_sender, args=(child, path))
            p.start()
        fd = reduction.recv_handle(conn)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        chunks = []
        while True:
            assert select.select([fd], [], [], 30)[0], "a relayed file stopped short"
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
        os.close(fd)
        assert b"".join(chunks) == data, "a relayed file from an ended child differs"
    finally:
        os.unlink(path)

    r, w = os.pipe()
    conn, child = mp.Pipe()
    ready = mp.Event()
    with dragon.Policy(node=far):
        p = mp.Process(target=fd_write_then_hang, args=(child, ready))
        p.start()
    reduction.send_handle(conn, w, p.pid)
    os.close(w)
    assert ready.wait(60)
    got = b""
    while got != b"partial":  # what it wrote arrives while it runs
        assert select.select([r], [], [], 30)[0], "a relayed pipe end gave nothing"
        got += os.read(r, 100)
    p.kill()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, p.exitcode
    # Its relayed pipe end went with it: end of file, not a hang.
    assert select.select([r], [], [], 30)[0], "a killed child's relayed pipe end stayed open"
    assert os.read(r, 100) == b"", "more than the killed child wrote"
    os.close(r)

    out_r, out_w = mp.Pipe(duplex=False)
    sent = mp.Event()
    with dragon.Policy(node="local"):
        m = mp.Process(target=fd_middle, args=(far, out_w, sent))
        m.start()
    assert sent.wait(60), "the relayed pipe gave nothing"
    m.kill()
    m.join(60)
    # The reader on `far` read what the middle wrote, then its relayed fd ended with the
    # middle: it sends what it read and exits.
    assert out_r.poll(30), "a relayed fd outlived its killed sender"
    assert out_r.recv_bytes() == b"before the kill"


def first_starts_at_once(node, outq):
    """Four threads of a parent without templates start processes on `node` at once: one
    template is made there, not one per thread. Puts how many were made."""
    from dragon import process as dp
    made = []
    make = dp._RemoteTemplate.__init__

    def counted(self, *args):
        made.append(self)
        make(self, *args)

    dp._RemoteTemplate.__init__ = counted
    q = mp.Queue()

    def start_one():
        with dragon.Policy(node=node):
            p = mp.Process(target=report_ppid, args=(q,))
            p.start()
        q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode

    threads = [threading.Thread(target=start_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    outq.put(len(made))


def report_size_and_ppid(data, q):
    q.put((len(data), os.getppid()))


def check_template_serving(far, template_puid):
    """The template starts a process whose arguments are larger than one message between
    nodes carries (its request comes in parts) and goes on serving; a template killed before a
    start is not waited for, and the process starts once, as a fresh interpreter."""
    from dragon import _runtime
    from dragon import process as dp
    template = dp._remote_templates[far]
    q = mp.Queue()
    for size in (17 << 20, 10):
        with dragon.Policy(node=far):
            p = mp.Process(target=report_size_and_ppid, args=(b"x" * size, q))
            p.start()
        assert q.get(timeout=60) == (size, template.pid), "not served by the template"
        p.join(60)
        assert p.exitcode == 0 and not template.broken, (p.exitcode, template.broken)

    _runtime.signal([template_puid], signal.SIGKILL)
    [(_, _, sig)] = _runtime.wait([template_puid], 30)
    assert sig == signal.SIGKILL, sig
    assert template._gone.wait(30), "the parent never learnt that its template ended"
    with dragon.Policy(node=far):
        p = mp.Process(target=report_ppid, args=(q,))
        p.start()
    assert q.get(timeout=60) != template.pid
    p.join(60)
    assert p.exitcode == 0 and template.broken, (p.exitcode, template.broken)
    try:  # the request was taken back, so nothing could run it a second time
        template._requests.recv(timeout=0)
    except TimeoutError:
        pass
    else:
        raise AssertionError("the request to the dead template is still queued")


def check_remote_templates(far, outq):
    """Processes on another node are forked by the parent's template there, which goes when
    its parent ends: at its exit, or killed."""
    from dragon import _runtime
    template_puid = start_until_forked(far)
    with dragon.Policy(node="local"):
        user = mp.Process(target=first_starts_at_once, args=(far, outq))
        user.start()
    made = outq.get(timeout=180)
    user.join(60)
    assert (made, user.exitcode) == (1, 0), (made, user.exitcode)
    for then in ("exit", "wait"):
        with dragon.Policy(node="local"):
            user = mp.Process(target=template_user, args=(far, outq, then))
            user.start()
        puid = outq.get(timeout=60)
        if then == "wait":
            user.kill()
        user.join(60)
        assert user.exitcode == (0 if then == "exit" else -9), (then, user.exitcode)
        # The template of a parent that has gone ends (its dragond reports it).
        [(_, code, sig)] = _runtime.wait([puid], 30)
        assert (code, sig) == (0, 0), (then, code, sig)
    # A parent that dragond did not start (a plain subprocess of this one, as a test runner's
    # are): its template ends with it too.
    import subprocess
    code = ("import sys; sys.path.insert(0, %r); import multiprocessing as mp; import dragon; "
            "mp.set_start_method('dragon', force=True); from py_across import "
            "start_until_forked; print(start_until_forked(%d))"
            % (os.path.dirname(os.path.abspath(__file__)), far))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    [(_, code, sig)] = _runtime.wait([int(out.stdout.split()[-1])], 30)
    assert (code, sig) == (0, 0), ("subprocess", code, sig)
    # A parent that ends right after its first start there, before its template there can be
    # up: the template finds its channels gone and exits quietly, with 0.
    code = ("import os, sys, time; import multiprocessing as mp; import dragon; "
            "from dragon import process as dp; mp.set_start_method('dragon', force=True); "
            "p = mp.Process(target=time.sleep, args=(0,))\n"
            "with dragon.Policy(node=%d): p.start()\n"
            "print(dp._remote_templates[%d]._puid, flush=True)\n"
            "os._exit(0)" % (far, far))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    [(_, code, sig)] = _runtime.wait([int(out.stdout.split()[-1])], 30)
    assert (code, sig) == (0, 0), ("parent gone before its template was up", code, sig)
    check_template_serving(far, template_puid)


def main():
    assert mp.get_start_method() == "dragon"
    nodes = dragon.nodes()
    assert len(nodes) == 3, nodes
    here = socket.gethostname()
    inq, outq = mp.Queue(), mp.Queue()
    procs = []
    for node, host, _ in nodes:
        with dragon.Policy(node=node):
            p = mp.Process(target=worker, args=(inq, outq, node))
            p.start()
        procs.append(p)
    # Each worker says where it runs first (which of them takes which items is the queue's).
    ready = [outq.get(timeout=60) for _ in procs]
    count = 300
    for i in range(count):
        inq.put(i)
    for _ in procs:
        inq.put(None)
    results = [outq.get(timeout=60) for _ in range(count)]
    assert sorted(r[2] for r in results) == list(range(count)), "items lost or doubled"
    assert all(r[3] == r[2] * r[2] for r in results), "wrong results"
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, (p, p.exitcode)
    # Each worker reported its own node's hostname: the processes ran where they were placed.
    by_node = {r[0]: r[1] for r in ready + results}
    for node, host, _ in nodes:
        if node in by_node:
            assert by_node[node] == host, (node, by_node[node], host)
    assert sorted(by_node) == sorted(n for n, _, _ in nodes), by_node
    remote_hosts = set(by_node.values()) - {here}

    far = nodes[2][0]
    with dragon.Policy(node=nodes[2][1]):  # by hostname
        e = mp.Process(target=exiter, args=(7,))
        e.start()
        s = mp.Process(target=sleeper)
        s.start()
    e.join(60)
    assert e.exitcode == 7, e.exitcode
    with dragon.Policy(node=far):
        qp = mp.Process(target=qsize_probe, args=(inq,))
        qp.start()
    qp.join(60)
    assert qp.exitcode == 0, "qsize of a queue of another node: exit %s" % qp.exitcode
    many = [mp.Queue() for _ in range(200)]
    with dragon.Policy(node=far):
        mq = mp.Process(target=many_queues_user, args=(many, outq))
        mq.start()
    sockets = outq.get(timeout=60)
    assert [q.get(timeout=30) for q in many] == list(range(200))
    mq.join(60)
    assert mq.exitcode == 0, mq.exitcode
    assert sockets <= 8, "a process using 200 queues of another node holds %d sockets" % sockets
    del many
    assert s.is_alive()
    assert wait([s.sentinel], timeout=0.2) == []
    s.terminate()
    assert wait([s.sentinel], timeout=30) == [s.sentinel]
    s.join(30)
    assert s.exitcode == -15, s.exitcode
    assert not s.is_alive()

    # One lock, held by processes on two other nodes in turn: never both at once.
    lock = mp.Lock()
    lockq = mp.Queue()
    holders = []
    for node in (nodes[1][0], far):
        with dragon.Policy(node=node):
            holders.append(mp.Process(target=locker, args=(lock, lockq, node)))
            holders[-1].start()
    events = [lockq.get(timeout=60) for _ in range(4)]
    assert [k for k, _ in events] == ["locked", "unlocked", "locked", "unlocked"], events
    assert events[0][1] == events[1][1] and events[2][1] == events[3][1], events
    for h in holders:
        h.join(60)
        assert h.exitcode == 0

    # A one-way Pipe to another node: the reader there sees every message, then end of file
    # when the writers here close. And a writer there: this reader sees end of file when it
    # ends (its handles were lent to it).
    r, w = mp.Pipe(duplex=False)
    with dragon.Policy(node=far):
        pr = mp.Process(target=pipe_reader, args=(r, lockq))
        pr.start()
    r.close()
    for i in range(50):
        w.send(i)
    w.close()
    assert lockq.get(timeout=60) == ("read", list(range(50)))
    pr.join(60)
    assert pr.exitcode == 0, pr.exitcode

    # A duplex Pipe and a SimpleQueue of this node used there, with connection.wait over
    # both; its end closed there, this end sees end of file once it has gone.
    here_end, far_end = mp.Pipe()
    sq = mp.SimpleQueue()
    with dragon.Policy(node=far):
        pe = mp.Process(target=pipe_echo, args=(far_end, sq))
        pe.start()
    far_end.close()
    here_end.send("ping")
    assert here_end.recv() == ("echo", "ping")
    sq.put("item")
    assert here_end.recv() == ("sq", "item")
    assert here_end.recv() == "waiting"
    here_end.send("after")
    assert here_end.recv_bytes() == b"bytes " * 1000
    pe.join(60)
    assert pe.exitcode == 0, pe.exitcode
    assert wait([here_end], timeout=30) == [here_end]
    try:
        here_end.recv()
    except EOFError:
        pass
    else:
        raise AssertionError("a message from a process that has ended")

    # A Pool placed round-robin over the nodes: its workers run on every node, and Pool()
    # and cpu_count() count the job's CPUs.
    job_cpus = sum(max(c, 1) for _, _, c in nodes)
    assert mp.cpu_count() == job_cpus, (mp.cpu_count(), nodes)
    hostq = mp.Queue()
    with dragon.Policy(node="roundrobin"):
        pool = mp.Pool(initializer=pool_init, initargs=(hostq,))
    assert pool._processes == job_cpus, pool._processes
    with pool:
        out = pool.map(pool_task, range(200), chunksize=1)
        assert [v for _, v in out] == [x * x for x in range(200)]
        pool_hosts = {hostq.get(timeout=60) for _ in range(job_cpus)}
        assert pool.apply_async(pool_task, (7,)).get(60)[1] == 49
        assert sorted(v for _, v in pool.imap_unordered(pool_task, range(20))) == \
            sorted(x * x for x in range(20))
    pool.join()
    assert pool_hosts == {h for _, h, _ in nodes}, (pool_hosts, nodes)

    # concurrent.futures on the dragon context: its call queue is a subclass of the stdlib's
    # Queue class (a dragon Pipe inside), its workers placed round-robin.
    from concurrent.futures import ProcessPoolExecutor, as_completed
    with ProcessPoolExecutor(max_workers=3, mp_context=mp.get_context("dragon")) as ex:
        futures = [ex.submit(slow_task, x) for x in range(600)]
        done_ = [f.result(timeout=120) for f in as_completed(futures)]
    assert sorted(v for _, v in done_) == [x * x for x in range(600)]
    executor_hosts = {h for h, _ in done_}
    assert len(executor_hosts) > 1, executor_hosts

    # Event, Semaphore, Condition, Barrier and JoinableQueue shared by the 3 nodes.
    go, done, sem, cond = mp.Event(), mp.Event(), mp.Semaphore(2), mp.Condition()
    barrier, jq, syncq = mp.Barrier(4), mp.JoinableQueue(), mp.Queue()
    users = []
    for node, _, _ in nodes:
        with dragon.Policy(node=node):
            users.append(mp.Process(target=sync_user,
                                    args=(node, go, done, sem, cond, barrier, jq, syncq)))
            users[-1].start()
    assert not go.is_set()
    go.set()
    inside, waiting = 0, set()
    for _ in range(9):  # each user: in, out (of the semaphore), waiting (on the condition)
        kind, node = syncq.get(timeout=60)
        if kind == "waiting":
            waiting.add(node)
        else:
            inside += 1 if kind == "in" else -1
            assert inside <= 2, "3 inside a Semaphore(2)"
    assert inside == 0 and waiting == {n for n, _, _ in nodes}, (inside, waiting)
    with cond:
        done.set()
        cond.notify_all()
    assert barrier.wait(60) in range(4)
    for i in range(30):
        jq.put(i)
    for _ in users:
        jq.put(None)
    jq.join()  # every item taken and marked done, on the 3 nodes
    jobs = sorted(syncq.get(timeout=60)[1] for _ in range(30))
    assert jobs == list(range(30)), jobs
    for u in users:
        u.join(60)
        assert u.exitcode == 0, (u, u.exitcode)

    # Raw memory written here and an Event set after it: a process on another node that
    # saw the event set reads the new bytes.
    raw, ev = mp.RawArray("d", 1), mp.Event()
    with dragon.Policy(node=nodes[-1][0]):
        p = mp.Process(target=event_then_raw, args=(raw, ev, syncq))
        p.start()
    assert syncq.get(timeout=60) == "ready"
    raw[0] = 42.0
    ev.set()
    seen = syncq.get(timeout=60)
    assert seen == 42.0, "after is_set() on another node, raw memory read %r" % seen
    p.join(60)
    assert p.exitcode == 0, p.exitcode

    # A process on another node, then an os.fork() child that lives on: the parent's join
    # still sees the process end (the child closed its copy of the sentinel's write end).
    with dragon.Policy(node=nodes[-1][0]):
        p = mp.Process(target=exiter, args=(0,))
        p.start()
    hold_r, hold_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(hold_w)
        select.select([hold_r], [], [], 120)  # until the parent lets it go
        os._exit(0)
    os.close(hold_r)
    try:
        p.join(60)
        assert p.exitcode == 0, "a forked child kept a remote process's sentinel: %r" % p.exitcode
    finally:
        os.close(hold_w)
        os.waitpid(child, 0)

    # A Value and an Array changed under their locks by processes on the 3 nodes: exact.
    v, arr = mp.Value("i", 5), mp.Array("d", 4)
    counters = []
    for slot, (node, _, _) in enumerate(nodes):
        with dragon.Policy(node=node):
            counters.append(mp.Process(target=counter, args=(v, arr, slot, 200)))
            counters[-1].start()
    for c in counters:
        c.join(120)
        assert c.exitcode == 0, (c, c.exitcode)
    assert v.value == 5 + 3 * 200, v.value
    assert list(arr) == [0.5, 1.5, 2.5, 3.0], list(arr)

    r, w = mp.Pipe(duplex=False)
    with dragon.Policy(node=far):
        rp = mp.Process(target=recurse, args=(w, []))
        rp.start()
    w.close()
    got = read_to_eof(r)
    assert sorted(got) == [[], [0], [0, 0], [0, 1], [1], [1, 0], [1, 1]], got
    rp.join(60)
    assert rp.exitcode == 0, rp.exitcode

    # Without a policy, starts go round-robin over the job's nodes (equal CPUs: one each).
    rrq = mp.Queue()
    plain = [mp.Process(target=report_host, args=(rrq,)) for _ in nodes]
    for p in plain:
        p.start()
    assert {rrq.get(timeout=60) for _ in nodes} == {h for _, h, _ in nodes}
    for p in plain:
        p.join(60)
        assert p.exitcode == 0

    # A manager whose server runs on node 1, used from the 3 nodes (each proxy a connection
    # to its server: an address of node 1, found there by a Client of any node).
    with dragon.Policy(node=nodes[1][0]):
        manager = mp.Manager()
    assert manager._process._popen.node == nodes[1][0]
    from multiprocessing.connection import Client
    from dragon.connection import Connection as DragonConnection
    with Client(manager.address, authkey=mp.current_process().authkey) as probe:
        # Found by name on node 1 (not the OS socket: the path is of node 1's /tmp).
        assert isinstance(probe, DragonConnection), type(probe)
    with manager:
        d, lst = manager.dict(), manager.list()
        musers = []
        for node, _, _ in nodes:
            with dragon.Policy(node=node):
                musers.append(mp.Process(target=manager_user, args=(d, lst, node)))
                musers[-1].start()
        for u in musers:
            u.join(60)
            assert u.exitcode == 0, (u, u.exitcode)
        assert dict(d) == {n: h for n, h, _ in nodes}, dict(d)
        assert sorted(lst) == [n for n, _, _ in nodes], list(lst)

    # A manager with serializer="xmlrpclib", its server on node 1 at a TCP address of that
    # node, reached from node 2 and from here.
    with dragon.Policy(node=nodes[1][0]):
        xm = XmlQueueManager(address=("127.0.0.1", 0), authkey=b"xml", serializer="xmlrpclib")
        xm.start()
    try:
        with dragon.Policy(node=far):
            xp = mp.Process(target=xml_putter, args=(xm.address, b"xml"))
            xp.start()
        xp.join(60)
        assert xp.exitcode == 0, xp.exitcode
        assert xm.get_queue().get(timeout=30) == ["hello from", nodes[2][1]]
    finally:
        xm.shutdown()

    # A Listener of this node and a Client on another: the address is this node's.
    from multiprocessing.connection import Listener
    with Listener(("127.0.0.1", 0), authkey=b"secret") as listener:
        with dragon.Policy(node=far):
            cl = mp.Process(target=client_of, args=(listener.address, b"secret"))
            cl.start()
        with listener.accept() as conn:
            assert conn.recv() == ("hello from", nodes[2][1])
            conn.send("welcome")
            assert conn.recv_bytes() == b"z" * 100000
            cl.join(60)
            assert cl.exitcode == 0, cl.exitcode
            assert wait([conn], timeout=30) == [conn]  # its end closed: end of file here
            try:
                conn.recv()
            except EOFError:
                pass
            else:
                raise AssertionError("a message after the client closed")

    # Shared memory is raw memory of its node: an attach from another node is refused.
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with dragon.Policy(node=far):
            sa = mp.Process(target=shm_attacher, args=(shm.name, nodes[0][0]))
            sa.start()
        sa.join(60)
        assert sa.exitcode == 0, "an attach of shared memory from another node: %s" % sa.exitcode
    finally:
        shm.close()
        shm.unlink()

    # Raw memory crosses nodes as copies that synchronisation points keep coherent: two
    # writers of disjoint slices on two other nodes, no lock, then a value set here after.
    v, arr = mp.RawValue("i", 0), mp.RawArray("q", 1000)
    rq, wq = mp.Queue(), mp.Queue()
    raws = []
    for k, node in enumerate((nodes[1][0], nodes[2][0])):
        with dragon.Policy(node=node):
            raws.append(mp.Process(target=raw_user, args=(v, arr, k * 500, k * 500 + 500, rq, wq)))
            raws[-1].start()
    assert [wq.get(timeout=60) for _ in raws] == ["wrote", "wrote"]
    assert list(arr) == [i * i for i in range(1000)], "a raw write from another node was lost"
    v.value = 42
    for _ in raws:
        rq.put("go")
    assert [wq.get(timeout=60) for _ in raws] == [42, 42], "a raw read on another node was stale"
    for r in raws:
        r.join(60)
        assert r.exitcode == 0, (r, r.exitcode)
    import multiprocessing.heap
    buf, lock = multiprocessing.heap.BufferWrapper(4), mp.Lock()
    buf.create_memoryview().cast("i")[0] = 0
    heaps = []
    for node, _, _ in nodes:
        with dragon.Policy(node=node):
            heaps.append(mp.Process(target=heap_counter, args=(buf, lock, 100)))
            heaps[-1].start()
    for h in heaps:
        h.join(60)
        assert h.exitcode == 0, (h, h.exitcode)
    assert buf.create_memoryview().cast("i")[0] == 300, buf.create_memoryview().cast("i")[0]

    # A lock of this node whose holder on another node is killed (its node tells this one), and
    # one whose holder here is killed while processes of the other nodes wait on it.
    check_broken_lock(far, [nodes[1][0]], outq)
    check_broken_lock(next(n for n, h, _ in nodes if h == here), [nodes[1][0], far], outq)

    check_remote_templates(far, outq)
    check_parent_sentinel(nodes, outq)
    check_large_across(far)
    check_fd_relay(far)

    try:
        with dragon.Policy(node=99):
            mp.Process(target=exiter, args=(0,)).start()
    except ValueError as err:
        assert "no node 99" in str(err), err
    else:
        raise AssertionError("a node outside the job was accepted")
    print("py-across: ok 3 nodes, %d items, workers on %d other hosts, pool on %d hosts"
          % (count, len(remote_hosts), len(pool_hosts)), flush=True)


if __name__ == "__main__":
    main()
