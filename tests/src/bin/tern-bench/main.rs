//! `tern-bench`: load generator and measurement tool for MQTT brokers (Tern, Mosquitto,
//! NATS, anything that speaks MQTT 3.1.1).
//!
//! Every scenario verifies what it receives — counts, per-publisher order, duplicates,
//! corruption, misrouting — and a fast figure with lost messages is a failure (exit 1).
//! Setup failures exit 2. Results go to stdout as a table, or as JSON with `--json`; a
//! progress line goes to stderr every second.
//!
//! Modules: `client` (lean MQTT client), `payload` (what each message carries),
//! `verify` (tallies and pass/fail rules), `scenario::*` (the scenarios), `sink` (a
//! do-nothing server for the tool's own ceiling), `report` (table and JSON), `progress`,
//! `clock`, `sys` (/proc and process limits).

mod client;
mod clock;
mod payload;
mod progress;
mod report;
mod scenario;
mod sink;
mod sys;
mod verify;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use scenario::ceiling::{self, CeilingArgs};
use scenario::connections::{self, ConnArgs};
use scenario::latency::{self, LatencyArgs};
use scenario::throughput::{self, LoadArgs, FAN, FAN_IN, FAN_OUT, PAIRS, SHARED};
use sink::SinkArgs;

/// Load generator and measurement tool for MQTT brokers.
#[derive(Debug, Parser)]
#[command(name = "tern-bench", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

const EXAMPLES: &str = "Examples:
  tern-bench --port 1883 fan -p 4 -S 4 -q 0 -d 10     4x4, every subscriber gets everything
  tern-bench --port 1883 pairs -p 4 -q 1               4 publisher/subscriber pairs at QoS 1
  tern-bench --port 1883 latency -p 4 --rate 20000     open-loop latency at 20,000 msg/s
  tern-bench --port 1883 --broker-pid PID connections -n 10000
  tern-bench ceiling                                   tern-bench against its own sink
  tern-bench --port 1883 --sub-port 1884 --sub-topic-prefix site/gw1/ fan-in -q 1 --strict
                                                       through a bridge: publish on the edge,
                                                       verify on the cloud under the prefix

Exit status: 0 passed, 1 verification failed (loss at QoS >= 1, corruption, misrouting, ...),
2 setup failed (connect, subscribe, arguments).";

/// Options every scenario takes, before or after its name.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Broker host.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker MQTT port.
    #[arg(long, global = true, default_value_t = 1883)]
    pub port: u16,
    /// Print the report as one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Label to put in the report (e.g. the broker's name).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Broker process id: adds its CPU time and RSS (from /proc) to the report.
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
    /// Worker threads of tern-bench's runtime (default: one per CPU).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// No progress line on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Host of the subscribers' broker (default: --host), e.g. the cloud end of a bridge.
    #[arg(long, global = true)]
    pub sub_host: Option<String>,
    /// MQTT port of the subscribers' broker (default: --port).
    #[arg(long, global = true)]
    pub sub_port: Option<u16>,
    /// Subscribers subscribe to PREFIX + their filters and strip PREFIX from the topics
    /// they receive before verifying them (a bridge's remote prefix, e.g. `site/gw1/`).
    #[arg(long, global = true, value_name = "PREFIX", default_value = "")]
    pub sub_topic_prefix: String,
}

impl Global {
    /// The broker's socket address.
    pub fn addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.host, self.port)
    }

    /// The subscribers' broker's socket address.
    pub fn sub_addr(&self) -> Result<SocketAddr, String> {
        resolve(self.sub_host(), self.sub_port())
    }

    fn sub_host(&self) -> &str {
        self.sub_host.as_deref().unwrap_or(&self.host)
    }

    fn sub_port(&self) -> u16 {
        self.sub_port.unwrap_or(self.port)
    }

    /// `host:port`, for reports; with the subscribers' broker and prefix when they differ.
    pub fn target_string(&self) -> String {
        let mut s = format!("{}:{}", self.host, self.port);
        if self.sub_host() != self.host || self.sub_port() != self.port {
            s.push_str(&format!(
                " → subscribers {}:{}",
                self.sub_host(),
                self.sub_port()
            ));
        }
        if !self.sub_topic_prefix.is_empty() {
            s.push_str(&format!(" (topics under {})", self.sub_topic_prefix));
        }
        s
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N publishers → 1 subscriber on a wildcard filter (defaults: 4 → 1).
    FanIn(LoadArgs),
    /// 1 publisher → N subscribers of its topic (defaults: 1 → 4).
    FanOut(LoadArgs),
    /// N publishers → M subscribers, every subscriber receives every message (defaults: 4 × 4).
    Fan(LoadArgs),
    /// N publishers each to its own subscriber (default: 4 pairs).
    Pairs(LoadArgs),
    /// N publishers → one $share group of M subscribers (defaults: 4 → 4).
    Shared(LoadArgs),
    /// End-to-end latency at a fixed rate, open-loop (defaults: 1 pair, --rate required).
    Latency(LatencyArgs),
    /// Open N idle connections at a rate; connect rate, failures, broker memory per connection.
    Connections(ConnArgs),
    /// tern-bench's own ceiling, against a do-nothing sink server it starts.
    Ceiling(CeilingArgs),
    /// Run the do-nothing sink server (used by `ceiling`).
    Sink(SinkArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clock::start();
    let threads = cli.global.threads.unwrap_or_else(sys::cpus).max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(dispatch(&cli));
    // Paced publisher threads have finished by now; do not wait on anything stuck.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn dispatch(cli: &Cli) -> ExitCode {
    let g = &cli.global;
    let report = match &cli.cmd {
        Cmd::FanIn(a) => throughput::run(FAN_IN, a, g, None).await,
        Cmd::FanOut(a) => throughput::run(FAN_OUT, a, g, None).await,
        Cmd::Fan(a) => throughput::run(FAN, a, g, None).await,
        Cmd::Pairs(a) => throughput::run(PAIRS, a, g, None).await,
        Cmd::Shared(a) => throughput::run(SHARED, a, g, None).await,
        Cmd::Latency(a) => latency::run(a, g).await,
        Cmd::Connections(a) => connections::run(a, g).await,
        Cmd::Ceiling(a) => ceiling::run(a, g).await,
        Cmd::Sink(a) => {
            return match sink::serve(a).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tern-bench sink: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    if g.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else if report.failures.iter().any(|f| f.starts_with("setup:")) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
