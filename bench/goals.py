#!/usr/bin/python3
"""Turns the metric lines of one bench run into goal lines (see bench/README.md).

A goal compares a measured metric with a baseline metric from the same run:
  '<=' / '<'  the ratio measured/baseline must be at most / below the target (times, latencies)
  '>='        the ratio must be at least the target (rates)
  'abs<='     the measured value itself must be at most the target (in the metric's unit);
              the ratio to the baseline is printed for context
  'diff<='    measured minus baseline must be at most the target (in the metric's unit)
"""
import sys

GOALS = {
    "dataplane": [
        ("rtt_8B_vs_spin_futex", "chan_rtt_8B", "spin_futex_rtt_8B", "<=", 3),
        ("rtt_8B_vs_futex", "chan_rtt_8B", "futex_rtt", "<", 1),
        ("rtt_4KiB_vs_spin_futex", "chan_rtt_4KiB", "spin_futex_rtt_4KiB", "<=", 3),
        ("rtt_4KiB_vs_futex", "chan_rtt_4KiB", "futex_rtt", "<", 1),
        ("rtt_8B_4pairs_on_2cores_vs_futex", "chan_rtt_8B_4pairs", "futex_rtt_4pairs", "<=", 1.5),
        ("copy_1MiB_vs_memcpy", "chan_copy_1MiB", "memcpy_1MiB", ">=", 0.5),
        ("copy_16MiB_vs_memcpy", "chan_copy_16MiB", "memcpy_16MiB", ">=", 0.5),
        ("zerocopy_1MiB_vs_copy", "chan_zc_1MiB", "chan_copy_1MiB", ">=", 10),
        ("zerocopy_16MiB_vs_copy", "chan_zc_16MiB", "chan_copy_16MiB", ">=", 10),
        ("fanin_4to1_64B_vs_1to1", "chan_fanin4_64B", "chan_tput_64B", ">=", 0.5),
        ("pool_alloc_free", "pool_alloc_free", "malloc_free", "abs<=", 100),
    ],
    "daemon": [
        ("spawn_reap_true_vs_posix_spawn", "spawn_dragond_rate", "spawn_direct_rate", ">=", 0.8),
        ("control_rtt_vs_unix_socket", "control_rtt", "unix_socket_rtt", "<=", 2),
    ],
    # Dragon's multiprocessing against the best of stock fork, spawn and forkserver (issue 4).
    "python": [
        ("py_queue_rtt_8B_vs_stock", "py_dragon_queue_rtt_8B", "py_stock_queue_rtt_8B", "<=", 0.25),
        ("py_queue_rtt_4KiB_vs_stock", "py_dragon_queue_rtt_4KiB", "py_stock_queue_rtt_4KiB",
         "<=", 0.25),
        ("py_pipe_rtt_8B_vs_stock", "py_dragon_pipe_rtt_8B", "py_stock_pipe_rtt_8B", "<=", 0.333),
        ("py_queue_tput_64B_vs_stock", "py_dragon_queue_tput_64B", "py_stock_queue_tput_64B",
         ">=", 3),
        ("py_queue_tput_64B_4producers_vs_stock", "py_dragon_queue_tput_64B_4prod",
         "py_stock_queue_tput_64B_4prod", ">=", 3),
        ("py_queue_tput_1MiB_numpy_vs_stock", "py_dragon_queue_tput_1MiB",
         "py_stock_queue_tput_1MiB", ">=", 40),
        ("py_queue_tput_16MiB_numpy_vs_stock", "py_dragon_queue_tput_16MiB",
         "py_stock_queue_tput_16MiB", ">=", 20),
        ("py_start_join_vs_fork", "py_dragon_start_join", "py_fork_start_join", "<=", 1),
        ("py_start_1000_concurrent_vs_fork", "py_dragon_start_1000", "py_fork_start_1000",
         "<=", 1),
        ("py_pool_map_chunksize1_vs_stock", "py_dragon_pool_map_c1", "py_stock_pool_map_c1",
         ">=", 3),
        ("py_apply_async_rtt_vs_stock", "py_dragon_apply_async_rtt", "py_stock_apply_async_rtt",
         "<=", 0.333),
    ],
    # A 3-node Slurm cluster in network namespaces (tests/cluster), tcp between nodes.
    "cluster": [
        ("cluster_bringup_3nodes_vs_bare_srun", "cluster_bringup_dragon", "cluster_bringup_bare",
         "diff<=", 0.5),
        ("cluster_spawn_reap_remote_vs_local", "cluster_spawn_remote_rate",
         "cluster_spawn_local_rate", ">=", 0.5),
        # One acknowledged 8 B send to a channel of another node (a round trip between the
        # nodes) against ucx_perftest's tag round trip (2 x its one-way tag_lat) n1<->n2.
        ("cluster_channel_rtt_8B_vs_ucx_tag_rtt", "cluster_channel_send_8B",
         "cluster_ucx_tag_rtt", "<=", 1.5),
        ("cluster_channel_bw_1MiB_vs_ucx_tag_bw", "cluster_channel_bw_1MiB",
         "cluster_ucx_tag_bw_1MiB", ">=", 0.8),
        # Issue 11: a Python Queue round trip between two nodes (the far process's remote get
        # and put) against the C++ remote channel round trip (one acknowledged send).
        ("cluster_py_queue_rtt_8B_vs_channel_rtt", "cluster_py_queue_rtt_8B",
         "cluster_channel_send_8B", "<=", 2.0),
        ("cluster_py_queue_bw_1MiB_numpy_vs_channel_bw", "cluster_py_queue_bw_1MiB",
         "cluster_channel_bw_1MiB", ">=", 0.7),
        ("cluster_py_pool_map_10ms_3nodes_vs_1node", "cluster_py_pool_map_10ms_3nodes",
         "cluster_py_pool_map_10ms_1node", ">=", 1.0),
        # A Python process started and joined on another node (forked there by the parent's
        # template of that node) against one on the parent's node: the spawn goal for
        # /bin/true (a remote rate of at least half the local one), for Python processes.
        ("cluster_py_start_join_remote_vs_local", "cluster_py_start_join_remote",
         "cluster_py_start_join_local", "<=", 2.0),
        # The goal: remote put against ucx_perftest's put bandwidth; and, because UCX's
        # put over tcp is far slower than its get here, both directions against its get too.
        ("cluster_memory_put_16MiB_vs_ucx_put_bw", "cluster_memory_put_16MiB",
         "cluster_ucx_put_bw_16MiB", ">=", 0.8),
        ("cluster_memory_put_16MiB_vs_ucx_get_bw", "cluster_memory_put_16MiB",
         "cluster_ucx_get_bw_16MiB", ">=", 0.8),
        ("cluster_memory_get_16MiB_vs_ucx_get_bw", "cluster_memory_get_16MiB",
         "cluster_ucx_get_bw_16MiB", ">=", 0.8),
    ],
}

# Printed for context, never judged.
INFO = {
    "dataplane": [
        ("rtt_8B_vs_word_only_spin_futex", "chan_rtt_8B", "spin_futex_rtt_word"),
        ("tput_64B_msgs", "chan_tput_64B", None),
        ("copy_4KiB_vs_memcpy", "chan_copy_4KiB", "memcpy_4KiB"),
    ],
    "daemon": [
        # The longest a control request waits while a 200 MiB message crosses dragond in parts
        # for a process of another node (cluster.node_timeout is 1.5 s).
        ("control_rtt_longest_during_200MiB_recv_in_parts_vs_control_rtt",
         "control_rtt_longest_during_200MiB_recv_in_parts", "control_rtt"),
        ("control_rtt_longest_during_200MiB_send_in_parts_vs_control_rtt",
         "control_rtt_longest_during_200MiB_send_in_parts", "control_rtt"),
    ],
    "cluster": [
        # With cluster.poll=100us (off by default): dragond polls between events.
        ("cluster_channel_rtt_8B_poll_vs_ucx_tag_rtt", "cluster_channel_send_8B_poll",
         "cluster_ucx_tag_rtt"),
        ("cluster_channel_bw_1MiB_poll_vs_ucx_tag_bw", "cluster_channel_bw_1MiB_poll",
         "cluster_ucx_tag_bw_1MiB"),
        ("cluster_py_queue_rtt_8B_poll_vs_channel_rtt_poll", "cluster_py_queue_rtt_8B_poll",
         "cluster_channel_send_8B_poll"),
        # connection.wait over a Pipe end of another node and one of this node, before each
        # recv(), against recv() alone (a message that finds the far process asleep).
        ("cluster_py_wait_mixed_vs_recv_rtt_idle", "cluster_py_pipe_rtt_idle_wait_mixed",
         "cluster_py_pipe_rtt_idle_recv"),
        # Messages of 64 MiB, which cross in parts into a block of the channel's pool at its
        # home, against UCX's own large transfer between the same nodes.
        ("cluster_channel_bw_64MiB_vs_ucx_get_bw", "cluster_channel_bw_64MiB",
         "cluster_ucx_get_bw_16MiB"),
        # A request the local dragond answers itself: the floor under every remote operation.
        ("cluster_control_rtt_vs_ucx_tag_rtt", "cluster_control_rtt", "cluster_ucx_tag_rtt"),
        ("cluster_bringup_2nodes_vs_bare_srun", "cluster_bringup_dragon_N2", "cluster_bringup_bare_N2"),
        ("cluster_bringup_4nodes_vs_bare_srun", "cluster_bringup_dragon_N4", "cluster_bringup_bare_N4"),
        ("cluster_bringup_8nodes_vs_bare_srun", "cluster_bringup_dragon_N8", "cluster_bringup_bare_N8"),
        ("cluster_bringup_16nodes_vs_bare_srun", "cluster_bringup_dragon_N16", "cluster_bringup_bare_N16"),
    ],
    "python": [
        ("py_queue_tput_1MiB_bytes_vs_stock", "py_dragon_queue_tput_1MiB_bytes",
         "py_stock_queue_tput_1MiB_bytes"),
        ("py_queue_tput_16MiB_bytes_vs_stock", "py_dragon_queue_tput_16MiB_bytes",
         "py_stock_queue_tput_16MiB_bytes"),
        ("py_start_join_vs_spawn", "py_dragon_start_join", "py_spawn_start_join"),
        # What one copy allows: a ratio near 1 means put() costs its one copy and little else.
        ("py_queue_tput_1MiB_numpy_vs_one_copy", "py_dragon_queue_tput_1MiB", "py_copyto_1MiB"),
        ("py_queue_tput_16MiB_numpy_vs_one_copy", "py_dragon_queue_tput_16MiB",
         "py_copyto_16MiB"),
    ],
}


def fmt(v):
    return f"{v:.4g}"


def main():
    path, groups = sys.argv[1], sys.argv[2:]
    metrics = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "metric":
                metrics[parts[1]] = (float(parts[2]), parts[3])
    missing = []
    lines = []
    for g in groups:
        for name, m, b, kind, target in GOALS[g]:
            if m not in metrics or b not in metrics:
                missing.append(name)
                continue
            (mv, mu), (bv, bu) = metrics[m], metrics[b]
            ratio = mv / bv if bv else float("inf")
            if kind == "<=":
                ok, t = ratio <= target, f"<={target}"
            elif kind == "<":
                ok, t = ratio < target, f"<{target}"
            elif kind == ">=":
                ok, t = ratio >= target, f">={target}"
            elif kind == "diff<=":
                ok, t = mv - bv <= target, f"baseline+{target}{mu}"
            else:
                ok, t = mv <= target, f"<={target}{mu}"
            lines.append(f"goal {name} measured={fmt(mv)}{mu} baseline={fmt(bv)}{bu} "
                         f"ratio={ratio:.3f} target={t} {'met' if ok else 'missed'}")
        for name, m, b in INFO.get(g, []):
            if m in metrics and (b is None or b in metrics):
                mv, mu = metrics[m]
                if b is None:
                    print(f"info {name} measured={fmt(mv)}{mu}")
                else:
                    bv, bu = metrics[b]
                    print(f"info {name} measured={fmt(mv)}{mu} baseline={fmt(bv)}{bu} "
                          f"ratio={mv / bv:.3f}")
    for line in lines:
        print(line)
    if missing:
        print("bench: no measurement for goal(s): " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
