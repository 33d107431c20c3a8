//! Scenarios: who publishes where, who subscribes to what, and so what each subscriber
//! must receive.
//!
//! `fan-in`, `fan-out`, `fan`, `pairs` and `shared` are one engine ([`load`]) over three
//! topologies; `latency` is the same engine with paced publishers; `connections` and
//! `ceiling` have their own drivers.

pub mod ceiling;
pub mod connections;
pub mod latency;
pub mod load;
pub mod publisher;
pub mod subscriber;
pub mod throughput;

use bytes::Bytes;
use serde::Serialize;

/// How publishers' topics map onto subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Every subscriber receives every publisher's messages (wildcard filter; exact topic
    /// when there is one publisher). fan-in is N×1, fan-out 1×N.
    Fan,
    /// Publisher *i* to subscriber *i*, exact topics.
    Pairs,
    /// All subscribers form one `$share` group; each message goes to one member.
    Shared,
}

/// Topics and filters of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The topology.
    pub topology: Topology,
    /// Topic of each publisher.
    pub topics: Vec<Bytes>,
    /// Filter of each subscriber.
    pub filters: Vec<String>,
}

impl Plan {
    /// Topics `{prefix}/{run}/{i}` and the filters `topology` calls for.
    pub fn new(
        topology: Topology,
        prefix: &str,
        run: &str,
        publishers: usize,
        subscribers: usize,
    ) -> Result<Plan, String> {
        let topics: Vec<Bytes> = (0..publishers)
            .map(|i| Bytes::from(format!("{prefix}/{run}/{i}")))
            .collect();
        let wildcard = format!("{prefix}/{run}/+");
        let filters = match topology {
            Topology::Fan if publishers == 1 => vec![format!("{prefix}/{run}/0"); subscribers],
            Topology::Fan => vec![wildcard; subscribers],
            Topology::Pairs => {
                if publishers != subscribers {
                    return Err(format!("pairs needs as many subscribers as publishers ({publishers} ≠ {subscribers})"));
                }
                (0..publishers)
                    .map(|i| format!("{prefix}/{run}/{i}"))
                    .collect()
            }
            Topology::Shared => vec![format!("$share/g{run}/{wildcard}"); subscribers],
        };
        Ok(Plan {
            topology,
            topics,
            filters,
        })
    }

    /// Deliveries the topology calls for, given what each publisher sent.
    pub fn expected(&self, sent: &[u64]) -> u64 {
        let total: u64 = sent.iter().sum();
        match self.topology {
            Topology::Fan => total * self.filters.len() as u64,
            Topology::Pairs => total,
            Topology::Shared if self.filters.is_empty() => 0,
            Topology::Shared => total,
        }
    }
}

/// A short id that keeps the topics and client ids of concurrent or successive runs apart.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
    format!(
        "{:06x}",
        (nanos ^ (u64::from(std::process::id()) << 20)) & 0xff_ffff
    )
}
