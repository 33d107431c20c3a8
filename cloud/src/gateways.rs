//! The gateways the cloud knows: one bridge port per gateway, over its downstream
//! queues (`$bridge/<gateway>/down/<class>`) and its inbound cursors
//! (`in/<gateway>/<class>`).
//!
//! A gateway's downstream queues exist from its first Hello on, in the store, so
//! commands published for it while it is offline are kept until it returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tern_bridge::driver::ServerStatus;
use tern_bridge::{Port, PortFactory};
use tern_core::message::QoS;
use tern_edge::admin::{render_links, LinkSnapshot, MetricsSource, MetricsWriter};
use tern_edge::bridge::{BrokerPort, OutboundRule, PortOpener, PortSpec};

/// Opens (and reuses) one port per gateway.
pub(crate) struct Gateways {
    opener: PortOpener,
    max_queued_messages: usize,
    /// Downstream filters must name the gateway (see `check_downstream`).
    restrict_downstream: bool,
    /// Open ports with the Hello they were opened for.
    ports: Mutex<HashMap<String, (PortSpec, Arc<BrokerPort>)>>,
}

impl Gateways {
    /// Ports on the broker behind `opener`, each queue holding at most
    /// `max_queued_messages`; with `restrict_downstream`, a gateway may only subscribe
    /// to filters that name it.
    pub(crate) fn new(
        opener: PortOpener,
        max_queued_messages: usize,
        restrict_downstream: bool,
    ) -> Self {
        Gateways {
            opener,
            max_queued_messages,
            restrict_downstream,
            ports: Mutex::new(HashMap::new()),
        }
    }
}

/// A downstream filter a gateway asks for must be a valid filter and, when restricted,
/// have the gateway id as one of its levels before any wildcard (`commands/gw1/#`), so a
/// gateway's certificate does not open the cloud's other traffic to it.
fn check_downstream(gateway_id: &str, filter: &str, restricted: bool) -> Result<(), String> {
    if !tern_core::mqtt::topic::valid_topic_filter(filter, 0) {
        return Err(format!("downstream filter {filter:?} is not valid"));
    }
    if filter.starts_with("$share/") {
        return Err(format!(
            "downstream filter {filter:?}: shared subscriptions are not bridged"
        ));
    }
    let names_gateway = filter
        .split('/')
        .take_while(|level| *level != "+" && *level != "#")
        .any(|level| level == gateway_id);
    if restricted && !names_gateway {
        return Err(format!(
            "downstream filter {filter:?} does not name gateway {gateway_id:?} before its \
             wildcards (acceptor.restrict_downstream)"
        ));
    }
    Ok(())
}

impl PortFactory for Gateways {
    fn open(
        &self,
        gateway_id: &str,
        classes: u8,
        downstream: &[(String, u8)],
    ) -> Result<Arc<dyn Port>, String> {
        if gateway_id.is_empty() || gateway_id.contains(['/', '+', '#']) {
            return Err(format!(
                "gateway id {gateway_id:?} is not usable in a topic"
            ));
        }
        let mut outbound = vec![Vec::new(); usize::from(classes)];
        for (filter, class) in downstream {
            check_downstream(gateway_id, filter, self.restrict_downstream)?;
            let Some(rules) = outbound.get_mut(usize::from(*class)) else {
                return Err(format!(
                    "downstream filter {filter:?} names class {class}, of {classes}"
                ));
            };
            rules.push(OutboundRule {
                filter: filter.clone(),
                qos: QoS::ExactlyOnce,
                remote_prefix: String::new(),
            });
        }
        let spec = PortSpec {
            queue_prefix: format!("{gateway_id}/down/"),
            outbound,
            max_queued_messages: self.max_queued_messages,
            origin: format!("$bridge/{gateway_id}"),
            cursor_prefix: format!("in/{gateway_id}/"),
        };
        // A poisoned lock only means another gateway's open panicked; the map is intact.
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, port)) = ports.get(gateway_id) {
            if *known == spec {
                return Ok(Arc::clone(port) as Arc<dyn Port>);
            }
        }
        let port = self.opener.open(spec.clone());
        ports.insert(gateway_id.to_owned(), (spec, Arc::clone(&port)));
        Ok(port)
    }
}

impl Gateways {
    /// Every known gateway's id and port, sorted by id.
    fn ports(&self) -> Vec<(String, Arc<BrokerPort>)> {
        let ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = ports
            .iter()
            .map(|(id, (_, port))| (id.clone(), Arc::clone(port)))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Publishes every known gateway's link state and downstream backlog under
    /// `$SYS/bridge/gateways/<id>/...`.
    pub(crate) fn report(&self, status: &ServerStatus) {
        for (id, port) in self.ports() {
            let snapshot = status.gateway(&id).unwrap_or_default();
            self.opener.publish_status(
                &format!("bridge/gateways/{id}"),
                &snapshot,
                &port.backlog(),
            );
        }
    }
}

/// The gateways on `/metrics`: per gateway its link and, per class, the commands
/// queued for it (`tern_gateway_*{gateway="...",class="..."}`).
pub(crate) struct GatewayMetrics {
    /// The known gateways and their ports.
    pub(crate) gateways: Arc<Gateways>,
    /// The acceptor's per-gateway status.
    pub(crate) status: Arc<ServerStatus>,
}

impl MetricsSource for GatewayMetrics {
    fn render(&self, out: &mut MetricsWriter) {
        let links: Vec<LinkSnapshot> = self
            .gateways
            .ports()
            .into_iter()
            .map(|(id, port)| LinkSnapshot {
                status: self.status.gateway(&id).unwrap_or_default(),
                backlog: port.backlog(),
                labels: vec![("gateway", id)],
            })
            .collect();
        render_links(out, "tern_gateway", "for the gateway", &links);
    }
}

#[cfg(test)]
mod tests {
    use super::check_downstream;

    #[test]
    fn downstream_filters_must_name_their_gateway() {
        assert!(check_downstream("gw1", "commands/gw1/#", true).is_ok());
        assert!(check_downstream("gw1", "gw1/+/set", true).is_ok());
        assert!(check_downstream("gw1", "commands/gw1", true).is_ok());
        for filter in [
            "#",
            "commands/#",
            "commands/+/gw1",
            "commands/gw10/#",
            "x/gw1x",
        ] {
            assert!(check_downstream("gw1", filter, true).is_err(), "{filter}");
        }
        assert!(check_downstream("gw1", "#", false).is_ok(), "unrestricted");
        assert!(check_downstream("gw1", "a/#/b", false).is_err(), "invalid");
        assert!(check_downstream("gw1", "$share/g/commands/gw1/#", false).is_err());
    }
}
