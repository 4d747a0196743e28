# SPDX-License-Identifier: MIT
"""How objects travel through dragon queues (python/dragon/codec.cpp): in-band pickles, raw
bytes, out-of-band buffers read in place from pool memory, and what a malformed message, a
full pool or an unpicklable object gets."""
import ctypes
import gc
import os
import pickle
import queue
import sys
import tempfile
import time
import unittest

if "XDG_RUNTIME_DIR" not in os.environ:  # children keep their parent's
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="dragon-pytest-")

import multiprocessing as mp  # noqa: E402
from multiprocessing.reduction import ForkingPickler  # noqa: E402

import numpy as np  # noqa: E402

import dragon  # noqa: E402,F401
from dragon import _native, _runtime  # noqa: E402

CTX = mp.get_context("dragon")


def double_arrays(inq, outq):
    """Receives a dict of arrays, reports how each arrived, doubles them in place, sends back."""
    got = inq.get(timeout=60)
    report = {}
    for k, a in got.items():
        base = a.base
        while base is not None and not isinstance(base, memoryview):
            base = base.base
        in_pool = isinstance(base, memoryview) and isinstance(base.obj, _native.Block)
        report[k] = (a.flags.writeable, in_pool, a.flags.c_contiguous or a.flags.f_contiguous)
        a *= 2
    outq.put((report, got), timeout=60)


def add_under_lock(v, arr, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    with arr.get_lock():
        for i in range(len(arr)):
            arr[i] = arr[i] * 2


def add_to_heap_buffer(buf):
    view = buf.create_memoryview().cast("i")
    view[1] += 1


def fill_raw(raw, point):
    raw.value = b"from child"
    point.x, point.y = 7, 8


class Pair(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


class Point:
    def __init__(self, x):
        self.x = x


def reduce_point(p):
    return Point, (p.x * 10,)


class TransferTest(unittest.TestCase):
    def test_numpy_arrays_arrive_in_pool_memory_writable_and_exact(self):
        inq, outq = CTX.Queue(), CTX.Queue()
        p = CTX.Process(target=double_arrays, args=(inq, outq))
        p.start()
        arrays = {
            "big": np.arange(1 << 18, dtype=np.float64),           # 2 MiB, out of band
            "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
            "small": np.arange(5, dtype=np.int32),
            "strided": np.arange(100)[::3],                          # not contiguous: in band
        }
        expected = {k: a.copy() for k, a in arrays.items()}
        inq.put(arrays)
        arrays["big"][:] = -1  # put() copied: the receiver must not see this
        report, back = outq.get(timeout=60)
        p.join(60)
        self.assertEqual(p.exitcode, 0)
        for k in expected:
            np.testing.assert_array_equal(back[k], expected[k] * 2)
            self.assertEqual(back[k].dtype, expected[k].dtype)
        writable, in_pool, _ = report["big"]
        self.assertTrue(writable)
        self.assertTrue(in_pool, "a 2 MiB array must be a view of the message's pool block")
        self.assertTrue(report["fortran"][1])
        self.assertFalse(report["strided"][1])  # non-contiguous arrays are pickled in band

    def test_large_bytes_bytearray_and_str_round_trip(self):
        q = CTX.Queue()
        payloads = [b"", b"x" * 1023, os.urandom(1024), os.urandom(3 << 20),
                    bytearray(os.urandom(1 << 20)), "é" * 100000, memoryview(b"abc").tobytes()]
        for obj in payloads:
            q.put(obj)
        for obj in payloads:
            got = q.get(timeout=10)
            self.assertEqual(type(got), type(obj))
            self.assertEqual(got, obj)

    def test_a_block_is_freed_when_its_last_view_goes(self):
        q = CTX.Queue()
        pool = _runtime.pool()
        # Earlier tests' garbage freed by a collection in the middle would move the count.
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        before = pool.stats()["allocation_count"]
        q.put(np.ones(1 << 17))
        a = q.get(timeout=10)
        view = a[10:20]
        del a
        self.assertEqual(pool.stats()["allocation_count"], before + 1)  # the view keeps it
        del view
        self.assertEqual(pool.stats()["allocation_count"], before)

    def test_dropped_queues_give_their_pool_memory_back(self):
        pool = _runtime.pool()
        gc.collect()
        before = pool.stats()["used_bytes"]
        for _ in range(200):  # 200 rings of 4096 slots would not fit if they stayed
            q = CTX.Queue()
            q.put(b"x" * 100)
            q.get(timeout=5)
            del q
        gc.collect()
        self.assertLessEqual(pool.stats()["used_bytes"], before + (8 << 20))

    def test_large_messages_keep_flowing_past_the_pool_size_of_old(self):
        # 64 x 16 MiB through one queue, with objects created and dropped in between: the
        # pool (lazy, 1 GiB) does not run dry or fragment into a hang.
        q = CTX.Queue()
        block = b"y" * (16 << 20)
        for i in range(64):
            q.put(block, timeout=30)
            CTX.Event()
            self.assertEqual(len(q.get(timeout=30)), len(block))

    def test_malformed_messages_are_errors_and_the_queue_goes_on(self):
        q = CTX.Queue()
        raw = q._channel
        bad = [b"", b"\x01short", b"\x07unknown tag",
               b"\x01" + b"\0" * 7 + (1 << 40).to_bytes(8, "little") + b"\0" * 8,
               b"\x01" + b"\0" * 7 + (1).to_bytes(8, "little") + (99).to_bytes(8, "little")
               + (5).to_bytes(8, "little") + b"ab"]
        for m in bad:
            raw.send(m)
            with self.assertRaisesRegex(_native.DragonError, "malformed queue message"):
                q.get(timeout=5)
        raw.send(b"\x80\x05not a pickle")
        with self.assertRaises(pickle.UnpicklingError):
            q.get(timeout=5)
        q.put("still works")
        self.assertEqual(q.get(timeout=5), "still works")

    def test_a_full_pool_makes_put_wait_then_raise_full(self):
        client = _runtime.client()
        small = client.create_pool(32 << 20, lazy=True)
        ch = client.create_channel(small, 64, 256)
        block = np.zeros(1 << 20)  # 8 MiB
        put = 0
        t0 = time.monotonic()
        with self.assertRaises(queue.Full):
            while put < 16:
                ch.put(block, True, 0.2)
                put += 1
        self.assertGreaterEqual(time.monotonic() - t0, 0.2)  # it waited for room first
        self.assertGreaterEqual(put, 1)
        self.assertLess(put, 4)
        ch.get(True, 5)
        ch.put(block, True, 5)  # room again once one is received and dropped
        for _ in range(put):
            ch.get(True, 5)
        with self.assertRaises(queue.Empty):
            ch.get(False)

    def test_an_unpicklable_object_is_reported_and_dropped(self):
        reported = []

        class Q(type(CTX.Queue())):
            @staticmethod
            def _on_queue_feeder_error(e, obj):
                reported.append((type(e), obj))

        q = Q()
        f = (lambda: 0)  # noqa: E731
        q.put({"f": f})
        q.put(1)
        self.assertEqual(q.get(timeout=5), 1)
        self.assertEqual(len(reported), 1)
        self.assertTrue(issubclass(reported[0][0], Exception))

    def test_reducers_registered_later_are_used(self):
        q = CTX.Queue()
        q.put([Point(1)])
        self.assertEqual(q.get(timeout=5)[0].x, 1)
        ForkingPickler.register(Point, reduce_point)
        try:
            q.put([Point(1)])
            self.assertEqual(q.get(timeout=5)[0].x, 10)
            a, b = CTX.Pipe()
            a.send(Point(2))
            self.assertEqual(b.recv().x, 20)
        finally:
            del ForkingPickler._extra_reducers[Point]



class SharedCtypesTest(unittest.TestCase):
    def test_value_and_array_are_shared_and_locked_across_processes(self):
        v = CTX.Value("i", 0)
        arr = CTX.Array("d", [1.0, 2.5, -3.0])
        ps = [CTX.Process(target=add_under_lock, args=(v, arr, 300)) for _ in range(3)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(60)
            self.assertEqual(p.exitcode, 0)
        self.assertEqual(v.value, 900)
        self.assertEqual(arr[:], [8.0, 20.0, -24.0])
        from dragon.sharedctypes import PoolBuffer
        self.assertIsInstance(v.get_obj()._wrapper, PoolBuffer)

    def test_raw_values_and_structures_live_in_pool_memory(self):
        pool = _runtime.pool()
        raw = CTX.RawArray(ctypes.c_char, 16)
        point = CTX.RawValue(Pair, 1, 2.0)
        # Two blocks of the pool, found by offset (a count of the pool's blocks would also
        # move with blocks of earlier tests' ended processes, reclaimed meanwhile).
        new = {raw._wrapper._offset, point._wrapper._offset}
        self.assertEqual(len(new), 2)
        self.assertTrue(new <= {offset for offset, _ in pool.allocations()})
        self.assertEqual((point.x, point.y), (1, 2.0))
        self.assertEqual(raw.raw, b"\0" * 16)
        p = CTX.Process(target=fill_raw, args=(raw, point))
        p.start()
        p.join(60)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(raw.value, b"from child")
        self.assertEqual((point.x, point.y), (7, 8.0))
        mine = {raw._wrapper._offset, point._wrapper._offset}
        self.assertTrue(mine <= {offset for offset, _ in pool.allocations()})
        del raw, point
        gc.collect()
        self.assertFalse(mine & {offset for offset, _ in pool.allocations()})

    def test_module_level_value_builds_pool_memory_with_dragon_selected(self):
        old = mp.get_start_method(allow_none=True)
        mp.set_start_method("dragon", force=True)
        try:
            v = mp.Value("q", 5)
            a = mp.RawArray("b", 3)
        finally:
            mp.set_start_method(old, force=True)
        from dragon.sharedctypes import PoolBuffer
        self.assertIsInstance(v.get_obj()._wrapper, PoolBuffer)
        self.assertIsInstance(a._wrapper, PoolBuffer)
        self.assertEqual(v.value, 5)

    def test_stdlib_heap_buffers_are_pool_memory_with_dragon_selected(self):
        import multiprocessing.heap as heap
        import multiprocessing.sharedctypes
        old = mp.get_start_method(allow_none=True)
        mp.set_start_method("dragon", force=True)
        try:
            mine = heap.BufferWrapper(8)
            stock_value = mp.sharedctypes.Value("i", 3, lock=False)
        finally:
            mp.set_start_method(old, force=True)
        from dragon.sharedctypes import PoolBuffer
        self.assertIsInstance(mine, PoolBuffer)
        self.assertIsInstance(stock_value._wrapper, PoolBuffer)
        mine.create_memoryview().cast("i")[:] = memoryview(bytes(8)).cast("i")
        mine.create_memoryview().cast("i")[1] = 7
        p = CTX.Process(target=add_to_heap_buffer, args=(mine,))
        p.start()
        p.join(60)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(list(mine.create_memoryview().cast("i")), [0, 8])
        mp.set_start_method("fork", force=True)
        try:
            self.assertNotIsInstance(heap.BufferWrapper(8), PoolBuffer)
        finally:
            mp.set_start_method(old, force=True)


class CoherenceTest(unittest.TestCase):
    """The write-back of raw memory held on another node sends the runs of changed bytes,
    exactly (a byte more would undo another node's change)."""

    def runs(self, before, after):
        from dragon._coherence import changed_runs
        return changed_runs(memoryview(bytearray(after)), memoryview(bytearray(before)))

    def test_no_change_no_run(self):
        self.assertEqual(self.runs(b"", b""), [])
        self.assertEqual(self.runs(bytes(1 << 20), bytes(1 << 20)), [])

    def test_each_run_is_exact(self):
        before = bytes(1000)
        after = bytearray(before)
        for i in (0, 63, 64, 65, 500, 501, 502, 999):
            after[i] = 1
        self.assertEqual(self.runs(before, after),
                         [(0, 1), (63, 66), (500, 503), (999, 1000)])

    def test_runs_across_leaves_merge_and_match_a_byte_by_byte_scan(self):
        import random
        rng = random.Random(11)
        for size in (1, 63, 64, 65, 129, 4096, 10007):
            before = bytes(rng.randrange(256) for _ in range(size))
            after = bytearray(before)
            for _ in range(rng.randrange(1, 40)):
                lo = rng.randrange(size)
                for i in range(lo, min(size, lo + rng.randrange(1, 200))):
                    after[i] = (after[i] + 1) % 256
            expect, i = [], 0
            while i < size:
                if after[i] != before[i]:
                    j = i
                    while j < size and after[j] != before[j]:
                        j += 1
                    expect.append((i, j))
                    i = j
                else:
                    i += 1
            self.assertEqual(self.runs(before, after), expect, size)


if __name__ == "__main__":
    sys.exit(unittest.main())
