//! The load engine behind every message-moving scenario: connect the subscribers, then
//! the publishers, run the publishers to their end, let the deliveries drain, stop the
//! subscribers, and add up what was sent against what arrived.
//!
//! Subscribers may use another broker than publishers, under a topic prefix (a bridge:
//! publishers on the edge, subscribers on the cloud), and may keep persistent sessions
//! that survive their broker's restart. A script can step in between the phases through
//! [`Hooks`] files (stop the cloud before publishing, start it again after).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tern_core::message::QoS;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::publisher::{self, End, PubCtx, PubOutcome};
use super::subscriber::{self, Resume, SubCtx};
use super::{Plan, Topology};
use crate::client::{Conn, ConnectOpts, READ_CHUNK};
use crate::clock;
use crate::payload::Layout;
use crate::progress::{self, Counters};
use crate::report::new_histogram;
use crate::verify::{Tally, Totals};

/// Most connection handshakes in progress at once during setup.
const SETUP_CONCURRENCY: usize = 64;
/// How often the run looks for the go file.
const GO_POLL: Duration = Duration::from_millis(10);

/// How long a run publishes.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// For this long.
    Duration(Duration),
    /// This many messages per publisher.
    Count(u64),
}

/// Files through which a script steps in between the phases of a run.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Created once every client is connected and subscribed, before publishing.
    pub ready: Option<PathBuf>,
    /// Publishing waits until this file exists.
    pub go: Option<PathBuf>,
    /// Created when publishing has ended (at QoS ≥ 1: every message acknowledged, or
    /// given up on), before the wait for deliveries; holds `sent N`.
    pub published: Option<PathBuf>,
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Broker address of the publishers.
    pub addr: SocketAddr,
    /// Broker address of the subscribers (the same broker unless a bridge is measured).
    pub sub_addr: SocketAddr,
    /// Put before every subscriber filter and stripped from every received topic.
    pub sub_topic_prefix: String,
    /// Subscribers keep persistent sessions and reconnect when their broker goes away.
    pub sub_persistent: bool,
    /// Script hooks between the phases.
    pub hooks: Hooks,
    /// Topics and filters.
    pub plan: Plan,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload layout.
    pub layout: Arc<Layout>,
    /// Total publish rate over all publishers (msg/s); `None` = as fast as possible.
    pub rate: Option<f64>,
    /// How long to publish.
    pub length: Length,
    /// QoS ≥ 1 window per publisher.
    pub inflight: usize,
    /// Messages per write; `None` picks by payload size.
    pub batch: Option<usize>,
    /// Longest wait for deliveries (and acknowledgements) after publishing ends.
    pub drain_timeout: Duration,
    /// Stop draining when nothing arrived for this long.
    pub idle_timeout: Duration,
    /// CONNECT keep-alive.
    pub keep_alive: u16,
    /// Run id, part of client ids and topics.
    pub run_id: String,
    /// Pace publishers on their own threads (latency runs).
    pub paced: bool,
    /// Messages intended before this offset into the run are not timed.
    pub warmup: Duration,
    /// Print the progress line.
    pub progress: bool,
    /// Subscribers' CONNECT user name (the sink's source mode).
    pub sub_username: Option<String>,
    /// Name shown on the progress line.
    pub phase: String,
}

/// The result of a load run.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Verified totals.
    pub totals: Totals,
    /// Lowest QoS granted to a subscriber (deliveries happen at min(publish, granted)).
    pub granted: QoS,
    /// Seconds from the start to the last write.
    pub publish_secs: f64,
    /// Seconds from the start to the last delivery.
    pub delivery_secs: f64,
    /// End-to-end latency over all subscribers (ns).
    pub latency: Histogram<u64>,
    /// How late paced publishers wrote against their schedule (ns).
    pub send_lag: Option<Histogram<u64>>,
    /// Client-side failures (connection closed, write error, …).
    pub errors: Vec<String>,
    /// Observations that are not failures.
    pub notes: Vec<String>,
}

impl LoadSpec {
    fn batch(&self) -> usize {
        // About 16 KiB per write: big enough to amortise the syscall, small enough to
        // keep the broker fed evenly.
        self.batch
            .unwrap_or_else(|| (16 * 1024 / (self.layout.size() + 32)).clamp(1, 256))
    }
}

/// `filter` under `prefix`: `{prefix}{filter}`, or `$share/{group}/{prefix}{rest}` for a
/// shared subscription.
fn prefixed(prefix: &str, filter: &str) -> String {
    if let Some(shared) = filter.strip_prefix("$share/") {
        if let Some((group, rest)) = shared.split_once('/') {
            return format!("$share/{group}/{prefix}{rest}");
        }
    }
    format!("{prefix}{filter}")
}

/// CONNECT options of client `{prefix}{i}` of the run.
fn connect_opts(
    spec: &LoadSpec,
    prefix: &str,
    i: usize,
    username: Option<String>,
    clean: bool,
) -> ConnectOpts {
    ConnectOpts {
        client_id: format!("tb-{}-{prefix}{i}", spec.run_id),
        keep_alive: spec.keep_alive,
        username,
        read_buf: READ_CHUNK,
        clean,
    }
}

/// Creates `path` (a script hook) with `contents`.
fn touch(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Connects `n` clients with ids `{prefix}{i}` to `addr`, at most [`SETUP_CONCURRENCY`] at
/// a time, subscribing client `i` to `filters[i]` when given. Returns them in index order.
async fn connect_all(
    spec: &LoadSpec,
    addr: SocketAddr,
    prefix: &str,
    n: usize,
    filters: Option<&[String]>,
    username: Option<String>,
    clean: bool,
) -> Result<(Vec<Conn>, QoS), String> {
    let mut slots: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut granted_min = spec.qos;
    let mut set = JoinSet::new();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < SETUP_CONCURRENCY {
            let opts = connect_opts(spec, prefix, next, username.clone(), clean);
            let (qos, i) = (spec.qos, next);
            let filter = filters.map(|f| f[i].clone());
            set.spawn(async move {
                let mut conn = Conn::connect(addr, &opts)
                    .await
                    .map_err(|e| format!("{}: {e}", opts.client_id))?;
                let granted = match filter {
                    Some(f) => conn
                        .subscribe(&f, qos)
                        .await
                        .map_err(|e| format!("{} subscribe {f}: {e}", opts.client_id))?,
                    None => qos,
                };
                Ok::<_, String>((i, conn, granted))
            });
            next += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok((i, conn, granted)))) => {
                slots[i] = Some(conn);
                granted_min = granted_min.min(granted);
            }
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(format!("setup task failed: {e}")),
            None => {}
        }
    }
    Ok((slots.into_iter().flatten().collect(), granted_min))
}

/// Runs `spec`. `Err` means the run could not be set up (connect or subscribe failed).
pub async fn run(spec: &LoadSpec) -> Result<LoadOutcome, String> {
    let plan = &spec.plan;
    let sub_filters: Vec<String> = plan
        .filters
        .iter()
        .map(|f| prefixed(&spec.sub_topic_prefix, f))
        .collect();
    let clean = !spec.sub_persistent;
    let (subs, granted) = connect_all(
        spec,
        spec.sub_addr,
        "s",
        sub_filters.len(),
        Some(&sub_filters),
        spec.sub_username.clone(),
        clean,
    )
    .await?;
    let (pubs, _) = connect_all(spec, spec.addr, "p", plan.topics.len(), None, None, true).await?;
    let mut notes = Vec::new();
    if granted < spec.qos {
        notes.push(format!(
            "broker granted QoS {} for QoS {} subscriptions",
            granted as u8, spec.qos as u8
        ));
    }

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let topics = Arc::new(plan.topics.clone());
    // Setup is done; give the broker a moment to finish any subscription bookkeeping it
    // does after SUBACK, so the first messages are not lost to a race.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Some(ready) = &spec.hooks.ready {
        touch(ready, "ready\n")?;
    }
    if let Some(go) = &spec.hooks.go {
        while !go.exists() {
            tokio::time::sleep(GO_POLL).await;
        }
    }
    let t0 = clock::now_ns();
    let record_from_ns = t0 + spec.warmup.as_nanos() as u64;

    let topic_prefix = bytes::Bytes::from(spec.sub_topic_prefix.clone().into_bytes());
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let resume = spec.sub_persistent.then(|| Resume {
                addr: spec.sub_addr,
                opts: connect_opts(spec, "s", i, spec.sub_username.clone(), false),
                filter: sub_filters[i].clone(),
                qos: spec.qos,
            });
            let ctx = SubCtx {
                layout: spec.layout.clone(),
                topics: topics.clone(),
                topic_prefix: topic_prefix.clone(),
                counters: counters.clone(),
                stop: stop_rx.clone(),
                record_from_ns,
                resume,
            };
            tokio::spawn(subscriber::run(conn, ctx))
        })
        .collect();

    let n_pubs = plan.topics.len().max(1);
    let end = match spec.length {
        Length::Duration(d) => End::Deadline(t0 + d.as_nanos() as u64),
        Length::Count(c) => End::Count(c),
    };
    let progress = progress::spawn(counters.clone(), spec.phase.clone(), spec.progress);
    // Each task yields the outcomes of its publishers, in publisher order.
    let mut pub_tasks: Vec<tokio::task::JoinHandle<Vec<PubOutcome>>> = Vec::new();
    let mut paced_group = Vec::new();
    for (i, conn) in pubs.into_iter().enumerate() {
        let ctx = PubCtx {
            id: i as u64,
            qos: spec.qos,
            topic: plan.topics[i].clone(),
            layout: spec.layout.clone(),
            counters: counters.clone(),
            start_ns: t0,
            end,
            rate: spec.rate.map(|r| r / n_pubs as f64),
            batch: spec.batch(),
            inflight: spec.inflight,
            drain_timeout: spec.drain_timeout,
        };
        if spec.paced {
            let (stream, leftover) = publisher::into_blocking(conn)?;
            paced_group.push((stream, leftover, ctx));
        } else {
            pub_tasks.push(tokio::spawn(async move {
                vec![publisher::run(conn, ctx).await]
            }));
        }
    }
    if !paced_group.is_empty() {
        pub_tasks.push(tokio::task::spawn_blocking(move || {
            publisher::run_paced_group(paced_group)
        }));
    }

    let mut pub_outs: Vec<PubOutcome> = Vec::new();
    let mut errors = Vec::new();
    for t in pub_tasks {
        match t.await {
            Ok(o) => pub_outs.extend(o),
            Err(e) => errors.push(format!("publisher task failed: {e}")),
        }
    }
    // A publisher task that died reported nothing: count it as having sent nothing, so
    // that outcomes stay indexed by publisher.
    pub_outs.resize_with(plan.topics.len(), PubOutcome::new);
    let sent: Vec<u64> = pub_outs.iter().map(|o| o.sent).collect();
    let expected = plan.expected(&sent);
    if let Some(published) = &spec.hooks.published {
        let total: u64 = sent.iter().sum();
        if let Err(e) = touch(published, &format!("sent {total}\n")) {
            errors.push(e);
        }
    }

    // Drain: until everything expected arrived, nothing arrived for `idle_timeout`, or
    // `drain_timeout` passed.
    let drain_start = Instant::now();
    let (mut last, mut last_change) = (Counters::get(&counters.received), Instant::now());
    while !sub_tasks.is_empty() {
        let got = Counters::get(&counters.received);
        if got >= expected || sub_tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        if got != last {
            (last, last_change) = (got, Instant::now());
        } else if last_change.elapsed() >= spec.idle_timeout {
            break;
        }
        if drain_start.elapsed() >= spec.drain_timeout {
            notes.push(format!(
                "stopped draining after {:.0} s",
                spec.drain_timeout.as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Receivers are gone only if every subscriber already ended, which is reported below.
    let _ = stop_tx.send(true);
    let mut sub_outs = Vec::new();
    for t in sub_tasks {
        match t.await {
            Ok(o) => sub_outs.push(o),
            Err(e) => errors.push(format!("subscriber task failed: {e}")),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }

    for (i, o) in pub_outs.iter().enumerate() {
        if let Some(e) = &o.error {
            errors.push(format!("publisher {i}: {e}"));
        }
    }
    for (i, o) in sub_outs.iter().enumerate() {
        if let Some(e) = &o.error {
            errors.push(format!("subscriber {i}: {e}"));
        }
        if o.reconnects > 0 {
            notes.push(format!(
                "subscriber {i} resumed its persistent session {} times (last lost: {})",
                o.reconnects,
                o.last_disconnect.as_deref().unwrap_or("?")
            ));
        }
        if o.sessions_lost > 0 {
            notes.push(format!(
                "subscriber {i}: the broker had not kept its session {} times (subscribed again; what was routed meanwhile is lost)",
                o.sessions_lost
            ));
        }
    }

    let mut totals = Totals {
        sent: sent.iter().sum(),
        acked: pub_outs.iter().map(|o| o.acked).sum(),
        bad_acks: pub_outs.iter().map(|o| o.bad_acks).sum(),
        expected,
        ..Totals::default()
    };
    if spec.qos == QoS::AtMostOnce {
        totals.acked = totals.sent;
    }
    for o in &sub_outs {
        totals.duplicates += o.tally.duplicates;
        totals.reordered += o.tally.reordered;
        totals.corrupt += o.tally.corrupt;
        totals.foreign += o.tally.foreign;
    }
    let mut count = |got: u64, want: u64| {
        totals.delivered += got.min(want);
        totals.lost += want.saturating_sub(got);
    };
    match plan.topology {
        Topology::Fan => {
            for o in &sub_outs {
                for (p, &s) in sent.iter().enumerate() {
                    count(o.tally.unique_from(p), s);
                }
            }
        }
        Topology::Pairs => {
            for (i, o) in sub_outs.iter().enumerate() {
                count(o.tally.unique_from(i), sent[i]);
                let strays: u64 = (0..sent.len())
                    .filter(|&p| p != i)
                    .map(|p| o.tally.unique_from(p))
                    .sum();
                totals.foreign += strays;
            }
        }
        Topology::Shared if !sub_outs.is_empty() => {
            let group: Vec<&Tally> = sub_outs.iter().map(|o| &o.tally).collect();
            for (p, &s) in sent.iter().enumerate() {
                let (union, sum) = Tally::union_from(&group, p);
                count(union, s);
                totals.duplicates += sum - union;
            }
        }
        Topology::Shared => {}
    }

    let mut latency = new_histogram();
    for o in &sub_outs {
        // Same bounds everywhere: adding cannot fail.
        let _ = latency.add(&o.latency);
    }
    let send_lag = if spec.paced {
        let mut h = new_histogram();
        for o in &pub_outs {
            if let Some(l) = &o.send_lag {
                let _ = h.add(l);
            }
        }
        Some(h)
    } else {
        None
    };
    let secs = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    Ok(LoadOutcome {
        totals,
        granted,
        publish_secs: secs(pub_outs.iter().map(|o| o.last_send_ns).max().unwrap_or(t0)),
        delivery_secs: secs(sub_outs.iter().map(|o| o.last_recv_ns).max().unwrap_or(t0)),
        latency,
        send_lag,
        errors,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::prefixed;

    #[test]
    fn prefix_goes_before_the_filter_and_inside_a_share() {
        assert_eq!(prefixed("", "tb/r/+"), "tb/r/+");
        assert_eq!(prefixed("site/gw1/", "tb/r/+"), "site/gw1/tb/r/+");
        assert_eq!(
            prefixed("site/gw1/", "$share/gr/tb/r/+"),
            "$share/gr/site/gw1/tb/r/+"
        );
    }
}
