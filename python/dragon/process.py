# SPDX-License-Identifier: MIT
"""Process and its Popen for the dragon start method. A parent's first process is a fresh
interpreter that dragond starts (spawn's clean state) and reaps; that start also starts the
parent's template (_template.py), which forks every later process from a prepared spare. Every
process is in dragond's process table (the template's children too) and has a puid: its exit
status is dragond's, and join asks dragond for it. The sentinel is a pidfd either way."""
import io
import math
import os
import pickle
import select
import signal
import socket
import sys
import threading

from multiprocessing import context, process, reduction, spawn, util

from . import _runtime
from . import _template as _template_wire
from ._native import NodeLost
from ._coherence import acquired, held

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# How long join/poll wait for dragond to have a template child's status once its pidfd said it
# ended (the template reaps it and reports at once; dragond records the end itself, as lost,
# when the template has gone).
_STATUS_GRACE = 1.0


_own_start = (None, None)  # (pid, its start time): this process's, for DRAGON_PARENT_START


def _child_environment():
    """A child's environment: this process's, with DRAGON_PARENT_START, when this process
    started (what tells it from a later process with its pid: _child._LocalParentSentinel)."""
    global _own_start
    _runtime.client()  # connected first: a private dragond puts its socket in the environment
    env = dict(os.environ)
    if _own_start[0] != os.getpid():  # a forked child has its own
        from ._child import start_time
        _own_start = (os.getpid(), start_time(os.getpid()))
    if _own_start[1] is not None:
        env["DRAGON_PARENT_START"] = _own_start[1]
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


def _payload(popen, process_obj):
    """Spawn's preparation data and the pickled process object, as a child reads them; fds the
    pickling lends go through popen.duplicate_for_child."""
    prep_data = spawn.get_preparation_data(process_obj._name)
    fp = io.BytesIO()
    popen._counted = []
    context.set_spawning_popen(popen)
    try:
        reduction.dump(prep_data, fp)
        reduction.dump(process_obj, fp)
    except BaseException:
        # No child will take what the pickling counted for it (a Pipe end's handles, before
        # an argument further on could not be pickled): given back, as if it had ended.
        _run_all(popen._counted)
        raise
    finally:
        context.set_spawning_popen(None)
        # What to give back if the start fails after all (_given_back_on_failure).
        popen._given_back, popen._counted = popen._counted, []
    return fp.getbuffer()


def _given_back_on_failure(popen, start):
    """Runs start(); if it fails in a way that no process was started (an error before the
    request or that the template or dragond answered; not an interrupt, which may come after
    the process started, nor _MayHaveStarted), gives back what the payload's pickling counted
    for the child, whose process will not run. The caller may then start it another way,
    which pickles and counts again."""
    try:
        return start()
    except _MayHaveStarted:
        raise
    except Exception:
        _run_all(popen._given_back)
        raise


class _PopenBase:
    method = "dragon"
    DupFd = _DupFd
    # The child finds the fds lent to it from here on.
    FD_BASE = 100
    # The exit record a watcher thread heard (_RemotePopen: _watch_remote), if any.
    _ended = ()

    def _init(self):
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self.sentinel = None
        self._fds = []

    def counted_for_child(self, give_back):
        """The pickling of the payload counted a handle for the child: give_back() undoes it
        if the payload is never made (_payload)."""
        self._counted.append(give_back)

    def duplicate_for_child(self, fd):
        if len(self._fds) >= 32:
            raise ValueError("a process of the dragon start method takes at most 32 fds")
        self._fds.append(fd)
        return self.FD_BASE + len(self._fds) - 1

    def _tracker_fd(self):
        # The child shares this process's resource tracker, as spawn's children do (else its
        # own tracker would unlink shared memory it merely attached, when it exits).
        from multiprocessing import resource_tracker
        return self.duplicate_for_child(resource_tracker.getfd())

    def _status(self, timeout):
        """Sets returncode from dragond's record once the process has ended (by `timeout`).
        A process lost with its node ended as if killed: -SIGKILL (the launcher names the
        node and ends the job non-zero)."""
        try:
            [(_, code, sig)] = self._ended or _runtime.wait([self._puid], timeout)
        except TimeoutError:
            return
        except NodeLost:
            code, sig = None, signal.SIGKILL
        self.returncode = -sig if sig else code

    def wait(self, timeout=None):
        if self.returncode is None:
            self._reap(timeout)
            if held and self.returncode is not None:  # what it wrote back is visible here
                acquired()
        return self.returncode

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            self._reap(0 if flag else None)
        return self.returncode

    def _sentinel_fired(self, timeout):
        """Whether the sentinel says the process ended, waiting up to `timeout` (None: until it
        does; a negative one is a try, as join(-1) is with the stdlib)."""
        # poll, not select: a sentinel fd may be past select's 1024 in a process with many fds.
        ms = None if timeout is None else int(math.ceil(max(timeout, 0) * 1000))
        p = select.poll()
        p.register(self.sentinel, select.POLLIN)
        return bool(p.poll(ms))

    def _reap_by_sentinel(self, timeout):
        """Once the sentinel says the process ended (within `timeout`), its status from
        dragond, which may hear of the end a moment after the pidfd."""
        if self._sentinel_fired(timeout):
            self._status(None if timeout is None else max(timeout, _STATUS_GRACE))

    def _send_signal(self, sig):
        # Through dragond, which knows the process by its puid on any node.
        if self.returncode is None:
            try:
                _runtime.signal([self._puid], sig)
            except (LookupError, NodeLost):  # it has ended, or gone with its node
                pass

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()


def _child_stdio():
    """A child's stdout and stderr on this node: pipes of its own that dragond reads when this
    process's are dragond's (its lines then carry its own puid, whole), else this process's."""
    out, err = _runtime.captured_streams()
    return dict(stdout="capture" if out else "passed", stdout_fd=1,
                stderr="capture" if err else "passed", stderr_fd=2)


class _DaemonPopen(_PopenBase):
    """A child that dragond starts itself: a fresh interpreter (the first process a parent
    starts, and every one when the template cannot serve)."""

    def __init__(self, process_obj):
        self._init()
        tracker_fd = self._tracker_fd()
        payload = _payload(self, process_obj)

        def start():
            # The payload waits in a channel of ours until the child takes it.
            self._channel = _runtime.new_channel(capacity=1)
            self._channel.send(payload)
            argv = [spawn.get_executable(), "-c", "from dragon._child import main; main()",
                    self._channel.descriptor, str(tracker_fd)]
            return _runtime.spawn(
                argv, _child_environment(), os.getcwd(), stdin="null", extra_fds=self._fds,
                extra_fd_base=self.FD_BASE, **_child_stdio())
        [(self._puid, self.pid, _)] = _given_back_on_failure(self, start)
        try:
            self.sentinel = os.pidfd_open(self.pid)
            self.finalizer = util.Finalize(self, os.close, (self.sentinel,))
        except OSError:
            self.sentinel = None  # it has already gone and been reaped

    def _reap(self, timeout):
        # On its pidfd first, as a template's child: that wait runs Python's signal handlers
        # (Ctrl-C interrupts a join), where dragond's Wait would hold them until the end.
        if self.sentinel is None:  # it had gone before its pidfd could be opened
            self._status(timeout)
        else:
            self._reap_by_sentinel(timeout)
        if self.returncode is not None:
            self._channel = None


class _TemplatePopen(_PopenBase):
    """A child that this process's template started (see _template.py). Its pidfd (the
    sentinel) says whether it runs, without asking dragond; once it has ended, its status
    comes from dragond, to which the template reports it."""

    def __init__(self, process_obj, template):
        self._init()
        tracker_fd = self._tracker_fd()
        payload = _payload(self, process_obj)
        self.pid, self._puid, self.sentinel = _given_back_on_failure(self, lambda: template.start(
            (bytes(payload), os.getcwd(), process_obj.name, self.FD_BASE, tracker_fd),
            self._fds))
        self.finalizer = util.Finalize(self, os.close, (self.sentinel,))

    def _reap(self, timeout):
        self._reap_by_sentinel(timeout)

    def _send_signal(self, sig):
        if self.returncode is None and self.sentinel is not None:
            try:
                signal.pidfd_send_signal(self.sentinel, sig)
            except ProcessLookupError:
                pass


def refuse_for_another_node(what, why="it holds memory of this node"):
    """Raises if the process being started is on another node, where `what` does not work
    yet (`why`)."""
    popen = context.get_spawning_popen()
    if isinstance(popen, _RemotePopen):
        raise ValueError("%s cannot be given to a process on another node (node %d) yet: %s; "
                         "a Queue, a Pipe or a Lock can" % (what, popen.node, why))


def _run_all(calls):
    for call in calls:
        try:
            call()
        except Exception:
            pass


def _watch_remote(puid, write_end, at_end, ended):
    """Once dragond says the process ended, or that it cannot say any more (its node was lost,
    dragond went): keeps its exit record in `ended` (its node may be lost before a join asks),
    runs `at_end` (gives back the handles lent to it), then closes `write_end` (the sentinel's
    other end)."""
    try:
        ended.extend(_runtime.wait([puid]))
    except BaseException:
        pass
    finally:
        _run_all(at_end)
        with _watched_lock:
            _watched.discard(write_end)
            os.close(write_end)


# The write ends that watcher threads hold (_watch_remote). A forked child closes them: it has
# no watcher to close them when those processes end, and a copy left open would keep their
# sentinels from firing in this process until the child exits.
_watched = set()
_watched_lock = threading.Lock()


def _remote_environment():
    """A child's environment on another node. DRAGON_ORIGIN_NODE: the node whose addresses (a
    Listener's AF_UNIX path or loopback port, a manager's) the child was given, where it also
    looks them up. DRAGON_PARENT_LIFE: this process's life channel (_life_descriptor)."""
    env = _child_environment()
    env.append("DRAGON_ORIGIN_NODE=%d" % _runtime.this_node())
    env.append("DRAGON_PARENT_LIFE=%s" % _life_descriptor())
    return env


_life = None  # this process's life channel (none in a forked child: _after_fork_in_child)
_life_lock = threading.Lock()


def _life_descriptor():
    """A channel of this node that only this process holds a reference to, so that dragond
    destroys it when this process's connection closes, however it ends (also a process that
    dragond did not start). Its children on other nodes wait on it for the end of their
    parent_process() (_child._RemoteParentSentinel); nothing is ever sent to it."""
    global _life
    with _life_lock:
        if _life is None:
            _life = _runtime.new_channel(capacity=1)
        return _life.descriptor


class _RemotePopen(_PopenBase):
    """A child on another node of a multi-node job (dragon.Policy): forked there by this
    process's template of that node once it is ready (_RemoteTemplate), else a fresh
    interpreter that node's dragond starts, which takes its payload from a channel here across
    nodes. This process holds the handles of the Pipe ends lent to it until it ends
    (lend_handles). No fd crosses nodes: its output is captured and comes back line by line
    through its node's launcher, it has no resource tracker of ours, and its sentinel is the
    read end of a pipe here that a watcher thread closes when dragond reports its end (as
    spawn's sentinel is a pipe its child holds)."""

    def __init__(self, process_obj, node, template=None):
        self._init()
        self.node = node
        self._at_end = []
        self._channel = None
        try:
            payload = _payload(self, process_obj)
            if template is not None:
                self.pid, self._puid = template.start(
                    (bytes(payload), os.getcwd(), process_obj.name))
            else:
                self._channel = _runtime.new_channel(capacity=1)
                self._channel.send(payload)
                argv = [spawn.get_executable(), "-c", "from dragon._child import main; main()",
                        self._channel.descriptor, "-1"]
                [(self._puid, self.pid, _)] = _runtime.spawn(
                    argv, _remote_environment(), os.getcwd(), stdin="null", stdout="capture",
                    stderr="capture", node=node)
            with _watched_lock:  # made and registered before a fork can copy it
                r, w = os.pipe2(os.O_CLOEXEC)
                _watched.add(w)
        except _MayHaveStarted:
            raise  # what was lent stays lent: the process may be running with it
        except BaseException:
            _run_all(self._at_end)  # it never started: nothing of it holds what was lent
            raise
        self.sentinel = r
        self.finalizer = util.Finalize(self, os.close, (r,))
        self._ended = []
        threading.Thread(target=_watch_remote, args=(self._puid, w, self._at_end, self._ended),
                         daemon=True,
                         name="dragon-watch-%d" % self._puid).start()

    def lend_handles(self, give_back):
        """For objects whose handles are counted in memory of this node (a Pipe's ends): this
        process holds the child's, and calls give_back() once the child has ended."""
        self._at_end.append(give_back)

    def duplicate_for_child(self, fd):
        raise ValueError("an object that holds an fd cannot be given to a process on another "
                         "node (node %d): no fd crosses nodes" % self.node)

    def _reap(self, timeout):
        if self._sentinel_fired(timeout):
            self._status(None)  # dragond has the status: the watcher closed the pipe after it
            if self.returncode is not None:
                self._channel = None


def _preparation(template, process_obj):
    """Spawn's preparation data for `process_obj`, pickled for `template`. It holds the
    authkey, which pickles only while a child is being started."""
    context.set_spawning_popen(template)
    try:
        return reduction.ForkingPickler.dumps(spawn.get_preparation_data(process_obj._name))
    finally:
        context.set_spawning_popen(None)


def _if_changed(template, variables):
    """The children's environment that `variables` ("K=V") make, or None when it is the one
    `template` last sent (called under the template's lock, so that requests and environments
    stay in step)."""
    env = dict(var.split("=", 1) for var in variables)
    if env == template._last_env:
        return None
    template._last_env = env
    return env


class _Template:
    """This process's template: started through dragond at the first Process.start() (which
    does not wait for it), used by every later one once it is ready."""

    def __init__(self, process_obj):
        self._lock = threading.Lock()
        self._last_env = None
        self._ready = False
        self.broken = False
        ours, theirs = socket.socketpair()
        # Blocking, whatever socket.setdefaulttimeout() says: a start that timed out half-way
        # would leave the two ends out of step.
        ours.settimeout(None)
        self._sock = ours
        # Only the socket: the resource tracker's fd goes to each child with its request, so
        # that the long-lived template does not keep the tracker (and this process's exit,
        # which waits for the tracker to see its last writer go) alive.
        fds = [theirs.fileno()]
        base = _PopenBase.FD_BASE
        argv = [spawn.get_executable(), "-c", "from dragon._template import main; main()",
                str(base)]
        try:
            # Its output as a child's (_child_stdio): captured by dragond when this
            # process's is, which tells the template to capture its children's too.
            [(self._puid, self._pid, _)] = _runtime.spawn(
                argv, _child_environment(), os.getcwd(), stdin="null", extra_fds=fds,
                extra_fd_base=base, **_child_stdio())
            prep = _preparation(self, process_obj)
            _template_wire.send_message(ours, (bytes(prep),))
        except Exception as e:
            self._give_up("could not start it: %s: %s" % (type(e).__name__, e))
        finally:
            theirs.close()

    def duplicate_for_child(self, fd):
        raise ValueError("the preparation data lends no fds")

    def _give_up(self, why):
        """Never used again. Our end closes: the template stops reading requests (also one we
        left half-written) and ends once its children have, and a reply we did not read
        cannot answer a later start."""
        self.broken = True
        self._last_env = None
        self._sock.close()
        sys.stderr.write("dragon: the process template is not used (%s); processes start as "
                         "fresh interpreters instead\n" % why)

    def ready(self):
        """True once the template has prepared (never blocks)."""
        if self._ready or self.broken:
            return self._ready
        with self._lock:
            if not self._ready and not self.broken:
                p = select.poll()  # not select: the socket may be past fd 1024
                p.register(self._sock, select.POLLIN)
                if p.poll(0):
                    reply = None
                    try:
                        reply, _ = _template_wire.recv_message(self._sock)
                    except (OSError, EOFError):
                        pass
                    self._ready = reply is not None and reply[0] == "ready"
                    if not self._ready:
                        self._give_up("it ended before it was ready; see its message above")
        return self._ready

    def _environment(self):
        return _if_changed(self, _child_environment())

    def start(self, request, fds):
        """(pid, puid, pidfd) of the child the template started for request = (payload, cwd,
        name, fd base, tracker fd)."""
        with self._lock:
            if self.broken:  # given up by another thread's start while this one waited
                raise _TemplateLost("the template is not used")
            message = ("start", request[0], self._environment()) + request[1:]
            try:
                frame = _template_wire.frame(message)
            except _template_wire.MessageTooLarge as e:  # this start only; nothing was sent
                self._last_env = None
                raise _TemplateLost(str(e)) from None
            try:
                _template_wire.send_frame(self._sock, frame, fds)
            except OSError as e:  # it had gone: the request went nowhere
                self._give_up("it has gone: %s" % e)
                raise _TemplateLost(str(e)) from None
            except BaseException as e:  # an interrupt: the request is cut short, not served
                self._give_up("interrupted while sending a start: %s" % type(e).__name__)
                raise
            try:
                reply, got = _template_wire.recv_message(self._sock)
            except ConnectionResetError as e:
                # A Unix socket's last holder closing with data unread resets its peer (and
                # only then; a read request gives end of file): nothing read this request, so
                # nothing started it. A spare the SIGKILLed template had just forked, which
                # holds its end until it closes it after the fork, is such a holder.
                self._give_up("it has gone: %s" % e)
                raise _TemplateLost(str(e)) from None
            except (OSError, EOFError) as e:
                reply, got = None, []
                why = "%s: %s" % (type(e).__name__, e)
            except BaseException as e:
                # An interrupt while the template started the process: its reply, unread,
                # would answer the next start (with this child's pid and pidfd).
                self._give_up("interrupted while it started a process: %s" % type(e).__name__)
                raise
            else:
                why = "end of file"
            if reply is None:
                # It may have handed the request to its spare before it ended: started again
                # here, the process could run twice.
                self._give_up("it has gone: %s" % why)
                raise _MayHaveStarted("the process template ended while starting the process "
                                      "(%s); it may have started" % why)
            if reply[0] != "started" or len(got) != 1:
                for fd in got:
                    os.close(fd)
                raise OSError("the template could not start the process: %s" % (reply,))
            return reply[1], reply[2], got[0]


class _TemplateLost(Exception):
    pass


class _MayHaveStarted(OSError):
    """A template was sent a start request and ended without answering it."""


# How long a start waits for the remote template's answer between looks at whether the
# template is still there (its answer normally comes in about a millisecond).
_REMOTE_REPLY_SLICE = 0.5


class _RemoteTemplate:
    """This process's template on another node (_template.remote_main): started by that
    node's dragond at the first Process.start() placed there (which does not wait for it),
    used by every later one once it is ready. No socket crosses nodes: requests go as pickles
    into a channel of this node that the template receives from, and its replies come back in
    another. This process holds the only references to both, so they go when it ends, however
    it ends, and the template, waiting on the first, stops."""

    def __init__(self, process_obj, node):
        self.node = node
        self._lock = threading.Lock()
        self._last_env = None
        self._ready = False
        self.broken = False
        self._gone = threading.Event()  # the template has ended (dragond says so)
        try:
            self._requests = _runtime.new_channel(capacity=2)
            self._replies = _runtime.new_channel(capacity=2)
            prep = _preparation(self, process_obj)
            self._requests.send(pickle.dumps((bytes(prep),)))
            argv = [spawn.get_executable(), "-c",
                    "from dragon._template import remote_main; remote_main()",
                    self._requests.descriptor, self._replies.descriptor]
            [(self._puid, _, _)] = _runtime.spawn(
                argv, _remote_environment(), os.getcwd(), stdin="null", stdout="capture",
                stderr="capture", node=node)
        except Exception as e:
            self._give_up("could not start it: %s: %s" % (type(e).__name__, e))
            return
        threading.Thread(target=self._watch, daemon=True,
                         name="dragon-template-%d" % node).start()

    def _watch(self):
        try:
            _runtime.wait([self._puid])
        except BaseException:
            pass  # dragond cannot say any more: as good as gone
        self._gone.set()

    def duplicate_for_child(self, fd):
        raise ValueError("the preparation data lends no fds")

    def _give_up(self, why):
        self.broken = True
        self._last_env = None
        sys.stderr.write("dragon: the process template of node %d is not used (%s); processes "
                         "start there as fresh interpreters instead\n" % (self.node, why))

    def ready(self):
        """True once the template has prepared (never blocks)."""
        if self._ready or self.broken:
            return self._ready
        with self._lock:
            if not self._ready and not self.broken:
                try:
                    reply = pickle.loads(self._replies.recv(timeout=0))
                except TimeoutError:
                    if self._gone.is_set():
                        self._give_up("it ended before it was ready; see its message above")
                    return False
                except Exception as e:
                    self._give_up("%s: %s" % (type(e).__name__, e))
                    return False
                self._ready = reply[0] == "ready"
                if self._ready:
                    self.pid = reply[1]  # on its node
                else:
                    self._give_up("it answered %r" % (reply,))
        return self._ready

    def _environment(self):
        return _if_changed(self, _remote_environment())

    def _reply(self):
        """The template's answer to the request just sent; EOFError once it has ended without
        one (its end is looked at between slices of the wait, and an answer that came before
        it ended is still taken)."""
        while True:
            gone = self._gone.is_set()
            try:
                return pickle.loads(self._replies.recv(timeout=0 if gone else
                                                       _REMOTE_REPLY_SLICE))
            except TimeoutError:
                if gone:
                    raise EOFError("it has gone") from None

    def _taken_back(self):
        """Whether the request just sent was still queued (the template never took it), and
        is now taken back: the requests channel holds nothing else, and receiving from it here
        is exactly-once against the template's receive."""
        try:
            self._requests.recv(timeout=0)
            return True
        except Exception:
            return False

    def start(self, request):
        """(pid, puid) of the child the template started for request = (payload, cwd, name).
        _TemplateLost when the template did not take the request (another way may start the
        process); OSError when it took it and ended without an answer (the process may have
        started, so it must not be started again)."""
        with self._lock:
            if self.broken:  # given up by another thread's start while this one waited: an
                # answer that thread did not read may still come, and would answer this one
                raise _TemplateLost("the template is not used")
            env = self._environment()
            message = pickle.dumps(("start", request[0], env) + request[1:])
            sent = False
            try:
                self._requests.send(message, timeout=0)
                sent = True
                reply = self._reply()
            except BaseException as e:  # an interrupt too: its reply could answer the next
                self._give_up("%s: %s" % (type(e).__name__, e))
                taken = sent and self._taken_back()  # else the template may still run it
                if not isinstance(e, Exception):
                    raise
                if sent and not taken:
                    raise _MayHaveStarted("the process template of node %d ended while starting the "
                                  "process (%s); it may have started there"
                                  % (self.node, e)) from None
                raise _TemplateLost(str(e)) from None
            if reply[0] != "started":
                raise OSError("the template of node %d could not start the process: %s"
                              % (self.node, reply[1:]))
            return reply[1], reply[2]


_template = None
_remote_templates = {}  # node -> _RemoteTemplate
_templates_lock = threading.Lock()


def _after_fork_in_child():
    """A forked child has no templates and no life channel of its own yet (its parent's are
    not its), and new locks: another thread may have held them at the fork. It closes its
    copies of the parent's template socket (the template sees its parent go when the parent
    does) and of the sentinel write ends the parent's watchers hold (_watched)."""
    global _template, _life, _templates_lock, _life_lock, _watched_lock
    if _template is not None and getattr(_template, "_sock", None) is not None:
        try:
            _template._sock.close()
        except OSError:
            pass
    _template, _life = None, None
    _remote_templates.clear()
    _templates_lock = threading.Lock()
    _life_lock = threading.Lock()
    for fd in _watched:
        try:
            os.close(fd)
        except OSError:
            pass
    _watched.clear()
    _watched_lock = threading.Lock()


# The watchers' lock is held across a fork, so that no write end is closed (and its number
# reused) between the child's copy of _watched and its closing of them.
os.register_at_fork(before=lambda: _watched_lock.acquire(),
                    after_in_parent=lambda: _watched_lock.release(),
                    after_in_child=_after_fork_in_child)


def _remote_popen(process_obj, node):
    """A child of this process's template of `node` when it is ready; else one that node's
    dragond starts (and the first such start also starts the template there)."""
    with _templates_lock:  # two threads' first starts on `node` make one template
        template = _remote_templates.get(node)
        if template is None and _TEMPLATES_ENABLED:
            _remote_templates[node] = _RemoteTemplate(process_obj, node)
    if template is not None and not template.broken and template.ready():
        try:
            return _RemotePopen(process_obj, node, template)
        except _TemplateLost:
            pass  # started as below instead
    return _RemotePopen(process_obj, node)


def Popen(process_obj):
    """A child of the template when it is ready; else one dragond starts (and the first such
    start also starts the template)."""
    global _template
    # The stdlib's bootstrapping error (a start from a main module being imported in a child
    # or a template), before a template is made for a start that cannot happen.
    spawn._check_not_importing_main()
    from .policy import target_node
    node = target_node(getattr(process_obj, "_dragon_policy", None))
    if node is not None:
        return _remote_popen(process_obj, node)
    with _templates_lock:  # two threads' first starts make one template
        first = _template is None and _TEMPLATES_ENABLED
        if first:
            _template = _Template(process_obj)
    if first:
        return _DaemonPopen(process_obj)
    if _template is not None and not _template.broken and _template.ready():
        try:
            return _TemplatePopen(process_obj, _template)
        except _TemplateLost:
            pass  # started as below instead
    return _DaemonPopen(process_obj)


# DRAGON_PROCESS_TEMPLATE=0: every process is a fresh interpreter started by dragond.
_TEMPLATES_ENABLED = os.environ.get("DRAGON_PROCESS_TEMPLATE", "1") not in ("0", "false", "no")


class DragonProcess(process.BaseProcess):
    _start_method = "dragon"

    @staticmethod
    def _Popen(process_obj):
        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        pass
