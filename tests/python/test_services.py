# SPDX-License-Identifier: MIT
"""connection.Listener / Client, Manager and shared_memory with the dragon start method, against
a real dragond (a private one this test process starts), real processes, and stock Python
processes on the other end of a socket."""
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import unittest

if "DRAGON_PYTEST_DIR" not in os.environ:
    os.environ["DRAGON_PYTEST_DIR"] = tempfile.mkdtemp(prefix="dragon-pytest-")
    os.environ["XDG_RUNTIME_DIR"] = os.environ["DRAGON_PYTEST_DIR"]
    os.environ.pop("DRAGON_SOCKET", None)

import multiprocessing as mp  # noqa: E402
from multiprocessing import connection, shared_memory  # noqa: E402

import dragon  # noqa: E402,F401
from dragon import connection as dconnection  # noqa: E402

CTX = mp.get_context("dragon")
FAMILIES = ("AF_UNIX", "AF_INET")
AUTH = b"dragon-test-key"


def setUpModule():
    # multiprocessing.connection.Listener, Client and shared_memory follow the selected start
    # method: these tests select dragon for the whole process, as `dragon app.py` does.
    mp.set_start_method("dragon", force=True)


def tearDownModule():
    mp.set_start_method(None, force=True)


def client_says(address, message, authkey=None):
    with connection.Client(address, authkey=authkey) as c:
        c.send((message, os.getpid(), type(c).__module__))
        if authkey is not None:
            c.send(c.recv() * 2)


def client_sends_and_exits(address):
    c = connection.Client(address)
    c.send_bytes(b"sent before accept")
    # exits without closing: its handle goes with the process


def listener_serves(q, family):
    with connection.Listener(family=family, authkey=AUTH) as listener:
        q.put(listener.address)
        conn = listener.accept()
        conn.send("served")
        conn.recv()  # until the client goes


def write_block(name, data):
    block = shared_memory.SharedMemory(name)
    block.buf[:len(data)] = data
    block.close()


def bump_list(sl):
    sl[0] = sl[0] + 1
    sl.shm.close()


def fill_dict(d, lock, n):
    for i in range(n):
        with lock:
            d[i] = i * i


STOCK_PYTHON = [sys.executable, "-I", "-c"]


class ListenerClientTest(unittest.TestCase):
    def test_a_dragon_client_in_a_child_talks_over_dragon_channels(self):
        for family in FAMILIES:
            with self.subTest(family=family):
                with connection.Listener(family=family, authkey=AUTH) as listener:
                    self.assertIsInstance(listener, dconnection.Listener)
                    p = CTX.Process(target=client_says, args=(listener.address, "hello", AUTH))
                    p.start()
                    with listener.accept() as conn:
                        self.assertIsInstance(conn, dconnection.Connection)
                        message, pid, module = conn.recv()
                        self.assertEqual((message, pid, module), ("hello", p.pid, "dragon.connection"))
                        conn.send(21)
                        self.assertEqual(conn.recv(), 42)
                        self.assertEqual(listener.last_accepted,
                                         "" if family == "AF_UNIX" else ("127.0.0.1", 0))
                    p.join(30)
                    self.assertEqual(p.exitcode, 0)

    def test_a_connection_made_before_accept_keeps_what_was_sent_after_its_client_exits(self):
        with connection.Listener() as listener:
            p = CTX.Process(target=client_sends_and_exits, args=(listener.address,))
            p.start()
            p.join(30)
            self.assertEqual(p.exitcode, 0)
            with listener.accept() as conn:
                self.assertEqual(conn.recv_bytes(), b"sent before accept")
                with self.assertRaises(EOFError):
                    conn.recv_bytes()

    def test_a_wrong_authkey_is_refused_on_both_sides(self):
        with connection.Listener(authkey=AUTH) as listener:
            p = CTX.Process(target=client_says, args=(listener.address, "x", b"wrong"))
            p.start()
            with self.assertRaises(mp.AuthenticationError):
                listener.accept()
            p.join(30)
            self.assertNotEqual(p.exitcode, 0)

    def test_a_closed_listener_refuses_and_its_address_can_be_listened_on_again(self):
        listener = connection.Listener(("127.0.0.1", 0))
        address = listener.address
        with connection.Client(address) as c:  # connected, never accepted
            listener.close()
            with self.assertRaises(EOFError):
                c.recv()
        with self.assertRaises(OSError):
            listener.accept()
        with self.assertRaises(ConnectionRefusedError):
            connection.Client(address)
        again = connection.Listener(address)
        self.addCleanup(again.close)
        with connection.Client(address) as c, again.accept() as d:
            c.send("again")
            self.assertEqual(d.recv(), "again")

    def test_a_wildcard_listener_is_reached_through_this_hosts_addresses(self):
        with connection.Listener(("", 0)) as listener:
            port = listener.address[1]
            for host in ("127.0.0.1", "localhost"):
                with self.subTest(host=host):
                    with connection.Client((host, port)) as c, listener.accept() as d:
                        self.assertIsInstance(c, dconnection.Connection)
                        c.send(host)
                        self.assertEqual(d.recv(), host)

    def test_a_client_keeps_no_listener_that_went_away_and_a_bounded_few_that_live(self):
        live = []
        for i in range(dconnection.ACCEPT_CACHE + 4):
            listener = connection.Listener()
            with connection.Client(listener.address), listener.accept():
                pass
            if i % 2:
                listener.close()
            else:
                live.append(listener)
        cached = list(dconnection._accept_channels.values())
        self.assertLessEqual(len(cached), dconnection.ACCEPT_CACHE)
        with connection.Client(live[-1].address), live[-1].accept():
            pass  # a connect sweeps out the closed ones
        self.assertFalse([ch for _, ch in dconnection._accept_channels.values() if ch.is_closed()])
        for listener in live:
            listener.close()

    def test_an_address_in_use_is_an_oserror(self):
        for family in FAMILIES:
            with self.subTest(family=family):
                with connection.Listener(family=family) as listener:
                    with self.assertRaises(OSError):
                        connection.Listener(listener.address, family)

    def test_a_killed_listener_refuses_its_clients_and_a_killed_peer_is_end_of_file(self):
        q = CTX.Queue()
        p = CTX.Process(target=listener_serves, args=(q, "AF_INET"))
        p.start()
        address = q.get(timeout=30)
        conn = connection.Client(address, authkey=AUTH)
        self.assertEqual(conn.recv(), "served")
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        with self.assertRaises(EOFError):
            conn.recv()  # as a socket reports a killed peer, within a second
        conn.close()
        # Whether or not dragond has seen the listener go yet (its scoped name dropped, its
        # channel closed), a client is refused: by the socket, or by the liveness check.
        with self.assertRaises(ConnectionRefusedError):
            connection.Client(address)

    def test_a_stock_python_client_reaches_a_dragon_listener_over_its_socket(self):
        with connection.Listener(("127.0.0.1", 0), authkey=AUTH) as listener:
            code = ("from multiprocessing.connection import Client\n"
                    "c = Client(%r, authkey=%r)\n"
                    "c.send('from stock'); print(c.recv())" % (listener.address, AUTH))
            proc = subprocess.Popen(STOCK_PYTHON + [code], stdout=subprocess.PIPE)
            with listener.accept() as conn:
                self.assertIsInstance(conn, connection.Connection)  # the stdlib's, a socket
                self.assertEqual(conn.recv(), "from stock")
                conn.send("back")
            out, _ = proc.communicate(timeout=30)
            self.assertEqual(out.strip(), b"back")
            self.assertEqual(proc.returncode, 0)

    def test_a_dragon_client_reaches_a_stock_listener_over_the_socket(self):
        code = ("from multiprocessing.connection import Listener\n"
                "l = Listener(('127.0.0.1', 0), authkey=%r)\n"
                "print(l.address[1], flush=True)\n"
                "c = l.accept(); c.send(c.recv().upper())" % (AUTH,))
        proc = subprocess.Popen(STOCK_PYTHON + [code], stdout=subprocess.PIPE)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.kill)
        port = int(proc.stdout.readline())
        with connection.Client(("127.0.0.1", port), authkey=AUTH) as c:
            self.assertIsInstance(c, connection.Connection)
            c.send("stock")
            self.assertEqual(c.recv(), "STOCK")
        self.assertEqual(proc.wait(30), 0)

    def test_bad_arguments_are_clear_errors(self):
        with self.assertRaises(TypeError):
            connection.Listener(authkey="not bytes")
        with self.assertRaises(TypeError):
            connection.Client(("127.0.0.1", 1), authkey="not bytes")
        with self.assertRaises(TypeError):
            connection.Client(12345)
        with self.assertRaises(ConnectionRefusedError):
            connection.Client(("127.0.0.1", _free_port()))
        with self.assertRaises(FileNotFoundError):
            connection.Client(os.path.join(tempfile.gettempdir(), "no-such-listener"))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagerTest(unittest.TestCase):
    def test_proxies_talk_to_a_dragon_server_over_dragon_connections(self):
        with CTX.Manager() as m:
            d, lock = m.dict(), m.Lock()
            procs = [CTX.Process(target=fill_dict, args=(d, lock, 50)) for _ in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
                self.assertEqual(p.exitcode, 0)
            self.assertEqual(d.copy(), {i: i * i for i in range(50)})
            self.assertIsInstance(d._tls.connection, dconnection.Connection)
            q = m.Queue()
            q.put([1, 2])
            self.assertEqual(q.get(timeout=10), [1, 2])

    def test_the_server_address_comes_back_over_a_dragon_pipe_and_other_pipes_stay_stock(self):
        made = []
        real = dconnection.Pipe

        def spy(duplex=True):
            made.append(real(duplex))
            return made[-1]

        dconnection.Pipe = spy
        try:
            with CTX.Manager():
                pass
        finally:
            dconnection.Pipe = real
        self.assertEqual(len(made), 1)
        a, b = connection.Pipe()  # the stdlib's own callers (a stock context's Queue) keep it
        self.assertIsInstance(a, connection.Connection)
        a.close()
        b.close()

    def test_module_level_manager_follows_the_selected_method(self):
        with mp.Manager() as m:
            shared = m.list([1])
            shared.append(2)
            self.assertEqual(list(shared), [1, 2])
            self.assertIsInstance(shared._tls.connection, dconnection.Connection)

    def test_a_killed_manager_is_an_error_for_its_proxies_not_a_hang(self):
        m = CTX.Manager()
        shared = m.list([1])
        self.assertEqual(len(shared), 1)
        os.kill(m._process.pid, signal.SIGKILL)
        m._process.join(30)
        with self.assertRaises((EOFError, ConnectionError)):
            len(shared)
        with self.assertRaises((EOFError, ConnectionError, FileNotFoundError)):
            m.list()


class SharedMemoryTest(unittest.TestCase):
    def test_a_block_is_a_dragon_pool_seen_by_children_by_name_and_by_pickle(self):
        block = shared_memory.SharedMemory(create=True, size=1000)
        self.addCleanup(block.unlink)
        self.assertTrue(block._dragon)
        self.assertEqual((block.size, len(block.buf)), (1000, 1000))
        p = CTX.Process(target=write_block, args=(block.name, b"by name"))
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(bytes(block.buf[:7]), b"by name")
        again = pickle.loads(pickle.dumps(block))
        again.buf[0:2] = b"BY"
        self.assertEqual(bytes(block.buf[:7]), b"BY name")
        again.close()

    def test_names_are_unique_and_unlink_removes_the_name_not_the_mapping(self):
        name = "dragon-test-%d" % os.getpid()
        block = shared_memory.SharedMemory(name, create=True, size=64)
        with self.assertRaises(FileExistsError):
            shared_memory.SharedMemory(name, create=True, size=64)
        other = shared_memory.SharedMemory(name, size=1 << 20)  # a size to attach is ignored
        self.assertEqual(other.size, 64)
        other.unlink()
        with self.assertRaises(FileNotFoundError):
            shared_memory.SharedMemory(name)
        with self.assertRaises(FileNotFoundError):
            block.unlink()
        block.buf[0] = 9  # still mapped here
        self.assertEqual(other.buf[0], 9)
        other.close()
        block.close()

    def test_bad_sizes_are_value_errors_and_views_outlive_close(self):
        with self.assertRaises(ValueError):
            shared_memory.SharedMemory(create=True, size=0)
        with self.assertRaises(ValueError):
            shared_memory.SharedMemory(create=True, size=-1)
        with self.assertRaises(ValueError):
            shared_memory.SharedMemory()
        block = shared_memory.SharedMemory(create=True, size=16)
        self.addCleanup(block.unlink)
        import numpy
        array = numpy.frombuffer(block.buf, dtype=numpy.uint8)
        view = block.buf[:4]
        # A view keeps the pool mapped: close goes through and the views stay valid (stock
        # refuses such a close with BufferError).
        block.close()
        view[0] = 5
        self.assertEqual((view[0], array[0]), (5, 5))
        self.assertIsNone(block._buf)
        view.release()

    def test_shareable_list_and_shared_memory_manager_use_dragon_blocks(self):
        sl = shared_memory.ShareableList([1, 2.5, "text"])
        self.addCleanup(sl.shm.unlink)
        self.assertTrue(sl.shm._dragon)
        p = CTX.Process(target=bump_list, args=(sl,))
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(list(sl), [2, 2.5, "text"])
        sl.shm.close()
        from multiprocessing.managers import SharedMemoryManager
        with SharedMemoryManager() as smm:
            block = smm.SharedMemory(size=128)
            self.assertTrue(block._dragon)
            name = block.name
            block.close()
        with self.assertRaises(FileNotFoundError):
            shared_memory.SharedMemory(name)  # the manager unlinked it at shutdown

    def test_a_posix_segment_of_a_stock_process_is_still_attached(self):
        code = ("from multiprocessing import shared_memory\n"
                "b = shared_memory.SharedMemory(create=True, size=32)\n"
                "b.buf[:5] = b'stock'; print(b.name, flush=True); input(); b.close(); b.unlink()")
        proc = subprocess.Popen(STOCK_PYTHON + [code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.kill)
        name = proc.stdout.readline().strip().decode()
        block = shared_memory.SharedMemory(name)
        self.assertFalse(block._dragon)
        self.assertEqual(bytes(block.buf[:5]), b"stock")
        block.close()
        from multiprocessing import resource_tracker
        resource_tracker.unregister(block._name, "shared_memory")  # the stock process unlinks it
        proc.communicate(b"\n", timeout=30)
        self.assertEqual(proc.returncode, 0)


class ExitTest(unittest.TestCase):
    def test_a_daemon_thread_blocked_in_a_channel_at_exit_does_not_abort_the_process(self):
        # Daemon threads that leave and re-enter native waits all the time (short timeouts),
        # so that some wake while the interpreter finalizes, and one blocked for good.
        code = ("import multiprocessing as mp, queue, threading, dragon\n"
                "mp.set_start_method('dragon')\n"
                "q = mp.Queue()\n"
                "def spin():\n"
                "    while True:\n"
                "        try: q.get(timeout=0.0005)\n"
                "        except queue.Empty: pass\n"
                "for _ in range(4): threading.Thread(target=spin, daemon=True).start()\n"
                "lock = mp.Lock(); lock.acquire()\n"
                "threading.Thread(target=lock.acquire, daemon=True).start()\n"
                "print('exiting', flush=True)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                              env=env)
        self.assertEqual(proc.stdout.strip(), b"exiting")
        self.assertNotIn(b"terminate called", proc.stderr)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode())


if __name__ == "__main__":
    unittest.main()
