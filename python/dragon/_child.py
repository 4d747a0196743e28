# SPDX-License-Identifier: MIT
"""The start of a process of the dragon start method (what spawn's ``spawn_main`` is to spawn).

dragond runs ``python3 -c 'from dragon._child import main; main()' CHANNEL [TRACKER_FD]``;
the parent has put spawn's preparation data and the pickled Process object in that channel.
A child on another node than its parent's gets TRACKER_FD -1 (no fd crosses nodes) and reads
the channel across nodes.
A child forked by the template (``_template.py``) gets the same payload over its socket and
calls ``run_payload`` directly.
"""
import io
import os
import sys
import threading


def run_payload(payload, parent_here=True):
    """Prepares this process as spawn would and runs the Process object; its exit code.
    parent_here: the parent runs on this node (its pid means something here)."""
    from multiprocessing import process, reduction, spawn

    fp = io.BytesIO(payload)
    process.current_process()._inheriting = True
    try:
        preparation_data = reduction.pickle.load(fp)
        spawn.prepare(preparation_data)
        self = reduction.pickle.load(fp)
    finally:
        del process.current_process()._inheriting
    parent_sentinel = None
    life = os.environ.pop("DRAGON_PARENT_LIFE", None)  # not for this process's children
    start = os.environ.pop("DRAGON_PARENT_START", None)
    if parent_here:
        parent_sentinel = _LocalParentSentinel(self._parent_pid, start)
    elif life:
        parent_sentinel = _RemoteParentSentinel(life)
    return self._bootstrap(parent_sentinel)


def start_time(pid):
    """When process `pid` started (/proc/PID/stat's starttime, clock ticks after boot), as a
    string; None if there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # after the command, which may hold spaces
    return fields[19].decode()


class _LocalParentSentinel:
    """parent_process()'s sentinel in a child on its parent's node: a pidfd of the parent, made
    on first use (a child that never asks holds no fd for it). The parent's start time
    (DRAGON_PARENT_START, from process._child_environment) tells its pid from a later process
    that reused it: a parent that has gone by then gives an fd that is ready at once, as the
    pidfd of an ended process is."""

    def __init__(self, pid, start):
        self._pid = pid
        self._start = start
        self._fd = None
        self._lock = threading.Lock()

    def fileno(self):
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
        return self._fd

    def _open(self):
        try:
            fd = os.pidfd_open(self._pid)
        except OSError:
            fd = None
        # Checked once the pidfd is open: if the pid is another process's by then, so it was
        # when the pidfd was opened, or the parent has ended since; either way it has gone.
        if fd is not None and self._start in (None, start_time(self._pid)):
            return fd
        if fd is not None:
            os.close(fd)
        r, w = os.pipe2(os.O_CLOEXEC)
        os.close(w)
        return r


class _RemoteParentSentinel:
    """parent_process()'s sentinel in a child on another node than its parent's (whose pid
    means nothing here): the read end of a pipe whose write end a thread closes once the
    parent's life channel is destroyed, which its dragond does when the parent's connection
    closes (process._life_descriptor); also when the parent's node is lost. Made on first use:
    a child that never asks costs nothing."""

    def __init__(self, life):
        self._life = life
        self._fd = None
        self._lock = threading.Lock()

    def fileno(self):
        from . import _runtime
        with self._lock:
            if self._fd is None:
                r, w = os.pipe2(os.O_CLOEXEC)
                try:
                    # Here, not in the thread: a parent already gone is seen at once.
                    channel = _runtime.attach_channel(self._life)
                    _runtime.detach(channel.descriptor)  # the parent's reference alone keeps it
                except Exception:
                    os.close(w)
                else:
                    threading.Thread(target=self._watch, args=(channel, w), daemon=True,
                                     name="dragon-parent-sentinel").start()
                self._fd = r
        return self._fd

    @staticmethod
    def _watch(channel, write_end):
        try:
            channel.recv()  # nothing is sent: it returns when the channel is destroyed
        except BaseException:
            pass
        finally:
            os.close(write_end)


def main():
    from . import _runtime

    descriptor = sys.argv[1]
    tracker = int(sys.argv[2]) if len(sys.argv) > 2 else -1
    if tracker >= 0:
        from multiprocessing import resource_tracker
        resource_tracker._resource_tracker._fd = tracker
    from ._native import ChannelClosed, NodeLost
    try:
        channel = _runtime.attach_channel(descriptor)
        parent_here = not channel.is_remote
        payload = channel.recv()
    except (ChannelClosed, LookupError, NodeLost) as e:  # the parent's channel is gone
        sys.stderr.write("dragon: process %d: its parent ended before it could start (%s)\n"
                         % (os.getpid(), e))
        sys.exit(1)
    del channel
    sys.exit(run_payload(payload, parent_here))
