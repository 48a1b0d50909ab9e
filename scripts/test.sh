#!/usr/bin/env bash
# asyncworker's test command: make sure the local test broker is up (installing and starting
# it when needed, see scripts/rabbitmq.sh), and the fault node too (scripts/rabbitmq-fault.sh),
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
# Where the tests find the broker's TLS material (see scripts/rabbitmq.sh).
export ASYNCWORKER_TEST_TLS_DIR="${ASYNCWORKER_TEST_TLS_DIR:-${ASYNCWORKER_RABBITMQ_DIR:-/tmp/asyncworker-rabbitmq}/tls}"

if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
exec cargo test --all-features "$@"
