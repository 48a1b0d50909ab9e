# shellcheck shell=bash
# One local RabbitMQ node on loopback, for asyncworker's scripts: sourced by
# scripts/rabbitmq.sh (the shared test broker) and scripts/rabbitmq-fault.sh (the fault node),
# which differ only in what they set before sourcing it and in what they do around it.
#
# Set before sourcing:
#   SCRIPT       name for log lines (e.g. rabbitmq-fault.sh)
#   NODE         the node name (e.g. faults@localhost)
#   AMQP_PORT    its plain AMQP listener on 127.0.0.1
#   STATE_DIR    the directory for the lock file, server.out and the config file
#   START_TIMEOUT  seconds `wait_until_up` waits
# Optional:
#   DIST_PORT    the Erlang distribution port (default: RabbitMQ's, AMQP port + 20000)
#   OWN_DATA=1   data, logs, plugins file and pid file of its own under STATE_DIR (owned by the
#                `rabbitmq` user), instead of the package's /var/lib and /var/log ones
#
# Every node shares the `rabbitmq` user's Erlang cookie and the epmd daemon.

export RABBITMQ_NODENAME=$NODE
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$AMQP_PORT
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
export RABBITMQ_CONFIG_FILE="$STATE_DIR/rabbitmq.conf"
export PATH="$PATH:/usr/sbin:/sbin"
NODE_ENV_VARS=(RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS RABBITMQ_NODE_PORT ERL_EPMD_ADDRESS
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS RABBITMQ_CONFIG_FILE)
if [ -n "${DIST_PORT:-}" ]; then
    export RABBITMQ_DIST_PORT=$DIST_PORT
    NODE_ENV_VARS+=(RABBITMQ_DIST_PORT)
fi
if [ "${OWN_DATA:-0}" = 1 ]; then
    export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE_DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$STATE_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$STATE_DIR/log"
    export RABBITMQ_PID_FILE="$STATE_DIR/$NODE.pid"
    NODE_ENV_VARS+=(RABBITMQ_ENABLED_PLUGINS_FILE RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE
        RABBITMQ_PID_FILE)
    NODE_LOG="$RABBITMQ_LOG_BASE/$NODE.log"
else
    NODE_LOG="/var/log/rabbitmq/$NODE.log"
fi

log() { echo "$SCRIPT: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Every Erlang tool may spawn epmd, and rabbitmq-server spawns the node: none of them may
# inherit the lock's descriptor (9), or the lock would outlive the script.
ctl() { rabbitmqctl -n "$NODE" "$@" 9>&-; }
diag() { rabbitmq-diagnostics -n "$NODE" "$@" 9>&-; }
node_up() { ctl -q status >/dev/null 2>&1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Serialize the scripts acting on this node (descriptor 9).
lock() {
    mkdir -p "$STATE_DIR"
    chmod 0755 "$STATE_DIR"
    exec 9>"$STATE_DIR/lock"
    flock -w 300 9 || die "timed out waiting for $STATE_DIR/lock"
}

# The data and log directories of an OWN_DATA node belong to the `rabbitmq` user: the Debian
# wrapper runs the node as that user, and a directory it cannot write makes `-detached` fail
# silently.
own_data_dirs() {
    echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    chmod 0644 "$RABBITMQ_ENABLED_PLUGINS_FILE"
    mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    chown -R rabbitmq:rabbitmq "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    chown rabbitmq:rabbitmq "$STATE_DIR"
}

# Start the node detached, after checking that its ports are free ($@: the ports).
start_detached() {
    [ "$(id -u)" -eq 0 ] || die "$NODE is not running and starting it needs root"
    local port
    for port in "$@"; do
        port_in_use "$port" &&
            die "127.0.0.1:$port is taken by another process (another RabbitMQ node?); stop it first"
    done
    rabbitmq-server -detached >"$STATE_DIR/server.out" 2>&1 9>&- || {
        cat "$STATE_DIR/server.out" >&2
        die "rabbitmq-server -detached failed"
    }
}

wait_until_up() {
    local deadline=$((SECONDS + START_TIMEOUT))
    # await_startup exits 69 until the node has registered with epmd: retry with a deadline.
    until ctl -q await_startup --timeout 10 >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$NODE did not come up within ${START_TIMEOUT}s; end of its log:"
            tail -n 40 "$NODE_LOG" >&2 2>/dev/null || true
            tail -n 20 "$STATE_DIR/server.out" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
}

stop_node() {
    if node_up; then
        log "stopping $NODE"
        ctl -q stop >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 60))
        while node_up; do
            [ "$SECONDS" -ge "$deadline" ] && die "$NODE did not stop within 60s"
            sleep 0.5
        done
    fi
}

# `status`: exit 0 when the node answers ($@: a command printing more about it).
node_status() {
    if command -v rabbitmqctl >/dev/null 2>&1 && node_up; then
        echo "$NODE is up"
        [ "$#" -eq 0 ] || "$@"
        return 0
    fi
    echo "$NODE is not running"
    return 1
}

# `env`: the node's environment as `export` lines.
print_node_env() {
    local var
    for var in "${NODE_ENV_VARS[@]}"; do
        printf 'export %s=%q\n' "$var" "${!var}"
    done
}

# The script's commands: `start`, `stop`, `status`, `env` call the functions of those names
# the script defines.
dispatch() {
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
}
