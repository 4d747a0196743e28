#!/bin/bash
# cluster.sh - a real N-node Slurm cluster (srun --mpi=pmix, UCX over tcp) on this one machine,
# for the multi-node tests in tests/cluster/. Needs root, slurmd, slurmctld, slurm-client, munge,
# libpmix-dev (the Slurm pmix plugin dlopens libpmix.so), iproute2, util-linux (nsenter, unshare).
#
#   cluster.sh up [N]        start munged, slurmctld (netns dc-ctl, hostname ctl, br0 10.98.0.1/24)
#                            and N slurmd nodes n1..nN (netns dc-nK, 10.98.0.(10+K), hostname nK,
#                            own mount namespace with its own boot_id); waits until all N are idle.
#                            A cluster that is still up (state dir exists) is torn down first.
#   cluster.sh down          scancel all jobs, stop every daemon, delete the namespaces and state dir.
#                            Idempotent; safe after a partial 'up' or when nothing is up.
#   cluster.sh exec CMD...   run CMD in the controller namespace (where srun/sinfo/squeue work), e.g.
#                              cluster.sh exec srun -I30 --mpi=pmix -N3 hostname
#   cluster.sh node K [CMD...]  run CMD (default: bash) in node nK's net+uts+mount namespaces
#                            (entered through its slurmd's pid), without Slurm.
#   cluster.sh addr K        print node nK's address (10.98.0.(10+K)); 'addr ctl' for the controller
#   cluster.sh env           print 'export SLURM_CONF=...' etc. (use: eval "$(cluster.sh env)")
#   cluster.sh status        sinfo -N of the running cluster
#   cluster.sh check         exit 0 if this machine can run the cluster, else print why and exit 77
#
# State lives in $DRAGON_CLUSTER_DIR (default /tmp/dragon-cluster): slurm.conf, munge key and socket,
# logs (log/), pid files (pids/), per-node spool/, tmpfs/ (Slurm TmpFS=.../%n) and bootid/.
# Names are chosen not to collide with the testbed recipe (tb-*, 10.99.0.0/24, ports 16817/16818):
# namespaces dc-*, subnet 10.98.0.0/24, ports 16917 (slurmctld) / 16918 (slurmd). Only one such
# cluster can run per machine (the namespace names are fixed).
#
# Environment: DRAGON_CLUSTER_DIR, DRAGON_CLUSTER_UP_TIMEOUT (s, default 30).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
DIR=${DRAGON_CLUSTER_DIR:-/tmp/dragon-cluster}
case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
DIR=${DIR%/}
export SLURM_CONF=$DIR/etc/slurm.conf
MARK=$DIR/.dragon-cluster            # marks a directory this script created (down only rm -rf's those)
NS=dc                                # namespace prefix: $NS-ctl, $NS-n1, ...
CTL_NS=$NS-ctl
SUBNET=10.98.0
CTL_PORT=16917
SLURMD_PORT=16918
CPUS_PER_NODE=2
UP_TIMEOUT=${DRAGON_CLUSTER_UP_TIMEOUT:-30}
MUNGE_SOCK=$DIR/munge/munge.socket.2

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
in_ctl() { nsenter --net=/run/netns/$CTL_NS "$@"; }
ns_exists() { [ -e "/run/netns/$1" ]; }
our_namespaces() {  # our namespaces that exist, controller first
  local n
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NS-(ctl|n[0-9]+)$" | sort -V); do
    echo "$n"
  done
}
tail_log() {  # tail_log FILE... : show the end of each existing log
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 25 "$f" >&2
  done
}
node_count() { cat "$DIR/nodes" 2>/dev/null || echo 0; }
pid_of() {  # pid_of NAME : pid from $DIR/pids/NAME.pid if that process is still alive and named right
  local f=$DIR/pids/$1.pid want=${1%%-*} p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [[ $p =~ ^[0-9]+$ ]] || return 1
  is_live "$p" || return 1
  # the daemon itself, or the launcher chain that is about to exec it (the pid stays the same)
  case $(cat /proc/"$p"/comm 2>/dev/null) in
    "$want"|cluster.sh|nsenter|unshare) echo "$p" ;;
    *) return 1 ;;
  esac
}
gone() {  # gone NAME : the daemon was launched (pid file written) and is no longer running
  [ -s "$DIR/pids/$1.pid" ] && ! pid_of "$1" >/dev/null
}
stat_field() {  # stat_field PID N : field N of /proc/PID/stat (3 = state, 4 = ppid), comm-safe
  local s f
  s=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
  s=${s##*) }                  # drop "pid (comm) ": the first field left is field 3
  read -r -a f <<<"$s"
  [ -n "${f[$(($2 - 3))]:-}" ] || return 1
  echo "${f[$(($2 - 3))]}"
}
is_live() {  # alive and not a zombie
  local st
  st=$(stat_field "$1" 3) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# ---------------------------------------------------------------- prerequisites
check() {
  [ "$(id -u)" -eq 0 ] || { echo "needs root"; return 77; }
  local c
  for c in slurmd slurmctld srun sinfo scontrol squeue scancel munged mungekey munge unmunge \
           ip nsenter unshare setsid mount hostname timeout awk ss; do
    command -v "$c" >/dev/null 2>&1 || { echo "missing command: $c"; return 77; }
  done
  [ -e /proc/sys/kernel/random/boot_id ] || { echo "no /proc/sys/kernel/random/boot_id"; return 77; }
  ls /usr/lib/*/slurm-wlm/mpi_pmix*.so >/dev/null 2>&1 || ls /usr/lib*/slurm/mpi_pmix*.so >/dev/null 2>&1 \
    || { echo "Slurm pmix plugin (mpi_pmix.so) not found"; return 77; }
}

# ---------------------------------------------------------------- process launching
# Daemons run in the foreground (-D) in their own session; the launcher writes its own pid ($$)
# before exec'ing nsenter -> unshare -> _init -> daemon, so the pid file is the daemon's pid.
launch() {  # launch NAME NETNS HOSTNAME BOOTID_FILE|"" CMD...
  local name=$1; shift
  setsid "$SELF" _launch "$DIR/pids/$name.pid" "$@" </dev/null >"$DIR/log/$name.out" 2>&1 &
}
_launch() {
  local pidfile=$1 netns=$2 host=$3 bootid=$4; shift 4
  echo $$ > "$pidfile"
  if [ -n "$bootid" ]; then
    # own mount namespace; 'slave' so that 'ip netns del' in the root namespace still unmounts the
    # copies of /run/netns/* here (with the default 'private' the copies would keep the netns alive)
    exec nsenter --net=/run/netns/"$netns" unshare --uts --mount --propagation slave "$SELF" _init "$host" "$bootid" "$@"
  else
    exec nsenter --net=/run/netns/"$netns" unshare --uts "$SELF" _init "$host" "" "$@"
  fi
}
_init() {  # runs inside the new namespaces
  local host=$1 bootid=$2; shift 2
  hostname "$host"
  # UCX decides "same host => shared memory" from boot_id; a per-node boot_id makes it use tcp
  # between nodes and shm inside one node, as on real hardware
  [ -z "$bootid" ] || mount --bind "$bootid" /proc/sys/kernel/random/boot_id
  exec "$@"
}

# ---------------------------------------------------------------- up
start_munge() {
  mkdir -p "$DIR/munge/etc"
  chmod 755 "$DIR/munge"          # munged wants the socket dir o+x
  chmod 700 "$DIR/munge/etc"      # and the key private
  mungekey --create --keyfile="$DIR/munge/etc/munge.key" --bits=1024
  chmod 400 "$DIR/munge/etc/munge.key"
  if ! timeout 20 munged --key-file="$DIR/munge/etc/munge.key" --socket="$MUNGE_SOCK" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/etc/munged.seed" </dev/null >"$DIR/log/munged.out" 2>&1; then
    tail_log "$DIR/log/munged.out" "$DIR/log/munged.log"
    die "munged did not start"
  fi
  cp "$DIR/munge/munged.pid" "$DIR/pids/munged.pid"
  timeout 10 munge -S "$MUNGE_SOCK" -n </dev/null | timeout 10 unmunge -S "$MUNGE_SOCK" >/dev/null \
    || { tail_log "$DIR/log/munged.log"; die "munge credential round trip failed"; }
}

netns_up() {  # controller namespace with the bridge, one namespace + veth per node
  local n=$1 k ns
  [ -d /run/netns ] || touch "$DIR/created-run-netns"
  ip netns add $CTL_NS
  ip -n $CTL_NS link set lo up
  ip -n $CTL_NS link add br0 type bridge
  ip -n $CTL_NS addr add $SUBNET.1/24 dev br0
  ip -n $CTL_NS link set br0 up
  for k in $(seq 1 "$n"); do
    ns=$NS-n$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "v-n$k"   # create in the node ns, move one end
    ip -n "$ns" link set "v-n$k" netns $CTL_NS
    ip -n $CTL_NS link set "v-n$k" master br0 up
    ip -n "$ns" addr add "$SUBNET.$((10 + k))/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

wait_links() {  # wait_links N DEADLINE : every node's eth0 has carrier and its bridge port forwards
  local n=$1 deadline=$2 k
  for k in $(seq 1 "$n"); do
    until ip -n "$NS-n$k" -o link show eth0 | grep -q LOWER_UP &&
          ip -n $CTL_NS -d -o link show "v-n$k" | grep -q 'state forwarding'; do
      if [ "$(now_s)" -ge "$deadline" ]; then
        ip -n "$NS-n$k" -o link show eth0 >&2 || true
        ip -n $CTL_NS -d -o link show "v-n$k" >&2 || true
        die "link of n$k not up within ${UP_TIMEOUT} s"
      fi
      sleep 0.05
    done
  done
}
now_s() { echo "${EPOCHREALTIME%[.,]*}"; }

write_conf() {
  local n=$1 k
  cat > "$SLURM_CONF" <<CONF
# generated by tests/cluster/cluster.sh up $n -- do not edit, it is rewritten on every 'up'
ClusterName=dragon
SlurmctldHost=ctl($SUBNET.1)
SlurmctldPort=$CTL_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$DIR/state
# all slurmd share one filesystem: %n keeps per-node paths apart. TmpFS matters for --mpi=pmix:
# the plugin creates <TmpFS>/spmix_appdir_<uid>_<job>.<step> on every node
SlurmdSpoolDir=$DIR/spool/%n
TmpFS=$DIR/tmpfs/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# CPUs per node are taken from this file, not from the (2-core) hardware
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
# fast job teardown and quick failure of unreachable daemons
KillWait=2
MessageTimeout=5
MinJobAge=10
CONF
  for k in $(seq 1 "$n"); do
    echo "NodeName=n$k NodeHostname=n$k NodeAddr=$SUBNET.$((10 + k)) CPUs=$CPUS_PER_NODE RealMemory=1024 State=UNKNOWN"
  done >> "$SLURM_CONF"
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >> "$SLURM_CONF"
}

wait_ctl() {  # wait_ctl DEADLINE : slurmctld answers 'scontrol ping'
  local deadline=$1 out=""
  while :; do
    out=$(in_ctl timeout 5 scontrol ping 2>&1 || true)
    grep -q 'is UP' <<<"$out" && return 0
    if gone slurmctld; then
      tail_log "$DIR/log/slurmctld.out" "$DIR/log/slurmctld.log"
      die "slurmctld exited during start-up"
    fi
    if [ "$(now_s)" -ge "$deadline" ]; then
      echo "scontrol ping: $out" >&2
      tail_log "$DIR/log/slurmctld.out" "$DIR/log/slurmctld.log"
      die "slurmctld not responding within ${UP_TIMEOUT} s"
    fi
    sleep 0.1
  done
}

wait_idle() {  # wait_idle N DEADLINE : all N nodes are idle
  local n=$1 deadline=$2 out="" k idle
  while :; do
    out=$(in_ctl timeout 5 sinfo -h -N -o '%N %T' 2>&1 || true)
    idle=$(awk '$2 == "idle"' <<<"$out" | wc -l)
    [ "$idle" -eq "$n" ] && return 0
    for k in $(seq 1 "$n"); do
      if gone "slurmd-n$k"; then
        tail_log "$DIR/log/slurmd-n$k.out" "$DIR/log/slurmd-n$k.log"
        die "slurmd n$k exited during start-up"
      fi
    done
    if [ "$(now_s)" -ge "$deadline" ]; then
      printf 'sinfo:\n%s\n' "$out" >&2
      for k in $(seq 1 "$n"); do
        awk -v n="n$k" '$1 == n && $2 == "idle" {ok=1} END {exit !ok}' <<<"$out" ||
          tail_log "$DIR/log/slurmd-n$k.out" "$DIR/log/slurmd-n$k.log"
      done
      tail_log "$DIR/log/slurmctld.log"
      die "only $idle of $n nodes idle within ${UP_TIMEOUT} s"
    fi
    sleep 0.2
  done
}

close_fds() {  # daemons must not inherit our caller's pipes or lock fds (a caller doing
               # out=\$(cluster.sh up) would otherwise wait for EOF forever)
  local fd
  for fd in "/proc/$$/fd/"*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

cmd_up() {
  local n=${1:-3}
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "node count must be 1..99, got '$n'"
  local why; why=$(check) || die "$why"
  close_fds
  local t0; t0=$(now)
  local deadline=$(( $(now_s) + UP_TIMEOUT ))
  if [ -e "$DIR" ] || [ -n "$(our_namespaces)" ]; then
    log "a previous cluster is still (partly) up; tearing it down first"
    cmd_down
    t0=$(now); deadline=$(( $(now_s) + UP_TIMEOUT ))
  fi
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  touch "$MARK"
  mkdir -p "$DIR"/{etc,state,log,run,pids,spool,tmpfs,bootid}
  echo "$n" > "$DIR/nodes"

  start_munge
  netns_up "$n"
  write_conf "$n"
  wait_links "$n" "$deadline"

  launch slurmctld $CTL_NS ctl "" slurmctld -D -i -f "$SLURM_CONF"
  wait_ctl "$deadline"

  local k
  for k in $(seq 1 "$n"); do
    mkdir -p "$DIR/spool/n$k" "$DIR/tmpfs/n$k"
    cat /proc/sys/kernel/random/uuid > "$DIR/bootid/n$k"
    launch "slurmd-n$k" "$NS-n$k" "n$k" "$DIR/bootid/n$k" slurmd -D -f "$SLURM_CONF" -N "n$k"
  done
  wait_idle "$n" "$deadline"
  echo "cluster up: $n nodes (n1..n$n) idle in $(since "$t0") s  [state: $DIR]"
}

# ---------------------------------------------------------------- down
KILLED=()   # every pid stop_pids signalled
ancestors() {  # our pid and all our ancestors (never kill those)
  local p=$$
  while [ -n "$p" ] && [ "$p" -gt 1 ]; do
    echo "$p"
    p=$(stat_field "$p" 4 || true)
  done
}

stop_pids() {  # stop_pids WHAT PID... : SIGTERM, wait up to 10 s, SIGKILL, wait up to 5 s
  local what=$1; shift
  [ $# -gt 0 ] || return 0
  local p alive deadline
  KILLED+=("$@")
  kill -TERM "$@" 2>/dev/null || true
  deadline=$(( $(now_s) + 10 ))
  while :; do
    alive=()
    for p in "$@"; do is_live "$p" && alive+=("$p"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    [ "$(now_s)" -ge "$deadline" ] && break
    sleep 0.1
  done
  log "$what still alive after SIGTERM + 10 s, sending SIGKILL: ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  deadline=$(( $(now_s) + 5 ))
  for p in "${alive[@]}"; do
    while is_live "$p"; do
      [ "$(now_s)" -ge "$deadline" ] && { log "warning: pid $p did not die"; break; }
      sleep 0.1
    done
  done
}

procs_in_netns() {  # pids of all processes in the network namespaces given as inode numbers
  local want=" $* " p ino skip
  skip=" $(ancestors | tr '\n' ' ') "
  for p in /proc/[0-9]*; do
    ino=$(readlink "$p/ns/net" 2>/dev/null) || continue
    ino=${ino#net:[}; ino=${ino%]}
    [[ $want == *" $ino "* ]] || continue
    p=${p#/proc/}
    [[ $skip == *" $p "* ]] && continue
    is_live "$p" && echo "$p"
  done
  return 0
}

procs_using_dir() {  # slurmd/slurmctld/munged/slurmstepd whose command line names our state dir
  local p cmd
  for p in $(pgrep -x 'slurmd|slurmctld|munged|slurmstepd' 2>/dev/null || true); do
    cmd=$(tr '\0' ' ' 2>/dev/null < /proc/"$p"/cmdline) || continue
    [[ $cmd == *"$DIR/"* ]] && echo "$p"
  done
  return 0
}

cmd_down() {
  local t0; t0=$(now)
  [ "$(id -u)" -eq 0 ] || die "needs root"
  if [ -e "$DIR" ] && [ ! -e "$MARK" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    die "$DIR exists but was not created by cluster.sh (no $MARK); not touching it"
  fi
  local p pids=() name

  # 1. cancel every job while the controller still runs, and give the steps a moment to end
  if ns_exists $CTL_NS && pid_of slurmctld >/dev/null && [ -s "$SLURM_CONF" ]; then
    local jobs
    jobs=$(in_ctl timeout 5 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      in_ctl timeout 5 scancel $jobs 2>/dev/null || true
      local deadline=$(( $(now_s) + 8 ))
      while [ -n "$(in_ctl timeout 5 squeue -h -o %A 2>/dev/null || true)" ] && [ "$(now_s)" -lt "$deadline" ]; do
        sleep 0.2
      done
    fi
  fi

  # 2. slurmd, then slurmctld (by our pid files, plus any daemon whose command line names $DIR)
  for name in "$DIR"/pids/slurmd-n*.pid; do
    name=${name##*/}
    p=$(pid_of "${name%.pid}") && pids+=("$p")
  done
  stop_pids slurmd ${pids[@]+"${pids[@]}"}
  pids=()
  p=$(pid_of slurmctld) && pids+=("$p")
  stop_pids slurmctld ${pids[@]+"${pids[@]}"}

  # 3. whatever is left in our namespaces (slurmstepd, tasks, 'cluster.sh node' commands)
  local inos=() ns
  for ns in $(our_namespaces); do inos+=("$(stat -L -c %i /run/netns/"$ns")"); done
  if [ ${#inos[@]} -gt 0 ]; then
    mapfile -t pids < <(procs_in_netns "${inos[@]}")
    stop_pids "processes in $NS-* namespaces" ${pids[@]+"${pids[@]}"}
  fi
  mapfile -t pids < <(procs_using_dir | grep -vx "$(pid_of munged || echo none)" || true)
  stop_pids "leftover daemons" ${pids[@]+"${pids[@]}"}

  # 4. munged last (slurmd/slurmctld talk to it while shutting down)
  pids=()
  p=$(pid_of munged) && pids+=("$p")
  stop_pids munged ${pids[@]+"${pids[@]}"}
  mapfile -t pids < <(procs_using_dir)
  stop_pids "leftover daemons" ${pids[@]+"${pids[@]}"}

  # 5. namespaces (the veths and the bridge go with them)
  for ns in $(our_namespaces); do ip netns del "$ns" || log "warning: could not delete netns $ns"; done
  if [ -e "$DIR/created-run-netns" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    while mountpoint -q /run/netns; do umount /run/netns || break; done
    rmdir /run/netns 2>/dev/null || log "warning: could not remove /run/netns"
  fi

  # 6. state dir
  if [ -e "$DIR" ]; then rm -rf --one-file-system "$DIR"; fi

  # 7. the dead daemons were re-parented to PID 1 when 'up' exited; wait (bounded) until it has
  #    reaped them, so that no <defunct> slurmd/munged is left in the process table
  local deadline=$(( $(now_s) + 5 )) z
  while :; do
    z=()
    for p in ${KILLED[@]+"${KILLED[@]}"}; do [ -e /proc/"$p" ] && z+=("$p"); done
    [ ${#z[@]} -eq 0 ] && break
    if [ "$(now_s)" -ge "$deadline" ]; then
      log "note: PID 1 has not reaped these yet (zombies, already dead): ${z[*]}"; break
    fi
    sleep 0.1
  done

  local left
  left=$(our_namespaces; procs_using_dir)
  [ -z "$left" ] || die "left behind: ${left//$'\n'/ }"
  echo "cluster down in $(since "$t0") s"
}

# ---------------------------------------------------------------- other subcommands
need_up() {
  if ! ns_exists $CTL_NS || [ ! -s "$SLURM_CONF" ]; then die "cluster is not up (no $CTL_NS or $SLURM_CONF)"; fi
}

cmd_exec() {
  [ $# -gt 0 ] || die "usage: cluster.sh exec CMD..."
  need_up
  exec nsenter --net=/run/netns/$CTL_NS "$@"
}

cmd_node() {
  local k=${1:-}
  [[ $k =~ ^[0-9]+$ ]] || die "usage: cluster.sh node K [CMD...]"
  shift
  [ $# -gt 0 ] || set -- bash
  need_up
  local pid
  pid=$(pid_of "slurmd-n$k") || die "slurmd of node n$k is not running"
  # enter only if the pid really lives in node nK's network namespace, never in our own
  local theirs ours want
  theirs=$(readlink /proc/"$pid"/ns/net) || die "cannot read net namespace of pid $pid"
  ours=$(readlink /proc/self/ns/net)
  want="net:[$(stat -L -c %i "/run/netns/$NS-n$k")]"
  [ "$theirs" != "$ours" ] || die "pid $pid (slurmd n$k) is in our own network namespace; refusing"
  [ "$theirs" = "$want" ] || die "pid $pid is in $theirs, not in $NS-n$k ($want); refusing"
  exec nsenter --target "$pid" --net --uts --mount -- "$@"
}

cmd_addr() {
  case ${1:-} in
    ctl) echo "$SUBNET.1" ;;
    [0-9]*) echo "$SUBNET.$((10 + $1))" ;;
    *) die "usage: cluster.sh addr K|ctl" ;;
  esac
}

cmd_env() {
  cat <<EOF
export DRAGON_CLUSTER_DIR='$DIR'
export SLURM_CONF='$SLURM_CONF'
export DRAGON_CLUSTER_NODES=$(node_count)
# the controller is only reachable from namespace $CTL_NS: run clients with
#   '$SELF' exec CMD...   or   nsenter --net=/run/netns/$CTL_NS CMD...
EOF
}

case ${1:-} in
  up)      shift; cmd_up "$@" ;;
  down)    cmd_down ;;
  exec)    shift; cmd_exec "$@" ;;
  node)    shift; cmd_node "$@" ;;
  addr)    shift; cmd_addr "$@" ;;
  env)     cmd_env ;;
  status)  need_up; in_ctl timeout 5 sinfo -N ;;
  check)   check ;;
  _launch) shift; _launch "$@" ;;
  _init)   shift; _init "$@" ;;
  *)       sed -n '2,27p' "$SELF" >&2; exit 2 ;;
esac
