"""Write BENCHMARKS.md and BENCHMARKS.json from one scripts/bench.sh run.

Usage: report.py <workdir> <out.md> <out.json>

<workdir> holds what scripts/bench.sh collected:
  meta.json              the machine, versions, load averages, date, commit, settings
  e2e.json               the BENCH_JSON line of crates/amqp/benches/e2e.rs (all its rounds)
  criterion/<round>/     CRITERION_HOME of each criterion round (benchmark.json, estimates.json)

Only the standard library: this runs on the system Python, not in the benchmark virtualenv.
"""

import json
import os
import statistics
import sys


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load_criterion(root):
    """{round: {full_id: {"ns": median ns/iter, "per_iter": n, "unit": "elements"|"bytes"}}}"""
    rounds = {}
    if not os.path.isdir(root):
        return rounds
    for rnd in sorted(os.listdir(root)):
        found = {}
        for dirpath, _dirs, files in os.walk(os.path.join(root, rnd)):
            if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
                continue
            with open(os.path.join(dirpath, "benchmark.json")) as f:
                bench = json.load(f)
            with open(os.path.join(dirpath, "estimates.json")) as f:
                est = json.load(f)
            tp = bench.get("throughput") or {}
            unit, per_iter = next(iter(tp.items()), (None, None))
            found[bench["full_id"]] = {
                "ns": est["median"]["point_estimate"],
                "per_iter": per_iter,
                "unit": (unit or "").lower() or None,
            }
        rounds[rnd] = found
    return rounds


# Criterion pairs: (id, reference id, what the ratio means).
CRITERION_PAIRS = [
    ("stack/layers/bulk_1", "stack/baseline/bulk_1", "layers ÷ direct call, time per message"),
    ("stack/layers/bulk_256", "stack/baseline/bulk_256", "layers ÷ direct call, time per message"),
    ("sse_events/backend_bulk_1", "sse_events/raw_reqwest_eventsource_stream", "backend ÷ raw loop, events/s"),
    ("sse_events/backend_bulk_256", "sse_events/raw_reqwest_eventsource_stream", "backend ÷ raw loop, events/s"),
    ("sse_events/source_only", "sse_events/raw_reqwest_eventsource_stream", "source ÷ raw loop, events/s"),
    ("parse_1mib_event/64_byte_chunks", "parse_1mib_event/one_chunk", "64-byte chunks ÷ one chunk, time"),
    ("parse_64kib_event_in_64_byte_chunks/eventsource_stream", "parse_64kib_event_in_64_byte_chunks/ours", "eventsource-stream ÷ ours, time"),
]


def criterion_summary(rounds):
    ids = sorted({i for r in rounds.values() for i in r})
    benches = []
    for i in ids:
        runs = [r[i] for r in rounds.values() if i in r]
        ns = median([x["ns"] for x in runs])
        first = runs[0]
        rate = None
        if first["per_iter"]:
            rate = median([x["per_iter"] / (x["ns"] * 1e-9) for x in runs])
        benches.append({
            "id": i,
            "rounds": len(runs),
            "median_ns_per_iter": ns,
            "unit": first["unit"],
            "per_iter": first["per_iter"],
            "median_per_sec": rate,
            "per_round_ns": [x["ns"] for x in runs],
        })
    pairs = []
    for a, b, what in CRITERION_PAIRS:
        per_round = []
        for r in rounds.values():
            if a in r and b in r:
                if "events/s" in what:
                    per_round.append(r[b]["ns"] / r[a]["ns"])  # rate ratio
                else:
                    per_round.append(r[a]["ns"] / r[b]["ns"])  # time ratio
        if per_round:
            pairs.append({"id": a, "vs": b, "meaning": what, "ratio_median": median(per_round), "per_round": per_round})
    return benches, pairs


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def e2e_tables(e2e, out):
    arms = {a["name"]: a for a in e2e["arms"]}

    def row(a, bound=False):
        m, r = a["median"], a["ratio_median"]
        cells = [f"`{a['name']}`", fmt(m["msgs_per_sec"])]
        if bound:
            cells.append(fmt(a["expected_bound_per_sec"]))
        cells += [
            fmt(m["cpu_us_per_msg"], 1),
            fmt(m["peak_rss_mib"], 1),
            fmt(m["broker_cpu_us_per_msg"], 1),
            fmt(r["throughput"], 3),
            fmt(r["cpu_per_msg"], 3),
            fmt(r["peak_rss"], 3),
            a["verdict"] or "",
        ]
        return "| " + " | ".join(cells) + " |"

    def table(title, group, vs, bound=False, note=None):
        rows = [a for a in e2e["arms"] if a["group"] == group]
        if not rows:
            return
        out.append(f"\n### {title}\n")
        if note:
            out.append(note + "\n")
        head = ["arm", "msgs/s"] + (["bound/s"] if bound else []) + [
            "client CPU µs/msg", "peak RSS MiB", "broker CPU µs/msg",
            f"× thru ({vs})", "× CPU/msg", "× RSS", "verdict"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        out.extend(row(a, bound) for a in rows)

    table("AMQP consume: drain a filled queue", "drain", "vs raw-multiple",
          note="Raw lapin arms and asyncworker's full stack (`App` → Bulk → Ack → Timeit → Retry → "
               "no-op handler), each draining its own freshly filled queue in a child process.")
    table("The Python original, async-worker 0.20.2, in the same run", "python", "vs aw-bulkN",
          note="`benches/python/worker.py` in a private virtualenv: `@app.amqp.consume` with "
               "`AMQPRouteOptions(bulk_size=N)`, `AMQPConnection(prefetch=…)`, a no-op handler. "
               "The ratios are Python ÷ ours (`py-bulkN` ÷ `aw-bulkN`), pair by pair per round: "
               "below 1 for throughput means the original is slower.")
    scaling = [a for a in e2e["arms"] if a["group"] == "scaling"]
    if scaling:
        grid = {(a["prefetch"], a["bulk"]): a for a in scaling
                if a["queues"] == 1 and a["expected_bound_per_sec"] is None}
        prefetches = sorted({p for p, _ in grid})
        bulks = sorted({b for _, b in grid})
        if grid:
            out.append("\n### Scaling: msgs/s by prefetch × bulk size (full stack, no-op handler)\n")
            out.append("| prefetch \\ bulk | " + " | ".join(str(b) for b in bulks) + " |")
            out.append("|---|" + "---|" * len(bulks))
            for p in prefetches:
                out.append(f"| {p} | " + " | ".join(
                    fmt(grid[(p, b)]["median"]["msgs_per_sec"]) if (p, b) in grid else "–" for b in bulks) + " |")
        table("Scaling: every scaling arm, with the bound a 5 ms handler allows", "scaling", "vs raw-multiple", bound=True,
              note="`q2`: two queues on one route (the fill split between them). `sleep5`: the handler "
                   "sleeps 5 ms per batch. A batch holds size = min(bulk, prefetch) messages; at most "
                   "`prefetch` messages are unacknowledged, so at most min(c, ⌊prefetch / size⌋) batches "
                   "run at once (`c` = `max_concurrent_batches`, unlimited unless set), and the bound is "
                   "size × batches / 5 ms. Measured figures sit below it by the broker round trip "
                   "between batches, and below the no-op figure when the bound is higher than that.")
    table("AMQP publish with confirms", "publish", "vs pub-raw")
    del arms


def main():
    work, out_md, out_json = sys.argv[1:4]
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    e2e = None
    if os.path.exists(os.path.join(work, "e2e.json")):
        with open(os.path.join(work, "e2e.json")) as f:
            e2e = json.load(f)
    crit_rounds = load_criterion(os.path.join(work, "criterion"))
    benches, pairs = criterion_summary(crit_rounds)
    doc = {"meta": meta, "e2e": e2e, "criterion": {"rounds": len(crit_rounds), "benches": benches, "pairs": pairs}}
    with open(out_json, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")

    m = meta
    out = ["# Benchmarks", "",
           f"Generated by `{m['command']}` on {m['date']}. Do not edit: run it again.", ""]
    if m.get("smoke"):
        out += ["**Smoke run** (SMOKE=1): sizes too small for the figures to mean anything; it only "
                "checks that every benchmark still runs.", ""]
    out += [f"**The machine was shared**: {m['note']}", "",
            "## Machine and versions", "",
            "| | |", "|---|---|",
            f"| cores | {m['cores']} |",
            f"| memory | {m['memory']} |",
            f"| load average (1, 5, 15 min) before | {m['load_before']} |",
            f"| load average after | {m['load_after']} |",
            f"| kernel | {m['kernel']} |",
            f"| rustc | {m['rustc']} |",
            f"| broker | {m['broker']} |",
            f"| Python | {m['python']} |",
            f"| git commit | `{m['commit']}` |",
            f"| settings | {m['settings']} |", ""]
    out += ["## How to read this", "",
            "Every figure is a median over interleaved rounds. The e2e bench (crates/amqp/benches/e2e.rs) runs "
            "every arm once per round, each in a child process, in an order rotated by one each round. Its "
            "ratios are taken pair by pair inside each round (an arm ÷ its reference in the same round), and "
            "the median of those per-round ratios is what is shown, not a ratio of medians. Throughput runs "
            "from the first delivery to the last ack plus the close of the channel and connection (publish: "
            "first publish to last confirm). Client CPU (user + system) comes from the child's /proc/self/stat "
            "(Python: os.times) over the same span. Broker CPU is the RabbitMQ node's beam.smp, read around "
            "the whole child, so it includes the connection setup. Peak RSS is the child's VmHWM "
            "(Python: ru_maxrss). The criterion benches run once per round too, with short measurement "
            "times; within a bench criterion runs its functions in a fixed order.", ""]
    if e2e:
        out.append(f"## AMQP end to end ({e2e['rounds']} rounds, {e2e['messages']} persistent "
                   f"{e2e['body_bytes']}-byte messages per main arm, {e2e['scale_messages']} per scaling arm, "
                   f"prefetch {e2e['prefetch']}, publish window {e2e['publish_window']})")
        if not e2e.get("broker_cpu_measured"):
            out.append("\nThe broker's process was not found (a remote broker?): broker CPU is blank.")
        e2e_tables(e2e, out)
        out.append("")
    if benches:
        out += [f"## In memory and SSE (criterion, {len(crit_rounds)} round(s))", "",
                "| bench | median time/iter | per iter | median rate/s |", "|---|---|---|---|"]
        for b in benches:
            ns = b["median_ns_per_iter"]
            t = f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.2f} µs"
            per = f"{b['per_iter']} {b['unit']}" if b["per_iter"] else "–"
            rate = fmt(b["median_per_sec"]) + (" B/s" if b["unit"] == "bytes" else "") if b["median_per_sec"] else "–"
            out.append(f"| `{b['id']}` | {t} | {per} | {rate} |")
        if pairs:
            out += ["", "| pair | ratio (median of per-round ratios) | meaning |", "|---|---|---|"]
            for p in pairs:
                out.append(f"| `{p['id']}` ÷ `{p['vs']}` | {p['ratio_median']:.3f} | {p['meaning']} |")
        out.append("")
    out += ["## Reproduce", "", "```sh", "scripts/bench.sh            # everything, writes BENCHMARKS.md and BENCHMARKS.json",
            "SMOKE=1 scripts/bench.sh    # seconds-sized run, written under target/bench/", "```", ""]
    with open(out_md, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
