//! Access control lists: who may publish to and subscribe to which topics.
//!
//! Rules are read top to bottom and the first rule that applies decides, as in
//! EMQX's `acl.conf`; when none applies, `no_match` decides (deny by default, as in
//! Mosquitto once an ACL file is set). A rule applies to an identity by user name,
//! client id, certificate identity, or to everyone; its topic pattern may use `%u`
//! (user name) and `%c` (client id), and a rule that needs `%u` does not apply to an
//! anonymous client.
//!
//! A publish is checked against the topic name. A subscription is allowed when the
//! whole filter lies inside an allowed pattern; then every message delivered through
//! it is checked too (a "read" check), so a deny rule narrower than the filter still
//! holds back the topics it names — retained messages included.

use serde::{Deserialize, Serialize};

use crate::mqtt::topic::{matches, parse_shared};

use super::Identity;

/// What a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name (wills and retained messages included).
    Publish,
    /// Subscribe with a filter, and receive a message through it.
    Subscribe,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Let it happen.
    Allow,
    /// Refuse it.
    #[default]
    Deny,
}

/// Which actions a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Publishing only.
    Publish,
    /// Subscribing (and receiving) only.
    Subscribe,
    /// Both.
    #[default]
    All,
}

/// One ACL rule, as written in a profile's `[[acl.rules]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    #[serde(default)]
    pub action: RuleAction,
    /// Applies only to this user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Applies only to this client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Applies only to this certificate identity (CN or SAN of a TLS client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Topic pattern (MQTT filter syntax, `%u` and `%c` substituted).
    pub topic: String,
}

/// An ordered list of rules with a default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Acl {
    /// Rules, first match wins.
    pub rules: Vec<AclRule>,
    /// What happens when no rule applies.
    pub no_match: Permission,
}

impl Acl {
    /// May `who` perform `action` on `topic` (a topic name for publish, a filter for
    /// subscribe; `$share/<group>/` is looked through)?
    pub fn allows(&self, who: &Identity, action: Action, topic: &str) -> bool {
        let topic = match (action, parse_shared(topic)) {
            (Action::Subscribe, Some((_, inner))) => inner,
            _ => topic,
        };
        for rule in &self.rules {
            if !rule.covers(who, action) {
                continue;
            }
            let Some(pattern) = substitute(&rule.topic, who) else {
                continue;
            };
            let hit = match action {
                Action::Publish => matches(&pattern, topic),
                Action::Subscribe => filter_within(&pattern, topic),
            };
            if hit {
                return rule.permission == Permission::Allow;
            }
        }
        self.no_match == Permission::Allow
    }

    /// May a message on topic name `topic` be delivered to `who` through a
    /// subscription? Checks the rules for subscribing as if to the topic itself.
    pub fn allows_read(&self, who: &Identity, topic: &str) -> bool {
        for rule in &self.rules {
            if !rule.covers(who, Action::Subscribe) {
                continue;
            }
            let Some(pattern) = substitute(&rule.topic, who) else {
                continue;
            };
            if matches(&pattern, topic) {
                return rule.permission == Permission::Allow;
            }
        }
        self.no_match == Permission::Allow
    }

    /// True when no rule can ever deny: reads need no check per message.
    pub fn reads_unrestricted(&self) -> bool {
        self.no_match == Permission::Allow
            && self
                .rules
                .iter()
                .all(|r| r.permission == Permission::Allow || r.action == RuleAction::Publish)
    }
}

impl AclRule {
    fn covers(&self, who: &Identity, action: Action) -> bool {
        let action_ok = match self.action {
            RuleAction::All => true,
            RuleAction::Publish => action == Action::Publish,
            RuleAction::Subscribe => action == Action::Subscribe,
        };
        action_ok
            && self
                .user
                .as_deref()
                .is_none_or(|u| who.username.as_deref() == Some(u))
            && self.client.as_deref().is_none_or(|c| &*who.client_id == c)
            && self
                .certificate
                .as_deref()
                .is_none_or(|c| who.certificate.as_deref() == Some(c))
    }
}

/// The pattern with `%u` and `%c` replaced; `None` if it needs a user name that the
/// client did not give. A substituted value containing a wildcard or `/` cannot be
/// used to widen the pattern: such a rule does not apply.
fn substitute(pattern: &str, who: &Identity) -> Option<String> {
    if !pattern.contains('%') {
        return Some(pattern.to_owned());
    }
    let unsafe_value = |v: &str| v.contains(['+', '#', '/']) || v.is_empty();
    let mut out = pattern.to_owned();
    if out.contains("%u") {
        let user = who.username.as_deref()?;
        if unsafe_value(user) {
            return None;
        }
        out = out.replace("%u", user);
    }
    if out.contains("%c") {
        if unsafe_value(&who.client_id) {
            return None;
        }
        out = out.replace("%c", &who.client_id);
    }
    Some(out)
}

/// True when every topic matched by `filter` is also matched by `pattern`.
fn filter_within(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    let mut first = true;
    loop {
        match (p.next(), f.next()) {
            // A leading wildcard in the pattern does not reach `$` topics.
            (Some("#" | "+"), Some(level)) if first && level.starts_with('$') => return false,
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(pl), Some(fl)) if pl == fl && fl != "+" && fl != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: Option<&str>, client: &str) -> Identity {
        Identity {
            username: user.map(Into::into),
            client_id: client.into(),
            certificate: None,
        }
    }

    fn rule(permission: Permission, action: RuleAction, topic: &str) -> AclRule {
        AclRule {
            permission,
            action,
            user: None,
            client: None,
            certificate: None,
            topic: topic.into(),
        }
    }

    #[test]
    fn first_matching_rule_wins_then_no_match() {
        let acl = Acl {
            rules: vec![
                rule(Permission::Deny, RuleAction::All, "secret/#"),
                rule(Permission::Allow, RuleAction::All, "#"),
            ],
            no_match: Permission::Deny,
        };
        let w = who(Some("u"), "c");
        assert!(acl.allows(&w, Action::Publish, "a/b"));
        assert!(!acl.allows(&w, Action::Publish, "secret/x"));
        assert!(acl.allows(&w, Action::Subscribe, "a/#"));
        // `#` is allowed as a filter, but reads of secret topics are still refused.
        assert!(!acl.allows_read(&w, "secret/x"));
        assert!(!Acl::default().allows(&w, Action::Publish, "a"));
    }

    #[test]
    fn substitution_of_user_and_client() {
        let acl = Acl {
            rules: vec![
                rule(Permission::Allow, RuleAction::Publish, "devices/%c/up"),
                rule(Permission::Allow, RuleAction::Subscribe, "users/%u/#"),
            ],
            no_match: Permission::Deny,
        };
        let alice = who(Some("alice"), "dev1");
        assert!(acl.allows(&alice, Action::Publish, "devices/dev1/up"));
        assert!(!acl.allows(&alice, Action::Publish, "devices/dev2/up"));
        assert!(acl.allows(&alice, Action::Subscribe, "users/alice/+"));
        assert!(!acl.allows(&alice, Action::Subscribe, "users/bob/x"));
        // No user name: the %u rule does not apply.
        assert!(!acl.allows(&who(None, "dev1"), Action::Subscribe, "users//x"));
        // A client id with a wildcard cannot widen the pattern.
        assert!(!acl.allows(&who(None, "+"), Action::Publish, "devices/x/up"));
    }

    #[test]
    fn subscribe_filters_must_lie_inside_the_pattern() {
        let acl = Acl {
            rules: vec![rule(Permission::Allow, RuleAction::Subscribe, "a/+/c")],
            no_match: Permission::Deny,
        };
        let w = who(None, "c");
        assert!(acl.allows(&w, Action::Subscribe, "a/b/c"));
        assert!(acl.allows(&w, Action::Subscribe, "a/+/c"));
        assert!(!acl.allows(&w, Action::Subscribe, "a/#"));
        assert!(!acl.allows(&w, Action::Subscribe, "a/+/+"));
        assert!(acl.allows(&w, Action::Subscribe, "$share/g/a/b/c"));
        // Publishing is not covered by a subscribe rule.
        assert!(!acl.allows(&w, Action::Publish, "a/b/c"));
    }

    #[test]
    fn rules_for_a_user_client_or_certificate() {
        let mut by_user = rule(Permission::Allow, RuleAction::All, "#");
        by_user.user = Some("admin".into());
        let mut by_cert = rule(Permission::Allow, RuleAction::All, "gw/#");
        by_cert.certificate = Some("gateway-7".into());
        let acl = Acl {
            rules: vec![by_user, by_cert],
            no_match: Permission::Deny,
        };
        assert!(acl.allows(&who(Some("admin"), "x"), Action::Publish, "any"));
        assert!(!acl.allows(&who(Some("bob"), "x"), Action::Publish, "any"));
        let mut gw = who(None, "x");
        gw.certificate = Some("gateway-7".into());
        assert!(acl.allows(&gw, Action::Publish, "gw/1"));
        assert!(!acl.allows(&gw, Action::Publish, "other"));
    }

    #[test]
    fn reads_unrestricted_only_without_possible_denials() {
        let open = Acl {
            rules: vec![rule(Permission::Deny, RuleAction::Publish, "x")],
            no_match: Permission::Allow,
        };
        assert!(open.reads_unrestricted());
        let closed = Acl {
            rules: vec![],
            no_match: Permission::Deny,
        };
        assert!(!closed.reads_unrestricted());
    }
}
