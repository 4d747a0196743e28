# SPDX-License-Identifier: MIT
"""Process and its Popen for the dragon start method: dragond starts a fresh interpreter
(spawn's clean state) and reports its exit; the sentinel is a pidfd."""
import io
import os
import signal
import sys

from multiprocessing import context, process, reduction, spawn, util

from . import _runtime

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_environment():
    env = dict(os.environ)
    # The child must import this package whether the parent found it through PYTHONPATH or not.
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _PACKAGE_PARENT not in paths:
        paths.insert(0, _PACKAGE_PARENT)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return ["%s=%s" % kv for kv in env.items()]


class _DupFd:
    """An fd lent to the child (see duplicate_for_child): in the child it is already there."""

    def __init__(self, fd):
        self.fd = fd

    def detach(self):
        return self.fd


class Popen:
    method = "dragon"
    DupFd = _DupFd

    def __init__(self, process_obj):
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self.sentinel = None
        self._fds = []
        prep_data = spawn.get_preparation_data(process_obj._name)
        fp = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            context.set_spawning_popen(None)
        # The child shares this process's resource tracker, as spawn's children do (else its
        # own tracker would unlink shared memory it merely attached, when it exits).
        from multiprocessing import resource_tracker
        tracker_fd = self.duplicate_for_child(resource_tracker.getfd())
        # The payload waits in a channel of ours until the child takes it.
        self._channel = _runtime.new_channel(capacity=1)
        self._channel.send(fp.getbuffer())
        argv = [spawn.get_executable(), "-c", "from dragon._child import main; main()",
                self._channel.descriptor, str(tracker_fd)]
        [(self._puid, self.pid, _)] = _runtime.spawn(
            argv, _child_environment(), os.getcwd(), stdin="null", stdout="passed",
            stderr="passed", stdout_fd=1, stderr_fd=2, extra_fds=self._fds,
            extra_fd_base=self.FD_BASE)
        try:
            self.sentinel = os.pidfd_open(self.pid)
            self.finalizer = util.Finalize(self, os.close, (self.sentinel,))
        except OSError:
            self.sentinel = None  # it has already gone and been reaped

    # The child finds the fds lent to it from here on (dragond places them there).
    FD_BASE = 100

    def duplicate_for_child(self, fd):
        if len(self._fds) >= 32:
            raise ValueError("a process of the dragon start method takes at most 32 fds")
        self._fds.append(fd)
        return self.FD_BASE + len(self._fds) - 1

    def _record(self, result):
        [(_, code, sig)] = result
        self.returncode = -sig if sig else code
        self._channel = None

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            try:
                self._record(_runtime.wait([self._puid], 0 if flag else None))
            except TimeoutError:
                return None
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            try:
                self._record(_runtime.wait([self._puid], timeout))
            except TimeoutError:
                return None
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                _runtime.signal([self._puid], sig)
            except LookupError:
                pass

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()


class DragonProcess(process.BaseProcess):
    _start_method = "dragon"

    @staticmethod
    def _Popen(process_obj):
        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        pass
