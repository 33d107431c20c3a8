//! The latency scenario: publishers paced on an open-loop schedule at a fixed total rate,
//! end-to-end latency measured from each message's *intended* send time to its arrival,
//! so that a stall at the broker (or in tern-bench) is charged to every message it
//! delayed rather than hidden by a publisher that waited (no coordinated omission).
//!
//! tern-bench's own share is shown separately as the send lag: how late the paced
//! publishers actually wrote against their schedule.

use std::time::Duration;

use clap::Args;

use super::throughput::{self, LoadArgs, Paced, Preset};
use super::Topology;
use crate::report::Report;
use crate::Global;

/// Options of the latency scenario.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Publishers, subscribers, QoS, payload, rate (required), duration.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Seconds at the start whose messages are verified but not timed.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Every subscriber gets every message (`fan`) or publisher i → subscriber i (`pairs`).
    #[arg(long, value_parser = ["pairs", "fan"], default_value = "pairs")]
    pub topology: String,
}

/// Runs the latency scenario.
pub async fn run(args: &LatencyArgs, global: &Global) -> Report {
    let topology = if args.topology == "fan" {
        Topology::Fan
    } else {
        Topology::Pairs
    };
    let preset = Preset {
        name: "latency",
        topology,
        publishers: 1,
        subscribers: None,
    };
    let paced = Paced {
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
    };
    throughput::run(preset, &args.load, global, Some(paced)).await
}
