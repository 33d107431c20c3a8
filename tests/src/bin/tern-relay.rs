//! `tern-relay`: the link-impairing relay of `tern_tests::relay` as a command, so that
//! scripts (the bridge benchmark) can put a bad link between a gateway and its cloud.
//!
//! It listens on `--listen`, forwards to `--upstream` over UDP (QUIC), TCP (the TLS
//! fallback) or both on the same port (the default, like the bridge acceptor), and
//! applies the same impairment to each direction. It runs until SIGTERM or SIGINT, then
//! prints its counters on stdout and exits 0.
//!
//! The first line on stdout is `listening on ADDR` (useful with port 0); the counters at
//! the end are `key=value` lines that a script can read without a parser.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tern_tests::relay::{DirStats, Impairment, Relay, Stats};
use tokio::signal::unix::{signal, SignalKind};

/// Relays UDP and/or TCP between a client and an upstream address, impairing the link.
#[derive(Debug, Parser)]
#[command(name = "tern-relay", version, after_help = EXAMPLES)]
struct Cli {
    /// Address to listen on (port 0 picks a free one; see the first line of output).
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Relay UDP only (QUIC).
    #[arg(long, conflicts_with = "tcp")]
    udp: bool,
    /// Relay TCP only (TLS-over-TCP fallback).
    #[arg(long)]
    tcp: bool,
    /// One-way delay added in each direction, ms (the round trip grows by twice this).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra delay drawn uniformly from [0, jitter] per datagram or chunk, ms.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability (0 to 1) that a UDP datagram is lost.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Probability (0 to 1) that a UDP datagram is held back so later ones overtake it.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Link rate per direction, bits per second (0 = no cap).
    #[arg(long, default_value_t = 0)]
    rate_bits: u64,
    /// Seed of every random decision (the same seed gives the same loss pattern).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const EXAMPLES: &str = "Example: 200 ms round trip, 2 % loss, 1 Mbit/s each way, UDP only
  tern-relay --listen 127.0.0.1:17883 --upstream 127.0.0.1:7883 --udp \\
             --delay-ms 100 --loss 0.02 --rate-bits 1000000 --seed 7

Runs until SIGTERM or SIGINT, then prints its counters (key=value lines) and exits 0.
Exit status 2: bad arguments or the address could not be bound.";

/// Parses a probability between 0 and 1.
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not between 0 and 1"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let impairment = Impairment {
        delay: Duration::from_millis(cli.delay_ms),
        jitter: Duration::from_millis(cli.jitter_ms),
        loss: cli.loss,
        reorder: cli.reorder,
        rate_bits_per_sec: (cli.rate_bits > 0).then_some(cli.rate_bits),
        seed: cli.seed,
    };
    let (kind, started) = if cli.udp {
        ("udp", Relay::udp(cli.listen, cli.upstream, impairment))
    } else if cli.tcp {
        ("tcp", Relay::tcp(cli.listen, cli.upstream, impairment))
    } else {
        (
            "udp+tcp",
            Relay::udp_and_tcp(cli.listen, cli.upstream, impairment),
        )
    };
    let relay = match started {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern-relay: cannot listen on {} ({kind}): {e}", cli.listen);
            return ExitCode::from(2);
        }
    };
    println!("listening on {} ({kind})", relay.local_addr());
    println!(
        "forwarding to {}: delay {} ms, jitter {} ms, loss {}, reorder {}, rate {} bit/s, seed {}",
        cli.upstream, cli.delay_ms, cli.jitter_ms, cli.loss, cli.reorder, cli.rate_bits, cli.seed
    );
    let start = Instant::now();
    if let Err(e) = wait_for_signal() {
        eprintln!("tern-relay: cannot wait for signals: {e}");
        return ExitCode::from(2);
    }
    let stats = relay.stats();
    let secs = start.elapsed().as_secs_f64();
    drop(relay);
    print!("{}", render(&stats, secs));
    ExitCode::SUCCESS
}

/// Blocks until SIGTERM or SIGINT arrives.
fn wait_for_signal() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

/// The counters as `key=value` lines.
fn render(s: &Stats, secs: f64) -> String {
    let mut out = format!("stopped secs={secs:.3} flows={}\n", s.flows);
    for (name, d) in [("to_upstream", &s.to_upstream), ("to_client", &s.to_client)] {
        out.push_str(&dir_line(name, d, secs));
    }
    out
}

/// One direction's counters on one line.
fn dir_line(name: &str, d: &DirStats, secs: f64) -> String {
    let rate = if secs > 0.0 {
        d.forwarded_bytes as f64 * 8.0 / secs
    } else {
        0.0
    };
    format!(
        "{name} received={} received_bytes={} forwarded={} forwarded_bytes={} \
         dropped_loss={} dropped_blackhole={} dropped_queue={} dropped_error={} \
         reordered={} forwarded_bits_per_sec={rate:.0}\n",
        d.received,
        d.received_bytes,
        d.forwarded,
        d.forwarded_bytes,
        d.dropped_loss,
        d.dropped_blackhole,
        d.dropped_queue,
        d.dropped_error,
        d.reordered,
    )
}
