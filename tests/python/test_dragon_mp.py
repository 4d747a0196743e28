# SPDX-License-Identifier: MIT
"""The dragon start method against a real dragond (a private one this test process starts):
processes, queues, pipes and synchronisation objects across real processes."""
import os
import queue
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

# An isolated runtime directory: the private dragond's socket goes there. Only in the test
# process: children import this module too, and must keep the runtime they were started in.
if "DRAGON_PYTEST_DIR" not in os.environ:
    os.environ["DRAGON_PYTEST_DIR"] = tempfile.mkdtemp(prefix="dragon-pytest-")
    os.environ["XDG_RUNTIME_DIR"] = os.environ["DRAGON_PYTEST_DIR"]
    os.environ.pop("DRAGON_SOCKET", None)

import multiprocessing as mp  # noqa: E402

import dragon  # noqa: E402,F401

CTX = mp.get_context("dragon")


def put_square(q, n):
    q.put((n, n * n, os.getpid()))


def put_pid(q):
    q.put(os.getpid())


def put_len(q, data):
    q.put(len(data))


def count_fds_of_socket(conn, q):
    """How many fds of this process are the socket `conn` has (its own fd included)."""
    inode = os.fstat(conn.fileno()).st_ino
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink("/proc/self/fd/" + fd) == "socket:[%d]" % inode
        except OSError:
            pass  # the listing's own fd, gone
    q.put(n)


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise RuntimeError("boom")


def sleep_forever():
    time.sleep(600)


def read_after_queue_gone(box, expected):
    import gc
    q = box.pop()  # the only reference to the queue, and so to its pool, in this process
    view = q.get(timeout=30)
    del q
    gc.collect()
    sys.exit(0 if bytes(view) == expected else 3)


def report_named_env_and_cwd(q, name):
    q.put((os.environb.get(name), os.getcwdb()))


def hold_reader(r, started):
    started.set()
    time.sleep(600)


def serve_echo(address_q):
    from dragon.connection import Listener
    with Listener(("127.0.0.1", 0)) as listener:
        address_q.put(listener.address)
        with listener.accept() as c:
            c.send(c.recv())


def report_parent(q):
    parent = mp.parent_process()
    q.put((mp.current_process().name, parent.pid if parent else None,
           parent.is_alive() if parent else None, mp.get_start_method()))


def echo_pipe(conn):
    while True:
        try:
            obj = conn.recv()
        except EOFError:
            return
        conn.send(("echo", obj))


def recv_one(conn):
    conn.recv()


def write_to_received_fd(conn, data):
    from multiprocessing import reduction
    fd = reduction.recv_handle(conn)
    os.write(fd, data)
    os.close(fd)


def close_after_ready(conn):
    conn.send("ready")
    conn.close()


def forward_pipe_end(q, back):
    end = q.get(timeout=30)
    try:
        end.fileno()
        back.put("it had an fd")
    except OSError as e:
        back.put(str(e))


def produce(q, who, n):
    for i in range(n):
        q.put((who, i))


def produce_then_set(q, who, n, done):
    produce(q, who, n)
    done.set()


def write_three(w):
    for i in range(3):
        w.send(i)


def hold_lock(lock, held, release):
    with lock:
        held.set()
        release.wait(30)


def put_after(q, started, item):
    started.set()
    q.put(item)  # blocks: the queue is full


def wait_for_lock(lock, started, box):
    started.set()
    try:
        box.put(("acquired", lock.acquire(timeout=120)))
    except dragon.BrokenLockError as e:
        box.put(("broken", str(e)))


def hold_and_exit(lock, q, code, times=1, release=False):
    for _ in range(times):
        lock.acquire()
    if release:
        for _ in range(times):
            lock.release()
    q.put("held")
    q.close()
    q.join_thread()
    os._exit(code)


def set_event_later(ready, event):
    ready.wait(30)
    event.set()


def notify_condition(cond, box):
    with cond:
        box.put("ready")
        cond.notify_all()


def read_barrier_for_ever(barrier, started):
    started.set()
    while True:
        barrier.broken, barrier.n_waiting


def wait_on_condition(cond, box):
    from dragon.synchronize import BrokenLockError
    try:
        with cond:
            box.put("waiting")
            cond.wait()
        box.put("woken")
    except BrokenLockError:
        box.put("BrokenLockError")


def die_holding(lock):
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def report_barrier(barrier, q):
    q.put((barrier.broken, barrier.n_waiting, barrier.wait(30)))


def barrier_party(barrier, q):
    q.put(barrier.wait(30))


def consume_tasks(jq):
    while True:
        item = jq.get()
        jq.task_done()
        if item is None:
            return


def send_big(q, size):
    q.put(bytes(range(256)) * (size // 256))


def release_many(sem, n):
    for _ in range(n):
        sem.release()


def acquire_many(sem, n):
    for _ in range(n):
        if not sem.acquire(True, 60):
            raise SystemExit(3)


_global_event = None


def set_global_event(ev):
    global _global_event
    _global_event = ev


_calls = 0


def count_call(i):
    """(how many calls this process has run, this one included; i)"""
    global _calls
    _calls += 1
    return _calls, i


def wait_global_event(timeout):
    count_call(0)
    return _global_event.wait(timeout)


def run_program(prefix, text, *args, timeout=120):
    """Runs `text` as a Python file with `prefix` (the launcher, an interpreter...) and
    `args`, outside any dragond of this suite (no DRAGON_SOCKET); the CompletedProcess."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(text)
    env = dict(os.environ)
    env.pop("DRAGON_SOCKET", None)
    try:
        return subprocess.run([*prefix, f.name, *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
    finally:
        os.unlink(f.name)


class ProcessTest(unittest.TestCase):
    def test_start_join_and_exit_codes(self):
        q = CTX.Queue()
        ps = [CTX.Process(target=put_square, args=(q, i)) for i in range(4)]
        for p in ps:
            p.start()
        results = sorted(q.get(timeout=30) for _ in ps)
        for p in ps:
            p.join(30)
            self.assertEqual(p.exitcode, 0)
        self.assertEqual([r[:2] for r in results], [(i, i * i) for i in range(4)])
        self.assertEqual(sorted(r[2] for r in results), sorted(p.pid for p in ps))
        p = CTX.Process(target=exit_with, args=(3,))
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 3)
        p = CTX.Process(target=raise_error)
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 1)

    def test_terminate_kill_is_alive_and_sentinel(self):
        p = CTX.Process(target=sleep_forever)
        p.start()
        self.assertTrue(p.is_alive())
        p.join(0.05)
        self.assertIsNone(p.exitcode)
        p.terminate()
        r, _, _ = select.select([p.sentinel], [], [], 30)
        self.assertEqual(r, [p.sentinel], "the sentinel becomes ready when the process ends")
        p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGTERM)
        self.assertFalse(p.is_alive())
        p = CTX.Process(target=sleep_forever)
        p.start()
        p.kill()
        p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGKILL)
        p.close()

    def test_child_knows_its_name_parent_and_method(self):
        q = CTX.Queue()
        p = CTX.Process(target=report_parent, args=(q,), name="worker-7")
        p.start()
        name, ppid, alive, method = q.get(timeout=30)
        p.join(30)
        self.assertEqual((name, ppid, alive, method), ("worker-7", os.getpid(), True, "dragon"))


def wait_forked(pid, timeout=60):
    """The exit code of a child made with os.fork(), waited for with a deadline: a child stuck
    is killed and reported, never a hang of the suite."""
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("forked child %d still running after %s s" % (pid, timeout))
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def alive(pid):
    """True while pid runs (a zombie waiting for its reaper has ended)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def report_parent_alive(w):
    parent = mp.parent_process()
    w.send("alive" if parent.is_alive() else "not alive")
    parent.join(timeout=60)
    w.send("alive" if parent.is_alive() else "not alive")


def pidfds():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink("/proc/self/fd/" + fd) == "anon_inode:[pidfd]"
        except OSError:
            pass
    return n


def report_pidfds_around_parent_check(w):
    before = pidfds()
    alive = mp.parent_process().is_alive()
    w.send((before, alive, pidfds()))


def start_grandchild_reporting_parent(w):
    CTX.Process(target=report_parent_alive, args=(w,)).start()
    time.sleep(300)


def report_env_and_cwd(q):
    q.put((os.environ.get("DRAGON_TEST_VALUE"), os.getcwd(), os.getppid()))


class PolicyTest(unittest.TestCase):
    """On one node (tests/cluster/t_python_across.sh covers three)."""

    def test_every_policy_of_this_node_starts_here_and_others_are_refused(self):
        nodes = dragon.nodes()
        self.assertEqual(len(nodes), 1)
        here = nodes[0][0]
        q = CTX.Queue()
        for policy in (dragon.Policy(), dragon.Policy(node="local"), dragon.Policy(node=here)):
            with policy:
                p = CTX.Process(target=put_square, args=(q, 3))
                p.start()
            self.assertEqual(q.get(timeout=30)[:2], (3, 9))
            p.join(30)
            self.assertEqual(p.exitcode, 0)
        with dragon.Policy(node=here + 7):
            with self.assertRaisesRegex(ValueError, "no node %d in this job" % (here + 7)):
                CTX.Process(target=exit_with, args=(0,)).start()
        with dragon.Policy(node="no-such-host"):
            with self.assertRaisesRegex(ValueError, "no node 'no-such-host'"):
                CTX.Process(target=exit_with, args=(0,)).start()
        for bad in (None, 1.5, True, [0]):
            with self.assertRaises(TypeError):
                dragon.Policy(node=bad)

    def test_policies_nest_and_dragon_placement_sets_the_default(self):
        from dragon import policy
        with dragon.Policy(node=0):
            with dragon.Policy(node="local"):
                self.assertIsNone(policy.target_node())
            with dragon.Policy(node=99):
                with self.assertRaises(ValueError):
                    policy.target_node()
        old = os.environ.get("DRAGON_PLACEMENT")
        try:
            os.environ["DRAGON_PLACEMENT"] = "sideways"
            with self.assertRaisesRegex(ValueError,
                                        "DRAGON_PLACEMENT is 'local', 'roundrobin' or a node id"):
                policy.target_node()
            os.environ["DRAGON_PLACEMENT"] = "roundrobin"
            self.assertIsNone(policy.target_node())  # one node: every turn is this one
            self.assertEqual(policy.cpus(), os.cpu_count())
            os.environ["DRAGON_PLACEMENT"] = "42"
            with self.assertRaisesRegex(ValueError, "no node 42"):
                policy.target_node()
            os.environ["DRAGON_PLACEMENT"] = "local"
            self.assertIsNone(policy.target_node())
        finally:
            if old is None:
                os.environ.pop("DRAGON_PLACEMENT", None)
            else:
                os.environ["DRAGON_PLACEMENT"] = old


    def test_round_robin_turns_follow_the_cpus_and_start_here(self):
        from dragon.policy import _Turns
        turns = _Turns()
        known = [(0, "a", 3), (1, "b", 1)]
        self.assertEqual([turns.next(known, 0) for _ in range(8)], [0, 0, 1, 0] * 2)
        turns = _Turns()
        known = [(0, "a", 2), (1, "b", 2), (2, "c", 2)]
        self.assertEqual([turns.next(known, 1) for _ in range(6)], [1, 0, 2, 1, 0, 2])
        # A node not known (its CPUs) still gets turns; one that left the job gets none.
        turns = _Turns()
        self.assertEqual([turns.next([(0, "a", 0), (5, "b", 0)], 5) for _ in range(3)],
                         [5, 0, 5])
        self.assertEqual(turns.next([(0, "a", 0)], 5), 0)

    def test_a_pool_places_every_worker_by_the_policy_it_was_made_under(self):
        from dragon import policy
        with dragon.Policy(node="local") as local:
            pool = CTX.Pool(2)
        try:
            self.assertIs(pool._dragon_policy, local)
            self.assertTrue(all(p._dragon_policy is local for p in pool._pool))
            self.assertEqual(pool.map(abs, [-1, -2, 3]), [1, 2, 3])
        finally:
            pool.terminate()
            pool.join()
        self.assertEqual(CTX.cpu_count(), os.cpu_count())
        self.assertIsNone(policy.current())


class TemplateTest(unittest.TestCase):
    def test_a_signal_handler_runs_while_join_waits_for_a_child_dragond_started(self):
        # A fresh interpreter started by dragond (templates off): join() waits on its pidfd,
        # where Python's signal handlers run, so a handler that raises ends the join at once.
        import dragon.process as dp

        class Alarm(Exception):
            pass

        def ring(signum, frame):
            raise Alarm

        enabled, dp._TEMPLATES_ENABLED = dp._TEMPLATES_ENABLED, False
        template, dp._template = dp._template, None
        old = signal.signal(signal.SIGALRM, ring)
        p = CTX.Process(target=sleep_forever)
        try:
            p.start()
            self.assertIsInstance(p._popen, dp._DaemonPopen)
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            t0 = time.monotonic()
            with self.assertRaises(Alarm):
                p.join(60)
            self.assertLess(time.monotonic() - t0, 30)
            self.assertTrue(p.is_alive())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            dp._TEMPLATES_ENABLED = enabled
            dp._template = template
            p.kill()
            p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGKILL)

    def test_join_works_with_the_sentinel_past_fd_1024(self):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2048:
            self.skipTest("RLIMIT_NOFILE's hard limit is below 2048")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
        held = []
        try:
            while not held or held[-1] < 1100:
                held.append(os.open("/dev/null", os.O_RDONLY))
            for _ in range(2):  # the first a fresh interpreter, the next from the template
                p = CTX.Process(target=time.sleep, args=(0,))
                p.start()
                self.assertGreater(p.sentinel, 1024)
                p.join(30)
                self.assertEqual(p.exitcode, 0)
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    """Processes after a parent's first are forked by its template (python/dragon/_template.py)."""

    def start(self, target, *args):
        p = CTX.Process(target=target, args=args)
        p.start()
        return p

    def warm(self):
        """The parent's template, ready (it prepares once, in the background, after the
        parent's first start)."""
        from dragon import process as dp
        if dp._template is not None and dp._template.broken:
            dp._template = None  # an earlier test killed it: the next start makes another
        p = self.start(exit_with, 0)
        p.join(30)
        template = dp._template
        if not template.ready():  # its "ready" message is on its socket, or comes there
            self.assertTrue(select.select([template._sock], [], [], 60)[0],
                            "the template never said it was ready")
            self.assertTrue(template.ready())
        p = self.start(exit_with, 0)
        p.join(30)
        self.assertEqual(type(p._popen).__name__, "_TemplatePopen")
        return template

    def test_exit_codes_signals_and_liveness_of_template_children(self):
        self.warm()
        p = self.start(exit_with, 3)
        p.join(30)
        self.assertEqual(type(p._popen).__name__, "_TemplatePopen")
        self.assertEqual(p.exitcode, 3)
        p = self.start(sleep_forever)
        self.assertTrue(p.is_alive())
        self.assertIsNone(p.exitcode)
        p.join(0.05)
        p.join(-1)  # a negative timeout is a try, as with the stdlib
        self.assertIsNone(p.exitcode)
        p.kill()
        p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGKILL)  # stored by the template when it reaped
        p = self.start(sleep_forever)
        p.terminate()
        p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGTERM)
        p = self.start(raise_error)
        p.join(30)
        self.assertEqual(p.exitcode, 1)

    def test_an_environment_and_cwd_that_are_not_utf8_reach_the_children(self):
        # Both kinds of start (a fresh interpreter from dragond, then the template's); every
        # start that dragond made failed with TypeError before.
        import dragon.process as dp
        name, value = b"MP_DRAGON_NOT_UTF8", b"\xff\xfe-value"
        where = tempfile.mkdtemp(prefix="dragon-\udcff-")
        old_cwd = os.getcwd()
        os.environb[name] = value
        q = CTX.Queue()
        try:
            os.chdir(where)
            for fresh in (True, False):
                enabled, template = dp._TEMPLATES_ENABLED, dp._template
                if fresh:
                    dp._TEMPLATES_ENABLED, dp._template = False, None
                try:
                    p = CTX.Process(target=report_named_env_and_cwd, args=(q, name))
                    p.start()
                finally:
                    dp._TEMPLATES_ENABLED, dp._template = enabled, template
                if fresh:  # (the next is the template's unless an earlier test broke it)
                    self.assertEqual(type(p._popen).__name__, "_DaemonPopen")
                p.join(30)
                self.assertEqual(p.exitcode, 0)
                self.assertEqual(q.get(timeout=30), (value, os.fsencode(where)))
        finally:
            os.chdir(old_cwd)
            del os.environb[name]
            os.rmdir(where)

    def test_children_see_the_environment_and_cwd_of_their_start(self):
        template = self.warm()
        q = CTX.Queue()
        old = os.getcwd()
        with tempfile.TemporaryDirectory() as d:
            os.environ["DRAGON_TEST_VALUE"] = "one"
            os.chdir(d)
            try:
                p = self.start(report_env_and_cwd, q)
                first = q.get(timeout=30)
                p.join(30)
                os.environ["DRAGON_TEST_VALUE"] = "two"
                p = self.start(report_env_and_cwd, q)
                second = q.get(timeout=30)
                p.join(30)
            finally:
                os.chdir(old)
                del os.environ["DRAGON_TEST_VALUE"]
            self.assertEqual(first[:2], ("one", os.path.realpath(d)))
            self.assertEqual(second[:2], ("two", os.path.realpath(d)))
        self.assertEqual(type(p._popen).__name__, "_TemplatePopen")
        self.assertNotEqual(first[2], os.getpid())  # the template is their OS parent

    def test_a_grandchild_outlives_its_template_child_parent_and_sees_it_go(self):
        # CPython's test_parent_process, on a template child: the processes that child starts
        # are in the job (dragond finds it through the child's parent), so they do not end
        # with the child's connection.
        self.warm()
        r, w = CTX.Pipe(duplex=False)
        p = self.start(start_grandchild_reporting_parent, w)
        self.assertEqual(type(p._popen).__name__, "_TemplatePopen")
        self.assertTrue(r.poll(60))
        self.assertEqual(r.recv(), "alive")
        p.terminate()
        p.join(30)
        self.assertTrue(r.poll(60), "the grandchild did not report its parent's end")
        self.assertEqual(r.recv(), "not alive")

    def test_a_child_opens_its_parent_pidfd_only_when_it_asks(self):
        r, w = CTX.Pipe(duplex=False)
        for _ in range(2):  # a fresh interpreter if this is the first start, a template child
            p = self.start(report_pidfds_around_parent_check, w)
            self.assertTrue(r.poll(60))
            self.assertEqual(r.recv(), (0, True, 1))
            p.join(30)

    def test_a_parent_pid_taken_by_another_process_reads_as_a_parent_gone(self):
        from dragon._child import _LocalParentSentinel, start_time
        from multiprocessing.connection import wait
        mine = _LocalParentSentinel(os.getpid(), start_time(os.getpid()))
        self.assertEqual(wait([mine], 0), [])  # this process: alive
        # The same pid with another start time: a later process that reused the parent's pid.
        reused = _LocalParentSentinel(os.getpid(), str(int(start_time(os.getpid())) + 1))
        self.assertEqual(wait([reused], 0), [reused])
        self.assertEqual(start_time(2 ** 22 + 1), None)  # above pid_max: no such process
        for s in (mine, reused):
            os.close(s.fileno())

    def test_template_children_are_listed_by_dragond_which_holds_their_status(self):
        from dragon import _runtime
        self.warm()
        p = self.start(sleep_forever)
        # The template told dragond of p's start before it adopted the spare that the next
        # start uses (one connection, handled in order): once that start returns, p is listed.
        q = self.start(exit_with, 7)
        self.assertEqual(type(p._popen).__name__, "_TemplatePopen")
        listed = {e["puid"]: e for e in _runtime.client().list_processes()}
        e = listed[p._popen._puid]
        self.assertEqual((e["pid"], e["running"], e["label"]), (p.pid, True, p.name))
        p.kill()
        p.join(30)
        q.join(30)
        self.assertEqual((p.exitcode, q.exitcode), (-signal.SIGKILL, 7))
        listed = {e["puid"]: e for e in _runtime.client().list_processes()}
        self.assertEqual((listed[p._popen._puid]["running"], listed[p._popen._puid]["signal"]),
                         (False, signal.SIGKILL))
        self.assertEqual(listed[q._popen._puid]["exit_code"], 7)

    def test_a_template_child_outliving_its_template_ends_with_status_255(self):
        template = self.warm()
        p = self.start(sleep_forever)
        self.assertEqual(type(p._popen).__name__, "_TemplatePopen")
        # Its end waited for: a start sent while a SIGKILLed template still holds its socket
        # is one it may have taken (the parent then refuses to start the process again).
        self.kill_template(template)
        p.kill()  # through its pidfd: the parent needs no template for that
        p.join(30)
        self.assertEqual(p.exitcode, 255)  # its status went with its parent, the template
        p = self.start(exit_with, 0)  # finds the template gone (the next test starts another)
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_DaemonPopen", 0))

    def test_a_template_gone_with_the_request_unread_is_lost_and_one_that_read_it_may_have(self):
        # Unread, the request started nothing (the peer's close resets the connection) and the
        # process is started anew; read, the template may have handed it on, so the parent
        # does not start it again. A bare template over a socket pair plays the template.
        import socket
        from dragon import _template as _template_wire
        from dragon import process as dp
        for read_it, expected in ((False, dp._TemplateLost), (True, dp._MayHaveStarted)):
            with self.subTest(read_it=read_it):
                t = object.__new__(dp._Template)
                t._lock, t._last_env, t._ready, t.broken = threading.Lock(), None, True, False
                t._sock, theirs = socket.socketpair()
                self.addCleanup(t._sock.close)

                def peer():
                    with theirs:
                        if select.select([theirs], [], [], 30)[0] and read_it:
                            _template_wire.recv_message(theirs)

                th = threading.Thread(target=peer)
                th.start()
                with self.assertRaises(expected):
                    t.start((b"payload", "/", "name", 0, -1), [])
                th.join(30)
                self.assertTrue(t.broken)

    def test_a_remote_template_given_up_while_a_start_waited_takes_no_more_requests(self):
        # Another thread's start, interrupted after the template took its request, gave the
        # template up; its answer may still come. A start that waited on the lock meanwhile
        # must not send a request whose answer would be that one (another process's pid).
        from dragon import process as dp
        t = object.__new__(dp._RemoteTemplate)
        t.node, t._lock, t._last_env, t._ready, t.broken = 1, threading.Lock(), None, True, True
        sent = []

        class Requests:  # the seam: the channel the template receives from
            def send(self, message, timeout=None):
                sent.append(message)

        t._requests = Requests()
        with self.assertRaises(dp._TemplateLost):
            t.start((b"payload", "/", "name"))
        self.assertEqual(sent, [])

    def test_lent_fds_received_inside_their_target_range_are_placed_without_loss(self):
        # A spare receives the lent fds at whatever numbers are free, which may lie in the
        # range they go to (here the second at the first's target): each must reach its place.
        from dragon import _template
        base = 200
        pipes = [os.pipe2(os.O_NONBLOCK) for _ in range(3)]  # a lost fd: an empty read fails
        self.addCleanup(lambda: [os.close(fd) for r, w in pipes for fd in (r, w)
                                 if fd >= 0 and _fd_open(fd)])
        received = [250, base, base + 2]  # where the write ends came
        for (_, w), fd in zip(pipes, received):
            os.dup2(w, fd)
        try:
            _template.place_fds(received, base)
            for i, (r, _) in enumerate(pipes):
                os.write(base + i, b"%d" % i)
                self.assertEqual(os.read(r, 10), b"%d" % i)
            self.assertFalse(_fd_open(250))
        finally:
            for fd in (250, base, base + 1, base + 2):
                if _fd_open(fd):
                    os.close(fd)

    def test_an_os_fork_child_that_exits_leaves_the_private_dragond_to_its_parent(self):
        # Under plain python3 the process starts a private dragond and stops it at exit; an
        # os.fork() child that exits normally runs the same atexit functions, and must not
        # stop its parent's dragond (the parent's next start failed).
        script = (
            "import os, sys, multiprocessing as mp\n"
            "import dragon\n"
            "def f():\n    pass\n"
            "if __name__ == '__main__':\n"
            "    ctx = mp.get_context('dragon')\n"
            "    p = ctx.Process(target=f); p.start(); p.join(30)\n"
            "    from dragon import _runtime, process as dp\n"
            "    import select\n"
            "    t = dp._template  # ready before the fork: the second start must use it\n"
            "    if not t.ready() and select.select([t._sock], [], [], 60)[0]:\n"
            "        t.ready()\n"
            "    dragond = _runtime._private.pid\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        sys.exit(0)\n"
            "    os.waitpid(pid, 0)\n"
            "    with open('/proc/%d/stat' % dragond) as st:\n"
            "        state = st.read().rsplit(')', 1)[1].split()[0]\n"
            "    print('dragond', 'gone' if state in 'ZX' else 'runs', flush=True)\n"
            "    p = ctx.Process(target=f); p.start(); p.join(30)\n"
            "    print('second', type(p._popen).__name__, p.exitcode, flush=True)\n")
        r = run_program([sys.executable], script, timeout=60)
        self.assertEqual((r.returncode, r.stdout),
                         (0, "dragond runs\nsecond _TemplatePopen 0\n"), r.stderr)

    def test_a_main_module_without_a_main_guard_is_the_stdlib_error_not_a_chain_of_templates(self):
        # The template imports the main module as a spawn child does, so a module that starts
        # a process at its top level must meet the same guard there: the stdlib's
        # bootstrapping RuntimeError, which ends the template before it is ready. Without it
        # the template started a template of its own (and ran the program's top level again),
        # which did the same, for as long as the program lived.
        script = (
            "import multiprocessing as mp, select, time\n"
            "import dragon\n"
            "from dragon import process as dp\n"
            "def f():\n    pass\n"
            "ctx = mp.get_context('dragon')\n"
            "p = ctx.Process(target=f); p.start(); p.join(60)\n"
            "print('exitcode', p.exitcode, flush=True)\n"
            "t = dp._template\n"
            "deadline = time.monotonic() + 60\n"
            "while not t.ready() and not t.broken and time.monotonic() < deadline:\n"
            "    select.select([t._sock], [], [], 1)\n"
            "print('template', 'ready' if t.ready() else 'broken' if t.broken else 'waiting',\n"
            "      flush=True)\n")
        for prefix in [[sys.executable]] + [[LauncherTest.LAUNCHER]] * bool(LauncherTest.LAUNCHER):
            r = run_program(prefix, script, timeout=180)
            self.assertEqual((r.returncode, r.stdout), (0, "exitcode 1\ntemplate broken\n"),
                             (prefix, r.stderr))
            self.assertIn("An attempt has been made to start a new process before the\n"
                          "        current process has finished its bootstrapping phase.",
                          r.stderr)

    def test_a_stock_fork_of_a_process_makes_a_template_of_its_own(self):
        # The parent's template serves the parent alone (its socket is the parent's): a forked
        # child starts from no template (_after_fork_in_child), and its starts make its own.
        from dragon import process as dp
        template = self.warm()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if dp._template is None:
                    for _ in range(3):
                        p = self.start(exit_with, 0)
                        p.join(30)
                        if p.exitcode != 0:
                            break
                    else:
                        code = 0 if dp._template not in (None, template) else 2
            finally:
                os._exit(code)
        self.assertEqual(wait_forked(pid), 0)
        p = self.start(exit_with, 0)  # the parent's template still serves it
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_TemplatePopen", 0))
        self.assertIs(dp._template, template)

    def kill_template(self, template):
        """SIGKILLs the template and returns once it has ended."""
        pidfd = os.pidfd_open(template._pid)
        try:
            os.kill(template._pid, signal.SIGKILL)
            self.assertTrue(select.select([pidfd], [], [], 60)[0], "the template did not end")
        finally:
            os.close(pidfd)

    def test_processes_still_start_when_the_template_is_killed(self):
        template = self.warm()
        self.kill_template(template)
        q = CTX.Queue()
        for _ in range(2):
            p = self.start(put_square, q, 4)
            self.assertEqual(q.get(timeout=30)[:2], (4, 16))
            p.join(30)
            self.assertEqual(p.exitcode, 0)
        self.assertEqual(type(p._popen).__name__, "_DaemonPopen")


    def test_a_pipe_end_of_a_start_that_falls_back_from_a_lost_template_is_counted_once(self):
        # The start pickles the writer end for the template (counting it for the child), finds
        # the template gone, and starts a fresh interpreter, which pickles and counts again:
        # the first count must be given back, or the reader never sees end of file.
        template = self.warm()
        self.kill_template(template)
        r, w = CTX.Pipe(duplex=False)
        p = self.start(close_after_ready, w)
        w.close()
        self.assertEqual(type(p._popen).__name__, "_DaemonPopen")
        self.assertEqual(r.recv(), "ready")
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        self.assertTrue(r.poll(30), "no end of file: a writer is still counted")
        with self.assertRaises(EOFError):
            r.recv()

    def test_a_start_left_unread_by_a_template_that_ended_runs_as_a_fresh_interpreter(self):
        # The request lies unread in the stopped template's socket when it is killed: nothing
        # took it, so the start is made again, once, as a fresh interpreter. (One the template
        # read and did not answer fails instead: the bare template test above.)
        import fcntl
        import struct
        import termios
        template = self.warm()
        os.kill(template._pid, signal.SIGSTOP)

        def never_left_stopped():
            try:
                os.kill(template._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.addCleanup(never_left_stopped)
        outcome = []

        def start():
            try:
                outcome.append(self.start(exit_with, 0))
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=start)
        t.start()
        try:
            # Once the request waits unread in the stopped template's socket, it ends.
            deadline = time.monotonic() + 60
            while not struct.unpack("i", fcntl.ioctl(template._sock, termios.TIOCOUTQ,
                                                     b"\0" * 4))[0]:
                self.assertLess(time.monotonic(), deadline, "the request was never sent")
                time.sleep(0.001)
            self.kill_template(template)
        finally:
            t.join(60)
        self.assertEqual(len(outcome), 1)
        p = outcome[0]
        self.assertIsInstance(p, CTX.Process, outcome)
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_DaemonPopen", 0))
        p = self.start(exit_with, 0)  # later starts are fresh interpreters
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_DaemonPopen", 0))

    def kill_spare(self, template):
        """SIGKILLs the template's idle spare (its one child) and waits for it to end: the
        next start forks the spare it hands its request to, with that request's fds open."""
        spares = set()
        for tid in os.listdir("/proc/%d/task" % template._pid):
            with open("/proc/%d/task/%s/children" % (template._pid, tid)) as f:
                spares.update(int(x) for x in f.read().split())
        self.assertEqual(len(spares), 1, "the template has one child, its spare")
        spare = spares.pop()
        pidfd = os.pidfd_open(spare)
        os.kill(spare, signal.SIGKILL)
        self.assertTrue(select.select([pidfd], [], [], 60)[0])
        os.close(pidfd)
        return spare

    def test_a_killed_spare_is_replaced(self):
        template = self.warm()
        spare = self.kill_spare(template)
        q = CTX.Queue()
        p = self.start(put_square, q, 5)
        self.assertEqual(q.get(timeout=30)[:2], (5, 25))
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_TemplatePopen", 0))
        self.assertNotEqual(p.pid, spare)

    def test_a_spare_forked_for_a_request_keeps_none_of_the_fds_lent_with_it(self):
        # The request's fds are open in the template while it forks that spare: the child
        # has them once, where its request put them, not also at the template's numbers.
        template = self.warm()
        self.kill_spare(template)
        here, there = CTX.Pipe()
        q = CTX.Queue()
        p = self.start(count_fds_of_socket, there, q)
        self.assertEqual(q.get(timeout=30), 1)
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_TemplatePopen", 0))

    def test_an_interrupt_while_the_template_starts_leaves_no_reply_to_the_next_start(self):
        # Ctrl-C while waiting for the template's answer: that answer, unread, must not
        # answer the next start (which would then take the first child's pid and pidfd).
        from dragon import process as dp
        template = self.warm()
        real = dp._template_wire.recv_message
        interrupted = []

        def recv_message(sock):
            if not interrupted and sock is template._sock:
                interrupted.append(True)
                raise KeyboardInterrupt
            return real(sock)

        dp._template_wire.recv_message = recv_message
        try:
            with self.assertRaises(KeyboardInterrupt):
                self.start(exit_with, 0)
        finally:
            dp._template_wire.recv_message = real
        self.assertTrue(template.broken)
        q = CTX.Queue()
        p = self.start(put_pid, q)
        self.assertEqual(q.get(timeout=30), p.pid)
        p.join(30)
        self.assertEqual(p.exitcode, 0)

    def test_a_template_that_stops_on_a_bad_request_lets_the_next_start_through(self):
        # A request the template refuses (here a length over its limit) stops it reading; it
        # lives on while a child does, and must close its end so that the parent's next start
        # sees it gone (and starts the process anew) instead of waiting for an answer.
        template = self.warm()
        sleeper = self.start(sleep_forever)
        try:
            template._sock.sendall((0x40000001).to_bytes(4, "little"))
            box = []
            t = threading.Thread(target=lambda: box.append(self.start(exit_with, 7)),
                                 daemon=True)
            t.start()
            t.join(60)
            self.assertFalse(t.is_alive(), "the start waited for a template that stopped")
            p = box[0]
            p.join(30)
            self.assertEqual((type(p._popen).__name__, p.exitcode), ("_DaemonPopen", 7))
            self.assertTrue(template.broken)
        finally:
            sleeper.kill()
            sleeper.join(30)

    def test_a_payload_over_the_template_limit_starts_as_a_fresh_interpreter(self):
        from dragon import process as dp
        template = self.warm()
        limit = dp._template_wire.MAX_MESSAGE
        dp._template_wire.MAX_MESSAGE = 1 << 16
        try:
            q = CTX.Queue()
            p = self.start(put_len, q, b"x" * (1 << 17))
        finally:
            dp._template_wire.MAX_MESSAGE = limit
        self.assertEqual(q.get(timeout=30), 1 << 17)
        p.join(30)
        self.assertEqual((type(p._popen).__name__, p.exitcode), ("_DaemonPopen", 0))
        self.assertFalse(template.broken, "one large start does not give the template up")


class QueueTest(unittest.TestCase):
    def test_stdlib_queue_class_flushes_what_was_put_when_the_program_ends(self):
        # multiprocessing.queues.Queue made with the dragon context (a dragon Pipe inside, as
        # concurrent.futures' call queue has): a program that puts and ends at once, with a
        # consumer still reading, delivers every item (its feeder flushes at exit).
        script = (
            "import multiprocessing as mp, multiprocessing.queues as mq, dragon\n"
            "def consume(q):\n"
            "    n = 0\n"
            "    while q.get() is not None:\n"
            "        n += 1\n"
            "    print('consumed', n, flush=True)\n"
            "if __name__ == '__main__':\n"
            "    ctx = mp.get_context('dragon')\n"
            "    q = mq.Queue(ctx=ctx)\n"
            "    assert type(q._writer).__module__ == 'dragon.connection'\n"
            "    ctx.Process(target=consume, args=(q,)).start()\n"
            "    for i in range(20000):\n"
            "        q.put(i)\n"
            "    q.put(None)\n")
        env, path = private_runtime_env("flush.py", script)
        out = subprocess.run([sys.executable, path], capture_output=True, text=True, env=env,
                             timeout=120)
        self.assertEqual((out.returncode, out.stdout), (0, "consumed 20000\n"), out.stderr)

    def test_fifo_timeouts_and_sizes(self):
        q = CTX.Queue(maxsize=2)
        self.assertTrue(q.empty())
        q.put(1)
        q.put_nowait(2)
        self.assertTrue(q.full())
        self.assertEqual(q.qsize(), 2)
        t0 = time.monotonic()
        with self.assertRaises(queue.Full):
            q.put(3, timeout=0.05)
        self.assertGreaterEqual(time.monotonic() - t0, 0.04)
        with self.assertRaises(queue.Full):
            q.put_nowait(3)
        self.assertEqual([q.get(), q.get_nowait()], [1, 2])
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.05)
        with self.assertRaises(queue.Empty):
            q.get_nowait()
        q.close()
        with self.assertRaises(ValueError):
            q.put(1)

    def test_an_unbounded_queue_takes_more_than_its_channel_holds_without_blocking(self):
        # The stdlib's unbounded put never blocks: items past the channel's 4096 wait in this
        # process's buffer and its feeder sends them, in order.
        q = CTX.Queue()
        done = []
        t = threading.Thread(target=lambda: ([q.put(i) for i in range(10000)],
                                             done.append(True)), daemon=True)
        t.start()
        t.join(60)
        self.assertEqual(done, [True], "put blocked on an unbounded queue")
        self.assertEqual(q.qsize(), 10000)
        self.assertEqual([q.get(timeout=30) for _ in range(10000)], list(range(10000)))
        q.join_thread()

    def test_a_process_that_ends_with_items_in_its_buffer_sends_them_first(self):
        q = CTX.Queue()
        done = CTX.Event()
        p = CTX.Process(target=produce_then_set, args=(q, 0, 10000, done))
        p.start()
        self.assertTrue(done.wait(60))  # all put, most of them in its buffer, and it ends now
        got = [q.get(timeout=20) for _ in range(10000)]
        p.join(60)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(got, [(0, i) for i in range(10000)])

    def test_four_producers_deliver_everything_once(self):
        q = CTX.Queue()
        ps = [CTX.Process(target=produce, args=(q, w, 500)) for w in range(4)]
        for p in ps:
            p.start()
        got = [q.get(timeout=30) for _ in range(2000)]
        for p in ps:
            p.join(30)
        self.assertEqual(sorted(got), sorted((w, i) for w in range(4) for i in range(500)))
        for w in range(4):
            self.assertEqual([i for who, i in got if who == w], list(range(500)), "FIFO per producer")

    def test_large_payload_crosses_processes_whole(self):
        q = CTX.Queue()
        size = 4 << 20
        p = CTX.Process(target=send_big, args=(q, size))
        p.start()
        data = q.get(timeout=60)
        p.join(30)
        self.assertEqual(data, bytes(range(256)) * (size // 256))

    def test_module_level_constructors_build_dragon_objects(self):
        old = mp.get_start_method(allow_none=True)
        mp.set_start_method("dragon", force=True)
        try:
            self.assertEqual(type(mp.Queue()).__module__, "dragon.queues")
            self.assertEqual(type(mp.Lock()).__module__, "dragon.synchronize")
            self.assertEqual(type(mp.Pipe()[0]).__module__, "dragon.connection")
        finally:
            mp.set_start_method(old, force=True)

    def test_joinable_queue_join_waits_for_task_done(self):
        jq = CTX.JoinableQueue()
        p = CTX.Process(target=consume_tasks, args=(jq,))
        p.start()
        for i in range(20):
            jq.put(i)
        jq.put(None)
        jq.join()
        self.assertTrue(jq.empty())
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        with self.assertRaises(ValueError):
            jq.task_done()

    def test_unbounded_joinable_queue_takes_more_items_than_its_channel_holds(self):
        # 10,000 put before any consumer starts (the channel holds 4096): no put blocks, and
        # join() waits for every one of them to be done.
        from dragon.queues import UNBOUNDED_CAPACITY
        n = UNBOUNDED_CAPACITY * 2 + 1808
        jq = CTX.JoinableQueue()
        for i in range(n):
            jq.put(i, timeout=30)
        self.assertEqual(jq.qsize(), n)
        jq.put(None)
        p = CTX.Process(target=consume_tasks, args=(jq,))
        p.start()
        jq.join()
        self.assertTrue(jq.empty())
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        with self.assertRaises(ValueError):
            jq.task_done()

    def test_an_item_of_many_out_of_band_buffers_arrives(self):
        # 70,000 buffers in one item (the receiver took at most 65,536 and lost the item).
        import pickle
        q = CTX.Queue()
        n = 70000
        q.put([pickle.PickleBuffer(bytearray([i % 251])) for i in range(n)])
        got = q.get(timeout=30)
        self.assertEqual(len(got), n)
        self.assertEqual([bytes(b)[0] for b in got[:300]], [i % 251 for i in range(300)])
        self.assertEqual(bytes(got[-1]), bytes([(n - 1) % 251]))

    def test_a_put_interrupted_while_it_waits_for_room_keeps_no_block(self):
        # The item was written into a pool block before the put waited for room; a signal
        # handler that raises ends the put, and the block must go back to the pool.
        q = CTX.Queue(1)
        q.put(b"first")
        pool = q._channel.pool
        before = pool.stats()["allocation_count"]

        class Interrupted(Exception):
            pass

        def interrupt(signum, frame):
            raise Interrupted

        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            for _ in range(3):
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                with self.assertRaises(Interrupted):
                    q.put(b"x" * (1 << 20), timeout=30)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        self.assertEqual(pool.stats()["allocation_count"], before)
        self.assertEqual(q.get(timeout=30), b"first")

    def test_a_view_that_get_returned_outlives_its_queue(self):
        # An out-of-band buffer arrives as a view of the pool block; once the child drops the
        # queue (its only reference to that pool), the view must still read the bytes (the
        # pool was unmapped under it: the child died of SIGSEGV).
        import pickle
        data = bytes(range(256)) * 4096
        q = CTX.Queue()
        q.put(pickle.PickleBuffer(bytearray(data)))
        p = CTX.Process(target=read_after_queue_gone, args=([q], data))
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 0)

    def test_simple_queue(self):
        sq = CTX.SimpleQueue()
        self.assertTrue(sq.empty())
        sq.put({"a": 1})
        self.assertFalse(sq.empty())
        self.assertEqual(sq.get(), {"a": 1})


def hold_end_and_report(conn, ready):
    ready.send("holding")
    ready.close()
    while True:
        signal.pause()  # holding conn until killed


def relay_joined(descriptor, key):
    """This process's end of relay link `key` (as connection.fileno() makes it for a Pipe end
    lent by a process of another node), as a socket."""
    import socket
    from dragon import _fdrelay
    return socket.socket(fileno=_fdrelay.relay().join(key, descriptor))


def relay_write(descriptor, key, data):
    from multiprocessing import reduction
    fd = reduction.recvfds(relay_joined(descriptor, key), 1)[0]
    os.write(fd, data)
    os.close(fd)  # the process ends at once: its relay sends the data before its end


def relay_read_and_echo(descriptor, key, out):
    import socket
    from multiprocessing import reduction
    sock = relay_joined(descriptor, key)
    fd = reduction.recvfds(sock, 1)[0]
    got = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        got += chunk
    out.send_bytes(got)
    echo = socket.socket(fileno=reduction.recvfds(sock, 1)[0])
    while True:
        chunk = echo.recv(4096)
        if not chunk:
            break
        echo.sendall(chunk.upper())
    echo.close()


class FdRelayTest(unittest.TestCase):
    """The fd relay (dragon/_fdrelay.py) between two processes of this node, driven as a Pipe
    end lent to a process of another node drives it: the parent lends a link, the child joins
    it, the parent settles it when the child has ended (the cluster test py_across.py covers
    it between nodes, through Pipe ends)."""

    def lend(self):
        import socket
        from dragon import _fdrelay
        ours, lent = socket.socketpair()
        relay = _fdrelay.relay()
        key = relay.lend(os.dup(lent.fileno()))
        lent.close()
        self.addCleanup(ours.close)
        return relay, key, ours

    def test_a_file_written_through_the_relay_is_there_once_the_writer_is_settled(self):
        from multiprocessing import reduction
        relay, key, ours = self.lend()
        p = CTX.Process(target=relay_write, args=(relay.descriptor, key, b"relayed bytes"))
        p.start()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "f")
            with open(path, "wb") as f:
                reduction.sendfds(ours, [f.fileno()])
            p.join(30)
            self.assertEqual(p.exitcode, 0)
            relay.settle(key)  # what the parent does when dragond reports the child's end
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"relayed bytes")
        self.assertNotIn(key, relay.links, "a settled link is closed once its data is written")

    def test_a_pipe_and_a_socket_through_the_relay_carry_data_and_end_of_file(self):
        import socket
        from multiprocessing import reduction
        relay, key, ours = self.lend()
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=relay_read_and_echo, args=(relay.descriptor, key, w))
        p.start()
        data = os.urandom(1 << 20)
        pr, pw = os.pipe()
        reduction.sendfds(ours, [pr])
        os.close(pr)
        view = memoryview(data)
        while view:  # the relay takes it as the child reads: more than a pipe holds
            view = view[os.write(pw, view[:65536]):]
        os.close(pw)
        self.assertTrue(r.poll(30))
        self.assertEqual(r.recv_bytes(), data, "a relayed pipe gave other bytes")
        a, b = socket.socketpair()
        reduction.sendfds(ours, [b.fileno()])
        b.close()
        a.settimeout(30)
        a.sendall(b"echo me")
        got = b""
        while len(got) < 7:
            got += a.recv(100)
        self.assertEqual(got, b"ECHO ME")
        a.shutdown(socket.SHUT_WR)
        self.assertEqual(a.recv(100), b"", "no end of file back through the relayed socket")
        a.close()
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        relay.settle(key)

    def test_a_pipe_writer_sees_a_broken_pipe_once_the_relayed_reader_is_closed(self):
        from multiprocessing import reduction
        relay, key, ours = self.lend()
        closed = CTX.Event()
        p = CTX.Process(target=relay_close_at_once, args=(relay.descriptor, key, closed))
        p.start()
        self.addCleanup(p.kill)
        r, w = os.pipe()
        reduction.sendfds(ours, [r])
        os.close(r)  # the relayed copy is the last reader
        self.assertTrue(closed.wait(30))
        os.set_blocking(w, False)
        deadline = time.monotonic() + 30
        broken = False
        while time.monotonic() < deadline and not broken:
            try:
                os.write(w, b"x" * 4096)
            except BrokenPipeError:
                broken = True
            except BlockingIOError:
                select.select([], [w], [], 0.1)  # the relay takes it as it goes
        os.close(w)
        self.assertTrue(broken, "the writer of a pipe whose relayed reader closed never saw "
                                "a broken pipe")

    def test_a_closed_end_gives_the_other_side_end_of_file(self):
        relay, key, ours = self.lend()
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=relay_expect_eof, args=(relay.descriptor, key, w))
        p.start()
        ours.close()
        self.assertTrue(r.poll(30), "the child's recv_handle did not end")
        self.assertEqual(r.recv(), "EOFError")
        p.join(30)
        relay.settle(key)


def relay_close_at_once(descriptor, key, closed):
    from multiprocessing import reduction
    os.close(reduction.recvfds(relay_joined(descriptor, key), 1)[0])
    closed.set()
    time.sleep(60)  # its relay lives on: only the relayed fd is closed


def relay_expect_eof(descriptor, key, out):
    from multiprocessing import reduction
    try:
        reduction.recvfds(relay_joined(descriptor, key), 1)
    except EOFError:
        out.send("EOFError")
    else:
        out.send("an fd")


class ListenerTest(unittest.TestCase):
    def test_a_discard_after_close_keeps_the_wake_up_of_a_blocked_accept(self):
        # close() leaves a mark that wakes an accept() blocked in another thread; a serving
        # thread that then discards the connections it just made must leave that mark.
        from dragon.connection import Listener
        listener = Listener(("127.0.0.1", 0))
        listener.close()
        listener._discard_ready()  # as a serving thread does once it sees the Listener closing
        self.assertIsNone(listener._ready.get(timeout=30))

    def test_a_client_waits_for_a_listener_that_is_slow_to_answer(self):
        # The Listener's process is stopped across several of the client's liveness checks:
        # the client keeps waiting (it raised queue.Empty at the first one), and connects once
        # the Listener runs again.
        from dragon import connection
        address_q = CTX.Queue()
        p = CTX.Process(target=serve_echo, args=(address_q,))
        p.start()
        address = address_q.get(timeout=30)
        interval = connection._LIVENESS_INTERVAL
        connection._LIVENESS_INTERVAL = 0.05
        box = []
        # Each liveness check looks the Listener's name up: counted, and the Listener goes on
        # once the client has waited through three of them.
        lookup, looked, checked = connection._runtime.lookup_name, [], threading.Event()

        def counting_lookup(name):
            looked.append(name)
            if len(looked) >= 3:
                checked.set()
            return lookup(name)

        def connect():
            try:
                c = connection.Client(address)
                c.send("echo")
                box.append(c.recv())
                c.close()
            except BaseException as e:
                box.append(e)

        os.kill(p.pid, signal.SIGSTOP)
        connection._runtime.lookup_name = counting_lookup
        try:
            t = threading.Thread(target=connect, daemon=True)
            t.start()
            self.assertTrue(checked.wait(30), "the client stopped waiting: %r" % box)
        finally:
            os.kill(p.pid, signal.SIGCONT)
            connection._LIVENESS_INTERVAL = interval
            connection._runtime.lookup_name = lookup
        t.join(30)
        self.assertEqual(box, ["echo"])
        p.join(30)
        self.assertEqual(p.exitcode, 0)


class PipeTest(unittest.TestCase):
    @staticmethod
    def fill_in_a_thread(w):
        """A thread that sends to `w` until it is refused; box: what it ended with."""
        box = []

        def fill():
            try:
                for _ in range(100000):
                    w.send_bytes(b"x" * 100)
                box.append("never full")
            except BrokenPipeError:
                box.append("broken")

        t = threading.Thread(target=fill, daemon=True)
        t.start()
        return t, box

    def test_sending_once_no_reader_is_left_raises_broken_pipe(self):
        r, w = CTX.Pipe(duplex=False)
        r.close()
        with self.assertRaises(BrokenPipeError):
            w.send(1)
        a, b = CTX.Pipe()
        b.close()
        with self.assertRaises(BrokenPipeError):
            a.send_bytes(b"x")
        # A writer blocked on a full pipe when the last reader goes gets it too.
        r, w = CTX.Pipe()
        t, box = self.fill_in_a_thread(w)
        deadline = time.monotonic() + 60
        while w._send.size() < w._send.capacity and time.monotonic() < deadline:
            time.sleep(0.01)  # until the channel is full and the writer waits
        r.close()
        t.join(60)
        self.assertEqual(box, ["broken"])

    def test_a_message_longer_than_maxlength_ends_reading_as_the_stdlib_does(self):
        a, b = CTX.Pipe()
        a.send_bytes(b"x" * 100)
        with self.assertRaisesRegex(OSError, "bad message length"):
            b.recv_bytes(10)
        self.assertFalse(b.readable)
        with self.assertRaises(OSError):
            b.recv_bytes()
        b.send("still writes")
        self.assertEqual(a.recv(), "still writes")
        r, w = CTX.Pipe(duplex=False)
        w.send_bytes(b"y" * 100)
        with self.assertRaisesRegex(OSError, "bad message length"):
            r.recv_bytes(99)
        self.assertTrue(r.closed)

    def test_recv_of_bytes_that_are_no_pickle_fails_as_the_stdlib_does(self):
        # Whatever their first byte (the queue codec's tags among them), bytes sent with
        # send_bytes are unpickled by recv(), as the stdlib's recv() does with them.
        import pickle
        a, b = CTX.Pipe()
        for data in (b"abc", b"\x00" * 300, b"\x01" + bytes(range(256)) * 64,
                     b"\x80\x05garbage"):
            a.send_bytes(data)
            with self.assertRaises(pickle.UnpicklingError):
                b.recv()
        a.send_bytes(b"")
        with self.assertRaises(EOFError):  # the stdlib's "Ran out of input"
            b.recv()
        a.send_bytes(pickle.dumps([1, 2]))
        self.assertEqual(b.recv(), [1, 2])
        a.send("still open")
        self.assertEqual(b.recv(), "still open")

    def test_a_writer_blocked_on_a_full_pipe_gets_broken_pipe_once_its_reader_is_killed(self):
        # The killed reader gives nothing back (no atexit): the waiting writer counts it out,
        # as the kernel closes a killed process's fds; a live reader is never counted out.
        r, w = CTX.Pipe(duplex=False)
        started = CTX.Event()
        p = CTX.Process(target=hold_reader, args=(r, started))
        p.start()
        self.assertTrue(started.wait(30))
        r.close()
        t, box = self.fill_in_a_thread(w)
        deadline = time.monotonic() + 60
        while not w._readers_checked and time.monotonic() < deadline:
            time.sleep(0.01)  # until the writer has waited for room and looked for readers
        self.assertTrue(w._readers_checked, "the writer never waited on the full pipe")
        self.assertEqual(box, [])  # the reader lives: the writer still waits
        self.assertTrue(p.is_alive())
        p.kill()
        p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGKILL)
        t.join(60)
        self.assertEqual(box, ["broken"])

    def test_a_pipe_end_pickled_for_a_start_that_fails_is_not_counted(self):
        # The end is pickled (and its handle counted for the child) before the lambda after it
        # fails to pickle: the start fails, no child will ever hold the end, so the reader
        # sees end of file once the parent closes its own. Both for the first child (a fresh
        # interpreter) and a later one (the template).
        for _ in range(2):
            r, w = CTX.Pipe(duplex=False)
            with self.assertRaises(Exception):
                CTX.Process(target=recv_one, args=(w, lambda: 0)).start()
            w.close()
            self.assertTrue(r.poll(30), "the failed start's count keeps the pipe open")
            with self.assertRaises(EOFError):
                r.recv()
            p = CTX.Process(target=recv_one, args=(r,))
            p.start()  # a started one, so that the second round uses the template
            p.join(30)

    def test_a_reader_in_a_child_keeps_the_pipe_open_until_the_child_ends(self):
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=recv_one, args=(r,))
        p.start()
        r.close()  # the child's handle is counted: sending still works
        w.send("hello")
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        with self.assertRaises(BrokenPipeError):
            w.send("after")

    def assert_open_until_closed(self, writer, reader):
        """The pipe still carries messages, and its reader sees EOF once `writer` closes."""
        writer.send("still open")
        self.assertEqual(reader.recv(), "still open")
        writer.close()
        with self.assertRaises(EOFError):
            reader.recv()

    def kill_a_child_holding(self, end, close_here):
        """Starts a child with `end`, optionally closes this process's copy, and SIGKILLs the
        child once it runs (it says so on a pipe of its own: a one-way end cannot)."""
        ready_r, ready_w = CTX.Pipe(False)
        p = CTX.Process(target=hold_end_and_report, args=(end, ready_w))
        p.start()
        if close_here:
            end.close()
        ready_w.close()
        self.assertEqual(ready_r.recv(), "holding")
        ready_r.close()
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)

    def test_a_killed_writer_is_end_of_file_once_no_other_writer_is_left(self):
        for duplex in (True, False):
            with self.subTest(duplex=duplex):
                reader, writer = CTX.Pipe(duplex)
                self.kill_a_child_holding(writer, close_here=True)  # its handle was the last
                self.assertTrue(reader.poll(30))  # a reader that waits finds it within a second
                with self.assertRaises(EOFError):
                    reader.recv()
                reader.close()

    def test_a_killed_writer_is_not_end_of_file_while_another_writer_lives(self):
        reader, writer = CTX.Pipe(False)
        self.kill_a_child_holding(writer, close_here=False)
        # This process still holds a writer: the reader waits, as it would on an OS pipe.
        self.assertFalse(reader.poll(2.5))
        self.assert_open_until_closed(writer, reader)

    def test_a_copy_made_by_a_stock_fork_holds_no_handle(self):
        a, b = CTX.Pipe()
        pid = os.fork()
        if pid == 0:
            b.close()  # the copy's close gives back nothing: the handle is the parent's
            os._exit(0)
        self.assertEqual(wait_forked(pid), 0)
        self.assert_open_until_closed(b, a)

    def test_duplex_objects_bytes_and_eof(self):
        a, b = CTX.Pipe()
        p = CTX.Process(target=echo_pipe, args=(b,))
        p.start()
        a.send([1, "two", 3.0])
        self.assertEqual(a.recv(), ("echo", [1, "two", 3.0]))
        a.close()
        p.join(30)
        self.assertEqual(p.exitcode, 0)

    def test_reader_sees_eof_once_every_writer_in_every_process_is_gone(self):
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=write_three, args=(w,))
        p.start()
        w.close()  # the child's copy still writes
        got = []
        with self.assertRaises(EOFError):
            while True:
                got.append(r.recv())
        self.assertEqual(got, [0, 1, 2])
        p.join(30)

    def test_bytes_offsets_poll_and_one_way_ends(self):
        r, w = CTX.Pipe(duplex=False)
        self.assertFalse(r.poll())
        self.assertFalse(r.poll(0.05))
        w.send_bytes(b"0123456789", 2, 5)
        self.assertTrue(r.poll())
        self.assertEqual(r.recv_bytes(), b"23456")
        w.send_bytes(b"abc")
        buf = bytearray(8)
        self.assertEqual(r.recv_bytes_into(buf, 4), 3)
        self.assertEqual(bytes(buf), b"\0\0\0\0abc\0")
        w.send_bytes(b"too long for it")
        with self.assertRaises(mp.BufferTooShort):
            r.recv_bytes_into(bytearray(4))
        with self.assertRaises(OSError):
            r.send(1)
        with self.assertRaises(OSError):
            w.recv()
        with self.assertRaises(ValueError):
            w.send_bytes(b"abc", 5)
        w.close()
        with self.assertRaises(EOFError):
            r.recv()


    def test_file_descriptors_pass_over_a_pipe_given_to_a_child(self):
        from multiprocessing import reduction
        a, b = CTX.Pipe()
        p = CTX.Process(target=write_to_received_fd, args=(b, b"through dragon"))
        p.start()
        fd, path = tempfile.mkstemp()
        try:
            reduction.send_handle(a, fd, p.pid)
            os.close(fd)
            p.join(30)
            self.assertEqual(p.exitcode, 0)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"through dragon")
        finally:
            os.unlink(path)

    def test_an_end_received_through_a_queue_has_no_fd_and_says_why(self):
        a, b = CTX.Pipe()
        self.assertIsInstance(a.fileno(), int)
        q, back = CTX.Queue(), CTX.Queue()
        p = CTX.Process(target=forward_pipe_end, args=(q, back))
        p.start()
        q.put(b)
        report = back.get(timeout=30)
        p.join(30)
        self.assertIn("only a Pipe end lent to a child at its start", report)
        a.close()
        with self.assertRaises(OSError):
            a.fileno()


def use_value_after_go(v, w, go):
    w.send("ready")
    go.wait(60)
    for _ in range(1000):
        with v.get_lock():
            v.value += 1
    w.send(v.value)


def create_value_and_hand_it_on(w, go):
    v = CTX.Value("i", 0)
    CTX.Process(target=use_value_after_go, args=(v, w, go)).start()
    time.sleep(600)  # until killed


class SharedValueTest(unittest.TestCase):
    def test_arrays_dropped_while_their_shared_lock_lives_are_freed(self):
        # A Lock given as lock= to many short-lived Arrays: each is freed when dropped, as the
        # stdlib's is (the lock held every one of them, and their pool memory with it).
        import gc
        from dragon import _runtime
        lock = CTX.Lock()
        keep = CTX.Array("b", 16, lock=lock)  # one that lives: the lock still guards it
        gc.collect()
        before = _runtime.pool().stats()["used_bytes"]
        for _ in range(8):
            a = CTX.Array("b", 8 << 20, lock=lock)
            a[0] = 1
            del a
        gc.collect()
        self.assertLess(_runtime.pool().stats()["used_bytes"] - before, 8 << 20)
        keep[0] = 5  # under the lock, which it still guards
        self.assertEqual(keep[0], 5)

    def test_a_killed_creators_value_stays_valid_for_the_child_using_it(self):
        # Its block is not reclaimed when the creator dies: the child still uses it (the
        # stdlib's arena likewise lives while any process maps it).
        r, w = CTX.Pipe(duplex=False)
        go = CTX.Event()
        creator = CTX.Process(target=create_value_and_hand_it_on, args=(w, go))
        creator.start()
        self.assertTrue(r.poll(60))
        self.assertEqual(r.recv(), "ready")
        creator.kill()
        creator.join(30)
        self.assertEqual(creator.exitcode, -signal.SIGKILL)
        go.set()
        self.assertTrue(r.poll(60))
        self.assertEqual(r.recv(), 1000)


class SynchronizeTest(unittest.TestCase):
    def run_together(self, calls):
        """Processes for `calls` ((target, args) pairs), started together; each must end 0."""
        procs = [CTX.Process(target=target, args=args) for target, args in calls]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            self.assertEqual(p.exitcode, 0)

    def test_a_semaphore_counts_past_its_channel_from_every_process(self):
        # The stdlib's Semaphore counts to 2**31 - 1; its tokens here live in a channel of a
        # few thousand slots, the rest spilled: none may be lost or made up, also when
        # processes release and acquire at once.
        sem = CTX.Semaphore(0)
        for _ in range(10000):
            sem.release()
        self.assertEqual(sem.get_value(), 10000)
        big = CTX.Semaphore(100000)
        self.assertEqual(big.get_value(), 100000)
        self.run_together([(release_many, (sem, 3000))] * 2 + [(acquire_many, (sem, 4000))] * 2)
        self.assertEqual(sem.get_value(), 10000 + 6000 - 8000)
        # Many processes draining it at once, more than the channel holds: none may find it
        # empty while counts are spilled (each takes its share, none times out).
        for _ in range(2):
            sem.release(3000)
        self.run_together([(acquire_many, (sem, 3500))] * 4)
        self.assertEqual(sem.get_value(), 8000 + 6000 - 14000)
        for _ in range(8000):
            sem.release()
        taken = 0
        while sem.acquire(False):
            taken += 1
        self.assertEqual(taken, 8000)
        self.assertFalse(sem.acquire(True, 0.01))

    def test_a_condition_over_a_lock_refuses_a_thread_that_does_not_hold_it(self):
        import threading
        lock = CTX.Lock()
        cond = CTX.Condition(lock)
        errors = []

        def stranger():
            for call in (lambda: cond.wait(0.2), cond.notify, cond.notify_all):
                try:
                    call()
                except AssertionError as e:
                    errors.append(str(e))

        self.assertTrue(lock.acquire())
        t = threading.Thread(target=stranger)
        t.start()
        t.join(30)
        self.assertEqual(errors, ["wait() on an un-acquired lock", "lock is not owned",
                                  "lock is not owned"])
        # The holder still holds it (a stranger's wait would have released it and taken it).
        self.assertFalse(lock.acquire(False))
        self.assertFalse(cond.wait(0.01))  # the holder may wait: it holds the lock again after
        self.assertFalse(lock.acquire(False))
        lock.release()
        with cond:
            cond.notify()

    def test_waits_that_time_out_do_not_fill_the_condition(self):
        # Each timed-out wait used to leave a count behind until the next notify: a loop of
        # Event.wait(timeout) (a common stop-flag idiom) failed after 4097 of them.
        e = CTX.Event()
        for _ in range(5000):
            self.assertFalse(e.wait(0))
        c = CTX.Condition()
        with c:
            for _ in range(5000):
                self.assertFalse(c.wait(0))
            c.notify()  # nobody waits: returns at once
        box = []
        waiter = threading.Thread(target=lambda: box.append(e.wait(60)))
        waiter.start()
        e.set()
        waiter.join(60)
        self.assertEqual(box, [True])

    def test_a_wait_on_a_condition_not_held_changes_nothing(self):
        for c in (CTX.Condition(), CTX.Condition(CTX.Lock())):
            with self.assertRaises(AssertionError):
                c.wait(0)
            done = []
            t = threading.Thread(target=lambda: (c.acquire(), c.notify(), c.release(),
                                                 done.append(True)), daemon=True)
            t.start()
            t.join(30)
            self.assertEqual(done, [True], "a notify waited for a waiter that never was")
        lock = CTX.Lock()
        c = CTX.Condition(lock)
        with self.assertRaises(AssertionError):
            c.wait(0)
        self.assertTrue(lock.acquire(False), "the failed wait released nothing")
        lock.release()

    def test_a_bounded_semaphore_of_zero_refuses_a_release(self):
        s = CTX.BoundedSemaphore(0)
        self.assertFalse(s.acquire(False))
        with self.assertRaises(ValueError):
            s.release()
        self.assertFalse(s.acquire(False))

    def test_lock_held_by_another_process_times_out(self):
        lock, held, release = CTX.Lock(), CTX.Event(), CTX.Event()
        p = CTX.Process(target=hold_lock, args=(lock, held, release))
        p.start()
        self.assertTrue(held.wait(30))
        self.assertFalse(lock.acquire(timeout=0.05))
        self.assertFalse(lock.acquire(False))
        release.set()
        self.assertTrue(lock.acquire(timeout=30))
        lock.release()
        p.join(30)
        with self.assertRaises(ValueError):
            lock.release()  # not held

    def test_a_lock_whose_holder_is_killed_breaks_for_its_waiters(self):
        lock, held, release = CTX.Lock(), CTX.Event(), CTX.Event()
        holder = CTX.Process(target=hold_lock, args=(lock, held, release))
        holder.start()
        self.assertTrue(held.wait(30))
        started, box = CTX.Event(), CTX.Queue()
        waiter = CTX.Process(target=wait_for_lock, args=(lock, started, box))
        waiter.start()
        self.assertTrue(started.wait(30))
        holder.kill()
        holder.join(30)
        self.assertEqual(holder.exitcode, -signal.SIGKILL)
        # The waiter blocked on it (up to 120 s) hears at once that it is broken, and why.
        kind, why = box.get(timeout=60)
        self.assertEqual(kind, "broken")
        self.assertIn("pid %d" % holder.pid, why)
        waiter.join(30)
        with self.assertRaises(dragon.BrokenLockError):
            lock.acquire(timeout=30)
        with self.assertRaises(dragon.BrokenLockError):
            lock.release()
        self.assertIsInstance(dragon.BrokenLockError("x"), dragon.ChannelClosed)

    def test_a_lock_released_before_its_holder_fails_stays_usable(self):
        lock, rlock, q = CTX.Lock(), CTX.RLock(), CTX.Queue()
        ps = [CTX.Process(target=hold_and_exit, args=(lock, q, 3, 1, True)),
              CTX.Process(target=hold_and_exit, args=(rlock, q, 4, 2, True))]
        for p in ps:
            p.start()
        self.assertEqual([q.get(timeout=30) for _ in ps], ["held", "held"])
        for p, code in zip(ps, (3, 4)):
            p.join(30)
            self.assertEqual(p.exitcode, code)
        for _ in range(3):
            for lk in (lock, rlock):
                self.assertTrue(lk.acquire(timeout=30))
                lk.release()

    def test_an_rlock_whose_holder_ends_holding_it_breaks_whatever_its_status(self):
        # Only its holder may release an RLock: held at any end, failing (3) or clean (0), it
        # is lost for good.
        for code in (3, 0):
            rlock, q = CTX.RLock(), CTX.Queue()
            p = CTX.Process(target=hold_and_exit, args=(rlock, q, code, 2))
            p.start()
            self.assertEqual(q.get(timeout=30), "held")
            p.join(30)
            self.assertEqual(p.exitcode, code)
            with self.assertRaises(dragon.BrokenLockError):
                rlock.acquire(timeout=30)

    def test_a_producer_killed_blocked_on_a_full_joinable_queue_leaves_it_working(self):
        jq, started = CTX.JoinableQueue(1), CTX.Event()
        jq.put("first")
        p = CTX.Process(target=put_after, args=(jq, started, "second"))
        p.start()
        self.assertTrue(started.wait(30))
        # The blocked producer must not hold the queue's lock: take it, and kill the producer
        # while holding it (so the kill cannot land inside the producer's short critical
        # section, where breaking the lock would be right).
        self.assertTrue(jq._cond.acquire(timeout=30), "a blocked put holds the queue's lock")
        p.kill()
        p.join(30)
        jq._cond.release()
        self.assertEqual(p.exitcode, -signal.SIGKILL)
        self.assertEqual(jq.get(timeout=30), "first")
        jq.task_done()
        jq.put("third", timeout=30)
        self.assertEqual(jq.get(timeout=30), "third")
        jq.task_done()
        jq.join()  # nothing counted for the killed producer's put

    def test_a_lock_its_holder_exits_with_cleanly_may_be_released_by_another(self):
        # The stdlib's Lock may be released by any process: a holder that ends with status 0
        # may have handed it on on purpose, so its lock is not broken.
        lock, q = CTX.Lock(), CTX.Queue()
        p = CTX.Process(target=hold_and_exit, args=(lock, q, 0))
        p.start()
        self.assertEqual(q.get(timeout=30), "held")
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        self.assertFalse(lock.acquire(timeout=0.05))
        lock.release()
        self.assertTrue(lock.acquire(timeout=30))
        lock.release()

    def test_rlock_semaphores(self):
        r = CTX.RLock()
        with r:
            with r:
                pass
        with self.assertRaises(AssertionError):
            r.release()
        s = CTX.Semaphore(2)
        self.assertTrue(s.acquire(False) and s.acquire(False))
        self.assertFalse(s.acquire(False))
        s.release(2)
        self.assertEqual(s.get_value(), 2)
        b = CTX.BoundedSemaphore(1)
        with self.assertRaises(ValueError):
            b.release()

    def test_event_condition_and_barrier_across_processes(self):
        ready, event = CTX.Event(), CTX.Event()
        p = CTX.Process(target=set_event_later, args=(ready, event))
        p.start()
        self.assertFalse(event.wait(0.05))
        ready.set()
        self.assertTrue(event.wait(30))
        self.assertTrue(event.is_set())
        event.clear()
        self.assertFalse(event.is_set())
        p.join(30)

        cond, box = CTX.Condition(), CTX.Queue()
        with cond:
            p = CTX.Process(target=notify_condition, args=(cond, box))
            p.start()
            self.assertTrue(cond.wait(30))
        self.assertEqual(box.get(timeout=30), "ready")
        p.join(30)
        with cond:
            self.assertFalse(cond.wait(0.05))

        barrier, q = CTX.Barrier(3), CTX.Queue()
        ps = [CTX.Process(target=barrier_party, args=(barrier, q)) for _ in range(2)]
        for p in ps:
            p.start()
        mine = barrier.wait(30)
        indices = sorted([mine] + [q.get(timeout=30) for _ in ps])
        self.assertEqual(indices, [0, 1, 2])
        for p in ps:
            p.join(30)


    def test_processes_killed_while_they_read_a_barrier_leave_it_whole(self):
        # A Barrier's state is shared memory, as the stdlib's is: a process killed while it
        # reads it (broken, n_waiting) takes nothing with it. It was one message in a queue,
        # taken and put back, and a kill between the two left every later wait() hanging.
        barrier = CTX.Barrier(1, timeout=30)
        for _ in range(10):
            started = CTX.Event()
            p = CTX.Process(target=read_barrier_for_ever, args=(barrier, started))
            p.start()
            self.assertTrue(started.wait(30))
            p.kill()
            p.join(30)
        # Looked at from a child, so that a barrier left without its state fails the test
        # (the child hangs, the parent's get times out) instead of hanging it.
        box = CTX.Queue()
        p = CTX.Process(target=report_barrier, args=(barrier, box))
        p.start()
        self.addCleanup(p.kill)
        self.assertEqual(box.get(timeout=30), (False, 0, 0))
        p.join(30)
        self.assertEqual(p.exitcode, 0)


    def test_notify_on_a_condition_whose_lock_is_not_held_is_an_assertion_error(self):
        # As the stdlib's: a notify outside the lock would race with the waiters' counts.
        for cond in (CTX.Condition(), CTX.Condition(CTX.Lock())):
            for notify in (cond.notify, cond.notify_all):
                with self.assertRaises(AssertionError):
                    notify()
            with cond:
                cond.notify()
                cond.notify_all()
        # An RLock knows its owner: held by another thread is not held by this one.
        cond, held, done = CTX.Condition(), threading.Event(), threading.Event()

        def hold():
            with cond:
                held.set()
                done.wait(30)

        t = threading.Thread(target=hold)
        t.start()
        self.assertTrue(held.wait(30))
        with self.assertRaises(AssertionError):
            cond.notify()
        done.set()
        t.join(30)

    def test_a_condition_waiter_gets_an_error_when_the_lock_holder_is_killed(self):
        # No notify can come once the holder died with the lock (a notify needs it): the
        # waiter gets BrokenLockError, as a waiter for the lock itself does, not a hang.
        cond, box = CTX.Condition(), CTX.Queue()
        w = CTX.Process(target=wait_on_condition, args=(cond, box))
        w.start()
        self.addCleanup(w.kill)
        self.assertEqual(box.get(timeout=30), "waiting")
        k = CTX.Process(target=die_holding, args=(cond,))
        k.start()
        k.join(30)
        self.assertEqual(k.exitcode, -signal.SIGKILL)
        self.assertEqual(box.get(timeout=30), "BrokenLockError")
        w.join(30)
        self.assertEqual(w.exitcode, 0)


def square(x):
    return x * x


class PoolAndWaitTest(unittest.TestCase):
    def test_stock_start_methods_still_pass_shared_values_with_dragon_imported(self):
        # import dragon patches multiprocessing's heap; the stock methods' Value and Array
        # must still reach their children (pickled by reference to the stock class's name).
        script = (
            "import dragon\n"
            "import multiprocessing as mp\n"
            "def f(v, a):\n"
            "    v.value += 1\n"
            "    a[0] = 7\n"
            "if __name__ == '__main__':\n"
            "    for method in ('spawn', 'forkserver', 'fork'):\n"
            "        ctx = mp.get_context(method)\n"
            "        v, a = ctx.Value('i', 0), ctx.Array('d', 3)\n"
            "        p = ctx.Process(target=f, args=(v, a))\n"
            "        p.start()\n"
            "        p.join()\n"
            "        print(method, p.exitcode, v.value, a[0])\n")
        r = run_program([sys.executable], script, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "spawn 0 1 7.0\nforkserver 0 1 7.0\nfork 0 1 7.0\n",
                         r.stderr)

    def test_apply_async_never_blocks_when_the_task_channel_is_full(self):
        # More tasks than the task channel holds (16384), queued behind a task that waits
        # for an event the caller sets only after submitting them all: apply_async must not
        # block (the stdlib's never does), and every task runs, in order.
        ev = CTX.Event()
        with CTX.Pool(1, initializer=set_global_event, initargs=(ev,)) as pool:
            gate = pool.apply_async(wait_global_event, (60,))
            results = [pool.apply_async(count_call, (i,)) for i in range(17000)]
            ev.set()
            self.assertTrue(gate.get(60))
            # The one worker ran them in the order they were submitted (the gate was its first).
            self.assertEqual([r.get(60) for r in results], [(i + 2, i) for i in range(17000)])

    def test_a_pool_dropped_unclosed_is_collected_and_its_workers_end(self):
        import gc
        import weakref
        pool = CTX.Pool(2)
        self.assertEqual(pool.apply(square, (3,)), 9)
        ref, workers = weakref.ref(pool), list(pool._pool)
        del pool
        deadline = time.monotonic() + 30
        while ref() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
        self.assertIsNone(ref(), "the pool is kept alive")
        for w in workers:
            w.join(30)
            self.assertFalse(w.is_alive())

    def test_a_pool_left_open_at_exit_ends_quietly(self):
        script = (
            "import multiprocessing as mp\n"
            "def f(x):\n"
            "    return x + 1\n"
            "if __name__ == '__main__':\n"
            "    pool = mp.get_context('dragon').Pool(2)\n"
            "    print(pool.map(f, range(4)))\n")
        launcher = os.environ.get("DRAGON_LAUNCHER")
        for prefix in [[sys.executable]] + ([[launcher]] if launcher else []):
            r = run_program(prefix, "import dragon\n" + script, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "[1, 2, 3, 4]\n")
            self.assertNotIn("Traceback", r.stderr)

    def test_pool_map_apply_async_and_imap(self):
        with CTX.Pool(2) as pool:
            self.assertEqual(pool.map(square, range(20)), [x * x for x in range(20)])
            self.assertEqual(pool.apply_async(square, (7,)).get(30), 49)
            self.assertEqual(sorted(pool.imap_unordered(square, range(5))), [0, 1, 4, 9, 16])

    def test_apply_async_from_many_threads_with_callbacks_and_errors(self):
        import threading
        from dragon.pool import Pool
        got, errors = [], []
        with CTX.Pool(2, maxtasksperchild=7) as pool:
            self.assertIsInstance(pool, Pool)
            results = []

            def submit(base):
                for i in range(base, base + 50):
                    results.append(pool.apply_async(square, (i,), callback=got.append))

            threads = [threading.Thread(target=submit, args=(b,)) for b in (0, 1000, 2000)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            values = sorted(r.get(60) for r in results)
            bad = pool.apply_async(square, (lambda: 0,), error_callback=errors.append)
            with self.assertRaises(Exception):
                bad.get(60)  # the task cannot be pickled: its error is its result
            failing = pool.apply_async(raise_error, error_callback=errors.append)
            with self.assertRaisesRegex(RuntimeError, "boom"):
                failing.get(60)
            self.assertEqual(pool.apply(square, (9,)), 81)
        expected = sorted(i * i for b in (0, 1000, 2000) for i in range(b, b + 50))
        self.assertEqual(values, expected)
        self.assertEqual(sorted(got), expected)
        self.assertEqual(len(errors), 2)

    def test_module_pool_is_dragon_and_process_pool_executor_runs_on_it(self):
        import concurrent.futures
        from dragon.pool import Pool
        old = mp.get_start_method(allow_none=True)
        mp.set_start_method("dragon", force=True)
        try:
            with mp.Pool(2) as pool:
                self.assertIsInstance(pool, Pool)
                self.assertEqual(pool.starmap(pow, [(2, 3), (3, 2)]), [8, 9])
        finally:
            mp.set_start_method(old, force=True)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=CTX) as ex:
            self.assertEqual(list(ex.map(square, range(30), chunksize=4)),
                             [x * x for x in range(30)])
            f = ex.submit(raise_error)
            with self.assertRaisesRegex(RuntimeError, "boom"):
                f.result(60)

    def test_connection_wait_over_dragon_connections_and_sentinels(self):
        from multiprocessing.connection import wait
        a, b = CTX.Pipe()
        c, d = CTX.Pipe()
        self.assertEqual(wait([a, c], 0.05), [])
        d.send("x")
        self.assertEqual(wait([a, c], 30), [c])
        p = CTX.Process(target=exit_with, args=(0,))
        p.start()
        self.assertEqual(wait([a, p.sentinel], 30), [p.sentinel])
        p.join()
        q = CTX.Queue()
        self.assertEqual(wait([q, a], 0.05), [])
        p = CTX.Process(target=put_square, args=(q, 3))
        p.start()
        self.assertEqual(wait([a, q._reader], 30), [q])  # stdlib-style code waits on _reader
        self.assertEqual(q.get(timeout=5)[:2], (3, 9))
        p.join(30)
        # A peer that closes its end (in another process) wakes a wait that sleeps on the
        # channel: the closed channel is ready (recv reports EOFError).
        p = CTX.Process(target=close_after_ready, args=(b,))
        p.start()
        b.close()
        self.assertEqual(a.recv(), "ready")
        self.assertEqual(wait([a], 30), [a])
        with self.assertRaises(EOFError):
            a.recv()
        p.join(30)

    def test_connection_wait_with_more_than_64_dragon_objects(self):
        from multiprocessing.connection import wait
        pipes = [CTX.Pipe() for _ in range(70)]
        readers = [r for r, _ in pipes]
        self.assertEqual(wait(readers, 0.05), [])
        pipes[67][1].send(1)
        self.assertEqual(wait(readers, 30), [readers[67]])


def private_runtime_env(name=None, text=None):
    """The environment of a python that starts a private runtime of its own, with this one's
    sys.path (the dragon package); and the path of file `name` holding `text` in its fresh
    runtime directory, when given."""
    env = dict(os.environ)
    env.pop("DRAGON_SOCKET", None)
    env["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="dragon-pytest-")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    path = None
    if name is not None:
        path = os.path.join(env["XDG_RUNTIME_DIR"], name)
        with open(path, "w") as f:
            f.write(text)
    return env, path


class LauncherTest(unittest.TestCase):
    LAUNCHER = os.environ.get("DRAGON_LAUNCHER")

    def test_the_system_instance_is_not_used_inside_a_slurm_job(self):
        # dragond@UID.service runs outside a job's cgroup: a job's processes started there
        # would escape its limits and accounting, and outlive it.
        if os.getuid() != 0:
            self.skipTest("needs root (it makes /run/dragon/UID/dragond.sock)")
        directory = "/run/dragon/%d" % os.getuid()
        system = directory + "/dragond.sock"
        if os.path.exists(system):
            self.skipTest("%s exists on this machine" % system)
        made = not os.path.isdir(directory)
        os.makedirs(directory, exist_ok=True)
        open(system, "w").close()
        try:
            def default(**extra):
                env = {k: v for k, v in os.environ.items()
                       if k not in ("DRAGON_SOCKET", "SLURM_JOB_ID")}
                env.update(extra)
                return subprocess.run(
                    [sys.executable, "-c",
                     "from dragon import _native; print(_native.default_socket_path())"],
                    capture_output=True, text=True, timeout=60, env=env).stdout.strip()
            self.assertEqual(default(), system)
            self.assertNotEqual(default(SLURM_JOB_ID="42"), system)
        finally:
            os.unlink(system)
            if made:
                os.rmdir(directory)

    def run_script(self, text, *args, timeout=120):
        return run_program([self.LAUNCHER], text, *args, timeout=timeout)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_a_launcher_started_with_sigchld_ignored_ends_with_its_programs_code(self):
        # An ignored SIGCHLD survives exec: the kernel would reap dragond's children by itself,
        # dragond would never learn that the program ended, and the job would never end.
        env = dict(os.environ)
        env.pop("DRAGON_SOCKET", None)
        r = subprocess.run([self.LAUNCHER, "--", "/bin/sh", "-c", "echo ran; exit 3"],
                           capture_output=True, text=True, timeout=60, env=env,
                           preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
        self.assertEqual((r.returncode, r.stdout), (3, "ran\n"), r.stderr)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_the_script_stays_main_after_its_top_level_returns(self):
        # As under python3: a thread that goes on after the script's last line (and an
        # atexit function) still starts processes whose target is a function of __main__.
        # dragon.run ran the script with runpy, which put the old __main__ back when the
        # top level returned, and pickling `work` then failed.
        r = self.run_script(
            "import atexit, sys, threading\n"
            "import multiprocessing as mp\n"
            "def work(tag):\n    print('work', tag, flush=True)\n"
            "def start(tag):\n"
            "    p = mp.Process(target=work, args=(tag,)); p.start(); p.join(60)\n"
            "    print('exitcode', tag, p.exitcode, flush=True)\n"
            "def later():\n"
            "    main_thread_ended.wait(60)\n"
            "    start('thread')\n"
            "if __name__ == '__main__':\n"
            "    main_thread_ended = threading.Event()\n"
            "    threading.Thread(target=later).start()\n"
            "    atexit.register(start, 'atexit')\n"
            "    print('main', sys.modules['__main__'].__file__ == __file__, flush=True)\n"
            "    threading.Thread(target=lambda: (threading.main_thread().join(),\n"
            "                                     main_thread_ended.set())).start()\n",
            timeout=120)
        self.assertEqual((r.returncode, r.stdout),
                         (0, "main True\nwork thread\nexitcode thread 0\n"
                             "work atexit\nexitcode atexit 0\n"), r.stderr)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_a_program_whose_shared_memory_is_collected_at_exit_ends(self):
        # Left in a reference cycle, the SharedMemory is collected while the interpreter
        # finalizes, and its close() asks dragond to detach: the main thread, which is the
        # one finalizing, must come back from that call (it was parked there for ever).
        r = self.run_script(
            "import dragon\n"
            "from multiprocessing.shared_memory import SharedMemory\n"
            "class Node:\n    pass\n"
            "a, b = Node(), Node()\n"
            "a.other, b.other = b, a\n"
            "a.shm = SharedMemory(create=True, size=64)\n"
            "a.shm.buf[0] = 7\n"
            "print('end', flush=True)\n", timeout=30)
        self.assertEqual((r.returncode, r.stdout), (0, "end\n"), r.stderr)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_dragon_app_py_runs_main_with_argv_and_exit_code(self):
        r = self.run_script(
            "import multiprocessing as mp, sys\n"
            "def sq(x):\n    return x * x\n"
            "def child(q):\n    q.put(sq(7))\n"
            "if __name__ == '__main__':\n"
            "    q = mp.Queue()\n"
            "    p = mp.Process(target=child, args=(q,))\n"
            "    p.start()\n"
            "    print(mp.get_start_method(), sys.argv[1:], q.get(timeout=30))\n"
            "    p.join()\n"
            "    sys.exit(5)\n", "a", "b")
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertEqual(r.stdout, "dragon ['a', 'b'] 49\n")

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_dragon_app_pyc_runs_the_compiled_script_under_python(self):
        import py_compile
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "app.py"), "w") as f:
                f.write("import multiprocessing as mp, sys\n"
                        "def sq(x):\n    return x * x\n"
                        "if __name__ == '__main__':\n"
                        "    with mp.Pool(2) as p:\n"
                        "        print(mp.get_start_method(), sys.argv[1:], sum(p.map(sq, range(10))))\n")
            compiled = py_compile.compile(os.path.join(d, "app.py"), cfile=os.path.join(d, "app.pyc"))
            env = {k: v for k, v in os.environ.items() if k != "DRAGON_SOCKET"}
            r = subprocess.run([self.LAUNCHER, compiled, "x"], capture_output=True, text=True,
                               timeout=120, env=env)
        self.assertEqual((r.returncode, r.stdout), (0, "dragon ['x'] 285\n"), r.stderr)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_each_process_output_lines_are_whole_and_carry_its_own_puid_under_label(self):
        # The first child is a fresh interpreter, the others come from the template (once it
        # is ready): each writes its lines in pieces, which would tear if children shared a
        # pipe, and its lines arrive under its own puid, all before its join returns.
        text = (
            "import multiprocessing as mp, select, sys\n"
            "from dragon import process as dp\n"
            "def child(i):\n"
            "    for n in range(200):\n"
            "        sys.stdout.write('child %d ' % i); sys.stdout.flush()\n"
            "        sys.stdout.write('%d\\n' % n); sys.stdout.flush()\n"
            "    sys.stderr.write('done %d\\n' % i)\n"
            "    if i == 2:  # a template child's own child: its lines are its own too\n"
            "        g = mp.Process(target=grandchild); g.start(); g.join()\n"
            "def grandchild():\n"
            "    print('grandchild of 2')\n"
            "if __name__ == '__main__':\n"
            "    print('parent before', flush=True)\n"
            "    ps = [mp.Process(target=child, args=(i,)) for i in range(3)]\n"
            "    ps[0].start(); ps[0].join()\n"
            "    select.select([dp._template._sock], [], [], 60)\n"
            "    assert dp._template.ready()\n"
            "    for p in ps[1:]: p.start()\n"
            "    for p in ps: p.join()\n"
            "    print('parent after', [p.exitcode for p in ps],\n"
            "          [type(p._popen).__name__ for p in ps])\n")
        r = run_program([self.LAUNCHER, "--label"], text)
        self.assertEqual(r.returncode, 0, r.stderr)
        puid_of, seen = {}, {}
        out = r.stdout.splitlines()
        for line in out:
            m = re.fullmatch(r"\[0:(\d+)\] (?:child (\d) (\d+)|(parent) (?:before|after).*|"
                             r"(grandchild) of 2)", line)
            self.assertIsNotNone(m, "a torn or unlabelled line: %r" % line)
            who = m.group(4) or m.group(5) or m.group(2)
            self.assertEqual(puid_of.setdefault(who, m.group(1)), m.group(1), line)
            if m.group(2) is not None:
                seen.setdefault(who, []).append(int(m.group(3)))
        self.assertEqual(len(set(puid_of.values())), 5, puid_of)  # parent, 3 children, 1
        self.assertEqual(seen, {str(i): list(range(200)) for i in range(3)})
        self.assertEqual(out[-1], "[0:%s] parent after [0, 0, 0] ['_DaemonPopen', "
                         "'_TemplatePopen', '_TemplatePopen']" % puid_of["parent"])
        errs = sorted(l for l in r.stderr.splitlines() if l.startswith("["))
        self.assertEqual(errs, ["[0:%s] done %d" % (puid_of[str(i)], i) for i in range(3)])

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_dragon_app_py_gives_dragon_objects_before_the_start_method_is_asked(self):
        # dragon makes "dragon" the default start method without setting it: what looks at the
        # method in force must see it before the script has called anything of multiprocessing.
        r = self.run_script(
            "import os\n"
            "from multiprocessing import shared_memory, connection\n"
            "before = set(os.listdir('/dev/shm'))\n"
            "b = shared_memory.SharedMemory(create=True, size=64)\n"
            "new = set(os.listdir('/dev/shm')) - before\n"
            "with connection.Listener() as l:\n"
            "    print(b._dragon, sorted(new), l._dragon)\n"
            "b.close(); b.unlink()\n"
            "import multiprocessing as mp\n"
            "mp.set_start_method('spawn')  # the script may still choose another\n"
            "print(mp.get_start_method())\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "True [] True\nspawn\n")

    def test_pytest_runs_tests_that_use_dragon_processes_and_managers(self):
        test_file = (
            "import multiprocessing as mp\n"
            "import dragon\n"
            "def square(x):\n    return x * x\n"
            "def test_pool_and_process():\n"
            "    ctx = mp.get_context('dragon')\n"
            "    with ctx.Pool(2) as pool:\n"
            "        assert pool.map(square, range(10)) == [x * x for x in range(10)]\n"
            "    q = ctx.Queue()\n"
            "    p = ctx.Process(target=q.put, args=(42,)); p.start()\n"
            "    assert q.get(timeout=30) == 42\n"
            "    p.join(30); assert p.exitcode == 0\n"
            "def test_selected_start_method():\n"
            "    mp.set_start_method('dragon', force=True)\n"
            "    with mp.Manager() as m:\n"
            "        d = m.dict(a=1); assert d['a'] == 1\n"
            "def test_a_failure_is_reported():\n"
            "    ctx = mp.get_context('dragon')\n"
            "    with ctx.Pool(1) as pool:\n"
            "        assert pool.apply(square, (3,)) == 10\n")
        env, path = private_runtime_env("test_uses_dragon.py", test_file)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            path], capture_output=True, text=True, timeout=120, env=env,
                           cwd=env["XDG_RUNTIME_DIR"])
        self.assertIn("1 failed, 2 passed", r.stdout, r.stdout + r.stderr)
        self.assertIn("assert 9 == 10", r.stdout)
        self.assertEqual(r.returncode, 1)

    def test_plain_python_finds_the_dragond_that_dragon_yaml_puts_elsewhere(self):
        # dragon.yaml's `socket` moves dragond's socket; a plain python3 (no DRAGON_SOCKET)
        # looks there first, as the launcher does, and its children are told. It started a
        # private dragond of its own instead, beside the user's. A dragond found in the
        # default place is passed on to children too (they would look again, and could find
        # another one started meanwhile).
        script = ("import multiprocessing as mp, os, dragon\n"
                  "from dragon import _runtime\n"
                  "def where(q):\n    q.put(os.environ.get('DRAGON_SOCKET'))\n"
                  "if __name__ == '__main__':\n"
                  "    mp.set_start_method('dragon')\n"
                  "    q = mp.Queue(); p = mp.Process(target=where, args=(q,)); p.start()\n"
                  "    print('child', q.get(timeout=60)); p.join(60)\n"
                  "    print('socket', _runtime._socket, _runtime._private is None)\n")
        env, path = private_runtime_env("elsewhere.py", script)
        home = env["XDG_RUNTIME_DIR"]
        elsewhere = os.path.join(home, "elsewhere", "d.sock")
        os.makedirs(os.path.join(home, "config", "dragon"))
        os.makedirs(os.path.dirname(elsewhere), mode=0o700)
        config = os.path.join(home, "config", "dragon", "dragon.yaml")
        with open(config, "w") as f:
            f.write("socket: %s\n" % elsewhere)
        env["XDG_CONFIG_HOME"] = os.path.join(home, "config")
        from dragon import _runtime

        def served_at(sock):
            r, w = os.pipe()
            daemon = subprocess.Popen([_runtime._daemon_path(), "--standalone", "--ready-fd",
                                       str(w)], pass_fds=(w,), env=env,
                                      stdin=subprocess.DEVNULL)
            os.close(w)
            try:
                with os.fdopen(r, "rb") as ready:
                    self.assertEqual(ready.read(5), b"ready")
                self.assertTrue(os.path.exists(sock))
                out = subprocess.run([sys.executable, path], capture_output=True, text=True,
                                     timeout=120, env=env)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn("child %s\n" % sock, out.stdout, out.stderr)
                self.assertIn("socket %s True\n" % sock, out.stdout, out.stderr)
            finally:
                daemon.terminate()
                self.assertEqual(daemon.wait(60), 0)

        served_at(elsewhere)
        os.unlink(config)
        served_at(os.path.join(home, "dragon", "dragond.sock"))

    def test_an_interactive_session_starts_and_ends_a_private_runtime(self):
        session = ("import multiprocessing as mp, dragon, operator\n"
                   "mp.set_start_method('dragon')\n"
                   "with mp.Pool(2) as p: print(p.map(operator.neg, range(5)))\n\n"
                   "q = mp.Queue(); w = mp.Process(target=q.put, args=(7,)); w.start()\n"
                   "print('got', q.get(timeout=30)); w.join(30)\n")
        env, _ = private_runtime_env()
        r = subprocess.run([sys.executable, "-q", "-i"], input=session, capture_output=True,
                           text=True, timeout=120, env=env)
        self.assertIn("[0, -1, -2, -3, -4]", r.stdout, r.stderr)
        self.assertIn("got 7", r.stdout, r.stderr)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.listdir(env["XDG_RUNTIME_DIR"] + "/dragon"), [])  # its socket went

    def test_a_killed_python_takes_its_private_dragond_and_template_with_it(self):
        script = (
            "import multiprocessing as mp, sys, time, dragon\n"
            "from dragon import _runtime, process\n"
            "def noop():\n    pass\n"
            "if __name__ == '__main__':\n"
            "    ctx = mp.get_context('dragon')\n"
            "    p = ctx.Process(target=noop); p.start(); p.join()\n"
            "    print(_runtime._private.pid, process._template._pid, flush=True)\n"
            "    time.sleep(120)\n")
        env, path = private_runtime_env("killed.py", script)
        p = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE, env=env,
                             text=True)
        try:
            daemon, template = map(int, p.stdout.readline().split())
            pidfds = [os.pidfd_open(daemon), os.pidfd_open(template)]
            self.assertTrue(alive(daemon) and alive(template))
            p.kill()
            p.wait(30)
            try:
                for fd, what in zip(pidfds, ("the private dragond", "the template")):
                    # A pidfd turns readable when its process ends.
                    self.assertTrue(select.select([fd], [], [], 30)[0],
                                    what + " outlived its python")
            finally:
                for fd in pidfds:
                    os.close(fd)
        finally:
            p.kill()
            p.stdout.close()

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_a_sigkilled_launcher_leaves_no_dragond_process_or_socket(self):
        script = ("import multiprocessing as mp, time\n"
                  "def busy(x):\n    end = time.time() + 600\n"
                  "    while time.time() < end: pass\n"
                  "if __name__ == '__main__':\n"
                  "    with mp.Pool(4) as pool:\n"
                  "        r = pool.map_async(busy, range(4))\n"
                  "        print('busy', flush=True); r.get()\n")
        env, path = private_runtime_env("busy.py", script)
        needle = ("XDG_RUNTIME_DIR=" + env["XDG_RUNTIME_DIR"] + "\0").encode()

        def left():
            pids = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open("/proc/%s/environ" % pid, "rb") as f:
                        mine = needle in f.read()
                    with open("/proc/%s/stat" % pid) as f:
                        zombie = f.read().rsplit(")", 1)[1].split()[0] in "ZX"
                except OSError:
                    continue
                if mine and not zombie and int(pid) != os.getpid():
                    pids.append(int(pid))
            return pids

        p = subprocess.Popen([self.LAUNCHER, path], stdout=subprocess.PIPE, env=env, text=True)
        try:
            self.assertEqual(p.stdout.readline(), "busy\n")
            self.assertGreaterEqual(len(left()), 7)  # dragond, template, head, 4 workers
            p.kill()
            p.wait(30)
            deadline = time.monotonic() + 30
            while left() and time.monotonic() < deadline:
                select.select([], [], [], 0.05)
            self.assertEqual(left(), [], "processes of the killed launcher's job are left")
            self.assertEqual(os.listdir(env["XDG_RUNTIME_DIR"] + "/dragon"), [])
        finally:
            p.kill()
            p.stdout.close()
            for pid in left():
                os.kill(pid, signal.SIGKILL)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_the_examples_run_under_dragon_and_verify_their_results(self):
        examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples")
        env = dict(os.environ)
        env.pop("DRAGON_SOCKET", None)
        for name, args, says in [
                ("monte_carlo_pi.py", ["--tasks", "8", "--darts", "20000"], "pi ~ 3.1"),
                ("queue_pipeline.py", ["--records", "5000"], "5000 of 5000 records"),
                ("numpy_pipeline.py", ["--blocks", "16"], "histogram verified")]:
            r = subprocess.run([self.LAUNCHER, os.path.join(examples, name), *args],
                               capture_output=True, text=True, timeout=120, env=env)
            self.assertEqual(r.returncode, 0, name + ": " + r.stderr)
            self.assertIn(says, r.stdout)
            self.assertIn("dragon start method", r.stdout)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_an_uncaught_exception_prints_its_traceback_and_exits_one(self):
        r = self.run_script("raise KeyError('nope')\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("KeyError: 'nope'", r.stderr)


if __name__ == "__main__":
    unittest.main()
