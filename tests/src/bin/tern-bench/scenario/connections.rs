//! The connections scenario: open N idle MQTT connections at a given rate, hold them,
//! check they are all still served (PINGREQ → PINGRESP), and measure what they cost the
//! broker in memory: RSS before and after, divided by the connections established.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::run_id;
use crate::client::{ClientError, Conn, ConnectOpts, IDLE_READ_BUF};
use crate::clock;
use crate::progress::{self, Counters};
use crate::report::{new_histogram, Connections, Latency, Meter, Params, Report};
use crate::{sys, Global};

/// Options of the connections scenario.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connection attempts per second.
    #[arg(long, default_value_t = 2_000.0)]
    pub connect_rate: f64,
    /// Most handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold the connections open before checking them.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Seconds allowed for one TCP connect + CONNECT/CONNACK (and for the final PING).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds between the last handshake and the "after" RSS sample.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// CONNECT keep-alive in seconds (0 = off).
    #[arg(long, default_value_t = 0)]
    pub keepalive: u16,
}

fn kind(e: &ClientError) -> String {
    match e {
        ClientError::Io(io) => format!("i/o: {:?}", io.kind()),
        other => other.to_string(),
    }
}

/// Runs the connections scenario.
pub async fn run(args: &ConnArgs, global: &Global) -> Report {
    let params = Params {
        connections: Some(args.connections),
        connect_rate: Some(args.connect_rate),
        hold_s: Some(args.hold),
        ..Params::default()
    };
    let mut report = Report::new(
        "connections",
        global.target_string(),
        global.label.clone(),
        params,
    );
    let addr = match global.addr() {
        Ok(a) => a,
        Err(e) => {
            report.fail(format!("setup: {e}"));
            return report;
        }
    };
    if args.connect_rate.is_nan() || args.connect_rate <= 0.0 {
        report.fail("setup: --connect-rate must be positive");
        return report;
    }
    if let Some(limit) = sys::raise_nofile_limit() {
        if (limit as usize) < args.connections + 64 {
            report.notes.push(format!(
                "open-file limit {limit} is below {} connections: raise it with `ulimit -n`",
                args.connections
            ));
        }
    }
    let timeout = Duration::from_secs_f64(args.connect_timeout.max(0.1));
    let meter = Meter::start(global.broker_pid);
    let rss_before = global.broker_pid.and_then(sys::rss_kib);
    let counters = Arc::new(Counters::default());
    let progress = progress::spawn(counters.clone(), "connections".to_string(), !global.quiet);
    let run = run_id();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut conns = Vec::with_capacity(args.connections);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut times = new_histogram();
    let mut last_done = clock::now_ns();
    let t0 = clock::now_ns();

    let mut collect = |r: Result<(Result<Conn, String>, u64), tokio::task::JoinError>,
                       conns: &mut Vec<Conn>| match r {
        Ok((Ok(c), took)) => {
            times.saturating_record(took);
            conns.push(c);
            last_done = clock::now_ns();
        }
        Ok((Err(k), _)) => *failures.entry(k).or_default() += 1,
        Err(e) => *failures.entry(format!("task: {e}")).or_default() += 1,
    };
    for i in 0..args.connections {
        let intended = t0 + (i as f64 * 1e9 / args.connect_rate) as u64;
        if clock::now_ns() < intended {
            tokio::time::sleep_until(clock::instant_at(intended).into()).await;
        }
        // The gate is never closed: acquiring cannot fail.
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let opts = ConnectOpts {
            client_id: format!("tb-{run}-c{i}"),
            keep_alive: args.keepalive,
            username: None,
            read_buf: IDLE_READ_BUF,
            clean: true,
        };
        let counters = counters.clone();
        set.spawn(async move {
            let start = clock::now_ns();
            let r = match tokio::time::timeout(timeout, Conn::connect(addr, &opts)).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(kind(&e)),
                Err(_) => Err("timeout".to_string()),
            };
            drop(permit);
            Counters::add(
                if r.is_ok() {
                    &counters.connected
                } else {
                    &counters.failed
                },
                1,
            );
            (r, clock::now_ns() - start)
        });
        while let Some(r) = set.try_join_next() {
            collect(r, &mut conns);
        }
    }
    while let Some(r) = set.join_next().await {
        collect(r, &mut conns);
    }
    let connect_secs = last_done.saturating_sub(t0) as f64 / 1e9;
    let established = conns.len();

    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let rss_after = global.broker_pid.and_then(sys::rss_kib);
    tokio::time::sleep(Duration::from_secs_f64((args.hold - args.settle).max(0.0))).await;

    // Every connection must still be served after the hold.
    let mut pings = JoinSet::new();
    for mut c in conns {
        pings.spawn(async move {
            let ok = matches!(tokio::time::timeout(timeout, c.ping()).await, Ok(Ok(())));
            (ok, c)
        });
    }
    let mut alive = 0;
    let mut held = Vec::with_capacity(established);
    while let Some(r) = pings.join_next().await {
        if let Ok((ok, c)) = r {
            alive += usize::from(ok);
            held.push(c);
        }
    }
    drop(held);
    if let Some(p) = progress {
        p.abort();
    }
    report.resources = meter.finish();

    let failed: u64 = failures.values().sum();
    let bytes_per_connection = match (rss_before, rss_after) {
        (Some(b), Some(a)) if established > 0 => {
            Some((a.saturating_sub(b) * 1024) as f64 / established as f64)
        }
        _ => None,
    };
    if failed > 0 {
        report.fail(format!(
            "{failed} of {} connections failed",
            args.connections
        ));
    }
    if alive < established {
        report.fail(format!(
            "{} of {established} connections no longer answered PINGREQ after the hold",
            established - alive
        ));
    }
    if global.broker_pid.is_none() {
        report
            .notes
            .push("pass --broker-pid to measure the broker's memory per connection".to_string());
    }
    report.connections = Some(Connections {
        requested: args.connections,
        established,
        failed: failed as usize,
        failure_kinds: failures,
        connect_secs,
        connect_rate: if connect_secs > 0.0 {
            established as f64 / connect_secs
        } else {
            0.0
        },
        connect_latency: Latency::from_histogram(&times),
        alive_after_hold: alive,
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        bytes_per_connection,
    });
    report
}
