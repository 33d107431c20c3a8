//! The throughput scenarios — `fan-in`, `fan-out`, `fan`, `pairs`, `shared` — as CLI
//! arguments, their defaults, and the report they produce. `latency` reuses this with
//! paced publishers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tern_core::message::QoS;

use super::load::{self, Hooks, Length, LoadSpec};
use super::{run_id, Plan, Topology};
use crate::payload::Layout;
use crate::report::{Latency, Meter, Params, Report, Throughput};
use crate::verify::{judge, Policy};
use crate::Global;

/// Options shared by the message-moving scenarios.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// QoS of publishes and subscriptions.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 32: id, sequence, timestamp, check word).
    #[arg(short = 's', long = "size", default_value_t = 100)]
    pub size: usize,
    /// Publisher connections (default depends on the scenario).
    #[arg(short, long)]
    pub publishers: Option<usize>,
    /// Subscriber connections (default depends on the scenario).
    #[arg(short = 'S', long)]
    pub subscribers: Option<usize>,
    /// Total publish rate over all publishers, msg/s; omitted = as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per publisher (instead of a duration).
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Unacknowledged QoS 1/2 messages allowed per publisher.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=32768))]
    pub inflight: u64,
    /// PUBLISHes per write (default: about 16 KiB worth, at most 256).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seconds to wait for deliveries and acknowledgements after publishing ends.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Stop waiting for deliveries once nothing arrived for this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub idle_timeout: f64,
    /// Fail on QoS 0 loss and reordering and on QoS 1 duplicates too.
    #[arg(long)]
    pub strict: bool,
    /// Report QoS 0 loss without failing (the default; spelled out for scripts).
    #[arg(long, conflicts_with = "strict")]
    pub allow_qos0_loss: bool,
    /// CONNECT keep-alive in seconds (0 = off).
    #[arg(long, default_value_t = 0)]
    pub keepalive: u16,
    /// First topic level; topics are `{prefix}/{run id}/{publisher}`.
    #[arg(long, default_value = "tb")]
    pub topic_prefix: String,
    /// Subscribers keep persistent sessions (clean session off) and reconnect with the
    /// same client id whenever their broker goes away, until the run ends.
    #[arg(long)]
    pub sub_persistent: bool,
    /// Script hook: create this file once every client is connected and subscribed.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Script hook: wait until this file exists before publishing.
    #[arg(long, value_name = "FILE")]
    pub go_file: Option<PathBuf>,
    /// Script hook: create this file when publishing has ended (QoS ≥ 1: acknowledged).
    #[arg(long, value_name = "FILE")]
    pub published_file: Option<PathBuf>,
}

/// A throughput scenario preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Scenario name.
    pub name: &'static str,
    /// Topology.
    pub topology: Topology,
    /// Default publishers.
    pub publishers: usize,
    /// Default subscribers (`None`: as many as publishers).
    pub subscribers: Option<usize>,
}

/// fan-in: N publishers → 1 subscriber on a wildcard.
pub const FAN_IN: Preset = Preset {
    name: "fan-in",
    topology: Topology::Fan,
    publishers: 4,
    subscribers: Some(1),
};
/// fan-out: 1 publisher → N subscribers.
pub const FAN_OUT: Preset = Preset {
    name: "fan-out",
    topology: Topology::Fan,
    publishers: 1,
    subscribers: Some(4),
};
/// fan: N publishers → M subscribers, each receiving everything.
pub const FAN: Preset = Preset {
    name: "fan",
    topology: Topology::Fan,
    publishers: 4,
    subscribers: Some(4),
};
/// pairs: publisher i → subscriber i.
pub const PAIRS: Preset = Preset {
    name: "pairs",
    topology: Topology::Pairs,
    publishers: 4,
    subscribers: None,
};
/// shared: N publishers → a `$share` group of M members.
pub const SHARED: Preset = Preset {
    name: "shared",
    topology: Topology::Shared,
    publishers: 4,
    subscribers: Some(4),
};

/// Extra settings of a latency run.
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    /// Untimed lead-in.
    pub warmup: Duration,
}

/// Runs a throughput (or, with `paced`, latency) scenario and builds its report.
pub async fn run(preset: Preset, args: &LoadArgs, global: &Global, paced: Option<Paced>) -> Report {
    let publishers = args.publishers.unwrap_or(preset.publishers);
    let subscribers = args
        .subscribers
        .or(preset.subscribers)
        .unwrap_or(publishers);
    let length = match args.count {
        Some(c) => Length::Count(c),
        None => Length::Duration(Duration::from_secs_f64(args.duration.max(0.0))),
    };
    let params = Params {
        qos: Some(args.qos),
        payload_size: Some(args.size),
        publishers: Some(publishers),
        subscribers: Some(subscribers),
        topology: Some(preset.topology),
        rate: args.rate,
        duration_s: args.count.is_none().then_some(args.duration),
        count: args.count,
        inflight: Some(args.inflight as usize),
        warmup_s: paced.map(|p| p.warmup.as_secs_f64()),
        ..Params::default()
    };
    let mut report = Report::new(
        preset.name,
        global.target_string(),
        global.label.clone(),
        params,
    );
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce);
    let setup = (|| {
        let layout = Layout::new(args.size)?;
        let run = run_id();
        let plan = Plan::new(
            preset.topology,
            &args.topic_prefix,
            &run,
            publishers,
            subscribers,
        )?;
        if paced.is_some() && args.rate.is_none() {
            return Err("latency needs --rate (total msg/s)".to_string());
        }
        if let Some(r) = args.rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err(format!("--rate must be positive, got {r}"));
            }
        }
        Ok(LoadSpec {
            addr: global.addr()?,
            sub_addr: global.sub_addr()?,
            sub_topic_prefix: global.sub_topic_prefix.clone(),
            sub_persistent: args.sub_persistent,
            hooks: Hooks {
                ready: args.ready_file.clone(),
                go: args.go_file.clone(),
                published: args.published_file.clone(),
            },
            plan,
            qos,
            layout: Arc::new(layout),
            rate: args.rate,
            length,
            inflight: args.inflight as usize,
            batch: args.batch.map(|b| b.max(1)),
            drain_timeout: Duration::from_secs_f64(args.drain_timeout.max(0.0)),
            idle_timeout: Duration::from_secs_f64(args.idle_timeout.max(0.0)),
            keep_alive: args.keepalive,
            run_id: run,
            paced: paced.is_some(),
            warmup: paced.map_or(Duration::ZERO, |p| p.warmup),
            progress: !global.quiet,
            sub_username: None,
            phase: preset.name.to_string(),
        })
    })();
    let spec = match setup {
        Ok(s) => s,
        Err(e) => {
            report.fail(format!("setup: {e}"));
            return report;
        }
    };
    let meter = Meter::start(global.broker_pid);
    let outcome = load::run(&spec).await;
    report.resources = meter.finish();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            report.fail(format!("setup: {e}"));
            return report;
        }
    };
    let (failures, notes) = judge(
        &outcome.totals,
        Policy {
            qos: qos.min(outcome.granted),
            strict: args.strict,
        },
    );
    for f in failures.into_iter().chain(outcome.errors.iter().cloned()) {
        report.fail(f);
    }
    report.notes.extend(notes);
    report.notes.extend(outcome.notes.iter().cloned());
    if paced.is_none() && args.rate.is_none() {
        report
            .notes
            .push("latency measured under saturation, from each batch's send time".to_string());
    } else if paced.is_none() {
        report.notes.push(
            "latency from intended send times on a millisecond-granular schedule; the latency scenario paces precisely"
                .to_string(),
        );
    }
    if outcome.totals.sent > 0 && outcome.totals.expected > 0 && outcome.totals.delivered == 0 {
        report.notes.push(
            "nothing was delivered at all, although the broker granted every subscription"
                .to_string(),
        );
    }
    report.throughput = Some(Throughput::from_outcome(&outcome));
    report.latency = Latency::from_histogram(&outcome.latency);
    report.send_lag = outcome.send_lag.as_ref().and_then(Latency::from_histogram);
    if let Some(lag) = &report.send_lag {
        if lag.p99_us > 1_000.0 {
            report.notes.push(format!(
                "tern-bench fell behind its schedule (send lag p99 {:.0} µs): client and broker together could not sustain this rate here, and the latency includes that",
                lag.p99_us
            ));
        }
    }
    report
}
