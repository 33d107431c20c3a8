//! The ceiling scenario: tern-bench against `tern-bench sink`, a server that does no
//! routing, to show how fast tern-bench itself can publish and receive on this machine.
//! A broker figure close to these numbers is limited by the tool (or by the cores the
//! tool and the broker share), not by the broker.
//!
//! Phase 1: publishers write into the sink, which acknowledges and discards.
//! Phase 2: the sink streams valid bench messages to subscribers, which verify them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tern_core::message::QoS;
use tokio::sync::watch;

use super::load::{self, Hooks, Length, LoadSpec};
use super::subscriber::{self, SubCtx};
use super::{run_id, Plan, Topology};
use crate::client::{Conn, ConnectOpts, READ_CHUNK};
use crate::clock;
use crate::payload::Layout;
use crate::progress::{self, Counters};
use crate::report::{Ceiling, CeilingReceive, Meter, Params, Report, Throughput};
use crate::sink::{READY_LINE, SOURCE_USER};
use crate::Global;

/// Options of the ceiling scenario.
#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// Publisher connections in phase 1.
    #[arg(short, long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscriber connections in phase 2.
    #[arg(short = 'S', long, default_value_t = 2)]
    pub subscribers: usize,
    /// QoS of the publishes in phase 1 (phase 2 is QoS 0).
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes.
    #[arg(short = 's', long = "size", default_value_t = 100)]
    pub size: usize,
    /// Seconds per phase.
    #[arg(short, long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Use a sink already running at this address instead of starting one.
    #[arg(long)]
    pub sink: Option<SocketAddr>,
}

/// A sink child process, killed on drop.
struct SinkProcess(Child);

impl Drop for SinkProcess {
    fn drop(&mut self) {
        // Best effort: the child may already have exited.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sink() -> Result<(SinkProcess, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = Command::new(exe)
        .args(["sink", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start sink: {e}"))?;
    let stdout = child.stdout.take();
    let proc = SinkProcess(child);
    let mut line = String::new();
    if let Some(out) = stdout {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("read sink address: {e}"))?;
    }
    let addr = line
        .trim()
        .strip_prefix(READY_LINE)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("sink did not report its address (got {line:?})"))?;
    Ok((proc, addr))
}

/// Runs the ceiling scenario.
pub async fn run(args: &CeilingArgs, global: &Global) -> Report {
    let params = Params {
        qos: Some(args.qos),
        payload_size: Some(args.size),
        publishers: Some(args.publishers),
        subscribers: Some(args.subscribers),
        duration_s: Some(args.duration),
        inflight: Some(args.inflight),
        ..Params::default()
    };
    let (proc, addr) = match args.sink {
        Some(a) => (None, a),
        None => match tokio::task::spawn_blocking(start_sink).await {
            Ok(Ok((p, a))) => (Some(p), a),
            Ok(Err(e)) => return failed(params, global, e),
            Err(e) => return failed(params, global, e.to_string()),
        },
    };
    let mut report = Report::new("ceiling", addr.to_string(), global.label.clone(), params);
    let layout = match Layout::new(args.size) {
        Ok(l) => Arc::new(l),
        Err(e) => return failed(report.params, global, e),
    };
    let meter = Meter::start(proc.as_ref().map(|p| p.0.id()));
    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    let run = run_id();
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce);

    // Phase 1: publish into the sink.
    let plan = match Plan::new(Topology::Fan, "tb", &run, args.publishers, 0) {
        Ok(p) => p,
        Err(e) => return failed(report.params, global, e),
    };
    let spec = LoadSpec {
        addr,
        sub_addr: addr,
        sub_topic_prefix: String::new(),
        sub_persistent: false,
        hooks: Hooks::default(),
        plan,
        qos,
        layout: layout.clone(),
        rate: None,
        length: Length::Duration(duration),
        inflight: args.inflight.clamp(1, 32768),
        batch: None,
        drain_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(1),
        keep_alive: 0,
        run_id: run.clone(),
        paced: false,
        warmup: Duration::ZERO,
        progress: !global.quiet,
        sub_username: None,
        phase: "ceiling publish".to_string(),
    };
    let publish = match load::run(&spec).await {
        Ok(o) => {
            for e in &o.errors {
                report.fail(format!("publish phase: {e}"));
            }
            if o.totals.bad_acks > 0 || (qos != QoS::AtMostOnce && o.totals.acked < o.totals.sent) {
                report.fail("publish phase: acknowledgements missing or out of order");
            }
            Throughput::from_outcome(&o)
        }
        Err(e) => return failed(report.params, global, e),
    };

    // Phase 2: the sink streams to subscribers.
    let topic = bytes::Bytes::from(format!("tb/{run}/0"));
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..args.subscribers {
        let opts = ConnectOpts {
            client_id: format!("tb-{run}-s{i}"),
            keep_alive: 0,
            username: Some(format!("{SOURCE_USER}{}", args.size)),
            read_buf: READ_CHUNK,
            clean: true,
        };
        let mut conn = match Conn::connect(addr, &opts).await {
            Ok(c) => c,
            Err(e) => return failed(report.params, global, format!("connect to sink: {e}")),
        };
        if let Err(e) = conn
            .subscribe(&format!("tb/{run}/0"), QoS::AtMostOnce)
            .await
        {
            return failed(report.params, global, format!("subscribe at sink: {e}"));
        }
        let ctx = SubCtx {
            layout: layout.clone(),
            topics: Arc::new(vec![topic.clone()]),
            topic_prefix: bytes::Bytes::new(),
            counters: counters.clone(),
            stop: stop_rx.clone(),
            // The sink's timestamps are on its own clock: do not time them.
            record_from_ns: u64::MAX,
            resume: None,
        };
        tasks.push(tokio::spawn(subscriber::run(conn, ctx)));
    }
    let progress = progress::spawn(
        counters.clone(),
        "ceiling receive".to_string(),
        !global.quiet,
    );
    let t0 = clock::now_ns();
    tokio::time::sleep(duration).await;
    let received = Counters::get(&counters.received);
    let secs = (clock::now_ns() - t0) as f64 / 1e9;
    // All receivers are alive until the stop is seen.
    let _ = stop_tx.send(true);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(o) => {
                errors += o.tally.holes_from(0)
                    + o.tally.duplicates
                    + o.tally.reordered
                    + o.tally.corrupt
                    + o.tally.foreign;
                if let Some(e) = o.error {
                    report.fail(format!("receive phase: {e}"));
                }
            }
            Err(e) => report.fail(format!("receive phase: {e}")),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    if errors > 0 {
        report.fail(format!("receive phase: {errors} verification errors"));
    }
    report.resources = meter.finish();
    report
        .notes
        .push("the broker figures in resources are the sink's".to_string());
    report.ceiling = Some(Ceiling {
        publish,
        receive: CeilingReceive {
            received,
            secs,
            rate: if secs > 0.0 {
                received as f64 / secs
            } else {
                0.0
            },
            errors,
        },
    });
    drop(proc);
    report
}

fn failed(params: Params, global: &Global, why: String) -> Report {
    let mut r = Report::new("ceiling", "sink".to_string(), global.label.clone(), params);
    r.fail(format!("setup: {why}"));
    r
}
