#!/usr/bin/env bash
# netns_cluster.sh - several "nodes" on one machine for the multi-node tests: each node is a
# network namespace (its own address, its own TCP stack) joined to the others by a bridge, and
# every process started in it (`exec`, `spawn`: the rsh agent tests/netns_agent.sh) also gets a
# UTS namespace with the node's name as its hostname, so Open MPI sees N hosts, and a mount
# namespace where DIR/local is the node's own disk (DIR/disk/I bind-mounted; outside the nodes
# DIR/local is an empty directory). The rest of the file system is shared, as a cluster's
# network file system would be. mpirun runs outside, on the bridge, like a login node.
#
# Everything it makes is named from one prefix chosen at `up` ("vgn" and 4 hex digits, checked
# unused) and recorded, object by object as it is made, in DIR/created; `down` removes exactly
# those (a half-made cluster too), so it never touches an interface or namespace it did not make.
# The interface inside every node and the bridge outside share one name (the prefix), so one
# IFACE=prefix names the cluster's network for mpirun and for every rank, as "ib0" would on a
# cluster.
#
# usage: netns_cluster.sh up DIR N [SLOTS]  make N nodes (1..9); writes DIR/hostfile (SLOTS each, 2),
#                                         DIR/prefix, DIR/subnet, DIR/nodes, DIR/created
#        netns_cluster.sh down DIR        kill every process in the nodes, then remove namespaces,
#                                         veths and the bridge (safe to run twice, or after a
#                                         failed up)
#        netns_cluster.sh exec DIR NODE CMD...   run CMD in node NODE (1..N), hostname set
#        netns_cluster.sh spawn DIR NSNAME 'SHELL COMMAND'   detached, in the node whose namespace
#                                         is NSNAME (as the hostfile names it): the agent's way in
#        netns_cluster.sh kill DIR NODE [SIG]    signal (default KILL) every process in node NODE
#        netns_cluster.sh link DIR NODE up|down  the node's link (its host-side veth); up returns
#                                         once the node reaches the bridge again
#        netns_cluster.sh pids DIR NODE          the pids in node NODE, one a line
# `up` exits 77 with one line "skip: REASON" when it cannot work here: not root, no `ip` or
# `unshare`, or the kernel refuses a namespace, veth or bridge (a container without
# CAP_NET_ADMIN); it has then removed whatever it made.
set -u

die() { echo "netns_cluster: $*" >&2; exit 1; }
skip() { echo "skip: $*"; exit 77; }

# The namespace of node I of the cluster in DIR.
node_ns() { echo "$(cat "$1/prefix")n$2"; }

record() { echo "$1 $2" >> "$DIR/created"; } # record KIND NAME: made, so down removes it

pick_prefix() {
  local p i
  for i in 1 2 3 4 5 6 7 8; do
    p=vgn$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
    ip link show "$p" > /dev/null 2>&1 && continue
    ls /run/netns 2> /dev/null | grep -q "^$p" && continue
    echo "$p"
    return 0
  done
  return 1
}

pick_subnet() { # a 10.X.Y.0/24 that no address or route of this machine touches
  local a b i used
  used=$( (ip -4 addr show; ip -4 route show) 2> /dev/null)
  for i in $(seq 1 32); do
    a=$((100 + $(od -An -N1 -tu1 /dev/urandom) % 150))
    b=$(($(od -An -N1 -tu1 /dev/urandom) % 250 + 1))
    echo "$used" | grep -q "10\.$a\.$b\." && continue
    echo "$used" | grep -qE "10\.$a\.0\.0/16|10\.0\.0\.0/8" && continue
    echo "10.$a.$b"
    return 0
  done
  return 1
}

cmd_up() {
  local n=$2 slots=${3:-2} p net i ns
  [ "$(id -u)" -eq 0 ] || skip "not root (network namespaces need CAP_NET_ADMIN)"
  command -v ip > /dev/null || skip "no ip command (iproute2)"
  command -v unshare > /dev/null || skip "no unshare (util-linux)"
  case $n in [1-9]) ;; *) die "node count $n: 1 to 9" ;; esac
  [[ $slots =~ ^[1-9][0-9]?$ ]] || die "slots $slots: 1 to 99"
  mkdir -p "$DIR" || die "cannot make $DIR"
  [ -e "$DIR/created" ] && die "$DIR already holds a cluster (down it first)"
  p=$(pick_prefix) || die "no unused prefix found"
  net=$(pick_subnet) || die "no unused 10.x.y.0/24 found"
  echo "$p" > "$DIR/prefix"
  echo "$net.0/24" > "$DIR/subnet"
  : > "$DIR/created"
  : > "$DIR/hostfile"
  : > "$DIR/nodes"
  mkdir -p "$DIR/local" "$DIR/disk" || die "cannot make $DIR/local"
  # Any refusal from here on is the kernel's (or the container's): undo, then skip.
  fail() { cmd_down > /dev/null 2>&1; skip "$1"; }
  ip link add "$p" type bridge 2> "$DIR/err" || fail "cannot make a bridge: $(head -1 "$DIR/err")"
  record link "$p"
  ip addr add "$net.1/24" dev "$p" && ip link set "$p" up || fail "cannot configure bridge $p"
  for i in $(seq 1 "$n"); do
    ns=${p}n$i
    mkdir -p "$DIR/disk/$i" || fail "cannot make $DIR/disk/$i"
    ip netns add "$ns" 2> "$DIR/err" || fail "cannot make a network namespace: $(head -1 "$DIR/err")"
    record netns "$ns"
    ip link add "${p}h$i" type veth peer name "${p}c$i" 2> "$DIR/err" ||
      fail "cannot make a veth pair: $(head -1 "$DIR/err")"
    record link "${p}h$i"
    ip link set "${p}h$i" master "$p" && ip link set "${p}h$i" up &&
      ip link set "${p}c$i" netns "$ns" &&
      ip -n "$ns" link set "${p}c$i" name "$p" &&
      ip -n "$ns" addr add "$net.$((10 + i))/24" dev "$p" &&
      ip -n "$ns" link set "$p" up && ip -n "$ns" link set lo up ||
      fail "cannot configure node $i's link"
    # The UTS and mount namespaces of enter can be made too.
    enter "$i" true 2> "$DIR/err" || fail "cannot enter node $i: $(head -1 "$DIR/err")"
    echo "$ns slots=$slots" >> "$DIR/hostfile"
    echo "$ns $net.$((10 + i))" >> "$DIR/nodes"
  done
  rm -f "$DIR/err"
  # The bridge forwards once its ports are up; wait until node 1 reaches every node and the
  # bridge's address.
  local addr
  for addr in "$net.1" $(awk '{ print $2 }' "$DIR/nodes"); do
    reach 1 "$addr" || fail "node 1 cannot reach $addr over the bridge"
  done
}

# reach I ADDR: waits (5 s at most) until node I reaches ADDR: a TCP connection to its port 9 is
# refused (there is no ping here, and nothing listens there).
reach() {
  local t
  for t in $(seq 1 50); do
    ip netns exec "$(node_ns "$DIR" "$1")" timeout 1 bash -c "exec 3<> /dev/tcp/$2/9" 2>&1 |
      grep -q 'refused' && return 0
    sleep 0.1
  done
  return 1
}

# Kills what runs in the nodes first (a rank cut off by a partition keeps its namespace alive
# otherwise), then removes what `up` recorded, newest first.
cmd_down() {
  [ -f "$DIR/created" ] || return 0
  local kind name t left
  while read -r kind name; do
    [ "$kind" = netns ] || continue
    for t in $(seq 1 50); do
      left=$(ip netns pids "$name" 2> /dev/null)
      [ -z "$left" ] && break
      kill -KILL $left 2> /dev/null
      sleep 0.1
    done
    [ -z "$left" ] || echo "netns_cluster: processes $left in $name survive SIGKILL" >&2
  done < "$DIR/created"
  tac "$DIR/created" | while read -r kind name; do
    case $kind in
      netns) ip netns del "$name" 2> /dev/null ;;
      link) ip link del "$name" 2> /dev/null ;; # a veth whose peer went with its namespace: gone
    esac
  done
  rm -f "$DIR/created" "$DIR/hostfile" "$DIR/nodes" "$DIR/prefix" "$DIR/subnet"
}

# enter I CMD...: runs CMD in node I with its hostname and its disk at DIR/local.
enter() {
  local ns
  ns=$(node_ns "$DIR" "$1")
  shift
  ip netns exec "$ns" unshare --uts --mount --propagation private sh -c \
    'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"' \
    "$ns" "$DIR/disk/${ns##*n}" "$DIR/local" "$@"
}

node_arg() { # node_arg I: checks I names a node of the cluster
  [ -f "$DIR/prefix" ] || die "no cluster in $DIR"
  grep -q "^$(node_ns "$DIR" "$1") " "$DIR/nodes" 2> /dev/null || die "no node $1 in $DIR"
}

[ $# -ge 2 ] || die "usage: $0 up|down|exec|kill|link|pids DIR ..."
cmd=$1
DIR=$2
shift 2
case $cmd in
  up) [ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 up DIR N [SLOTS]"; cmd_up up "$@" ;;
  down) cmd_down ;;
  exec)
    node_arg "$1"
    enter "$@" ;;
  spawn)
    [ $# -eq 2 ] || die "usage: $0 spawn DIR NSNAME 'COMMAND'"
    i=${1##*n}
    [ "$(node_ns "$DIR" "$i" 2> /dev/null)" = "$1" ] || die "$1 is not a node of $DIR"
    node_arg "$i"
    enter "$i" setsid -f sh -c "$2" < /dev/null ;;
  kill)
    node_arg "$1"
    pids=$(ip netns pids "$(node_ns "$DIR" "$1")")
    [ -n "$pids" ] && kill -"${2:-KILL}" $pids ;;
  link) # up: returns once the node reaches the bridge's address again
    node_arg "$1"
    ip link set "$(cat "$DIR/prefix")h$1" "$2" || exit 1
    [ "$2" = up ] || exit 0
    reach "$1" "$(sed 's|0/24$|1|' "$DIR/subnet")" || die "node $1 cannot reach the bridge after link up" ;;
  pids)
    node_arg "$1"
    ip netns pids "$(node_ns "$DIR" "$1")" ;;
  *) die "unknown command $cmd" ;;
esac
