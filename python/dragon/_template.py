# SPDX-License-Identifier: MIT
"""The template process: what makes starting a dragon Process as cheap as a fork while the
child has spawn's clean state.

A parent that starts processes has dragond start one template for it (a dragond process, in
the job like any other). The template runs ``spawn.prepare()`` once with the parent's
preparation data, which is what every spawn child does first (import the main module as
``__mp_main__``, set ``sys.path``, the cwd...), and then waits. Each ``Process.start()`` sends
it the pickled process object, the environment and the fds to lend over a Unix socket; the
template forks, replies with the child's pidfd (so the parent's sentinel and signals can't hit
a reused pid) and reports the child's exit code into a channel the parent made for it.

Wire format on the socket, both ways: u32 length, then a pickle; fds ride with the first
byte (SCM_RIGHTS). First the parent sends (preparation data, its pool's descriptor) and the
template answers ("ready", pid). Requests: ("start", payload, env, cwd, status_channel,
fd_base, tracker_fd) with the fds to lend; replies: ("started", pid) with the child's pidfd,
or ("error", text).
"""
import os
import pickle
import select
import signal
import socket
import struct
import sys

_HEADER = struct.Struct("<I")
MAX_FDS = 32
MAX_MESSAGE = 1 << 30


def send_message(sock, obj, fds=()):
    data = pickle.dumps(obj, 5)
    buf = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [buf[:1]], list(fds)) if fds else sock.send(buf[:1])
    if sent != 1:
        raise OSError("template socket: short send")
    sock.sendall(buf[1:])


def recv_message(sock):
    """(obj, fds), or (None, []) at end of file."""
    first, fds, _, _ = socket.recv_fds(sock, 1, MAX_FDS)
    if not first:
        for fd in fds:
            os.close(fd)
        return None, []
    head = first + _recv_exactly(sock, _HEADER.size - 1)
    (length,) = _HEADER.unpack(head)
    if length > MAX_MESSAGE:
        raise OSError("template socket: message of %d bytes refused" % length)
    return pickle.loads(_recv_exactly(sock, length)), fds


def _recv_exactly(sock, n):
    chunks = []
    while n:
        b = sock.recv(min(n, 1 << 20))
        if not b:
            raise EOFError("template socket closed mid-message")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _child(sock, wake_fds, request, fds):
    """In the forked child: become the process the parent asked for, never return."""
    code = 1
    try:
        _, payload, env, cwd, _, fd_base, tracker_fd = request
        sock.close()
        for fd in wake_fds:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # The lent fds go where the parent's duplicate_for_child() said they would be.
        for i, fd in enumerate(fds):
            if fd != fd_base + i:
                os.dup2(fd, fd_base + i)
        for fd in fds:
            if not fd_base <= fd < fd_base + len(fds):
                os.close(fd)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        from multiprocessing import resource_tracker
        resource_tracker._resource_tracker._fd = tracker_fd
        from ._child import run_payload
        code = run_payload(payload)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            # A spawn child ends as any interpreter does: its atexit handlers run (a Pipe end
            # gives back its writer count there).
            import atexit
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main():
    from multiprocessing import spawn

    from . import _runtime

    sock = socket.socket(fileno=int(sys.argv[1]))
    from multiprocessing import resource_tracker
    resource_tracker._resource_tracker._fd = int(sys.argv[2])  # the parent's tracker
    (prep, parent_pool), _ = recv_message(sock)
    prep = pickle.loads(prep)
    keep_mapped = _runtime.attach_pool(parent_pool)  # noqa: F841 (status channels live there)
    spawn.prepare(prep)  # once, for every child: the main module is imported here
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent and its children
    children = {}  # pid -> status channel
    send_message(sock, ("ready", os.getpid()))

    def reap():
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            channel = children.pop(pid, None)
            if channel is not None:
                try:
                    channel.send(struct.pack("<i", os.waitstatus_to_exitcode(status)), 5)
                except Exception as e:  # the parent is gone, or its channel is
                    print("dragon template: exit of %d not reported: %s" % (pid, e),
                          file=sys.stderr)

    open_socket = True
    while open_socket or children:
        ready, _, _ = select.select([wake_r] + ([sock] if open_socket else []), [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if sock in ready:
            try:
                request, fds = recv_message(sock)
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                print("dragon template: bad request, stopping: %s" % e, file=sys.stderr)
                request, fds = None, []
            if request is None:
                open_socket = False  # the parent has gone: finish with the children it has
                continue
            try:
                pid = os.fork()
            except Exception as e:
                for fd in fds:
                    os.close(fd)
                send_message(sock, ("error", "%s: %s" % (type(e).__name__, e)))
                continue
            if pid == 0:
                _child(sock, (wake_r, wake_w), request, fds)
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)  # before it can be reaped: the pid is still ours
            try:
                send_message(sock, ("started", pid), [pidfd])
            except OSError:
                open_socket = False
            finally:
                os.close(pidfd)
            try:
                children[pid] = _runtime.attach_channel(request[4])
            except Exception as e:
                children[pid] = None
                print("dragon template: no status channel for %d: %s" % (pid, e),
                      file=sys.stderr)
            reap()
    sys.exit(0)


if __name__ == "__main__":
    main()
