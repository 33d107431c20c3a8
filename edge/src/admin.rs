//! The admin HTTP endpoint: `GET /metrics` in the Prometheus text exposition format
//! 0.0.4 and `GET /healthz`; every other path gets 404.
//!
//! Metrics are computed from snapshots when scraped, never counted per message here:
//! each [`MetricsSource`] in the [`Registry`] appends its metric families through a
//! [`MetricsWriter`], which writes `# HELP` and `# TYPE` once per family and escapes
//! label values. The edge registers the broker, the store and its bridge client;
//! `tern-cloud` adds its gateways through [`crate::Edge::add_metrics_source`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tern_bridge::driver::{ClassStatus, StatusSnapshot};
use tern_core::broker::Backlog;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::Server;

/// Content type of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on http://{addr} (admin.bind): {error}")]
pub struct AdminError {
    /// The configured address.
    pub addr: SocketAddr,
    /// The I/O error.
    #[source]
    pub error: std::io::Error,
}

/// Something that contributes metric families to `/metrics`.
pub trait MetricsSource: Send + Sync {
    /// Appends this source's families to `out`, from a snapshot taken now.
    fn render(&self, out: &mut MetricsWriter);
}

/// The kind of a metric family (its `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until a restart); its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Writes metric families in the text exposition format 0.0.4.
#[derive(Debug, Default)]
pub struct MetricsWriter {
    text: String,
    /// Families written so far: each may appear once.
    families: Vec<String>,
}

/// One metric family being written: add its samples.
pub struct Family<'a> {
    text: &'a mut String,
    name: &'a str,
    /// False when the family was already written (its samples are then left out).
    open: bool,
}

impl MetricsWriter {
    /// An empty exposition.
    pub fn new() -> Self {
        MetricsWriter::default()
    }

    /// Starts family `name` (`tern_...`) with its `# HELP` and `# TYPE` lines.
    ///
    /// A family may be written once per exposition (the format requires its samples
    /// to be one group); a second one is left out and logged.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        if self.families.iter().any(|f| f == name) {
            tracing::warn!(metric = name, "metric family written twice; left out");
            return Family {
                text: &mut self.text,
                name,
                open: false,
            };
        }
        self.families.push(name.to_owned());
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        escape_help(&mut self.text, help);
        self.text.push('\n');
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        Family {
            text: &mut self.text,
            name,
            open: true,
        }
    }

    /// Writes a family with a single sample without labels.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// The exposition written so far.
    pub fn finish(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// Adds a sample with `labels` (name, value) and an integer value.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: u64) -> &mut Self {
        if self.write_series(labels) {
            let _ = writeln!(self.text, " {value}");
        }
        self
    }

    /// Adds a sample with `labels` and a fractional value (non-finite values as
    /// `NaN`, `+Inf`, `-Inf`).
    pub fn sample_f64(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        if self.write_series(labels) {
            if value.is_nan() {
                self.text.push_str(" NaN\n");
            } else if value.is_infinite() {
                let sign = if value > 0.0 { '+' } else { '-' };
                let _ = writeln!(self.text, " {sign}Inf");
            } else {
                let _ = writeln!(self.text, " {value}");
            }
        }
        self
    }

    /// Writes `name{labels}`; false when the family is closed.
    fn write_series(&mut self, labels: &[(&str, &str)]) -> bool {
        if !self.open {
            return false;
        }
        self.text.push_str(self.name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(name);
                self.text.push_str("=\"");
                escape_label(self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        true
    }
}

/// Escapes a `# HELP` text: backslash and line feed.
fn escape_help(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The metric sources of one node, rendered in registration order.
#[derive(Default)]
pub struct Registry {
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl Registry {
    /// Adds `source` to every later scrape.
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        self.lock().push(source);
    }

    /// The whole exposition, from snapshots taken now.
    pub fn render(&self) -> String {
        // Rendered outside the lock: a source may take other locks (the broker's).
        let sources = self.lock().clone();
        let mut out = MetricsWriter::new();
        for source in &sources {
            source.render(&mut out);
        }
        out.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn MetricsSource>>> {
        // A panic while pushing leaves a usable list behind.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running endpoint: its address and its task.
pub(crate) struct RunningAdmin {
    /// The bound address (the configured one, with the port picked if it was 0).
    pub(crate) local_addr: SocketAddr,
    /// Serves until shutdown.
    pub(crate) task: JoinHandle<()>,
}

/// The endpoint's socket, bound but not served yet.
pub(crate) struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
}

/// Binds the endpoint's socket (before anything else starts, so that a taken port
/// stops the node before it opens its store).
pub(crate) async fn bind(addr: SocketAddr) -> Result<Bound, AdminError> {
    let wrap = |error| AdminError { addr, error };
    let listener = TcpListener::bind(addr).await.map_err(wrap)?;
    let local_addr = listener.local_addr().map_err(wrap)?;
    Ok(Bound {
        listener,
        local_addr,
    })
}

/// Serves the endpoint on `bound` on the current runtime until `shutdown`.
pub(crate) fn serve(
    bound: Bound,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> RunningAdmin {
    let Bound {
        listener,
        local_addr,
    } = bound;
    tracing::info!("admin listening on http://{local_addr}");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(registry);
    let task = tokio::spawn(async move {
        let stop = async move { crate::server::stopped(&mut shutdown).await };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%error, "admin endpoint stopped");
        }
    });
    RunningAdmin { local_addr, task }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        registry.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

/// The broker's counters and tables, the store's usage, the process's uptime.
pub(crate) struct BrokerMetrics {
    /// The shared broker.
    pub(crate) server: Server,
    /// When this node started.
    pub(crate) started: Instant,
}

impl MetricsSource for BrokerMetrics {
    fn render(&self, out: &mut MetricsWriter) {
        use Kind::{Counter, Gauge};
        let (stats, counts) = self.server.broker_metrics();
        out.family("tern_build_info", Gauge, "Tern version; always 1.")
            .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
        out.family(
            "tern_uptime_seconds",
            Gauge,
            "Seconds since this node started.",
        )
        .sample_f64(&[], self.started.elapsed().as_secs_f64());
        let broker = [
            (
                "tern_clients_connected",
                Gauge,
                "Client connections that completed CONNECT and are open.",
                stats.clients_connected,
            ),
            (
                "tern_messages_received_total",
                Counter,
                "PUBLISH packets received from clients (wills included).",
                stats.messages_received,
            ),
            (
                "tern_messages_sent_total",
                Counter,
                "PUBLISH packets sent to clients (resends included).",
                stats.messages_sent,
            ),
            (
                "tern_messages_dropped_total",
                Counter,
                "Messages dropped because a session queue was full.",
                stats.messages_dropped,
            ),
            (
                "tern_sessions",
                Gauge,
                "Sessions, online and offline (bridge queues included).",
                counts.sessions,
            ),
            (
                "tern_subscriptions",
                Gauge,
                "Subscriptions of all sessions.",
                counts.subscriptions,
            ),
            (
                "tern_retained_messages",
                Gauge,
                "Retained messages.",
                counts.retained,
            ),
        ];
        for (name, kind, help, value) in broker {
            out.single(name, kind, help, value);
        }
        let store = self.server.store_metrics();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        let store = [
            (
                "tern_store_bytes",
                Gauge,
                "Bytes of records in the store.",
                load(&store.bytes),
            ),
            (
                "tern_store_budget_bytes",
                Gauge,
                "The store budget in bytes (store.max_bytes; 0 = unlimited).",
                load(&store.budget),
            ),
            (
                "tern_store_commits_total",
                Counter,
                "Store transactions committed.",
                load(&store.commits),
            ),
            (
                "tern_store_full_refusals_total",
                Counter,
                "Store batches refused because the store budget was reached.",
                load(&store.full_refusals),
            ),
            (
                "tern_store_errors_total",
                Counter,
                "Store batches that failed for another reason than a full store.",
                load(&store.errors),
            ),
        ];
        for (name, kind, help, value) in store {
            out.single(name, kind, help, value);
        }
    }
}

/// One bridge link as seen at scrape time: its labels, its status and the backlog of
/// each outbound class (by class id).
pub struct LinkSnapshot {
    /// Labels that identify the link (e.g. `gateway`); empty for the gateway's own.
    pub labels: Vec<(&'static str, String)>,
    /// The driver's status.
    pub status: StatusSnapshot,
    /// What waits in each outbound queue, by class id.
    pub backlog: Vec<Backlog>,
}

/// Writes the families `<prefix>_connected`, `..._backlog_messages{class}` etc. of
/// `links` (the gateway's bridge: prefix `tern_bridge`; the cloud's gateways:
/// `tern_gateway`, labelled `gateway`). `outbound` says which way the backlog goes.
pub fn render_links(out: &mut MetricsWriter, prefix: &str, outbound: &str, links: &[LinkSnapshot]) {
    use Kind::{Counter, Gauge};
    type LinkValue = fn(&StatusSnapshot) -> u64;
    let per_link: [(&str, Kind, &str, LinkValue); 3] = [
        ("connected", Gauge, "1 while the bridge link is up.", |s| {
            u64::from(s.connected)
        }),
        (
            "connects_total",
            Counter,
            "Bridge handshakes completed.",
            |s| s.connects,
        ),
        (
            "reconnects_total",
            Counter,
            "Bridge handshakes completed after the first.",
            |s| s.reconnects,
        ),
    ];
    for (suffix, kind, help, value) in per_link {
        let name = format!("{prefix}_{suffix}");
        let mut family = out.family(&name, kind, help);
        for link in links {
            let labels: Vec<(&str, &str)> =
                link.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            family.sample(&labels, value(&link.status));
        }
    }
    // Per class, from the class status and its backlog. Values as f64 (exact below
    // 2^53, written without a fraction when whole) so the age can have one.
    type ClassValue = fn(&ClassStatus, &Backlog) -> f64;
    let per_class: [(&str, Kind, String, ClassValue); 10] = [
        (
            "backlog_messages",
            Gauge,
            format!("Messages queued {outbound}, not yet acknowledged."),
            |_, b| b.messages as f64,
        ),
        (
            "backlog_bytes",
            Gauge,
            format!("Payload bytes queued {outbound}, not yet acknowledged."),
            |_, b| b.bytes as f64,
        ),
        (
            "backlog_oldest_seconds",
            Gauge,
            format!("Age of the oldest message queued {outbound} (0: none)."),
            |_, b| b.oldest.map_or(0.0, |d| d.as_secs_f64()),
        ),
        (
            "sent_seq",
            Gauge,
            "Highest outbound sequence sent.".to_owned(),
            |c, _| c.sent_seq as f64,
        ),
        (
            "acked_seq",
            Gauge,
            "Highest outbound sequence the peer acknowledged as durable.".to_owned(),
            |c, _| c.acked_seq as f64,
        ),
        (
            "delivered_seq",
            Gauge,
            "Highest inbound sequence made durable here.".to_owned(),
            |c, _| c.delivered_seq as f64,
        ),
        (
            "messages_sent_total",
            Counter,
            "Outbound messages sent (resends included).".to_owned(),
            |c, _| c.messages_sent as f64,
        ),
        (
            "bytes_sent_total",
            Counter,
            "Outbound batch bytes sent.".to_owned(),
            |c, _| c.bytes_sent as f64,
        ),
        (
            "messages_received_total",
            Counter,
            "Inbound messages received (duplicates included).".to_owned(),
            |c, _| c.messages_received as f64,
        ),
        (
            "bytes_received_total",
            Counter,
            "Inbound topic and payload bytes received.".to_owned(),
            |c, _| c.bytes_received as f64,
        ),
    ];
    for (suffix, kind, help, value) in &per_class {
        let name = format!("{prefix}_{suffix}");
        let mut family = out.family(&name, *kind, help);
        for link in links {
            // Before the first connection the driver may not know the classes yet;
            // the queues are there already.
            let classes = link.status.classes.len().max(link.backlog.len());
            for i in 0..classes {
                let class = link.status.classes.get(i).cloned().unwrap_or_default();
                let backlog = link.backlog.get(i).copied().unwrap_or_default();
                let name = if class.name.is_empty() {
                    i.to_string()
                } else {
                    class.name.clone()
                };
                let mut labels: Vec<(&str, &str)> =
                    link.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                labels.push(("class", name.as_str()));
                family.sample_f64(&labels, value(&class, &backlog));
            }
        }
    }
}

/// The gateway's bridge client: its link to the cloud and its upstream backlog.
pub(crate) struct BridgeMetrics {
    /// The driver's status.
    pub(crate) status: Arc<tern_bridge::driver::Status>,
    /// The upstream queues.
    pub(crate) port: Arc<crate::bridge::BrokerPort>,
}

impl MetricsSource for BridgeMetrics {
    fn render(&self, out: &mut MetricsWriter) {
        let link = LinkSnapshot {
            labels: Vec::new(),
            status: self.status.snapshot(),
            backlog: self.port.backlog(),
        };
        render_links(out, "tern_bridge", "for the cloud", &[link]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_bridge::driver::ClassStatus;

    use super::*;

    /// Every family has exactly one HELP and one TYPE line, right before its samples,
    /// and every sample line belongs to the family above it.
    fn check_format(text: &str) {
        let mut helps = Vec::new();
        let mut current: Option<String> = None;
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name").to_owned();
                assert!(!helps.contains(&name), "HELP twice for {name}:\n{text}");
                let ty = lines.next().expect("TYPE after HELP");
                assert!(
                    ty == format!("# TYPE {name} counter") || ty == format!("# TYPE {name} gauge"),
                    "{ty}"
                );
                if ty.ends_with("counter") {
                    assert!(name.ends_with("_total"), "{name}");
                }
                assert!(name.starts_with("tern_"), "{name}");
                helps.push(name.clone());
                current = Some(name);
            } else {
                assert!(!line.starts_with('#'), "stray comment {line}");
                let family = current.as_deref().expect("sample after a family");
                let series = line.rsplit_once(' ').expect("value").0;
                let name = series.split('{').next().expect("name");
                assert_eq!(name, family, "{line}");
                let value = line.rsplit_once(' ').expect("value").1;
                assert!(
                    value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                    "{line}"
                );
            }
        }
        assert!(text.is_empty() || text.ends_with('\n'));
    }

    #[test]
    fn families_have_help_and_type_once() {
        let mut out = MetricsWriter::new();
        out.single("tern_a_total", Kind::Counter, "A counter.", 3);
        out.family("tern_b", Kind::Gauge, "A gauge.")
            .sample(&[("x", "1")], 1)
            .sample(&[("x", "2")], 2);
        out.family("tern_b", Kind::Gauge, "Again.")
            .sample(&[("x", "3")], 3);
        let text = out.finish();
        check_format(&text);
        assert_eq!(
            text,
            "# HELP tern_a_total A counter.\n# TYPE tern_a_total counter\ntern_a_total 3\n\
             # HELP tern_b A gauge.\n# TYPE tern_b gauge\ntern_b{x=\"1\"} 1\ntern_b{x=\"2\"} 2\n"
        );
    }

    #[test]
    fn labels_and_help_are_escaped() {
        let mut out = MetricsWriter::new();
        out.family(
            "tern_c",
            Kind::Gauge,
            "Back\\slash and\nnewline \"quoted\".",
        )
        .sample(&[("gateway", "a\"b\\c\nd"), ("class", "bulk")], 7);
        let text = out.finish();
        assert_eq!(
            text,
            "# HELP tern_c Back\\\\slash and\\nnewline \"quoted\".\n# TYPE tern_c gauge\n\
             tern_c{gateway=\"a\\\"b\\\\c\\nd\",class=\"bulk\"} 7\n"
        );
    }

    #[test]
    fn fractional_and_special_values() {
        let mut out = MetricsWriter::new();
        out.family("tern_d_seconds", Kind::Gauge, "Seconds.")
            .sample_f64(&[("k", "a")], 1.5)
            .sample_f64(&[("k", "b")], 2.0)
            .sample_f64(&[("k", "c")], f64::INFINITY)
            .sample_f64(&[("k", "d")], f64::NAN);
        let text = out.finish();
        check_format(&text);
        assert!(text.contains("tern_d_seconds{k=\"a\"} 1.5\n"), "{text}");
        assert!(text.contains("tern_d_seconds{k=\"b\"} 2\n"), "{text}");
        assert!(text.contains("tern_d_seconds{k=\"c\"} +Inf\n"), "{text}");
        assert!(text.contains("tern_d_seconds{k=\"d\"} NaN\n"), "{text}");
    }

    fn link(gateway: &str, connected: bool) -> LinkSnapshot {
        let class = |name: &str, acked| ClassStatus {
            name: name.to_owned(),
            acked_seq: acked,
            messages_sent: acked + 1,
            ..ClassStatus::default()
        };
        LinkSnapshot {
            labels: vec![("gateway", gateway.to_owned())],
            status: StatusSnapshot {
                connected,
                reconnects: 2,
                classes: vec![class("alarm", 10), class("bulk", 20)],
                ..StatusSnapshot::default()
            },
            backlog: vec![
                Backlog {
                    messages: 4,
                    bytes: 400,
                    oldest: Some(Duration::from_millis(2500)),
                    last_seq: 14,
                },
                Backlog::default(),
            ],
        }
    }

    #[test]
    fn links_render_one_family_per_metric_with_every_link() {
        let mut out = MetricsWriter::new();
        render_links(
            &mut out,
            "tern_gateway",
            "for the gateway",
            &[link("gw-1", true), link("gw-2", false)],
        );
        let text = out.finish();
        check_format(&text);
        for line in [
            "tern_gateway_connected{gateway=\"gw-1\"} 1\n",
            "tern_gateway_connected{gateway=\"gw-2\"} 0\n",
            "tern_gateway_reconnects_total{gateway=\"gw-2\"} 2\n",
            "tern_gateway_backlog_messages{gateway=\"gw-1\",class=\"alarm\"} 4\n",
            "tern_gateway_backlog_bytes{gateway=\"gw-1\",class=\"alarm\"} 400\n",
            "tern_gateway_backlog_oldest_seconds{gateway=\"gw-1\",class=\"alarm\"} 2.5\n",
            "tern_gateway_backlog_oldest_seconds{gateway=\"gw-1\",class=\"bulk\"} 0\n",
            "tern_gateway_acked_seq{gateway=\"gw-2\",class=\"bulk\"} 20\n",
            "tern_gateway_messages_sent_total{gateway=\"gw-1\",class=\"bulk\"} 21\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn classes_not_yet_named_are_numbered() {
        let mut out = MetricsWriter::new();
        let link = LinkSnapshot {
            labels: Vec::new(),
            status: StatusSnapshot::default(),
            backlog: vec![Backlog::default(); 2],
        };
        render_links(&mut out, "tern_bridge", "for the cloud", &[link]);
        let text = out.finish();
        check_format(&text);
        assert!(
            text.contains("tern_bridge_backlog_messages{class=\"1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("tern_bridge_connected 0\n"), "{text}");
    }

    struct Fixed(&'static str);

    impl MetricsSource for Fixed {
        fn render(&self, out: &mut MetricsWriter) {
            out.single(self.0, Kind::Gauge, "Fixed.", 1);
        }
    }

    #[test]
    fn registry_renders_sources_in_order() {
        let registry = Registry::default();
        registry.register(Arc::new(Fixed("tern_first")));
        registry.register(Arc::new(Fixed("tern_second")));
        let text = registry.render();
        check_format(&text);
        let first = text.find("tern_first 1").expect("first");
        let second = text.find("tern_second 1").expect("second");
        assert!(first < second, "{text}");
    }
}
