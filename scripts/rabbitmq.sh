#!/usr/bin/env bash
# A local RabbitMQ for asyncworker's tests, examples and CI.
#
# Usage: scripts/rabbitmq.sh start|stop|status|env
#
#   start   install rabbitmq-server through apt when it is missing, generate the test TLS
#           material, and start a node `rabbit@localhost` bound to 127.0.0.1 with a plain
#           listener on 5672 and a TLS listener on 5671. Idempotent: a node that is already up
#           with the TLS listener is left alone; one that is up without it (started by hand)
#           is restarted with this script's configuration.
#   stop    stop the node (and the epmd daemon).
#   status  exit 0 when the node answers, 1 otherwise; prints its listeners.
#   env     print `export` lines for the node's environment, e.g.
#           `eval "$(scripts/rabbitmq.sh env)"; rabbitmqctl list_queues`.
#
# Runs as root (the Debian wrapper switches to the `rabbitmq` user) on Debian without systemd.
#
# State lives in one machine-wide directory, because the broker is machine-wide too (one node
# per machine, whichever checkout started it):
#
#   $ASYNCWORKER_RABBITMQ_DIR (default /tmp/asyncworker-rabbitmq)
#     rabbitmq.conf           the node's configuration (RABBITMQ_CONFIG_FILE)
#     tls/ca.pem              test CA certificate (CN asyncworker-test-ca)
#     tls/server.pem, server.key    server certificate, SAN DNS:localhost, IP:127.0.0.1
#     tls/client.pem, client.key    client certificate signed by the same CA
#
# The tests find the TLS files through ASYNCWORKER_TEST_TLS_DIR, whose default is the tls/
# directory above. These certificates are throwaway test material and nothing else.
set -euo pipefail

SCRIPT=rabbitmq.sh
STATE_DIR="${ASYNCWORKER_RABBITMQ_DIR:-/tmp/asyncworker-rabbitmq}"
TLS_DIR="$STATE_DIR/tls"
CONF_FILE="$STATE_DIR/rabbitmq.conf"
START_TIMEOUT="${ASYNCWORKER_RABBITMQ_START_TIMEOUT:-90}"
AMQPS_PORT=5671
TLS_REGENERATED=0
# A pinned node name that does not depend on the hostname resolving, every listener on
# loopback only; data and logs where the Debian package keeps them.
NODE=rabbit@localhost
AMQP_PORT=5672
# shellcheck source=lib/rabbitmq-node.sh
. "$(dirname "$0")/lib/rabbitmq-node.sh"

tls_listener_up() {
    diag -q listeners 2>/dev/null |
        grep -q "port: $AMQPS_PORT,"
}

install_packages() {
    local missing=()
    command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v flock >/dev/null 2>&1 || missing+=(util-linux)
    # scripts/rabbitmq-cluster.sh reads `rabbitmqctl cluster_status --formatter json` with jq.
    command -v jq >/dev/null 2>&1 || missing+=(jq)
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "${missing[*]} missing and not root: cannot install"
    log "installing ${missing[*]} through apt"
    # The package must not start a broker of its own (node rabbit@<hostname>, all interfaces):
    # where no policy-rc.d forbids it already, forbid it for the install.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        own_policy=1
    fi
    local status=0
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null || status=$?
    [ "$own_policy" -eq 1 ] && rm -f "$policy"
    [ "$status" -eq 0 ] || die "apt-get could not install ${missing[*]}"
}

# Generate the CA, server and client certificates once; kept across runs so a running broker
# and the tests always agree on the CA.
generate_tls() {
    mkdir -p "$TLS_DIR"
    chmod 0755 "$STATE_DIR" "$TLS_DIR"
    if [ -s "$TLS_DIR/ca.pem" ] && [ -s "$TLS_DIR/server.pem" ] && [ -s "$TLS_DIR/client.pem" ] &&
        openssl x509 -checkend 86400 -noout -in "$TLS_DIR/server.pem" >/dev/null 2>&1; then
        return 0
    fi
    log "generating test TLS material in $TLS_DIR"
    TLS_REGENERATED=1
    local tmp
    tmp="$(mktemp -d "$STATE_DIR/tls.XXXXXX")"
    (
        cd "$tmp"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
            -subj "/CN=asyncworker-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.pem 2>/dev/null

        openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' \
            "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" \
            "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 3650 -sha256 -extfile server.ext -out server.pem 2>/dev/null

        openssl req -new -newkey rsa:2048 -nodes -subj "/CN=asyncworker-test-client" \
            -keyout client.key -out client.csr 2>/dev/null
        printf '%s\n' \
            "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=clientAuth" >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 3650 -sha256 -extfile client.ext -out client.pem 2>/dev/null
        # PKCS#8 keys: what rustls-pemfile and most clients expect.
        openssl pkcs8 -topk8 -nocrypt -in client.key -out client.pkcs8.key
        mv client.pkcs8.key client.key
        rm -f ./*.csr ./*.ext ./*.srl
    )
    # Readable by the broker (it runs as the `rabbitmq` user) and by the tests. The keys are
    # throwaway test material; the CA key is kept only by the owner.
    chmod 0644 "$tmp"/*.pem "$tmp/client.key"
    chmod 0600 "$tmp/ca.key"
    chmod 0640 "$tmp/server.key"
    if getent group rabbitmq >/dev/null 2>&1; then
        chgrp rabbitmq "$tmp/server.key"
    else
        chmod 0644 "$tmp/server.key"
    fi
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
    chmod 0755 "$TLS_DIR"
}

write_config() {
    local new
    new="$(
        cat <<EOF
# Written by asyncworker's scripts/rabbitmq.sh: a loopback-only test broker.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users.guest = true
EOF
    )"
    if [ ! -f "$CONF_FILE" ] || [ "$(cat "$CONF_FILE")" != "$new" ]; then
        printf '%s\n' "$new" >"$CONF_FILE"
    fi
    chmod 0644 "$CONF_FILE"
}

start() {
    install_packages
    lock

    generate_tls
    write_config

    if node_up; then
        if tls_listener_up && [ "$TLS_REGENERATED" -eq 0 ]; then
            # A test killed mid-run may have left the memory watermark at 0, which blocks
            # every publisher on the machine: undo that.
            if ! diag -q check_local_alarms >/dev/null 2>&1; then
                log "local alarm in effect: restoring the memory high watermark to 0.4"
                ctl -q set_vm_memory_high_watermark 0.4 >/dev/null
            fi
            log "$RABBITMQ_NODENAME is already up (amqp $AMQP_PORT, amqps $AMQPS_PORT)"
            return 0
        fi
        if [ "$TLS_REGENERATED" -eq 1 ]; then
            log "$RABBITMQ_NODENAME is up with other certificates: restarting it with $CONF_FILE"
        else
            log "$RABBITMQ_NODENAME is up without the TLS listener: restarting it with $CONF_FILE"
        fi
        stop_node
    fi

    log "starting $RABBITMQ_NODENAME (amqp 127.0.0.1:$AMQP_PORT, amqps 127.0.0.1:$AMQPS_PORT)"
    start_detached "$AMQP_PORT" "$AMQPS_PORT"
    wait_until_up
    tls_listener_up || die "the node started but has no TLS listener on $AMQPS_PORT (see /var/log/rabbitmq/)"
    log "$RABBITMQ_NODENAME is up"
}

stop() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    lock
    stop_node
    epmd -kill >/dev/null 2>&1 9>&- || true
    log "stopped"
}

status() { node_status diag -q listeners; }

print_env() {
    print_node_env
    printf 'export %s=%q\n' ASYNCWORKER_TEST_TLS_DIR "${ASYNCWORKER_TEST_TLS_DIR:-$TLS_DIR}"
}

dispatch "$@"
