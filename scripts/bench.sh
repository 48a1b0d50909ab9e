#!/usr/bin/env bash
# Every benchmark in one command, written up in BENCHMARKS.md and BENCHMARKS.json.
#
# Usage: scripts/bench.sh            full run (about 15 minutes on 2 cores), writes the two
#                                    files at the repository root
#        SMOKE=1 scripts/bench.sh    seconds-sized run (CI), writes them under target/bench/
#
# What it runs, each benchmark printing machine-readable output this script collects (no
# scraping of prose):
#   - crates/amqp/benches/e2e.rs: AMQP consume (raw lapin, asyncworker, the Python original)
#     and publish with confirms, plus the scaling arms; ROUNDS interleaved rounds, its last
#     line `BENCH_JSON {...}`;
#   - crates/core/benches/stack.rs (in memory), crates/sse/benches/throughput.rs and parse.rs
#     (criterion): ROUNDS rounds, each into its own CRITERION_HOME, whose estimates.json files
#     are read;
# then benches/python/report.py writes the report: medians, per-round ratios, the machine
# (cores, memory, load average before/after), the date, the broker's version, rustc, the
# commit.
#
# The broker: AMQP_URL (default the local rabbit@localhost). When it is the default and no
# node answers, scripts/rabbitmq.sh starts one, and stops it at the end.
#
# The Python original (async-worker==0.20.2, benches/python/requirements.txt) goes into a
# private virtualenv, $CARGO_TARGET_DIR/bench-venv (default target/bench-venv), never the
# system; python3-venv is installed through apt when missing and this runs as root.
#
# | variable | full | SMOKE=1 | |
# |---|---|---|---|
# | `ROUNDS` | 3 | 1 | rounds of e2e and of each criterion bench |
# | `MESSAGES` | 50000 | 2560 | messages per e2e main arm and publish arm |
# | `SCALE_MESSAGES` | 25600 | 2560 | messages per e2e scaling arm |
# | `BENCH_PYTHON` | 1 | 1 | 0: leave the Python original out (no virtualenv) |
# | `BENCH_OUT` | repo root | target/bench | where BENCHMARKS.md / .json go |
# | `BENCH_NOTE` | see below | | what the report says about the machine |
# | `CRITERION_ARGS` | short times | see below | arguments to every criterion bench |
#
# SMOKE=1 builds the dev profile and, unless CRITERION_ARGS says otherwise, measures only the
# in-memory stack bench (briefly); the SSE ones run in criterion's `--test` mode (each
# function once, no figures), as their reference parser takes seconds per iteration there.
#
# Every cargo call is `--workspace --all-features`, the feature set of the test suite, so a
# CI run after the tests compiles only the bench targets themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n==> bench.sh: %s\n' "$*" >&2; }
die() {
    echo "bench.sh: error: $*" >&2
    exit 1
}

smoke="${SMOKE:-0}"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ "$smoke" = 1 ]; then
    export ROUNDS="${ROUNDS:-1}" MESSAGES="${MESSAGES:-2560}" SCALE_MESSAGES="${SCALE_MESSAGES:-2560}"
    profile=(--profile dev --workspace --all-features)
    out="${BENCH_OUT:-$target/bench}"
    criterion_args="${CRITERION_ARGS:-}"
    smoke_measured="--warm-up-time 0.1 --measurement-time 0.3 --sample-size 10 --noplot"
else
    export ROUNDS="${ROUNDS:-3}" MESSAGES="${MESSAGES:-50000}" SCALE_MESSAGES="${SCALE_MESSAGES:-25600}"
    profile=(--workspace --all-features)
    out="${BENCH_OUT:-$root}"
    criterion_args="${CRITERION_ARGS:---warm-up-time 1 --measurement-time 3 --noplot}"
fi
note="${BENCH_NOTE:-other jobs (builds, test suites, other benchmarks) ran on it during this run, so absolute figures are noisy; the ratios, taken pair by pair within each round, are the figures to compare.}"
work="$target/bench/run"
rm -rf "$work"
mkdir -p "$work" "$out"

command -v python3 >/dev/null 2>&1 || {
    [ "$(id -u)" -eq 0 ] || die "python3 is missing (it writes the report)"
    log "installing python3 through apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
}

# --- the broker --------------------------------------------------------------------------
stop_broker=0
if [ -z "${AMQP_URL:-}" ]; then
    if ! scripts/rabbitmq.sh status >/dev/null 2>&1; then
        log "no broker answers: starting one (scripts/rabbitmq.sh start)"
        scripts/rabbitmq.sh start
        stop_broker=1
    fi
    broker=$(eval "$(scripts/rabbitmq.sh env)" && rabbitmqctl -q -n "$RABBITMQ_NODENAME" version 2>/dev/null || true)
    broker="RabbitMQ ${broker:-?} (rabbit@localhost, local)"
else
    broker="AMQP_URL (remote; version not queried)"
fi
cleanup() { [ "$stop_broker" = 0 ] || scripts/rabbitmq.sh stop || true; }
trap cleanup EXIT

# --- the Python original -----------------------------------------------------------------
python_desc="not run (BENCH_PYTHON=0)"
unset PYTHON
if [ "${BENCH_PYTHON:-1}" != 0 ]; then
    venv="$target/bench-venv"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        [ "$(id -u)" -eq 0 ] || die "python3 -m venv needs python3-venv (apt), and this is not root; or BENCH_PYTHON=0"
        log "installing python3-venv through apt"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    want=$(grep -v '^#' benches/python/requirements.txt | grep -m1 .)
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('async-worker') != '${want#*==}')" 2>/dev/null; then
        log "installing $want into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r benches/python/requirements.txt
    fi
    export PYTHON="$venv/bin/python"
    python_desc="$("$PYTHON" -V 2>&1), $want (virtualenv $venv)"
fi

# --- the machine -------------------------------------------------------------------------
load() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(load)
date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- the benchmarks ----------------------------------------------------------------------
log "e2e (ROUNDS=$ROUNDS MESSAGES=$MESSAGES SCALE_MESSAGES=$SCALE_MESSAGES${PYTHON:+, with the Python original})"
cargo bench "${profile[@]}" --bench e2e | tee "$work/e2e.out"
grep '^BENCH_JSON ' "$work/e2e.out" | tail -n1 | sed 's/^BENCH_JSON //' >"$work/e2e.json"
[ -s "$work/e2e.json" ] || die "the e2e bench printed no BENCH_JSON line"

criterion=(stack throughput parse)
log "building the criterion benches"
cargo bench "${profile[@]}" --bench stack --bench throughput --bench parse --no-run
# The arguments of one criterion bench.
args_for() {
    if [ "$smoke" = 1 ] && [ -z "$criterion_args" ]; then
        if [ "$1" = stack ]; then echo "$smoke_measured"; else echo "--test"; fi
    else
        echo "$criterion_args"
    fi
}
for ((round = 0; round < ROUNDS; round++)); do
    # The same rotation as the e2e arms: no bench always first.
    for ((i = 0; i < ${#criterion[@]}; i++)); do
        bench=${criterion[$(((i + round) % ${#criterion[@]}))]}
        log "criterion round $((round + 1))/$ROUNDS: --bench $bench -- $(args_for "$bench")"
        # shellcheck disable=SC2046 # the arguments are a list of words
        CRITERION_HOME="$work/criterion/round$round" \
            cargo bench "${profile[@]}" --bench "$bench" -- $(args_for "$bench")
    done
done
load_after=$(load)

# --- the report --------------------------------------------------------------------------
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock benches 2>/dev/null || commit="$commit (with uncommitted changes)"
cmd="scripts/bench.sh"
[ "$smoke" = 1 ] && cmd="SMOKE=1 scripts/bench.sh"
export B_CMD="$cmd" B_DATE="$date_utc" B_NOTE="$note" B_SMOKE="$smoke" \
    B_CORES="$(nproc)" B_MEM="$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
    B_LOAD_BEFORE="$load_before" B_LOAD_AFTER="$load_after" B_KERNEL="$(uname -sr)" \
    B_RUSTC="$(rustc -V)" B_BROKER="$broker" B_PYTHON="$python_desc" B_COMMIT="$commit" \
    B_SETTINGS="ROUNDS=$ROUNDS MESSAGES=$MESSAGES SCALE_MESSAGES=$SCALE_MESSAGES cargo: ${profile[*]} criterion: ${criterion_args:-smoke defaults}"
python3 - "$work/meta.json" <<'PY'
import json, os, sys
e = os.environ
meta = {k: e["B_" + v] for k, v in {
    "command": "CMD", "date": "DATE", "note": "NOTE", "cores": "CORES", "memory": "MEM",
    "load_before": "LOAD_BEFORE", "load_after": "LOAD_AFTER", "kernel": "KERNEL",
    "rustc": "RUSTC", "broker": "BROKER", "python": "PYTHON", "commit": "COMMIT",
    "settings": "SETTINGS"}.items()}
meta["smoke"] = e["B_SMOKE"] == "1"
json.dump(meta, open(sys.argv[1], "w"), indent=1, ensure_ascii=False)
PY
python3 benches/python/report.py "$work" "$out/BENCHMARKS.md" "$out/BENCHMARKS.json"
log "wrote $out/BENCHMARKS.md and $out/BENCHMARKS.json"
