#!/usr/bin/env bash
# A local three-node RabbitMQ cluster for asyncworker's cluster tests and demos (quorum queues,
# node crashes, leader moves): nodes aw-c1@localhost, aw-c2@localhost, aw-c3@localhost on this
# machine, independent of the shared test broker (rabbit@localhost, scripts/rabbitmq.sh) and
# of the fault node (faults@localhost, scripts/rabbitmq-fault.sh), which it never touches.
#
# Usage: scripts/rabbitmq-cluster.sh start|stop|status|env|kill N|stop-node N|start-node N
#
#   start        start the three nodes (in parallel) and cluster them: nodes 2 and 3 join
#                node 1. rabbitmq-server must be installed (scripts/rabbitmq.sh start
#                installs it). Idempotent: a formed, running cluster is left alone; a node
#                that is down is started and rejoins; one whose app is stopped is started.
#                Returns when every node reports all three running.
#   stop         stop the three nodes (gracefully, in parallel). epmd is left alone: the
#                other local nodes register there too.
#   status       a line per node; exit 0 when all three run and every one sees all three.
#   env          `export` lines: ASYNCWORKER_TEST_CLUSTER_URLS (comma-separated AMQP URLs),
#                ASYNCWORKER_TEST_CLUSTER_NODES (comma-separated node names),
#                ASYNCWORKER_RABBITMQ_CLUSTER_DIR and ERL_EPMD_ADDRESS, which is all
#                `rabbitmqctl -n aw-c1@localhost ...` (or rabbitmq-queues) needs.
#   kill N       `kill -9` node N's Erlang VM (a crash, no clean shutdown); returns when it
#                is gone. N is 1, 2, 3 or the node's full name.
#   stop-node N  stop node N gracefully (`rabbitmqctl stop`).
#   start-node N start node N again and wait until it is back in the cluster (it keeps its
#                data directory, so it rejoins by itself).
#
#   node  aw-cN@localhost   AMQP 127.0.0.1:570N   distribution port 2570N
#
# State: ${ASYNCWORKER_RABBITMQ_CLUSTER_DIR:-/tmp/asyncworker-rabbitmq-cluster}/<node>/ holds
# each node's rabbitmq.conf, enabled_plugins, mnesia/, log/, pid file, lock and server.out.
# No plugin is enabled (no management listener); the VM flags are RabbitMQ's own (`+S 1:1` saved ~14 MB a node and slowed boots). Every node shares the
# `rabbitmq` user's Erlang cookie and the epmd daemon (scripts/lib/rabbitmq-node.sh). Wipe the
# three data dirs together or not at all: a node with a fresh dir next to two with the old
# cluster's cannot rejoin them.
#
# Measured on the shared 2-core dev machine (RabbitMQ 3.10.8, Erlang/OTP 25), one run each,
# wall clock of the command, load average 3-7 from other work:
#   start, fresh data dirs (3 boots in parallel + 2 joins)   63 s  (48 s at load ~1, +S 1:1)
#   stop (graceful, parallel)                                  7 s
#   start after stop (warm: the nodes wait for each other)    28 s
#   start on a formed, running cluster (one CLI call)          1.2 s
#   kill N (kill -9, until gone)                               3.6 s
#   start-node N after a kill (until all three see it)        12 s
#   stop-node N / start-node N                              4 s / 14 s
#   RSS of each node's beam.smp (ps -o rss), idle       123-139 MB
set -euo pipefail

SCRIPT=rabbitmq-cluster.sh
LIB="$(dirname "$0")/lib/rabbitmq-node.sh"
BASE_DIR="${ASYNCWORKER_RABBITMQ_CLUSTER_DIR:-/tmp/asyncworker-rabbitmq-cluster}"
START_TIMEOUT="${ASYNCWORKER_RABBITMQ_START_TIMEOUT:-240}"
CLUSTER_TIMEOUT="${ASYNCWORKER_RABBITMQ_CLUSTER_TIMEOUT:-120}"
INDEXES=(1 2 3)
export PATH="$PATH:/usr/sbin:/sbin"

clog() { echo "$SCRIPT: $*" >&2; }
cdie() {
    clog "error: $*"
    exit 1
}

node_name() { echo "aw-c$1@localhost"; }
all_nodes() {
    local i names=()
    for i in "${INDEXES[@]}"; do names+=("$(node_name "$i")"); done
    local IFS=,
    echo "${names[*]}"
}

# `1`, `2`, `3` or a full node name -> the index.
parse_index() {
    case "${1:-}" in
    1 | 2 | 3) echo "$1" ;;
    aw-c1@localhost | aw-c2@localhost | aw-c3@localhost)
        local n=${1#aw-c}
        echo "${n%%@*}"
        ;;
    *) cdie "unknown node '${1:-}': expected 1, 2, 3 or aw-c1@localhost … aw-c3@localhost" ;;
    esac
}

# Sets the lib's variables for node $1 and sources it: call inside a subshell only (the lib
# exports the node's environment).
node_context() {
    local i=$1
    NODE="$(node_name "$i")"
    AMQP_PORT=$((5700 + i))
    DIST_PORT=$((25700 + i))
    STATE_DIR="$BASE_DIR/$NODE"
    OWN_DATA=1
    # shellcheck source=lib/rabbitmq-node.sh
    . "$LIB"
}

write_config() {
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
# Written by asyncworker's scripts/rabbitmq-cluster.sh: node $NODE of a loopback-only test cluster.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
EOF
    chmod 0644 "$RABBITMQ_CONFIG_FILE"
}

# The members node $NODE knows of (running or not) and the running ones, one per line each,
# from `cluster_status --formatter json`; empty when it does not answer.
members() { ctl -q cluster_status --formatter json 2>/dev/null | jq -r '.disk_nodes[]?, .ram_nodes[]?' 2>/dev/null || true; }
running() { ctl -q cluster_status --formatter json 2>/dev/null | jq -r '.running_nodes[]?' 2>/dev/null || true; }
# How many of the three node $NODE sees running; 0 while it reports a network partition.
running_count() {
    ctl -q cluster_status --formatter json 2>/dev/null |
        jq -r 'if (.partitions // {} | length) == 0 then .running_nodes[]? else empty end' 2>/dev/null |
        grep -c '^aw-c[123]@localhost$' || true
}

# Start node $NODE when it does not answer; start its app when it answers with the app
# stopped (a script killed between stop_app and start_app).
start_one() {
    lock
    if node_up; then
        ctl -q start_app >/dev/null 2>&1 || true
        return 0
    fi
    write_config
    own_data_dirs
    log "starting $NODE (amqp 127.0.0.1:$AMQP_PORT, distribution $DIST_PORT)"
    start_detached "$AMQP_PORT" "$DIST_PORT"
    wait_until_up
    log "$NODE is up"
}

# Join node $NODE to node 1 unless it already is a member of node 1's cluster. A node that is
# not is a standalone one (a fresh data directory): resetting it loses nothing.
join_one() {
    local first
    first="$(node_name 1)"
    members | grep -qx "$first" && return 0
    lock
    log "joining $NODE to $first"
    local step out
    for step in stop_app reset "join_cluster $first" start_app; do
        # shellcheck disable=SC2086 # the step is a command and its argument
        out="$(ctl -q $step 2>&1)" || die "rabbitmqctl $step failed: $out"
    done
}

# Wait until node $NODE runs and sees all three nodes running.
wait_clustered() {
    local deadline=$((SECONDS + CLUSTER_TIMEOUT))
    until [ "$(running_count)" = 3 ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$NODE does not see three running nodes within ${CLUSTER_TIMEOUT}s: $(running | tr '\n' ' ')"
            exit 1
        fi
        sleep 0.5
    done
}

stop_one() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    lock
    stop_node
}

# Whether process $1 is node $NODE's Erlang VM (the node name is in its environment, not in
# its command line).
is_node_vm() {
    [ -n "$1" ] && grep -qx "RABBITMQ_NODENAME=$NODE" <(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null) &&
        grep -q beam <"/proc/$1/comm" 2>/dev/null
}

# kill -9 of the node's VM: its pid from the pid file (or from the node itself), checked
# against the process (a stale pid file must not make us kill another process).
kill_one() {
    lock
    local pid=""
    [ -s "$RABBITMQ_PID_FILE" ] && pid="$(tr -dc 0-9 <"$RABBITMQ_PID_FILE")"
    if ! is_node_vm "$pid"; then
        pid="$(ctl -q eval 'os:getpid().' 2>/dev/null | tr -dc 0-9 || true)"
    fi
    if ! is_node_vm "$pid"; then
        node_up && die "$NODE answers but its VM's pid cannot be found"
        log "$NODE is not running"
        return 0
    fi
    log "kill -9 $pid ($NODE)"
    kill -9 "$pid"
    local deadline=$((SECONDS + 30))
    while [ -e "/proc/$pid" ] || node_up; do
        [ "$SECONDS" -ge "$deadline" ] && die "$NODE (pid $pid) still there 30s after kill -9"
        sleep 0.2
    done
    log "$NODE is gone"
}

status_one() {
    if command -v rabbitmqctl >/dev/null 2>&1 && node_up; then
        local seen
        seen="$(running)"
        echo "$NODE is up (amqp 127.0.0.1:$AMQP_PORT), running nodes it sees: ${seen//$'\n'/ }"
        [ "$(grep -c '^aw-c[123]@localhost$' <<<"$seen")" = 3 ]
    else
        echo "$NODE is not running"
        return 1
    fi
}

# Run `$2...` for every node index in parallel subshells; fail when any fails.
each_parallel() {
    local pids=() i status=0
    for i in "${INDEXES[@]}"; do
        (node_context "$i" && "$@") &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || status=1; done
    return "$status"
}

start() {
    command -v rabbitmq-server >/dev/null 2>&1 ||
        cdie "rabbitmq-server is not installed: scripts/rabbitmq.sh start installs it"
    command -v jq >/dev/null 2>&1 || cdie "jq is not installed: scripts/rabbitmq.sh start installs it"
    local t0=$SECONDS
    # Fast path (one CLI call): node 1 sees all three running, so each runs its app and is
    # clustered.
    if [ "$( (node_context 1 && running_count))" = 3 ]; then
        clog "cluster $(all_nodes) is already up"
        return 0
    fi
    # In parallel: a cluster whose nodes all stopped waits for its last-stopped member, so
    # the nodes must boot together; they also share the machine's cores better.
    each_parallel start_one || cdie "a node did not start"
    local i
    for i in 2 3; do
        (node_context "$i" && join_one) || cdie "$(node_name "$i") could not join $(node_name 1)"
    done
    each_parallel wait_clustered || cdie "the cluster did not form"
    clog "cluster $(all_nodes) is up ($((SECONDS - t0))s)"
}

stop() {
    each_parallel stop_one || cdie "a node did not stop"
    clog "stopped"
}

status() {
    local status=0 i
    for i in "${INDEXES[@]}"; do
        (node_context "$i" && status_one) || status=1
    done
    return "$status"
}

start_node() {
    local i t0=$SECONDS
    i="$(parse_index "${1:-}")"
    (node_context "$i" && start_one) || cdie "$(node_name "$i") did not start"
    each_parallel wait_clustered || cdie "$(node_name "$i") did not rejoin the cluster"
    clog "$(node_name "$i") is back in the cluster ($((SECONDS - t0))s)"
}

print_env() {
    local i urls=()
    for i in "${INDEXES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$((5700 + i))/%2f"); done
    local IFS=,
    # Single quotes: the URLs hold `%2f` and commas, nothing a shell would expand inside them.
    printf "export ASYNCWORKER_TEST_CLUSTER_URLS='%s'\n" "${urls[*]}"
    printf "export ASYNCWORKER_TEST_CLUSTER_NODES='%s'\n" "$(all_nodes)"
    printf 'export ASYNCWORKER_RABBITMQ_CLUSTER_DIR=%q\n' "$BASE_DIR"
    printf 'export ERL_EPMD_ADDRESS=127.0.0.1\n'
}

usage() {
    echo "usage: $0 start|stop|status|env|kill NODE|stop-node NODE|start-node NODE (NODE: 1, 2, 3 or aw-cN@localhost)" >&2
    exit 2
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) print_env ;;
kill)
    i="$(parse_index "${2:-}")"
    (node_context "$i" && kill_one)
    ;;
stop-node)
    i="$(parse_index "${2:-}")"
    (node_context "$i" && stop_one)
    ;;
start-node) start_node "${2:-}" ;;
*) usage ;;
esac
