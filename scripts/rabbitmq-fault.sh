#!/usr/bin/env bash
# A second, independent RabbitMQ node for asyncworker's broker-fault tests
# (crates/amqp/tests/faults.rs), which stop and start it, raise its memory alarm and close its
# connections: things no test may do to the shared test broker of scripts/rabbitmq.sh.
#
# Usage: scripts/rabbitmq-fault.sh start|stop|status|env
#
#   start   start the node `faults@localhost` (AMQP on 127.0.0.1:5682, distribution port
#           25682). rabbitmq-server must be installed (scripts/rabbitmq.sh start installs it).
#           Idempotent: a node that answers is left alone, with its memory watermark restored
#           (a fault test killed mid-alarm may have left it at 0) and its app started (one
#           killed mid-restart may have left it stopped).
#   stop    stop the node. The epmd daemon is left alone: the main node registers there too.
#   status  exit 0 when the node answers, 1 otherwise.
#   env     print `export` lines for the node: the CLI environment, and
#           ASYNCWORKER_TEST_FAULT_URL / ASYNCWORKER_TEST_FAULT_NODE for the tests.
#
# It shares the `rabbitmq` user's Erlang cookie and the epmd daemon with the main node and
# nothing else. State lives in $ASYNCWORKER_RABBITMQ_FAULT_DIR (default
# /tmp/asyncworker-rabbitmq-faults): rabbitmq.conf, enabled_plugins, mnesia/, log/, the pid
# file; the data and log directories belong to the `rabbitmq` user (the Debian wrapper runs
# the node as that user, and a directory it cannot write makes `-detached` fail silently).
set -euo pipefail

STATE_DIR="${ASYNCWORKER_RABBITMQ_FAULT_DIR:-/tmp/asyncworker-rabbitmq-faults}"
# A first boot creates the node's database: measured 68 s on a loaded 2-core machine.
START_TIMEOUT="${ASYNCWORKER_RABBITMQ_START_TIMEOUT:-180}"
NODE=faults@localhost
AMQP_PORT=5682
DIST_PORT=25682
LOCK_FILE="$STATE_DIR/lock"

export RABBITMQ_NODENAME=$NODE
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$AMQP_PORT
export RABBITMQ_DIST_PORT=$DIST_PORT
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
export RABBITMQ_CONFIG_FILE="$STATE_DIR/rabbitmq.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE_DIR/enabled_plugins"
export RABBITMQ_MNESIA_BASE="$STATE_DIR/mnesia"
export RABBITMQ_LOG_BASE="$STATE_DIR/log"
export RABBITMQ_PID_FILE="$STATE_DIR/$NODE.pid"
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "rabbitmq-fault.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# No Erlang tool may inherit the lock's descriptor (9), or the lock would outlive this script.
ctl() { rabbitmqctl -n "$NODE" "$@" 9>&-; }
node_up() { ctl -q status >/dev/null 2>&1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

lock() {
    mkdir -p "$STATE_DIR"
    chmod 0755 "$STATE_DIR"
    exec 9>"$LOCK_FILE"
    flock -w 300 9 || die "timed out waiting for $LOCK_FILE"
}

prepare() {
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
# Written by asyncworker's scripts/rabbitmq-fault.sh: a loopback-only node for fault tests.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
EOF
    echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    chmod 0644 "$RABBITMQ_CONFIG_FILE" "$RABBITMQ_ENABLED_PLUGINS_FILE"
    mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    chown -R rabbitmq:rabbitmq "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    chown rabbitmq:rabbitmq "$STATE_DIR"
}

# A fault test that died half-way may have left the node alarmed or its app stopped.
repair() {
    ctl -q start_app >/dev/null 2>&1 || true
    ctl -q set_vm_memory_high_watermark 0.4 >/dev/null 2>&1 || true
}

wait_until_up() {
    local deadline=$((SECONDS + START_TIMEOUT))
    # await_startup exits 69 until the node has registered with epmd: retry with a deadline.
    until ctl -q await_startup --timeout 10 >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$NODE did not come up within ${START_TIMEOUT}s; end of its log:"
            tail -n 40 "$RABBITMQ_LOG_BASE/$NODE.log" >&2 2>/dev/null || true
            tail -n 20 "$STATE_DIR/server.out" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
}

start() {
    command -v rabbitmq-server >/dev/null 2>&1 ||
        die "rabbitmq-server is not installed: scripts/rabbitmq.sh start installs it"
    lock
    if node_up; then
        repair
        log "$NODE is already up (amqp 127.0.0.1:$AMQP_PORT)"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "$NODE is not running and starting it needs root"
    local port
    for port in $AMQP_PORT $DIST_PORT; do
        port_in_use "$port" && die "127.0.0.1:$port is taken by another process; stop it first"
    done
    prepare
    log "starting $NODE (amqp 127.0.0.1:$AMQP_PORT)"
    rabbitmq-server -detached >"$STATE_DIR/server.out" 2>&1 9>&- || {
        cat "$STATE_DIR/server.out" >&2
        die "rabbitmq-server -detached failed"
    }
    wait_until_up
    log "$NODE is up"
}

stop() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    lock
    if node_up; then
        log "stopping $NODE"
        ctl -q stop >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 60))
        while node_up; do
            [ "$SECONDS" -ge "$deadline" ] && die "$NODE did not stop within 60s"
            sleep 0.5
        done
    fi
    log "stopped"
}

status() {
    if command -v rabbitmqctl >/dev/null 2>&1 && node_up; then
        echo "$NODE is up"
        return 0
    fi
    echo "$NODE is not running"
    return 1
}

print_env() {
    local var
    for var in RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT \
        ERL_EPMD_ADDRESS RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS RABBITMQ_CONFIG_FILE \
        RABBITMQ_ENABLED_PLUGINS_FILE RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE RABBITMQ_PID_FILE; do
        printf 'export %s=%q\n' "$var" "${!var}"
    done
    printf 'export ASYNCWORKER_TEST_FAULT_URL=%q\n' "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
    printf 'export ASYNCWORKER_TEST_FAULT_NODE=%q\n' "$NODE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) print_env ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
