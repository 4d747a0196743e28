# SPDX-License-Identifier: MIT
"""The start of a process of the dragon start method (what spawn's ``spawn_main`` is to spawn).

dragond runs ``python3 -c 'from dragon._child import main; main()' CHANNEL``; the parent has
put spawn's preparation data and the pickled Process object in that channel.
"""
import io
import os
import sys


def main():
    from multiprocessing import process, reduction, spawn

    from . import _runtime

    descriptor = sys.argv[1]
    if len(sys.argv) > 2:
        from multiprocessing import resource_tracker
        resource_tracker._resource_tracker._fd = int(sys.argv[2])
    channel = _runtime.attach_channel(descriptor)
    payload = channel.recv()
    del channel
    fp = io.BytesIO(payload)
    process.current_process()._inheriting = True
    try:
        preparation_data = reduction.pickle.load(fp)
        spawn.prepare(preparation_data)
        self = reduction.pickle.load(fp)
    finally:
        del process.current_process()._inheriting
    try:
        parent_sentinel = os.pidfd_open(self._parent_pid)
    except OSError:
        parent_sentinel = None
    exitcode = self._bootstrap(parent_sentinel)
    sys.exit(exitcode)
