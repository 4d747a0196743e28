# SPDX-License-Identifier: MIT
"""Release consistency for raw shared memory held on another node than its home.

A RawValue, RawArray, Value(lock=False) or stdlib heap buffer given to a process on another
node is a copy there (sharedctypes._RemoteBuffer): nothing maps the home's bytes across nodes.
The copies are kept coherent at the program's synchronisation points, as a data-race-free
program needs and as release-consistent distributed shared memory does it:

- acquire (a lock, semaphore, condition or event taken; a Queue get, a Pipe recv; a join that
  saw a child end): every copy this process holds is refreshed from its home;
- release (a lock let go; a Queue put, a Pipe send; this process's exit): the bytes this
  process changed since the last refresh are written back, and only those (a copy keeps a
  twin of the last fetched bytes and writes back the runs that differ from it), so two
  processes changing different parts of one array under different locks do not undo each
  other's changes.

A process that holds no such copy pays one test of an empty set per operation."""
import weakref

from multiprocessing import util

# The copies held by this process that are ordered by these points (not the ones a dragon lock
# guards itself: those are fetched and written back by their lock alone).
held = weakref.WeakSet()
_exit_registered = [False]


def hold(buffer):
    held.add(buffer)
    if not _exit_registered[0]:
        _exit_registered[0] = True
        # Before the pool blocks are freed (-100) and before the runtime goes: a process's last
        # changes reach the home before its parent's join() returns.
        util.Finalize(None, released, exitpriority=100)


def acquired():
    """Called after an acquire: the home's bytes, with this process's unsent changes first
    written back (written back early is invisible to a data-race-free program)."""
    for b in list(held):
        b.write_back()
        b.fetch()


def released():
    """Called before a release: this process's changes go home."""
    for b in list(held):
        b.write_back()


_LEAF = 64


def changed_runs(now, twin):
    """[(start, end)]: the runs of bytes where `now` differs from `twin` (equal-length 'B'
    memoryviews), adjacent runs merged. Halves the range while the halves differ, so an
    unchanged megabyte costs one comparison."""
    runs = []
    stack = [(0, len(now))]
    while stack:
        lo, hi = stack.pop()
        if now[lo:hi] == twin[lo:hi]:
            continue
        if hi - lo > _LEAF:
            mid = (lo + hi) // 2
            stack.append((mid, hi))  # popped second: runs come out in order
            stack.append((lo, mid))
            continue
        i = lo
        while i < hi:
            if now[i] != twin[i]:
                j = i + 1
                while j < hi and now[j] != twin[j]:
                    j += 1
                if runs and runs[-1][1] == i:
                    runs[-1] = (runs[-1][0], j)
                else:
                    runs.append((i, j))
                i = j
            else:
                i += 1
    return runs
