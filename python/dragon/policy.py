# SPDX-License-Identifier: MIT
"""Where processes start, in a multi-node job (``srun --mpi=pmix -N 3 dragon app.py``).

``with dragon.Policy(node=2): p.start()`` starts the processes started inside the block on node
2 (a node id, as ``dragon.nodes()`` lists them, or a hostname); ``Policy(node="local")`` or
``Policy()`` on the starting process's own node; ``Policy(node="roundrobin")`` on the job's nodes
in turn, each taking turns in proportion to the CPUs Slurm granted it (the turns are this
process's, starting at its own node). Policies nest; each thread has its own. A Pool keeps the
policy in force when it was made for all its workers, also the ones it starts later. Outside
any, processes start where ``DRAGON_PLACEMENT`` says: ``roundrobin`` (the default), ``local``
or a node id.

On one node every policy is this node. A process on another node is started by that node's
dragond as a fresh interpreter; its output comes back line by line through that node's launcher;
it is joined, polled, signalled and waited on (its sentinel) like any other. What it is given
must cross nodes: queues, pipes, locks and pools do; objects that hold raw memory or a count
read in place (``Value``, ``Event``, semaphores, shared memory) do not yet, and starting a process on another node
with one raises an error that says so.
"""
import os
import threading

_LOCAL = "local"
_ROUND_ROBIN = "roundrobin"
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


_multi_node = {}  # pid -> whether this process's job has several nodes (asked once)


def multi_node():
    """Whether this process runs in a job of several nodes (asked of dragond once)."""
    pid = os.getpid()
    if pid not in _multi_node:
        from . import _runtime
        _multi_node.clear()
        _multi_node[pid] = len(_runtime.nodes()) > 1
    return _multi_node[pid]


def _default():
    value = os.environ.get("DRAGON_PLACEMENT", "").strip()
    if value == "":
        # Round-robin over the job's nodes; on one node every placement is this node.
        return _ROUND_ROBIN if multi_node() else _LOCAL
    if value == _LOCAL:
        return _LOCAL
    if value == _ROUND_ROBIN:
        return _ROUND_ROBIN
    try:
        return int(value)
    except ValueError:
        raise ValueError("DRAGON_PLACEMENT is 'local', 'roundrobin' or a node id, not %r"
                         % value) from None


def current():
    """The Policy in force in this thread (None: the default, DRAGON_PLACEMENT)."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


def _wanted(policy):
    return policy.node if policy is not None else _default()


class _Turns:
    """Smooth weighted round-robin over the job's nodes, weighted by their CPUs: each node's
    share of any run of turns is its share of the CPUs, spread out (3:1 gives a a b a, not
    a a a b). The turns are this process's; of nodes with equal credit, its own goes first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pid = None
        self.credit = {}

    def next(self, known, here):
        with self.lock:
            if self.pid != os.getpid():  # a forked copy starts its own turns
                self.pid, self.credit = os.getpid(), {}
            weights = {n: max(cpus, 1) for n, _, cpus in known}
            self.credit = {n: self.credit.get(n, 0) + w for n, w in weights.items()}
            node = max(self.credit, key=lambda n: (self.credit[n], n == here, -n))
            self.credit[node] -= sum(weights.values())
            return node


_turns = _Turns()


def target_node(policy=None):
    """The node id the next process starts on, or None for this node: by `policy` (a process
    object's, which a Pool sets), else by the policy in force in this thread."""
    want = _wanted(policy if policy is not None else current())
    if want == _LOCAL:
        return None
    from . import _runtime
    here = _runtime.this_node()
    known = _runtime.nodes()
    if want == _ROUND_ROBIN:
        node = _turns.next(known, here)
        return None if node == here else node
    for node, hostname, _ in known:
        if want == node or (isinstance(want, str) and want == hostname):
            return None if node == here else node
    raise ValueError("no node %r in this job (its nodes: %s)"
                     % (want, ", ".join("%d (%s)" % (n, h or "this node") for n, h, _ in known)))


def cpus(policy=None):
    """The CPUs of the nodes a policy places on: the job's for round-robin, else the one
    node's (as Slurm granted them; os.cpu_count() where that is not known)."""
    want = _wanted(policy if policy is not None else current())
    from . import _runtime
    known = _runtime.nodes()
    if want == _ROUND_ROBIN:
        return sum(c if c > 0 else (os.cpu_count() or 1) for _, _, c in known)
    node = target_node(policy)
    here = _runtime.this_node() if node is None else node
    granted = [c for n, _, c in known if n == here]
    return granted[0] if granted and granted[0] > 0 else (os.cpu_count() or 1)


def nodes():
    """[(node id, hostname, CPUs granted)] of the job: one entry outside a multi-node job."""
    from . import _runtime
    return [(n, h, c) for n, h, c in _runtime.nodes()]
