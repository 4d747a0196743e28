# SPDX-License-Identifier: MIT
"""Where processes start, in a multi-node job (``srun --mpi=pmix -N 3 dragon app.py``).

``with dragon.Policy(node=2): p.start()`` starts the processes started inside the block on node
2 (a node id, as ``dragon.nodes()`` lists them, or a hostname); ``Policy(node="local")`` or
``Policy()`` on the starting process's own node. Policies nest; each thread has its own. Outside
any, processes start where ``DRAGON_PLACEMENT`` says: ``local`` (the default) or a node id.

On one node every policy is this node. A process on another node is started by that node's
dragond as a fresh interpreter; its output comes back line by line through that node's launcher;
it is joined, polled, signalled and waited on (its sentinel) like any other. What it is given
must cross nodes: queues (``Queue``, ``SimpleQueue``) do; objects that hold fds or raw memory
(``Pipe``, locks, ``Value``, shared memory) do not yet, and starting a process on another node
with one raises an error that says so.
"""
import os
import threading

_LOCAL = "local"
_state = threading.local()


class Policy:
    """A placement for the processes started while it is in force (a context manager)."""

    def __init__(self, node=_LOCAL):
        if not (node == _LOCAL or isinstance(node, (int, str))) or isinstance(node, bool):
            raise TypeError("Policy(node=...) takes a node id, a hostname or 'local', not %r"
                            % (node,))
        self.node = node

    def __repr__(self):
        return "Policy(node=%r)" % (self.node,)

    def __enter__(self):
        stack = getattr(_state, "stack", None)
        if stack is None:
            stack = _state.stack = []
        stack.append(self)
        return self

    def __exit__(self, *exc):
        _state.stack.pop()
        return False


def _default():
    value = os.environ.get("DRAGON_PLACEMENT", _LOCAL).strip()
    if value == _LOCAL or value == "":
        return _LOCAL
    try:
        return int(value)
    except ValueError:
        raise ValueError("DRAGON_PLACEMENT is 'local' or a node id, not %r" % value) from None


def target_node():
    """The node id the next process starts on, or None for this node."""
    stack = getattr(_state, "stack", None)
    want = stack[-1].node if stack else _default()
    if want == _LOCAL:
        return None
    from . import _runtime
    here = _runtime.this_node()
    known = _runtime.nodes()
    for node, hostname, _ in known:
        if want == node or (isinstance(want, str) and want == hostname):
            return None if node == here else node
    raise ValueError("no node %r in this job (its nodes: %s)"
                     % (want, ", ".join("%d (%s)" % (n, h or "this node") for n, h, _ in known)))


def nodes():
    """[(node id, hostname, CPUs granted)] of the job: one entry outside a multi-node job."""
    from . import _runtime
    return [(n, h, c) for n, h, c in _runtime.nodes()]
