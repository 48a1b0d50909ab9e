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
# file. What every local node shares is in scripts/lib/rabbitmq-node.sh.
set -euo pipefail

SCRIPT=rabbitmq-fault.sh
STATE_DIR="${ASYNCWORKER_RABBITMQ_FAULT_DIR:-/tmp/asyncworker-rabbitmq-faults}"
# A first boot creates the node's database: measured 68 s on a loaded 2-core machine.
START_TIMEOUT="${ASYNCWORKER_RABBITMQ_START_TIMEOUT:-180}"
NODE=faults@localhost
AMQP_PORT=5682
DIST_PORT=25682
OWN_DATA=1
# shellcheck source=lib/rabbitmq-node.sh
. "$(dirname "$0")/lib/rabbitmq-node.sh"

write_config() {
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
# Written by asyncworker's scripts/rabbitmq-fault.sh: a loopback-only node for fault tests.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
EOF
    chmod 0644 "$RABBITMQ_CONFIG_FILE"
}

# A fault test that died half-way may have left the node alarmed or its app stopped.
repair() {
    ctl -q start_app >/dev/null 2>&1 || true
    ctl -q set_vm_memory_high_watermark 0.4 >/dev/null 2>&1 || true
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
    write_config
    own_data_dirs
    log "starting $NODE (amqp 127.0.0.1:$AMQP_PORT)"
    start_detached "$AMQP_PORT" "$DIST_PORT"
    wait_until_up
    log "$NODE is up"
}

stop() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    lock
    stop_node
    log "stopped"
}

status() { node_status; }

print_env() {
    print_node_env
    printf 'export ASYNCWORKER_TEST_FAULT_URL=%q\n' "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
    printf 'export ASYNCWORKER_TEST_FAULT_NODE=%q\n' "$NODE"
}

dispatch "$@"
