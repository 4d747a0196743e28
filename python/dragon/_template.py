# SPDX-License-Identifier: MIT
"""The template process: what makes starting a dragon Process as cheap as a fork while the
child has spawn's clean state.

A parent that starts processes has dragond start one template for it (a dragond process, in
the job like any other). The template runs ``spawn.prepare()`` once with the parent's
preparation data, which is what every spawn child does first (import the main module as
``__mp_main__``, set ``sys.path``, the cwd...), and then waits. Each ``Process.start()`` sends
it the pickled process object, the environment and the fds to lend over a Unix socket; the
template replies with the child's puid and pidfd (so the parent's sentinel and signals can't
hit a reused pid).

Wire format on the socket, both ways: u32 length, then a pickle; fds ride with the first
byte (SCM_RIGHTS). First the parent sends (preparation data,) and the template answers
("ready", pid). Requests: ("start", payload, env, cwd, name, fd_base, tracker_fd) with the fds
to lend (env None: the same as the last request's); replies: ("started", pid, puid) with the
child's pidfd, or ("error", text).

The template keeps one spare child forked ahead, waiting on a socket of its own: a request
goes to the spare, which becomes the process, and the next spare is forked after the reply,
so no fork is on the parent's path. Every child is in dragond's process table, so in
``dragon ps`` and in the parent's job: the template adopts each spare as it forks it (a
request to dragond, off the parent's path, which gives the puid), tells dragond when the
spare becomes a process (one-way), and, being the child's parent, reaps it and reports how it
ended (one-way). dragond's table is the one record of the exit status: the parent's join asks
dragond for it. If the template dies first, dragond records the end of its children with
exit code 255 (the status is lost with their parent). When dragond reads the parent's
stdout and stderr (DRAGON_CAPTURED_PIPES), each spare gets pipes of its own, whose read ends
go to dragond with its adoption: every child's output lines carry its own puid, whole, and are
read before its end is recorded.

On another node than the parent's, the same template runs as ``remote_main``: started by
that node's dragond, reached through channels of the parent's node instead of a socket, and
ended when they go with the parent (see remote_main).
"""
import fcntl
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


class MessageTooLarge(ValueError):
    pass


def frame(obj):
    """The bytes send_frame() sends for `obj`; MessageTooLarge when recv_message() would
    refuse them."""
    data = pickle.dumps(obj, 5)
    if len(data) > MAX_MESSAGE:
        raise MessageTooLarge("a template message of %d bytes is over the limit of %d"
                              % (len(data), MAX_MESSAGE))
    return _HEADER.pack(len(data)) + data


def send_message(sock, obj, fds=()):
    send_frame(sock, frame(obj), fds)


def send_frame(sock, buf, fds=()):
    # One sendmsg (the fds ride with its first byte): a receiver woken by a first byte sent
    # alone would take the CPU from the sender before the rest is written.
    sent = socket.send_fds(sock, [buf], list(fds)) if fds else sock.send(buf)
    if sent < len(buf):
        sock.sendall(memoryview(buf)[sent:])


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


def place_fds(fds, base):
    """Moves the received `fds` to base, base + 1, ... (where the parent's
    duplicate_for_child() said they would be), closing the numbers they came at. Received
    numbers may lie in that range already, in any order: each goes above it first, so that no
    dup2 overwrites one not yet moved."""
    end = base + len(fds)
    high = []
    for fd in fds:
        if base <= fd < end:
            high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, end))
            os.close(fd)
        else:
            high.append(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, base + i)  # inheritable, as the child's lent fds are
        os.close(fd)


def _become_child(channel, request, fds):
    """In a spare, once its request came: become the process the parent asked for and exit
    with its code (the template reaps it and reports that to dragond). Never returns."""
    code = 1
    try:
        _, payload, env, cwd, _name, fd_base, tracker_fd = request[:7]
        parent_here = request[7] if len(request) > 7 else True  # False: a remote template's
        channel.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        place_fds(fds, fd_base)
        # The parent's environment and cwd as they are now (only what changed is set).
        for k in [k for k in os.environ if k not in env]:
            del os.environ[k]
        for k, v in env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
        if _captured_pipes is not None:  # its own pipes, not the parent's (for its children)
            os.environ["DRAGON_CAPTURED_PIPES"] = _captured_pipes
        if os.getcwd() != cwd:
            os.chdir(cwd)
        if tracker_fd >= 0:
            from multiprocessing import resource_tracker
            resource_tracker._resource_tracker._fd = tracker_fd
        from ._child import run_payload
        code = run_payload(payload, parent_here)
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


def _spare_main(channel):
    """A forked spare: waits for the one request it will serve (or for the template to go)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        request, fds = recv_message(channel)
    except BaseException:
        os._exit(1)
    if request is None:
        os._exit(0)
    _become_child(channel, request, fds)


def _output_pipes(capture):
    """Before a spare is forked: a pipe for each of its streams that is captured (its output
    then reaches dragond under its own puid, not mixed into this template's), else None."""
    sys.stdout.flush()  # nothing buffered here is written twice, by the spare as well
    sys.stderr.flush()
    pipes = []
    try:
        for c in capture:
            pipes.append(os.pipe2(os.O_CLOEXEC) if c else None)
    except BaseException:
        _close_pipes(pipes)
        raise
    return pipes


_captured_pipes = None  # in a spare with pipes of its own: DRAGON_CAPTURED_PIPES for them


def _spare_output(pipes):
    """In the spare: its stdout and stderr are the write ends of its pipes."""
    global _captured_pipes
    inodes = []
    for target, pair in zip((1, 2), pipes):
        inodes.append(os.fstat(pair[1]).st_ino if pair is not None else 0)
        if pair is not None:
            os.dup2(pair[1], target)
            os.close(pair[0])
            os.close(pair[1])
    if any(inodes):
        _captured_pipes = "%d,%d" % tuple(inodes)


def _adopt_spare(pid, cmdline, pipes):
    """In the template, once the spare is forked: dragond adopts it, with the read ends of
    its pipes (none of which this template keeps). Its puid."""
    from . import _runtime

    for pair in pipes:
        if pair is not None:
            os.close(pair[1])
    try:
        return _runtime.adopt(pid, cmdline, idle=True,
                              stdout_fd=pipes[0][0] if pipes[0] else -1,
                              stderr_fd=pipes[1][0] if pipes[1] else -1)
    finally:
        for pair in pipes:
            if pair is not None:
                os.close(pair[0])


def _spare_ends(capture):
    """What a new spare is forked with: a socket pair (the template's end, the spare's) and its
    output pipes (_output_pipes); nothing is left open if one of them cannot be made."""
    ours, theirs = socket.socketpair()
    try:
        # Blocking, whatever timeout the parent's main module (prepared here) set by default:
        # an idle spare waits for its request for as long as it takes.
        ours.settimeout(None)
        theirs.settimeout(None)
        return ours, theirs, _output_pipes(capture)
    except BaseException:
        ours.close()
        theirs.close()
        raise


def _close_ends(ours, theirs, pipes):
    """The fork failed: none of what _spare_ends made is used."""
    _close_pipes(pipes)
    ours.close()
    theirs.close()


def _close_pipes(pipes):
    for pair in pipes:
        if pair is not None:
            os.close(pair[0])
            os.close(pair[1])


def _report_end(pid, puid, status):
    """Tells dragond how a child that it adopted (puid; None: not adopted) ended."""
    if puid is None:
        return
    from . import _runtime
    try:
        _runtime.report_exited(puid, os.waitstatus_to_exitcode(status))
    except Exception as e:  # dragond has gone
        print("dragon template: the end of %d not reported: %s" % (pid, e), file=sys.stderr)


def _prepare(prep):
    """What every child would do first, done once here: connects to dragond (in the parent's
    job: dragond started this process), runs spawn.prepare() with the parent's preparation
    data (pickled), imports Dragon's modules. Returns the command line dragond lists the
    children under (this template's, as /proc shows it)."""
    from multiprocessing import spawn

    from . import _runtime

    _runtime.client()
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")[:-1]
    # Once, for every child: the main module is imported here, as a spawn child's is, with
    # the same guard: a main module that starts a process at its top level (no
    # `if __name__ == "__main__"`) gets the stdlib's bootstrapping RuntimeError here, and the
    # template ends before it is ready, instead of starting a template of its own, and so on.
    from multiprocessing import process
    process.current_process()._inheriting = True
    try:
        spawn.prepare(pickle.loads(prep))
    finally:
        del process.current_process()._inheriting
    # Dragon's own modules, which a child would otherwise import while it unpickles its
    # arguments (they hold no state of the program's).
    from . import _child, connection, queues, sharedctypes, synchronize  # noqa: F401
    # What is here now is shared by every child: keep the collector off it, so that a child
    # does not copy-on-write the whole heap by walking it.
    import gc
    gc.collect()
    gc.freeze()
    return cmdline


def main():
    from . import _runtime

    sock = socket.socket(fileno=int(sys.argv[1]))
    (prep,), _ = recv_message(sock)
    cmdline = _prepare(prep)
    capture = _runtime.captured_streams()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent and its children
    children = {}  # pid -> puid at dragond (None: not adopted, so not reported)
    spare = None   # (pid, pidfd, socket to it, puid)

    def fork_spare(lent=()):
        """A new spare, adopted by dragond before it can be reaped (only reap() reaps, and
        dragond must hold its pidfd first). `lent`: the fds of the request being served, which
        the spare does not keep (it gets its own with its request)."""
        ours, theirs, pipes = _spare_ends(capture)
        try:
            pid = os.fork()
        except BaseException:
            _close_ends(ours, theirs, pipes)
            raise
        if pid == 0:
            try:
                # Not the template's connection to dragond: dragond must see it close when
                # the template goes, whoever of its children lives on. A child connects anew.
                _runtime._reset_after_fork()
                ours.close()
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                for fd in lent:
                    os.close(fd)
                _spare_output(pipes)
            finally:
                _spare_main(theirs)
        theirs.close()
        children[pid] = None
        pidfd = None
        try:
            children[pid] = _adopt_spare(pid, cmdline, pipes)  # closes the pipes here
            pidfd = os.pidfd_open(pid)
        except BaseException:
            ours.close()  # the spare ends; reaped, not reported
            if pidfd is not None:
                os.close(pidfd)
            raise
        return pid, pidfd, ours, children[pid]

    def reap():
        nonlocal spare
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            puid = children.pop(pid, None)
            if spare is not None and spare[0] == pid:  # a spare that died waiting
                os.close(spare[1])
                spare[2].close()
                spare = None
            _report_end(pid, puid, status)

    last_env = {}

    def serve(request, fds):
        """Hands the request to the spare; the pid, pidfd and puid of the child it becomes."""
        nonlocal spare, last_env
        if request[2] is None:  # the environment has not changed since the last request
            request = request[:2] + (last_env,) + request[3:]
        else:
            last_env = request[2]
        for attempt in range(2):
            if spare is None:
                spare = fork_spare(fds)
            pid, pidfd, channel, puid = spare
            spare = None
            try:
                send_message(channel, request, fds)
                return pid, pidfd, puid
            except BaseException as e:
                os.close(pidfd)
                # A spare that died waiting (reap() reaps it): once more with a new one.
                if attempt or not isinstance(e, OSError):
                    raise
            finally:
                channel.close()

    def drop_spare():
        """The parent has gone: the spare ends, the children it has run on."""
        nonlocal spare, open_socket
        open_socket = False
        sock.close()  # a parent that still writes gets an error, not a silence
        if spare is not None:
            os.close(spare[1])
            spare[2].close()
            spare = None

    spare = fork_spare()
    open_socket = True
    try:
        send_message(sock, ("ready", os.getpid()))
    except OSError:  # the parent went before we were up (a job that ended at once)
        drop_spare()
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
            except ConnectionResetError:  # the parent went with our reply unread: its end
                request, fds = None, []
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                print("dragon template: bad request, stopping: %s" % e, file=sys.stderr)
                request, fds = None, []
            if request is None:
                drop_spare()
                continue
            try:
                pid, pidfd, puid = serve(request, fds)
            except Exception as e:
                try:
                    send_message(sock, ("error", "%s: %s" % (type(e).__name__, e)))
                except OSError:
                    drop_spare()
                continue
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                send_message(sock, ("started", pid, puid), [pidfd])
            except OSError:
                drop_spare()  # the parent has gone: no spare waits for a request that won't come
            finally:
                os.close(pidfd)
            # Off the parent's path from here on.
            try:
                _runtime.report_started(puid, request[4])  # dragond lists it from now on
            except Exception as e:
                print("dragon template: start of %d not reported: %s" % (pid, e),
                      file=sys.stderr)
            try:
                if open_socket:
                    spare = fork_spare()  # the next one
            except Exception as e:
                print("dragon template: no spare: %s" % e, file=sys.stderr)
            reap()
    sys.exit(0)


def remote_main():
    """A template on another node than its parent's (process._RemoteTemplate), started by that
    node's dragond: ``python3 -c '...remote_main()' REQUESTS REPLIES``, two channels of the
    parent's node. No socket crosses nodes, so requests come as pickles in REQUESTS and
    replies go back in REPLIES: first (preparation data,) and ("ready", pid), then ("start",
    payload, env, cwd, name) and ("started", pid, puid) or ("error", text). This template
    holds no reference to either: the parent's are their only ones, so both go when the
    parent's connection to its dragond closes, however the parent ends (a process dragond
    never started included), and the receive this template waits in fails; so does it when
    the parent's node is lost. Then it starts no more processes, lets its children end and
    exits.

    Children are forked from a spare as in main(); this node's dragond captures the output of
    each, under its own puid. Threads: the main one serves requests (a receive parked at the
    channel's home), one reaps children and reports their ends. Only the main thread forks,
    holding _runtime's lock so that no other thread is inside a request to dragond then."""
    import threading

    from . import _runtime
    from ._native import ChannelClosed, NodeLost

    gone = (ChannelClosed, LookupError, ConnectionError, NodeLost)  # the parent's channels
    try:
        requests = _runtime.attach_channel(sys.argv[1])
        replies = _runtime.attach_channel(sys.argv[2])
        for channel in (requests, replies):
            _runtime.detach(channel.descriptor)  # reached by descriptor; the parent holds them
        (prep,) = pickle.loads(requests.recv())
    except gone:
        sys.exit(0)  # the parent ended before this template was up: nothing to serve
    cmdline = _prepare(prep)
    capture = _runtime.captured_streams()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent and its children
    own_socket = os.environ.get("DRAGON_SOCKET")
    lock = threading.Condition()
    children = {}  # pid -> puid at dragond (None: not adopted yet)
    spares = []    # the spare, as (pid, socket to it), when there is one
    stopping = []  # non-empty once the parent has gone

    def fork_spare(keep=True):
        """A new spare, adopted by dragond: kept as the idle one, or returned (keep=False)."""
        ours, theirs, pipes = _spare_ends(capture)
        with lock:  # the reaper leaves it alone until dragond has adopted it
            try:
                with _runtime._lock:
                    pid = os.fork()
            except BaseException:
                _close_ends(ours, theirs, pipes)
                raise
            if pid == 0:
                try:
                    _runtime._reset_after_fork()
                    ours.close()
                    _spare_output(pipes)
                finally:
                    _spare_main(theirs)
            theirs.close()
            children[pid] = None
            lock.notify_all()
            try:
                children[pid] = _adopt_spare(pid, cmdline, pipes)
            except BaseException:
                ours.close()  # the spare ends; reaped, not reported
                raise
            if not keep:
                return pid, ours
            spares.append((pid, ours))

    def reaper():
        while True:
            with lock:
                while not children and not stopping:
                    lock.wait()
                if not children:
                    return
            try:
                # Which child ended, without reaping it: dragond must have adopted it first.
                pid = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT).si_pid
            except ChildProcessError:
                with lock:
                    children.clear()  # none is left (cannot happen: only this thread reaps)
                continue
            with lock:
                puid = children.pop(pid, None)
                _, status = os.waitpid(pid, 0)
                for spare in [sp for sp in spares if sp[0] == pid]:  # a spare that died waiting
                    spare[1].close()
                spares[:] = [sp for sp in spares if sp[0] != pid]
            _report_end(pid, puid, status)

    last_env = {}

    def serve(request):
        nonlocal last_env
        _, payload, env, cwd, name = request
        if env is None:  # the same as the last request's
            env = last_env
        last_env = env
        env = dict(env)
        if own_socket:
            env["DRAGON_SOCKET"] = own_socket  # this node's dragond, not the parent's
        for attempt in range(2):
            with lock:
                spare = spares.pop() if spares else None
            pid, channel = spare or fork_spare(keep=False)
            with lock:
                puid = children.get(pid)
            try:
                send_message(channel, ("start", payload, env, cwd, name, 100, -1, False))
                return pid, puid
            except OSError:  # the spare died waiting (the reaper reaps it): a new one
                if attempt:
                    raise
            finally:
                channel.close()

    fork_spare()
    reaping = threading.Thread(target=reaper, name="dragon-template-reaper", daemon=True)
    reaping.start()
    try:
        replies.send(pickle.dumps(("ready", os.getpid())))
        serving = True
    except gone:
        serving = False  # the parent ended before this template was ready
    while serving:
        try:
            message = requests.recv()
        except BaseException as e:  # destroyed: the parent has gone (or its node)
            if not isinstance(e, gone):
                print("dragon template: stopping: %s: %s" % (type(e).__name__, e),
                      file=sys.stderr)
            break
        try:
            request = pickle.loads(message)
            pid, puid = serve(request)
            reply = ("started", pid, puid)
        except Exception as e:
            reply = ("error", "%s: %s" % (type(e).__name__, e))
        try:
            replies.send(pickle.dumps(reply))
        except BaseException:
            break
        if reply[0] != "started":
            continue
        # Off the parent's path from here on.
        try:
            _runtime.report_started(puid, request[4])
        except Exception as e:
            print("dragon template: start of %d not reported: %s" % (pid, e), file=sys.stderr)
        try:
            fork_spare()
        except Exception as e:
            print("dragon template: no spare: %s" % e, file=sys.stderr)
    # No process starts any more; those running end on their own, and are reaped.
    with lock:
        for _, channel in spares:
            channel.close()  # the spare ends
        spares.clear()
        stopping.append(True)
        lock.notify_all()
    reaping.join()  # once every child has ended
    sys.exit(0)


if __name__ == "__main__":
    main()
