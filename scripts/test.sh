#!/usr/bin/env bash
# asyncworker's test command: make sure the local test broker is up (installing and starting
# it when needed, see scripts/rabbitmq.sh), the fault node (scripts/rabbitmq-fault.sh) and the
# three-node cluster (scripts/rabbitmq-cluster.sh) too,
# then run every test of the workspace with every
# feature, doctests included. Extra arguments go to `cargo test`, e.g.
# `scripts/test.sh -p asyncworker-amqp --test publish` runs one crate's one test target.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/rabbitmq.sh start
# The second node the broker-fault tests stop, alarm and disconnect (crates/amqp/tests/faults.rs):
# ASYNCWORKER_TEST_FAULT_URL and ASYNCWORKER_TEST_FAULT_NODE tell them where it is.
scripts/rabbitmq-fault.sh start
eval "$(scripts/rabbitmq-fault.sh env | grep ASYNCWORKER_TEST_FAULT_)"
# The three-node cluster the cluster tests crash and restart (crates/amqp/tests/cluster_selftest.rs):
# ASYNCWORKER_TEST_CLUSTER_URLS and ASYNCWORKER_TEST_CLUSTER_NODES tell them where it is.
scripts/rabbitmq-cluster.sh start
eval "$(scripts/rabbitmq-cluster.sh env | grep ASYNCWORKER_)"
# Where the tests find the broker's TLS material (see scripts/rabbitmq.sh).
export ASYNCWORKER_TEST_TLS_DIR="${ASYNCWORKER_TEST_TLS_DIR:-${ASYNCWORKER_RABBITMQ_DIR:-/tmp/asyncworker-rabbitmq}/tls}"

if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
exec cargo test --all-features "$@"
