# SPDX-License-Identifier: MIT
"""Locks, semaphores, events, conditions and barriers as Dragon channels: a semaphore's value
is the number of tokens queued in a channel, so acquire is a receive and release a send, with
the channel's deadlines and futex sleeps, from any process that attached it."""
import contextlib
import os
import signal
import struct
import threading
import time
import weakref

from multiprocessing import context

from . import _runtime
from ._coherence import acquired, held, released
from ._native import ChannelClosed

_TOKEN = b"\x01"
SEM_VALUE_MAX = 1 << 20
MAX_TOKENS = 1 << 16
_SPILL_SLOTS = 64  # spilled counts: at most one per release racing with the others
_SPILL_TRIES = 1000


class BrokenLockError(ChannelClosed):
    """The process that held a Lock or RLock ended without releasing it (killed, failed, or
    with its node lost; for an RLock, which only its holder may release, also when it exits
    with status 0): the lock stays broken, and every acquire and release raises this, where a
    stock lock would leave its waiters blocked for ever. A Lock's holder that exits with
    status 0 may have meant another process to release it (the stdlib allows it): that Lock
    stays as it is."""


def _broken(sem, err):
    why = str(err)
    if why.startswith("ChannelClosed: "):
        why = why[len("ChannelClosed: "):]
    return BrokenLockError("%s is %s" % (type(sem).__name__, why))


# This process's pid, kept up to date in a forked child: a Lock records its taker on every
# acquire, where os.getpid() would be a system call each time.
_pid = os.getpid()


def _after_fork_in_child():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _me():
    """The calling process and thread."""
    return (_pid, threading.get_ident())


def _timeout(block, timeout):
    if not block:
        return 0
    return timeout if timeout is None else max(timeout, 0)


_SPILL = struct.Struct("=q")


class Semaphore:
    """Tokens in a channel. A plain Semaphore's value has no bound (the stdlib's is 2**31 - 1)
    while its channel has one: what a release finds no room for goes into a spill channel of
    counts (8-byte messages whose sum is the excess), and moves back into the token channel as
    acquires make room. A release that spills then looks for room itself, and an acquire looks
    for spilled counts after taking a token; whoever held the counts meanwhile (which hid them
    from those looks) looks for room again once they are back, so the tokens never run out
    while counts are spilled. A process killed while it holds a count loses at most the room
    it saw. (On another node than the semaphore's home, the look costs an acquire one more
    round trip.)"""

    _breaks = False  # its tokens have no holder; a Lock's has one (BrokenLockError)

    def __init__(self, value=1, *, ctx=None, _capacity=None, _holder=None, _spills=True):
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if _capacity is None and _spills:
            capacity = min(max(value, 1), MAX_TOKENS - 4096) + 4096
            self._spill = _runtime.new_channel(_SPILL_SLOTS, 8)
        else:
            # Its tokens are its whole value, which the channel's capacity bounds: a Lock's or
            # a BoundedSemaphore's (the stdlib's classes that ask for SEM_VALUE_MAX, 2**31 - 1,
            # to mean "no limit" get MAX_TOKENS), or a Condition's counts (one per waiter at
            # most; a spill channel's look would cost an acquire a round trip on another node).
            if _capacity is None:
                _capacity = max(value, 1) + 4096
            value = min(value, MAX_TOKENS)
            capacity = min(max(_capacity, 1), MAX_TOKENS)
            self._spill = None
        self._capacity = capacity
        self._channel = _runtime.new_channel(capacity, 8, track_holder=_holder is not None,
                                             holder_owns=_holder == "owns")
        for _ in range(min(value, capacity)):
            self._channel.send(_TOKEN, 0)
        if value > capacity:
            self._spill.send(_SPILL.pack(value - capacity), 0)

    def __getstate__(self):
        # Its descriptor is valid in every process of the runtime, on every node: acquire and
        # release are a receive and a send, whether zero is whether a receive would block.
        spill = None if self._spill is None else self._spill.descriptor
        return (self._capacity, self._channel.descriptor, spill)

    def __setstate__(self, state):
        self._capacity, descriptor = state[:2]
        self._channel = _runtime.attach_channel(descriptor)
        spill = state[2] if len(state) > 2 else None
        self._spill = None if spill is None else _runtime.attach_channel(spill)

    def acquire(self, block=True, timeout=None):
        try:
            self._channel.recv(_timeout(block, timeout))
        except TimeoutError:
            return False
        except ChannelClosed as e:
            if self._breaks:
                raise _broken(self, e) from None
            raise
        if self._spill is not None and self._spill.readable():
            self._unspill()
        if held:  # raw memory of another node held here (see _coherence)
            acquired()
        return True

    def release(self, n=1):
        if held:
            released()
        for _ in range(n):
            try:
                self._channel.send(_TOKEN, 0)
            except TimeoutError:
                if self._spill is None:
                    raise ValueError("semaphore or lock released too many times") from None
                self._spill_one()
            except ChannelClosed as e:
                if self._breaks:
                    raise _broken(self, e) from None
                raise

    def _spill_one(self):
        # Counted in the spill channel; then room the acquires made meanwhile is filled.
        with signals_held():
            self._spill_back(1)
        self._unspill()

    def _unspill(self):
        """Moves spilled counts into the token channel while it has room. Of a count taken, what
        there is no room for goes back before any token moves (a process killed in between
        loses no more than the room it saw). Acquires that ran while it held a count saw no
        spill: the room they made is looked for again after the count went back."""
        with signals_held():
            while True:
                room = self._room()
                if room == 0:
                    return
                try:
                    count = _SPILL.unpack(self._spill.recv(0))[0]
                except TimeoutError:
                    return
                take = min(count, room)
                if count > take:
                    self._spill.send(_SPILL.pack(count - take), None)
                moved = 0
                while moved < take:
                    try:
                        self._channel.send(_TOKEN, 0)
                    except TimeoutError:
                        break
                    moved += 1
                if moved < take:
                    self._spill_back(take - moved)

    def _room(self):
        """Tokens the channel has room for now (of another node's: 1 or 0, its size unknown)."""
        if self._channel.is_remote:
            return 1 if self._channel.writable() else 0
        return max(self._capacity - self._channel.size(), 0)

    def _spill_back(self, count):
        # Merged with a count there if any (the spill channel stays short).
        for _ in range(_SPILL_TRIES):
            try:
                count += _SPILL.unpack(self._spill.recv(0))[0]
            except TimeoutError:
                pass
            try:
                self._spill.send(_SPILL.pack(count), 0)
                return
            except TimeoutError:
                continue
        self._spill.send(_SPILL.pack(count), None)

    def get_value(self):
        # Of another node: NotImplementedError, as the stdlib's where sem_getvalue is missing.
        value = self._channel.size()
        if self._spill is not None and self._spill.readable():
            with signals_held():
                counts = []
                try:
                    while True:
                        counts.append(_SPILL.unpack(self._spill.recv(0))[0])
                except TimeoutError:
                    pass
                if counts:
                    self._spill_back(sum(counts))
            value += sum(counts)
            self._unspill()  # acquires that ran meanwhile saw no spill
        return value

    def _is_zero(self):
        return not self._channel.readable()

    @property
    def _semlock(self):
        """What stdlib code that reaches into a semaphore's SemLock reads (the stdlib Queue's
        full(), so concurrent.futures' call queue on the dragon context)."""
        return _SemLockView(self)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *args):
        self.release()

    def __repr__(self):
        try:
            value = self.get_value()
        except NotImplementedError:
            value = "unknown"
        return "<%s(value=%s)>" % (type(self).__name__, value)


class _SemLockView:
    def __init__(self, sem):
        self._sem = sem

    def _is_zero(self):
        return self._sem._is_zero()

    def _get_value(self):
        return self._sem.get_value()


class BoundedSemaphore(Semaphore):
    def __init__(self, value=1, *, ctx=None):
        super().__init__(value, ctx=ctx, _capacity=max(value, 1))
        self._never = value == 0  # a channel holds at least one token: refused here instead

    def __getstate__(self):
        return super().__getstate__() + (self._never,)

    def __setstate__(self, state):
        super().__setstate__(state[:-1])
        self._never = state[-1]

    def release(self, n=1):
        if self._never:
            raise ValueError("semaphore or lock released too many times")
        super().release(n)


class Lock(Semaphore):
    """A Semaphore(1). It also keeps the Values and Arrays it guards coherent on another node
    than theirs (sharedctypes._RemoteBuffer): fetched when it is taken, written back when it is
    let go. On their own node that costs nothing (their buffers are the shared bytes).

    Its holder is known to dragond (the channel tracks who received its token last): when
    that process is killed or fails without releasing it, or its node is lost, the lock breaks
    and waiters get BrokenLockError instead of waiting for ever."""

    _breaks = True

    def __init__(self, *, ctx=None, _owned=False):
        super().__init__(1, ctx=ctx, _capacity=1, _holder="owns" if _owned else "lock")
        self._guards = weakref.WeakSet()
        self._mine = None  # (pid, thread) that took it through this object, as a SemLock keeps

    def acquire(self, block=True, timeout=None):
        if not Semaphore.acquire(self, block, timeout):
            return False
        self._mine = _me()
        return True

    def release(self):
        self._mine = None
        Semaphore.release(self)

    def _is_mine(self):
        """Whether the calling thread holds it (what a Condition over it checks): it took it,
        and it is still taken."""
        return self._mine == _me() and self._is_zero()

    def _guard(self, buffer):
        # Held weakly: a Value or Array dropped while its lock lives is freed, as the stdlib's
        # is (the lock of many short-lived Arrays kept them all).
        self._guards.add(buffer)
        self._use_guards()

    def __getstate__(self):
        # Its buffers go with it to a new process (they are pickled once with the Value that
        # holds them); not through a queue, where a Value cannot go either.
        guards = list(self._guards) if context.get_spawning_popen() is not None else []
        return super().__getstate__() + (guards,)

    def __setstate__(self, state):
        super().__setstate__(state[:-1])
        self._guards = weakref.WeakSet(state[-1])
        self._mine = None
        self._use_guards()

    def _use_guards(self):
        # Only a lock that guards bytes of another node pays for it (elsewhere the plain
        # acquire stays as it is).
        self._far = [g for g in self._guards if g.remote]
        if self._far:
            self.acquire = self._acquire_fetching
            self.release = self._release_flushing

    def _acquire_fetching(self, block=True, timeout=None):
        if not Semaphore.acquire(self, block, timeout):
            return False
        try:
            for g in self._far:
                g.fetch()
        except BaseException:
            Semaphore.release(self)
            raise
        self._mine = _me()
        return True

    def _release_flushing(self):
        self._mine = None
        try:
            for g in self._far:
                g.flush()
        finally:
            Semaphore.release(self)

    def __repr__(self):
        return "<Lock(%s)>" % ("locked" if self._is_zero() else "unlocked")


class RLock:
    """A lock its owner (process and thread) may take again; the owner is known per process."""

    def __init__(self, *, ctx=None):
        # Only its owner releases it: it breaks however its holder ends, also with status 0.
        self._lock = Lock(ctx=ctx, _owned=True)
        self._owner = None
        self._count = 0

    def __getstate__(self):
        context.assert_spawning(self)
        return self._lock

    def __setstate__(self, lock):
        self._lock = lock
        self._owner = None
        self._count = 0

    def acquire(self, block=True, timeout=None):
        if self._owner == _me():
            self._count += 1
            return True
        if not self._lock.acquire(block, timeout):
            return False
        self._owner = _me()
        self._count = 1
        return True

    def release(self):
        if self._owner != _me():
            if _is_broken(self._lock):  # as for its owner: the lock is gone (the release at the
                # end of a `with` whose Condition.wait could not take a broken lock back)
                self._lock.release()
            raise AssertionError("attempt to release recursive lock not owned by thread")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._lock.release()

    def _is_owned(self):
        return self._owner == _me()

    def _guard(self, buffer):
        self._lock._guard(buffer)

    __enter__ = acquire

    def __exit__(self, *args):
        self.release()


_ALL_SIGNALS = signal.valid_signals()


@contextlib.contextmanager
def signals_held():
    """No signal handler runs inside (they run after): for a message taken and put back, which
    an interrupt in between would lose."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# How often a Condition's waiter looks at whether its lock broke (seconds).
_BROKEN_CHECK = 1.0


def _is_broken(lock):
    """Whether `lock` (a Lock or RLock of dragon) is broken: its holder ended holding it."""
    inner = getattr(lock, "_lock", lock)  # an RLock's Lock
    channel = getattr(inner, "_channel", None)
    if channel is None or not getattr(inner, "_breaks", False):
        return False
    if not channel.is_remote:
        return channel.is_closed()
    # Of another node, only a receive tells a closed channel from one holding the token: a
    # free lock's token is taken and given back at once.
    if not channel.readable():
        return False  # held, so not broken
    with signals_held():  # the token goes back
        try:
            channel.recv(0)
        except TimeoutError:
            return False
        except ChannelClosed:
            return True
        channel.send(_TOKEN, 0)
        return False


class Condition:
    """A condition variable over three dragon semaphores: how many wait, a semaphore waiters
    sleep on, and how many have woken (notify waits for the ones it woke to take note, and
    forgets waiters whose wait timed out)."""

    def __init__(self, lock=None, *, ctx=None):
        self._lock = lock or RLock(ctx=ctx)
        self._sleeping_count = Semaphore(0, ctx=ctx, _spills=False)
        self._wait_semaphore = Semaphore(0, ctx=ctx, _spills=False)
        self._woken_count = Semaphore(0, ctx=ctx, _spills=False)

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._lock, self._sleeping_count, self._wait_semaphore, self._woken_count)

    def __setstate__(self, state):
        self._lock, self._sleeping_count, self._wait_semaphore, self._woken_count = state

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def acquire(self, *args, **kwargs):
        return self._lock.acquire(*args, **kwargs)

    def release(self):
        self._lock.release()

    def _release_fully(self):
        if isinstance(self._lock, RLock):  # owned: _check_owned said so
            count = self._lock._count
            self._lock._count = 1
            self._lock.release()
            return count
        self._lock.release()
        return 1

    def _reacquire(self, count):
        self._lock.acquire()
        if isinstance(self._lock, RLock):
            self._lock._count = count

    def _check_owned(self, what="wait() on an un-acquired lock"):
        # Before any count moves: a wait or notify on a lock not held by the caller must
        # change nothing. An RLock knows its owner, and a Lock who took it through this
        # process's object (as the stdlib's SemLock); another lock only that someone holds it.
        if isinstance(self._lock, RLock):
            owned = self._lock._is_owned()
        elif isinstance(self._lock, Lock):
            owned = self._lock._is_mine()
        else:
            is_zero = getattr(self._lock, "_is_zero", None)
            owned = is_zero is None or is_zero()
        if not owned:
            raise AssertionError(what)

    def wait(self, timeout=None):
        self._check_owned()
        self._sleeping_count.release()
        count = self._release_fully()
        woken = False
        try:
            woken = self._sleep(timeout)
            return woken
        finally:
            # Not woken (a timeout, an interrupt): it takes its own sleeper's count back, so
            # that waits that time out do not pile counts up (a loop of Event.wait(1) would
            # fill the semaphores). When that count is gone, a notify took it and waits for
            # this waiter's note in _woken_count, as for one it woke.
            if woken or not self._sleeping_count.acquire(False):
                self._woken_count.release()
            self._reacquire(count)

    def _sleep(self, timeout):
        """Whether a notify woke this waiter within `timeout`. It also ends, not woken, once
        the lock is broken: its holder was killed, so no notify can come (a notify needs the
        lock), and taking the lock back then raises BrokenLockError instead of waiting for
        ever."""
        end = None if timeout is None else time.monotonic() + max(timeout, 0)
        while True:
            left = None if end is None else end - time.monotonic()
            step = _BROKEN_CHECK if left is None else max(min(left, _BROKEN_CHECK), 0)
            if self._wait_semaphore.acquire(True, step):
                return True
            if (left is not None and left <= _BROKEN_CHECK) or _is_broken(self._lock):
                return False

    def notify(self, n=1):
        self._check_owned("lock is not owned")  # as the stdlib's notify asserts
        # Waiters that timed out since the last notify still count as sleepers: forget them.
        while self._woken_count.acquire(False):
            self._sleeping_count.acquire(False)
        woken = 0
        while woken < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            woken += 1
        for _ in range(woken):
            self._woken_count.acquire()
        # A waiter that timed out while being woken left its wake-up behind: take it back.
        while self._wait_semaphore.acquire(False):
            pass

    def notify_all(self):
        self.notify(SEM_VALUE_MAX)

    def wait_for(self, predicate, timeout=None):
        result = predicate()
        end = None if timeout is None else time.monotonic() + timeout
        while not result:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result


class Event:
    def __init__(self, *, ctx=None):
        self._flag = Semaphore(0, ctx=ctx, _capacity=1)
        self._cond = Condition(Lock(ctx=ctx), ctx=ctx)

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._flag, self._cond)

    def __setstate__(self, state):
        self._flag, self._cond = state

    def is_set(self):
        if self._flag._is_zero():  # it holds one token at most
            return False
        # A synchronisation point, as the stdlib's (it takes the Event's lock): what was
        # written before set() is seen after, also raw memory of another node (_coherence).
        if held:
            acquired()
        return True

    def __repr__(self):
        return "<%s at %#x %s>" % (type(self).__name__, id(self), "set" if self.is_set() else "unset")

    def set(self):
        with self._cond:
            if not self.is_set():
                self._flag.release()
            self._cond.notify_all()

    def clear(self):
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout=None):
        with self._cond:
            if self.is_set():
                return True
            self._cond.wait(timeout)
            return self.is_set()


class Barrier(threading.Barrier):
    """threading.Barrier's algorithm over a dragon Condition, its (state, count) in shared
    memory that the Condition's lock guards (kept coherent by it on another node, as a
    synchronized Array is). threading.Barrier reads and writes them under that lock, except
    `broken` and `n_waiting`, which read them as they are, as the stdlib's Barrier does: a
    process killed while it reads them changes nothing. On another node than the memory's
    they take the lock, which brings the memory up to date."""

    def __init__(self, parties, action=None, timeout=None, *, ctx=None):
        from . import sharedctypes
        # Reentrant: an action (run under the lock) may read `broken` on another node.
        self._cond = Condition(RLock(ctx=ctx), ctx=ctx)
        self._array = sharedctypes.Array("i", 2, lock=self._cond._lock).get_obj()
        self._action = action
        self._timeout = timeout
        self._parties = parties

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._parties, self._action, self._timeout, self._cond, self._array)

    def __setstate__(self, state):
        (self._parties, self._action, self._timeout, self._cond, self._array) = state

    @property
    def _state(self):
        return self._array[0]

    @_state.setter
    def _state(self, value):
        self._array[0] = value

    @property
    def _count(self):
        return self._array[1]

    @_count.setter
    def _count(self, value):
        self._array[1] = value

    def _read(self, read):
        if getattr(self._array._wrapper, "remote", False):
            with self._cond:
                return read()
        return read()

    @property
    def n_waiting(self):
        return self._read(lambda: self._count if self._state == 0 else 0)

    @property
    def broken(self):
        return self._read(lambda: self._state == -2)
