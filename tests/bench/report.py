#!/usr/bin/env python3
"""Writes BENCHMARKS.md from one compare.sh run directory.

Usage: report.py RUN_DIR OUT.md

RUN_DIR holds results/<scenario>.<broker>.json (tern-bench --json), .rc, .load,
facts (key=value), commands.tsv, idle-rss.tsv and the broker configurations.
Only the standard library is used.
"""

import glob
import json
import os
import re
import sys

BROKERS = [("mosquitto", "Mosquitto"), ("nats", "NATS"), ("tern", "tern-edge")]
PEERS = ["mosquitto", "nats"]

THROUGHPUT = [
    ("fan-4x4-q0", "fan 4×4 (each subscriber gets all 4 publishers), QoS 0"),
    ("pairs-4-q0", "pairs 4→4 (publisher i → subscriber i), QoS 0"),
    ("fan-in-4-q0", "fan-in 4→1 (wildcard), QoS 0"),
    ("fan-out-4-q0", "fan-out 1→4, QoS 0"),
    ("fan-4x4-q1", "fan 4×4, QoS 1"),
    ("fan-4x4-q1-bigqueue", "fan 4×4, QoS 1, tern-edge's session queue raised to Mosquitto's 1,000,000"),
    ("pairs-4-q1", "pairs 4→4, QoS 1"),
    ("shared-4-q1", "shared 4→$share group of 4, QoS 1"),
]
LATENCY = [
    ("latency-halfpaced-q0", "QoS 0, 4 pairs, at half of each broker's saturating paced rate (ladder below)"),
    ("latency-half-q0", "QoS 0, 4 pairs, at half of each broker's own saturating max-rate pairs throughput"),
    ("latency-10k-q0", "QoS 0, 4 pairs, 10,000 msg/s for every broker"),
    ("latency-30k-q0", "QoS 0, 4 pairs, 30,000 msg/s for every broker"),
    ("latency-10k-q1", "QoS 1, 4 pairs, 10,000 msg/s for every broker"),
]


def load(run_dir, scenario, broker):
    path = os.path.join(run_dir, "results", f"{scenario}.{broker}.json")
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError):
        err = ""
        try:
            with open(path[:-5] + ".err") as f:
                err = "".join(f.read().strip().splitlines()[-1:])
        except OSError:
            pass
        return {"missing": True, "err": err}
    for ext in ("rc", "load"):
        try:
            with open(path[:-4] + ext) as f:
                r["_" + ext] = f.read().strip()
        except OSError:
            pass
    return r


def facts(run_dir):
    out = {}
    with open(os.path.join(run_dir, "facts")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            out[k] = v
    return out


def num(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(tern, peers, higher_better=True):
    peers = [p for p in peers if p]
    if tern is None or not peers:
        return "–"
    best = max(peers) if higher_better else min(peers)
    if best == 0:
        return "–"
    return f"{tern / best:.2f}×"


class Doc:
    def __init__(self):
        self.lines = []
        self.footnotes = []

    def add(self, *lines):
        self.lines.extend(lines)

    def note(self, text):
        self.footnotes.append(text)
        return f"[{len(self.footnotes)}]"


def cell(doc, r, value, fmt):
    """A table cell for one run: the figure, marked when the run failed."""
    if r is None:
        return "pending"
    if r.get("na"):
        return "n/a"
    if r.get("missing"):
        return "no result"
    if value is None:
        mark = doc.note(why(r))
        return f"✗ {mark}"
    text = fmt(value)
    if not r.get("ok", False):
        text += " ✗ " + doc.note(why(r))
    return text


def why(r):
    """The failures of a run, with the notes that explain them."""
    parts = list(r.get("failures") or ["no figure"])
    parts += [n for n in r.get("notes", []) if n.startswith("nothing was delivered")]
    return "; ".join(parts)


def main():
    run_dir, out_path = sys.argv[1], sys.argv[2]
    fx = facts(run_dir)
    active = fx.get("brokers", "").split()
    tern_status = fx.get("tern_status", "")
    tern_live = "tern" in active and not tern_status
    cols = [(b, name) for b, name in BROKERS]
    res = {}
    for path in glob.glob(os.path.join(run_dir, "results", "*.json")):
        base = os.path.basename(path)[:-5]
        if base == "ceiling":
            continue
        scenario, _, broker = base.rpartition(".")
        res[(scenario, broker)] = load(run_dir, scenario, broker)

    def get(scenario, broker):
        if broker == "tern" and not tern_live:
            return None
        if scenario.endswith("-bigqueue") and broker != "tern":
            return {"na": True}
        return res.get((scenario, broker), {"missing": True} if broker in active else None)

    d = Doc()
    quick = fx.get("quick") == "1"
    d.add("# Benchmarks: tern-edge next to Mosquitto and NATS", "")
    d.add(
        f"Written by `tests/bench/compare.sh` on {fx.get('date')} at commit `{fx.get('commit')}`. "
        "Every figure below comes from the same run of the same load generator (`tern-bench`), "
        "brokers started fresh for every run, one after the other, scenario by scenario.",
        "",
        "Reproduce: `tests/bench/compare.sh` (about 8 minutes on 2 cores after the build; "
        "`--quick` runs the whole pipeline with tiny durations as a smoke test).",
        "",
    )
    if quick:
        d.add("> **Quick run**: durations of a second or two. The figures only show that the "
              "pipeline works; they are not benchmarks.", "")
    if not tern_live:
        why = tern_status or "not run"
        d.add(f"> **tern-edge: pending** ({why}). Its column is empty; rerun "
              "`tests/bench/compare.sh` once it serves clients.", "")

    d.add("## Machine", "")
    d.add("| cores | memory | kernel | CPU |", "|---|---|---|---|")
    d.add(f"| {fx.get('nproc')} | {fx.get('mem')} | {fx.get('kernel')} | {fx.get('cpu')} |", "")
    up = []
    for name in ("uptime-start", "uptime-end"):
        try:
            with open(os.path.join(run_dir, name)) as f:
                up.append(f.read().strip())
        except OSError:
            up.append("?")
    d.add(f"Load at start: `{up[0]}`  ", f"Load at end: `{up[1]}`", "")
    d.add("The load generator and the broker share these cores; the CPU table below shows "
          "how they split them. The 1-minute load average at the start of every run is "
          "recorded with it: a figure taken while other work ran on the machine is lower "
          "than the broker can do.", "")

    d.add("### Reading these numbers", "")
    d.add("- This is a 2-core virtual machine. tern-bench and the broker share both cores, "
          "so every figure is a figure for the pair; the CPU table shows the split.",
          "- Waking a thread costs much more here than on bare metal: at 20,000 msg/s "
          "(one pair, QoS 0) `perf stat` counted 64,529 context switches and 1.77 CPU-s "
          "(1.80 s of it in the kernel) in tern-bench for 60,000 messages, about 27 µs per "
          "message. Max-rate runs batch many messages per read and write and do not pay "
          "this; paced runs (latency) pay it per message on both sides, so the rate a "
          "paced run sustains is far below the max-rate throughput. The send-lag column "
          "shows when tern-bench itself fell behind.",
          "- Other work on the machine (the load average is recorded) lowers every figure; "
          "compare brokers within one run, not across runs.", "")
    d.add("## Versions", "")
    d.add("| | version |", "|---|---|")
    d.add(f"| Mosquitto | {fx.get('mosquitto')} |", f"| NATS | {fx.get('nats')} |",
          f"| tern-edge | {fx.get('tern_edge') if tern_live else 'pending'} |",
          f"| load generator | {fx.get('tern_bench')} |", f"| rustc | {fx.get('rustc')} |", "")

    # Headline.
    d.add("## Headline: 4 publishers × 4 subscribers, QoS 0, 100-byte payloads", "")
    d.add("\"4×4\" has two readings, and both are measured: **fan** — every subscriber "
          "subscribes to all four publishers' topics with a wildcard, so each publish is "
          "delivered four times (16 deliveries per 4 publishes); **pairs** — publisher *i* "
          "publishes to subscriber *i* only. " + reading(get), "")
    header = "| delivered msg/s | " + " | ".join(n for _, n in cols) + " | Tern / best peer |"
    d.add(header, "|---" * (len(cols) + 2) + "|")
    for scenario, title in THROUGHPUT[:2]:
        d.add(throughput_row(d, get, scenario, title, cols))
    d.add("")

    d.add("## Throughput", "")
    d.add("Delivered msg/s: distinct, verified deliveries divided by the time from the first "
          "publish to the last delivery (the drain after publishing stops is included, so "
          "a broker that queues instead of delivering gains nothing). Publishers run open "
          "loop as fast as the broker takes them; QoS 1 publishers keep 256 messages in "
          "flight each. Higher is better.", "")
    d.add(header, "|---" * (len(cols) + 2) + "|")
    for scenario, title in THROUGHPUT:
        d.add(throughput_row(d, get, scenario, title, cols))
    d.add("")

    d.add("## Latency", "")
    d.add("End-to-end, publisher to subscriber, from each message's *intended* send time on "
          "an open-loop schedule (no coordinated omission: a stall is charged to every "
          "message it delays). The send lag is tern-bench's own lateness against that "
          "schedule, part of every figure. Microseconds, lower is better; the ratio is on p99.", "")
    for scenario, title in LATENCY:
        d.add(f"**{title}**", "")
        d.add("| broker | rate msg/s | p50 | p90 | p99 | p99.9 | max | send lag p99 | verified |",
              "|---|---|---|---|---|---|---|---|---|")
        p99 = {}
        for b, name in cols:
            r = get(scenario, b)
            if r is None or r.get("missing"):
                d.add(f"| {name} | {'pending' if r is None else 'no result'} | | | | | | | |")
                continue
            l, lag = r.get("latency") or {}, r.get("send_lag") or {}
            p99[b] = l.get("p99_us")
            verdict = "ok" if r.get("ok") else "✗ " + d.note("; ".join(r.get("failures", [])))
            d.add(f"| {name} | {num(r['params'].get('rate'))} | {num(l.get('p50_us'))} | {num(l.get('p90_us'))} "
                  f"| {num(l.get('p99_us'))} | {num(l.get('p999_us'))} | {num(l.get('max_us'))} "
                  f"| {num(lag.get('p99_us'))} | {verdict} |")
        d.add("", f"Tern / best peer (p99, lower is better): {ratio(p99.get('tern'), [p99.get(p) for p in PEERS], False)}", "")
        if scenario == "latency-halfpaced-q0":
            paced_ladder(d, res, cols)

    d.add("## Connections", "")
    d.add("Idle MQTT connections opened at 2,000 per second and held; afterwards every one "
          "must still answer PINGREQ. Memory per connection is the broker's RSS growth "
          "divided by the connections established (broker started fresh for this run).", "")
    d.add("| broker | established | connect rate /s | failed | alive after hold | RSS before → after (KiB) | bytes per connection |",
          "|---|---|---|---|---|---|---|")
    per_conn = {}
    for b, name in cols:
        r = get("connections", b)
        if r is None or r.get("missing") or not r.get("connections"):
            d.add(f"| {name} | {'pending' if r is None else 'no result'} | | | | | |")
            continue
        c = r["connections"]
        per_conn[b] = c.get("bytes_per_connection")
        mark = "" if r.get("ok") else " ✗ " + d.note("; ".join(r.get("failures", [])))
        d.add(f"| {name} | {c['established']:,} of {c['requested']:,}{mark} | {num(c['connect_rate'])} | {c['failed']} "
              f"| {c['alive_after_hold']:,} | {num(c.get('broker_rss_before_kib'))} → {num(c.get('broker_rss_after_kib'))} "
              f"| {num(c.get('bytes_per_connection'))} |")
    d.add("", f"Tern / best peer (bytes per connection, lower is better): "
          f"{ratio(per_conn.get('tern'), [per_conn.get(p) for p in PEERS], False)}", "")

    # Footprint.
    idle = {}
    try:
        with open(os.path.join(run_dir, "idle-rss.tsv")) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) == 3 and parts[2].strip().isdigit():
                    v = int(parts[2])
                    idle[parts[1]] = min(idle.get(parts[1], v), v)
    except OSError:
        pass
    size = {"mosquitto": fx.get("mosquitto_size"), "nats": fx.get("nats_size"),
            "tern": fx.get("edge_size") if tern_live else None}
    d.add("## Footprint", "")
    d.add("| | " + " | ".join(n for _, n in cols) + " |", "|---" * (len(cols) + 1) + "|")
    d.add("| binary (bytes) | " + " | ".join(num(int(size[b])) if size.get(b) else "pending" for b, _ in cols) + " |")
    d.add("| idle RSS (KiB, 1 s after start, lowest of all starts) | "
          + " | ".join(num(idle.get(b)) if idle.get(b) else "pending" for b, _ in cols) + " |", "")
    d.add("Mosquitto's binary links its libraries dynamically (libssl, libcrypto, libcjson, …), "
          "so its file size understates what it loads; nats-server is a static Go binary; "
          "tern-edge links only the C runtime (libc, libm, libgcc_s). tern-edge is built with "
          f"the release profile (stripped: {fx.get('edge_stripped')}).", "")

    # Goals.
    d.add("## Goals from issue 4", "")
    d.add("| goal | target | measured | met |", "|---|---|---|---|")
    for row in goals(get, idle, size, per_conn, tern_live):
        d.add(row)
    d.add("")

    # CPU.
    d.add("## CPU split", "")
    d.add("Cores used during each run (CPU seconds / wall seconds), broker / tern-bench, "
          "and the 1-minute load average when the run started.", "")
    d.add("| run | " + " | ".join(n for _, n in cols) + " |", "|---" * (len(cols) + 1) + "|")
    for scenario, _ in THROUGHPUT + LATENCY + [("connections", "")]:
        cells = []
        for b, _ in cols:
            r = get(scenario, b)
            if r is None or r.get("missing"):
                cells.append("–")
                continue
            rs = r.get("resources", {})
            el = rs.get("elapsed_s") or 0
            if el <= 0:
                cells.append("–")
                continue
            bc, cc = rs.get("broker_cpu_s"), rs.get("client_cpu_s")
            cells.append(f"{(bc or 0) / el:.2f} / {(cc or 0) / el:.2f} (load {r.get('_load', '?')})")
        d.add(f"| {scenario} | " + " | ".join(cells) + " |")
    d.add("")

    # Ceiling.
    d.add("## tern-bench's own ceiling", "")
    try:
        with open(os.path.join(run_dir, "results", "ceiling.json")) as f:
            c = json.load(f)
        ce = c["ceiling"]
        d.add(f"Against `tern-bench sink` (a server that parses and acknowledges but routes "
              f"nothing), on the same machine: **{ce['publish']['publish_rate']:,.0f} msg/s "
              f"published** by 4 connections and **{ce['receive']['rate']:,.0f} msg/s received "
              f"and verified** by 4 connections ({ce['receive']['errors']} verification errors). "
              "Broker figures well below these are the broker's; figures near them would be "
              "the tool's (or the shared cores').", "")
    except (OSError, ValueError, KeyError):
        d.add("Not measured in this run (`tern-bench ceiling`).", "")

    # Failures and notes.
    d.add("## Verification", "")
    d.add("Every run verifies each delivery: per-publisher order, duplicates, payload "
          "integrity (fixed filler and a check word over publisher id, sequence and "
          "timestamp), and that it reached only subscribers whose filter matches. Lost "
          "messages at QoS ≥ 1 fail a run; QoS 0 loss is reported.", "")
    if d.footnotes:
        for i, text in enumerate(d.footnotes, 1):
            d.add(f"{i}. {text}")
        d.add("")
    notes = []
    for (scenario, b), r in sorted(res.items()):
        for n in r.get("notes", []) if isinstance(r, dict) else []:
            if n.startswith("latency measured under saturation"):
                continue
            notes.append(f"- {scenario} / {b}: {n}")
    if notes:
        d.add("Notes from the runs:", "", *notes, "")

    # Broker logs.
    warn = broker_warnings(run_dir, cols)
    if warn:
        d.add("## Broker warnings during the run", "")
        d.add("Warnings and errors the brokers logged over the whole run (numbers replaced "
              "by N, counted):", "")
        for name, lines in warn:
            d.add(f"**{name}**", "")
            d.add(*[f"- {n} × `{text}`" for text, n in lines], "")

    # Commands and configurations.
    d.add("## Commands", "")
    d.add("Every broker got the same tern-bench command line; only `--port` and "
          "`--broker-pid` (and `--rate` for the half-saturation latency run) differ.", "", "```")
    seen = set()
    try:
        with open(os.path.join(run_dir, "commands.tsv")) as f:
            for line in f:
                sc, b, cmd = line.rstrip("\n").split("\t", 2)
                per_broker = sc in ("latency-half-q0", "latency-halfpaced-q0")
                if sc.startswith("paced-"):
                    # The ladder: one line stands for all rungs.
                    sc, cmd = "paced-RATE (saturation ladder)", re.sub(r"--rate \d+", "--rate RATE", cmd)
                key = sc + b if per_broker else sc
                if key in seen:
                    continue
                seen.add(key)
                d.add(f"# {sc}" + (f" ({b})" if per_broker else ""), cmd)
    except OSError:
        pass
    d.add("```", "")
    d.add("## Broker configurations", "")
    for name, file in (("Mosquitto", "mosquitto.conf"), ("NATS", "nats.conf")):
        try:
            with open(os.path.join(run_dir, file)) as f:
                d.add(f"{name} (`{file}`):", "", "```", f.read().strip(), "```", "")
        except OSError:
            pass
    store = fx.get("tern_store") or "memory"
    d.add(f"tern-edge: built-in profile `edge-gateway`, its defaults except the store "
          f"(`{store}`) and the connection limits (lifted: the peers have none), started as", "", "```",
          f"TERN_LISTENERS__TCP__BIND=127.0.0.1:18833 TERN_STORE__BACKEND={store} \\",
          "TERN_NODE__DATA_DIR=<run dir>/tern-data TERN_ADMIN__BIND=127.0.0.1:0 TERN_LOG__LEVEL=warn \\",
          "TERN_LIMITS__MAX_CONNECTIONS=0 TERN_LIMITS__MAX_CONNECTIONS_PER_IP=0 TERN_LIMITS__CONNECT_RATE=0 \\",
          "target/release/tern-edge --profile edge-gateway", "```", "")

    text = "\n".join(d.lines).rstrip() + "\n"
    kept = foreign_sections(out_path, d.lines)
    if kept:
        text += "\n" + "\n\n".join(kept) + "\n"
    with open(out_path, "w") as f:
        f.write(text)


def foreign_sections(path, generated):
    """The `## ` sections of the existing file that this report does not write.

    Other scripts (durability.sh, bridge.sh) and hand-written measurements own
    sections of BENCHMARKS.md; a new compare.sh run replaces only its own ones.
    """
    ours = {line for line in generated if line.startswith("## ")}
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return []
    sections = re.split(r"^(?=## )", old, flags=re.M)
    return [s.rstrip("\n") for s in sections[1:]
            if s.split("\n", 1)[0] not in ours]


def paced_ladder(d, res, cols):
    """The saturation search behind the half-paced-rate latency run."""
    rungs = sorted({int(sc[len("paced-"):]) for sc, _ in res if sc.startswith("paced-")})
    if not rungs:
        return
    d.add("The saturating paced rate: 4 paced pairs at QoS 0 on a ×1.5 ladder of total rates, "
          "each rung a fresh broker; a rung is kept up when the run verifies, delivers ≥ 97 % of "
          "the offered rate and its p99 stays under 20 ms (a backlog that grows shows as a p99 "
          "near the run's length). The last rung kept up is the saturating rate; the run above "
          "is at half of it. A max-rate run batches many messages per read and write, a paced "
          "one cannot, so half the max-rate throughput (next table) can lie past what any paced "
          "run sustains. Each broker runs at its own half, so the p99 ratio above compares "
          "different rates; this ladder compares them at the same ones. Cells: p99 µs, ✓ kept up.", "")
    d.add("| rate msg/s | " + " | ".join(n for _, n in cols) + " |", "|---" * (len(cols) + 1) + "|")
    for rate in rungs:
        cells = []
        for b, _ in cols:
            r = res.get((f"paced-{rate}", b))
            if not r or r.get("missing"):
                cells.append("–")
                continue
            p99 = (r.get("latency") or {}).get("p99_us")
            delivered = (r.get("throughput") or {}).get("delivered_rate") or 0
            kept = r.get("ok") and delivered >= 0.97 * rate and p99 is not None and p99 < 20000
            cells.append(f"{num(p99)}{' ✓' if kept else ''}")
        d.add(f"| {num(rate)} | " + " | ".join(cells) + " |")
    d.add("")


def broker_warnings(run_dir, cols):
    """Distinct warning and error lines of each broker's log, most frequent first."""
    import re
    out = []
    for b, name in cols:
        try:
            with open(os.path.join(run_dir, f"{b}.log"), errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        counts = {}
        for line in lines:
            if not re.search(r"WARN|ERROR|[Ww]arning|[Ee]rror|\[ERR\]|\[WRN\]", line):
                continue
            text = re.sub(r"^\[\d+\]\s*", "", line)
            text = re.sub(r"^\d{4}[-/]\d\d[-/]\d\d[T ][\d:.]+Z?\s*", "", text)
            text = re.sub(r"^\d+:\s*", "", text)
            text = re.sub(r"tb-[0-9a-f]+-[a-z]\d+", "<client>", text)
            text = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "<addr>", text)
            text = re.sub(r"\"[A-Za-z0-9_]{20,}\"", "<id>", text)
            text = re.sub(r"\d+", "N", text).strip()[:160]
            counts[text] = counts.get(text, 0) + 1
        if counts:
            out.append((name, sorted(counts.items(), key=lambda kv: -kv[1])[:6]))
    return out


def reading(get):
    """Which reading of "4×4" the issue's reference figures correspond to, from the data."""
    refs = {"mosquitto": 200_000, "nats": 870_000}
    text = ("The issue's reference figures (about 200,000 delivered msg/s for Mosquitto and "
            "870,000 for NATS, measured earlier on this kind of machine with a third-party tool) ")
    dist = {}
    for scenario in ("fan-4x4-q0", "pairs-4-q0"):
        total = 0.0
        for b, ref in refs.items():
            r = get(scenario, b) or {}
            v = (r.get("throughput") or {}).get("delivered_rate")
            if not v:
                return text + "could not be matched to either reading in this run."
            total += abs(v - ref) / ref
        dist[scenario] = total / len(refs)
    best = min(dist, key=dist.get)
    name = "fan" if best.startswith("fan") else "pairs"
    return (text + f"are closer to the **{name}** reading here (mean deviation "
            f"{dist['fan-4x4-q0']:.0%} for fan, {dist['pairs-4-q0']:.0%} for pairs).")


def throughput_row(d, get, scenario, title, cols):
    vals = {}
    cells = []
    for b, _ in cols:
        r = get(scenario, b)
        t = (r or {}).get("throughput") or {}
        v = t.get("delivered_rate") if t.get("delivered") else None
        if r is not None and not r.get("missing") and not r.get("na"):
            vals[b] = v if r.get("ok") or (r.get("params", {}).get("qos") == 0 and v) else None
        cells.append(cell(d, r, v, lambda x: num(x)))
    return f"| {title} | " + " | ".join(cells) + f" | {ratio(vals.get('tern'), [vals.get(p) for p in PEERS])} |"


def goals(get, idle, size, per_conn, tern_live):
    def rate(scenario, b):
        r = get(scenario, b)
        if not r or r.get("missing") or not r.get("ok"):
            return None
        return (r.get("throughput") or {}).get("delivered_rate")

    def row(goal, target, measured, met):
        mark = "pending" if not tern_live else ("yes" if met else "no")
        return f"| {goal} | {target} | {measured if tern_live else 'pending'} | {mark} |"

    out = []
    for scenario, title in (("fan-4x4-q0", "QoS 0 fan 4×4"), ("pairs-4-q0", "QoS 0 pairs 4→4")):
        t, n, m = rate(scenario, "tern"), rate(scenario, "nats"), rate(scenario, "mosquitto")
        target = f"≥ NATS ({num(n)}) and ≥ 4× Mosquitto ({num(4 * m) if m else '–'})"
        met = t is not None and n is not None and m is not None and t >= n and t >= 4 * m
        out.append(row(f"{title} throughput", target, num(t), met))
    for scenario, title in (("fan-4x4-q1", "QoS 1 fan 4×4"), ("pairs-4-q1", "QoS 1 pairs 4→4")):
        t, m = rate(scenario, "tern"), rate(scenario, "mosquitto")
        shown = num(t)
        r = get(scenario, "tern") or {}
        tp = r.get("throughput") or {}
        if t is None and tp.get("delivered"):
            shown = f"{num(tp['delivered_rate'])}, but {tp['lost']:,} messages lost"
        out.append(row(f"{title} throughput", f"≥ 2× Mosquitto ({num(2 * m) if m else '–'}), no loss", shown,
                       t is not None and m is not None and t >= 2 * m))
    for scenario, which in (("latency-halfpaced-q0", "paced"), ("latency-half-q0", "max-rate")):
        r = get(scenario, "tern") or {}
        p99 = (r.get("latency") or {}).get("p99_us")
        rate = (r.get("params") or {}).get("rate")
        out.append(row(f"p99 latency at half the saturating rate ({which}: {num(rate)} msg/s)", "< 1,000 µs",
                       f"{num(p99)} µs", p99 is not None and p99 < 1000 and r.get("ok")))
    pc = per_conn.get("tern")
    out.append(row("memory per idle connection (10,000)", "< 8,192 bytes", f"{num(pc)} bytes",
                   pc is not None and pc < 8192))
    sz = size.get("tern")
    out.append(row("edge binary, release, stripped", "< 8 MB", f"{num(int(sz) / 1e6, 2)} MB" if sz else "–",
                   bool(sz) and int(sz) < 8_000_000))
    ir = idle.get("tern")
    out.append(row("idle RSS", "< 8 MB", f"{num(ir / 1024, 1)} MiB" if ir else "–",
                   ir is not None and ir * 1024 < 8_000_000))
    return out


if __name__ == "__main__":
    main()
