#!/usr/bin/env bash
# asyncworker's test command: make sure the local test broker is up (installing and starting
# it when needed, see scripts/rabbitmq.sh), then run every test of the workspace with every
# feature, doctests included. Extra arguments go to `cargo test`, e.g.
# `scripts/test.sh -p asyncworker-amqp --test publish` runs one crate's one test target.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/rabbitmq.sh start
# Where the tests find the broker's TLS material (see scripts/rabbitmq.sh).
export ASYNCWORKER_TEST_TLS_DIR="${ASYNCWORKER_TEST_TLS_DIR:-${ASYNCWORKER_RABBITMQ_DIR:-/tmp/asyncworker-rabbitmq}/tls}"

if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
exec cargo test --all-features "$@"
