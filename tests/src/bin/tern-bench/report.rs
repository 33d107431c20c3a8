//! What a run reports: one [`Report`] per invocation, printed as a human table on stdout
//! by default or as one JSON object with `--json` (what `compare.sh` reads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenario::load::LoadOutcome;
use crate::scenario::Topology;
use crate::sys;

/// A latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low ≥ 1, high ≥ 2·low, 3 significant figures): cannot fail.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The run's parameters, as given or defaulted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Params {
    /// QoS of publishes and subscriptions.
    pub qos: Option<u8>,
    /// Payload bytes.
    pub payload_size: Option<usize>,
    /// Publisher connections.
    pub publishers: Option<usize>,
    /// Subscriber connections.
    pub subscribers: Option<usize>,
    /// Topology.
    pub topology: Option<Topology>,
    /// Total target publish rate (msg/s); absent = as fast as possible.
    pub rate: Option<f64>,
    /// Publishing time (s).
    pub duration_s: Option<f64>,
    /// Messages per publisher.
    pub count: Option<u64>,
    /// QoS ≥ 1 window per publisher.
    pub inflight: Option<usize>,
    /// Untimed lead-in (s).
    pub warmup_s: Option<f64>,
    /// Connections to open.
    pub connections: Option<usize>,
    /// Connection attempts per second.
    pub connect_rate: Option<f64>,
    /// Seconds the idle connections are held.
    pub hold_s: Option<f64>,
}

/// Message counts and rates.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// PUBLISHes written.
    pub sent: u64,
    /// PUBLISHes acknowledged (= sent at QoS 0).
    pub acked: u64,
    /// Deliveries the topology calls for.
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Missing deliveries.
    pub lost: u64,
    /// Repeated deliveries.
    pub duplicates: u64,
    /// Out-of-order deliveries.
    pub reordered: u64,
    /// Payloads that failed verification.
    pub corrupt: u64,
    /// Deliveries to the wrong subscriber.
    pub misrouted: u64,
    /// Acknowledgements out of order or refused.
    pub bad_acks: u64,
    /// Start to last write (s).
    pub publish_secs: f64,
    /// Start to last delivery (s).
    pub delivery_secs: f64,
    /// sent / publish_secs.
    pub publish_rate: f64,
    /// delivered / delivery_secs: the headline figure.
    pub delivered_rate: f64,
}

impl Throughput {
    /// From a load outcome.
    pub fn from_outcome(o: &LoadOutcome) -> Throughput {
        let t = &o.totals;
        let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Throughput {
            sent: t.sent,
            acked: t.acked,
            expected: t.expected,
            delivered: t.delivered,
            lost: t.lost,
            duplicates: t.duplicates,
            reordered: t.reordered,
            corrupt: t.corrupt,
            misrouted: t.foreign,
            bad_acks: t.bad_acks,
            publish_secs: o.publish_secs,
            delivery_secs: o.delivery_secs,
            publish_rate: rate(t.sent, o.publish_secs),
            delivered_rate: rate(t.delivered, o.delivery_secs),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Minimum.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// From a histogram in nanoseconds; `None` when it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(Latency {
            count: h.len(),
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1e3,
        })
    }
}

/// Results of the connections scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Connections attempted.
    pub requested: usize,
    /// CONNACKed.
    pub established: usize,
    /// Failed attempts.
    pub failed: usize,
    /// Failures by cause.
    pub failure_kinds: BTreeMap<String, u64>,
    /// First attempt to last handshake (s).
    pub connect_secs: f64,
    /// established / connect_secs.
    pub connect_rate: f64,
    /// TCP connect + CONNECT/CONNACK time.
    pub connect_latency: Option<Latency>,
    /// Connections that still answered PINGREQ after the hold.
    pub alive_after_hold: usize,
    /// Broker RSS before connecting (KiB).
    pub broker_rss_before_kib: Option<u64>,
    /// Broker RSS with all connections open (KiB).
    pub broker_rss_after_kib: Option<u64>,
    /// (after − before) / established.
    pub bytes_per_connection: Option<f64>,
}

/// Results of the ceiling scenario: what tern-bench does against a broker that does
/// nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Publishers into the sink.
    pub publish: Throughput,
    /// Subscribers fed by the sink.
    pub receive: CeilingReceive,
}

/// Receive side of the ceiling scenario.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingReceive {
    /// PUBLISHes received and verified.
    pub received: u64,
    /// Seconds measured.
    pub secs: f64,
    /// received / secs.
    pub rate: f64,
    /// Sequence holes, duplicates, reorders and corrupt payloads (all must be 0).
    pub errors: u64,
}

/// CPU and memory used during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// Wall-clock seconds of the whole run.
    pub elapsed_s: f64,
    /// CPU seconds used by tern-bench.
    pub client_cpu_s: Option<f64>,
    /// Broker process id, when given.
    pub broker_pid: Option<u32>,
    /// CPU seconds used by the broker.
    pub broker_cpu_s: Option<f64>,
    /// Broker RSS at the end (KiB).
    pub broker_rss_kib: Option<u64>,
    /// Broker peak RSS since it started (KiB).
    pub broker_peak_rss_kib: Option<u64>,
}

/// Samples CPU counters at the start of a run.
pub struct Meter {
    start: Instant,
    client_cpu: Option<f64>,
    broker_cpu: Option<f64>,
    pid: Option<u32>,
}

impl Meter {
    /// Starts measuring (the broker too when `pid` is given).
    pub fn start(pid: Option<u32>) -> Meter {
        Meter {
            start: Instant::now(),
            client_cpu: sys::cpu_seconds(None),
            broker_cpu: pid.and_then(|p| sys::cpu_seconds(Some(p))),
            pid,
        }
    }

    /// What was used since [`Meter::start`].
    pub fn finish(&self) -> Resources {
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Resources {
            elapsed_s: self.start.elapsed().as_secs_f64(),
            client_cpu_s: delta(self.client_cpu, sys::cpu_seconds(None)),
            broker_pid: self.pid,
            broker_cpu_s: self
                .pid
                .and_then(|p| delta(self.broker_cpu, sys::cpu_seconds(Some(p)))),
            broker_rss_kib: self.pid.and_then(sys::rss_kib),
            broker_peak_rss_kib: self.pid.and_then(sys::peak_rss_kib),
        }
    }
}

/// The full report of one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `tern-bench <version>`.
    pub tool: String,
    /// Scenario name.
    pub scenario: String,
    /// Free-form label (e.g. the broker's name), from `--label`.
    pub label: Option<String>,
    /// Broker address.
    pub target: String,
    /// Parameters.
    pub params: Params,
    /// No failure.
    pub ok: bool,
    /// Why the run failed.
    pub failures: Vec<String>,
    /// Observations that are not failures.
    pub notes: Vec<String>,
    /// Message counts and rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    /// End-to-end latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Paced publishers' lateness against their schedule (the tool's own share).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<Latency>,
    /// Connections scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<Connections>,
    /// Ceiling scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<Ceiling>,
    /// CPU and memory.
    pub resources: Resources,
}

impl Report {
    /// An empty report for `scenario` against `target`.
    pub fn new(scenario: &str, target: String, label: Option<String>, params: Params) -> Report {
        Report {
            tool: format!("tern-bench {}", env!("CARGO_PKG_VERSION")),
            scenario: scenario.to_string(),
            label,
            target,
            params,
            ok: true,
            failures: Vec::new(),
            notes: Vec::new(),
            throughput: None,
            latency: None,
            send_lag: None,
            connections: None,
            ceiling: None,
            resources: Resources::default(),
        }
    }

    /// Records a failure.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.ok = false;
        self.failures.push(why.into());
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(&str, String)> = Vec::new();
        rows.push(("params", describe_params(&self.params)));
        rows.push((
            "result",
            if self.ok {
                "PASS".to_string()
            } else {
                "FAIL".to_string()
            },
        ));
        if let Some(t) = &self.throughput {
            push_throughput(&mut rows, t);
        }
        if let Some(l) = &self.latency {
            rows.push(("latency", describe_latency(l)));
        }
        if let Some(l) = &self.send_lag {
            rows.push((
                "send lag",
                format!(
                    "{} (tern-bench's own lateness vs. schedule)",
                    describe_latency(l)
                ),
            ));
        }
        if let Some(c) = &self.connections {
            rows.push((
                "connections",
                format!(
                    "{} of {} established in {:.2} s = {:.0}/s, {} failed, {} alive after hold",
                    c.established,
                    c.requested,
                    c.connect_secs,
                    c.connect_rate,
                    c.failed,
                    c.alive_after_hold
                ),
            ));
            if let Some(l) = &c.connect_latency {
                rows.push(("connect time", describe_latency(l)));
            }
            if let (Some(b), Some(a)) = (c.broker_rss_before_kib, c.broker_rss_after_kib) {
                let per = c
                    .bytes_per_connection
                    .map_or(String::new(), |p| format!(" = {p:.0} bytes per connection"));
                rows.push(("broker rss", format!("{b} KiB → {a} KiB{per}")));
            }
            for (k, n) in &c.failure_kinds {
                rows.push(("failure", format!("{n} × {k}")));
            }
        }
        if let Some(c) = &self.ceiling {
            rows.push((
                "publish ceiling",
                format!(
                    "{} msg/s ({} sent in {:.2} s)",
                    thousands(c.publish.publish_rate as u64),
                    thousands(c.publish.sent),
                    c.publish.publish_secs
                ),
            ));
            rows.push((
                "receive ceiling",
                format!(
                    "{} msg/s ({} received in {:.2} s, {} errors)",
                    thousands(c.receive.rate as u64),
                    thousands(c.receive.received),
                    c.receive.secs,
                    c.receive.errors
                ),
            ));
        }
        let r = &self.resources;
        let cores = |cpu: f64| {
            if r.elapsed_s > 0.0 {
                cpu / r.elapsed_s
            } else {
                0.0
            }
        };
        let mut cpu = String::new();
        if let Some(c) = r.client_cpu_s {
            let _ = write!(cpu, "tern-bench {c:.2} s ({:.2} cores)", cores(c));
        }
        if let Some(c) = r.broker_cpu_s {
            let _ = write!(cpu, ", broker {c:.2} s ({:.2} cores)", cores(c));
        }
        if !cpu.is_empty() {
            rows.push(("cpu", format!("{cpu} over {:.1} s", r.elapsed_s)));
        }
        if let (Some(rss), Some(peak)) = (r.broker_rss_kib, r.broker_peak_rss_kib) {
            rows.push(("broker memory", format!("rss {rss} KiB, peak {peak} KiB")));
        }
        for f in &self.failures {
            rows.push(("FAILURE", f.clone()));
        }
        for n in &self.notes {
            rows.push(("note", n.clone()));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let label = self
            .label
            .as_ref()
            .map_or(String::new(), |l| format!(" [{l}]"));
        let mut s = format!("{} {} → {}{label}\n", self.tool, self.scenario, self.target);
        for (k, v) in rows {
            let _ = writeln!(s, "  {k:<width$}  {v}");
        }
        s
    }
}

fn push_throughput(rows: &mut Vec<(&str, String)>, t: &Throughput) {
    rows.push((
        "published",
        format!(
            "{} in {:.2} s = {} msg/s (acknowledged {})",
            thousands(t.sent),
            t.publish_secs,
            thousands(t.publish_rate as u64),
            thousands(t.acked)
        ),
    ));
    rows.push((
        "delivered",
        format!(
            "{} of {} in {:.2} s = {} msg/s",
            thousands(t.delivered),
            thousands(t.expected),
            t.delivery_secs,
            thousands(t.delivered_rate as u64)
        ),
    ));
    rows.push((
        "verified",
        format!(
            "lost {}, duplicates {}, reordered {}, corrupt {}, misrouted {}, bad acks {}",
            t.lost, t.duplicates, t.reordered, t.corrupt, t.misrouted, t.bad_acks
        ),
    ));
}

fn describe_params(p: &Params) -> String {
    let mut parts = Vec::new();
    if let Some(q) = p.qos {
        parts.push(format!("qos {q}"));
    }
    if let Some(s) = p.payload_size {
        parts.push(format!("payload {s} B"));
    }
    if let (Some(np), Some(ns)) = (p.publishers, p.subscribers) {
        let topo = p.topology.map_or(String::new(), |t| {
            format!(
                " ({})",
                serde_json::to_value(t)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            )
        });
        parts.push(format!("{np} pub × {ns} sub{topo}"));
    }
    match p.rate {
        Some(r) => parts.push(format!("rate {} msg/s", thousands(r as u64))),
        None if p.qos.is_some() => parts.push("max rate".to_string()),
        None => {}
    }
    if let Some(c) = p.count {
        parts.push(format!("{c} msg per publisher"));
    } else if let Some(d) = p.duration_s {
        parts.push(format!("{d} s"));
    }
    if let Some(i) = p.inflight {
        if p.qos.unwrap_or(0) > 0 {
            parts.push(format!("inflight {i}"));
        }
    }
    if let Some(n) = p.connections {
        parts.push(format!("{n} connections"));
    }
    if let Some(r) = p.connect_rate {
        parts.push(format!("{} connects/s", thousands(r as u64)));
    }
    if let Some(h) = p.hold_s {
        parts.push(format!("hold {h} s"));
    }
    parts.join(", ")
}

fn describe_latency(l: &Latency) -> String {
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
        us(l.p50_us),
        us(l.p90_us),
        us(l.p99_us),
        us(l.p999_us),
        us(l.max_us),
        thousands(l.count)
    )
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
