#!/usr/bin/env bash
# netns_agent.sh - Open MPI's remote shell for the nodes of tests/netns_cluster.sh, in place of
# ssh (OMPI_MCA_plm_rsh_agent=tests/netns_agent.sh, with NETNS_CLUSTER_DIR naming the cluster's
# directory). Open MPI calls it as ssh: "AGENT [options] HOST COMMAND WORDS...", the words
# joined into one shell command on the far side. HOST is a node's namespace (the hostfile's
# name); the command runs in that node (netns_cluster.sh spawn: its network, its hostname, its
# disk). The daemon is detached (its own session) and the agent returns at once: like ssh to a
# node that dies, whose session never reports, the agent is no lifeline, and mpirun learns of a
# dead node from its connection to the node's daemon only (otherwise a killed node would read
# "unable to start a daemon"). The daemon keeps the agent's stderr, so its messages still reach
# mpirun's. A host that is not a node of that cluster is refused.
set -u
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done # ssh-style options: none apply
[ $# -ge 2 ] || { echo "netns_agent: usage: $0 HOST COMMAND..." >&2; exit 255; }
[ -n "${NETNS_CLUSTER_DIR:-}" ] || { echo "netns_agent: set NETNS_CLUSTER_DIR" >&2; exit 255; }
host=$1
shift
exec "$(dirname "$0")/netns_cluster.sh" spawn "$NETNS_CLUSTER_DIR" "$host" "$*" || exit 255
