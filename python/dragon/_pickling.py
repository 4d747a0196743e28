# SPDX-License-Identifier: MIT
"""Pickling with ForkingPickler's reducers at the cost of a plain ``pickle.dumps``.

``ForkingPickler.dumps`` builds a new pickler and copies its dispatch table on every call
(about 1.4 us here); this keeps one pickler per thread and rebuilds its table only when a
reducer is registered. ``dumps`` pickles with protocol 5 and collects out-of-band buffers
(``PickleBuffer``: numpy arrays, bytearrays...), which the queue codec (codec.cpp) lays out in
pool memory; ``dumps_inband`` keeps everything in the stream (what a Connection sends)."""
import copyreg
import io
import pickle
import threading

from multiprocessing.reduction import ForkingPickler

_local = threading.local()
_table = None
_table_key = None


def _dispatch_table():
    global _table, _table_key
    key = (len(copyreg.dispatch_table), len(ForkingPickler._extra_reducers), _version[0])
    if key != _table_key:
        table = dict(copyreg.dispatch_table)
        table.update(ForkingPickler._extra_reducers)
        _table, _table_key = table, key
    return _table


# Bumped by ForkingPickler.register (wrapped below), so a reducer replaced for a type that
# already had one is seen too.
_version = [0]
_register = ForkingPickler.register.__func__


def _counting_register(cls, type, reduce):
    _register(cls, type, reduce)
    _version[0] += 1


ForkingPickler.register = classmethod(_counting_register)


class _State:
    def __init__(self, out_of_band):
        self.buf = io.BytesIO()
        self.buffers = []
        self.busy = False
        self.table = None
        callback = self.buffers.append if out_of_band else None
        self.pickler = pickle.Pickler(self.buf, 5, buffer_callback=callback)


def _dump(obj, out_of_band):
    name = "oob" if out_of_band else "inband"
    st = getattr(_local, name, None)
    if st is None:
        st = _State(out_of_band)
        setattr(_local, name, st)
    if st.busy:  # a reducer that pickles again (re-entered): a pickler of its own
        st = _State(out_of_band)
    table = _dispatch_table()
    if st.table is not table:
        st.pickler.dispatch_table = table
        st.table = table
    st.busy = True
    try:
        st.pickler.dump(obj)
        data = st.buf.getvalue()
        buffers = list(st.buffers)
    finally:
        st.pickler.clear_memo()
        st.buf.seek(0)
        st.buf.truncate()
        st.buffers.clear()
        st.busy = False
    return data, buffers


def dumps(obj):
    """(pickle stream, [PickleBuffer, ...]) of obj, protocol 5, ForkingPickler's reducers."""
    return _dump(obj, True)


def dumps_inband(obj):
    """obj pickled as ForkingPickler.dumps would, protocol 5, in one stream."""
    return _dump(obj, False)[0]
