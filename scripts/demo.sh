#!/usr/bin/env bash
# asyncworker's demo: the Python original's first example, end to end, on a fresh machine.
#
#   scripts/demo.sh
#
# 1. Uses the broker at AMQP_URL when one answers; otherwise starts a local RabbitMQ (installing
#    it through apt when missing, see scripts/rabbitmq.sh) and stops it again at the end.
# 2. Creates the vhost `fluentd` (local broker only), builds the examples, and publishes
#    MESSAGES sample JSON messages (default 25, plus one that is not JSON) to the queues
#    `asgard/counts` and `asgard/counts/errors` (examples/amqp_publish.rs).
# 3. Runs the worker (examples/amqp_worker.rs) in batches of BULK_SIZE (default 10), shows
#    its log, waits until both queues are drained, then sends it SIGTERM: it flushes, settles
#    and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}"
export VHOST="${VHOST:-fluentd}"
export QUEUES="${QUEUES:-asgard/counts,asgard/counts/errors}"
export BULK_SIZE="${BULK_SIZE:-10}"
export MESSAGES="${MESSAGES:-25}"
export ASYNCWORKER_FLUSH_TIMEOUT="${ASYNCWORKER_FLUSH_TIMEOUT:-1}"
export ASYNCWORKER_LOGLEVEL="${ASYNCWORKER_LOGLEVEL:-info}"

# Bold step headers on a terminal only, and never with NO_COLOR set (as the worker's logs).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    say() { printf '\n==> %s\n' "$*"; }
fi

hostport=$(python3 - "$AMQP_URL" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(f"{u.hostname or '127.0.0.1'} {u.port or (5671 if u.scheme == 'amqps' else 5672)}")
PY
)
read -r host port <<<"$hostport"

started_broker=0
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    say "using the broker at $host:$port"
else
    say "no broker at $host:$port: starting a local RabbitMQ"
    scripts/rabbitmq.sh start
    started_broker=1
fi

ctl() { eval "$(scripts/rabbitmq.sh env)"; rabbitmqctl -q -n rabbit@localhost "$@"; }
if [ "$started_broker" = 1 ] || scripts/rabbitmq.sh status >/dev/null 2>&1; then
    ctl add_vhost "$VHOST" 2>/dev/null || true
    ctl set_permissions -p "$VHOST" guest '.*' '.*' '.*'
fi

worker_pid=""
cleanup() {
    if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        wait "$worker_pid" 2>/dev/null || true
    fi
    if [ "$started_broker" = 1 ] && [ -z "${KEEP_BROKER:-}" ]; then
        say "stopping the local RabbitMQ (KEEP_BROKER=1 keeps it)"
        scripts/rabbitmq.sh stop || true
    fi
}
trap cleanup EXIT

say "building the examples"
cargo build --quiet --features amqp --example amqp_worker --example amqp_publish
# Where cargo put them (CARGO_TARGET_DIR or a config may move the target directory).
examples="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples"

say "publishing $MESSAGES messages (and one that is not JSON) to $QUEUES on vhost $VHOST"
POISON=1 "$examples/amqp_publish"

say "running the worker (bulk size $BULK_SIZE); SIGTERM once the queues are drained"
"$examples/amqp_worker" &
worker_pid=$!

drained() {
    local out
    out=$(ctl list_queues -p "$VHOST" name messages_ready messages_unacknowledged 2>/dev/null) || return 1
    echo "$out" | awk -v qs="$QUEUES" '
        BEGIN { n = split(qs, want, ","); for (i = 1; i <= n; i++) need[want[i]] = 1 }
        ($1 in need) { seen++; if ($2 != 0 || $3 != 0) busy = 1 }
        END { exit !(seen == n && !busy) }'
}
local_broker=0
scripts/rabbitmq.sh status >/dev/null 2>&1 && local_broker=1
if [ "$local_broker" = 0 ]; then
    # A remote broker: no rabbitmqctl to ask, so give the worker a while.
    drained() { [ "$SECONDS" -ge "$((start + ${DEMO_SECONDS:-15}))" ]; }
fi
start=$SECONDS
deadline=$((SECONDS + 120))
sleep 2
until drained; do
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        echo "the worker exited early" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "the queues were not drained within 120 s" >&2
        exit 1
    fi
    sleep 1
done

say "queues drained: sending SIGTERM"
kill -TERM "$worker_pid"
status=0
wait "$worker_pid" || status=$?
worker_pid=""
if [ "$status" -ne 0 ]; then
    echo "the worker exited with status $status" >&2
    exit "$status"
fi
say "the worker stopped cleanly (exit 0)"
