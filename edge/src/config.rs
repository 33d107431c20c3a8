//! The edge's configuration: the model (`EdgeConfig`) and how it is assembled.
//!
//! Layers, lowest first; each later layer overrides single keys of the earlier ones:
//!
//! 1. the built-in profile (`profiles/*.toml`, embedded in the binary): the one named by
//!    `--profile NAME`, or `edge-gateway` when no profile is given or it is a path;
//! 2. the profile file given as `--profile PATH`;
//! 3. the file given as `--config FILE`;
//! 4. the environment: `TERN_<SECTION>__<KEY>`, with `__` between nesting levels, for
//!    example `TERN_LISTENERS__TCP__BIND=127.0.0.1:1884` or `TERN_MQTT__MAX_PACKET_SIZE=2048`.
//!    Numbers and booleans are parsed from the strings.
//!
//! Every layer is first checked on its own against the model, so an unknown key or a bad
//! value is reported with the layer it came from ("unknown field `bnd` ... for key
//! `listeners.tcp` in config file `edge.toml`").

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};
use tern_core::auth::acl::Acl;
use tern_core::broker::BrokerConfig;
use tern_core::store::Fsync;

pub use crate::bridge::config::{
    AcceptorConfig, BridgeConfig, ForwardRule, LinkConfig, SubscribeRule, TransportChoice,
};

/// The built-in profiles: name, one-line description, TOML text.
pub const PROFILES: &[(&str, &str, &str)] = &[
    (
        "edge-gateway",
        "default: a gateway serving up to a few thousand devices",
        include_str!("../../profiles/edge-gateway.toml"),
    ),
    (
        "edge-minimal",
        "tight limits for a device with about 64 MiB of RAM",
        include_str!("../../profiles/edge-minimal.toml"),
    ),
    (
        "dev",
        "local development: 127.0.0.1 only, debug logging",
        include_str!("../../profiles/dev.toml"),
    ),
    (
        "cloud-single",
        "tern-cloud: one cloud node with the bridge acceptor (default of tern-cloud)",
        include_str!("../../profiles/cloud-single.toml"),
    ),
];

/// The profile used when `--profile` is not given (and the base under a profile file).
pub const DEFAULT_PROFILE: &str = "edge-gateway";

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "TERN";

/// Separator between nesting levels in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of a `tern-edge` process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// This node: identity and where it keeps its data.
    pub node: NodeConfig,
    /// Network listeners for MQTT clients.
    pub listeners: ListenersConfig,
    /// Broker limits and capabilities (the `[mqtt]` section).
    pub mqtt: BrokerConfig,
    /// Where and how sessions, queues and retained messages are persisted.
    pub store: StoreConfig,
    /// Who may connect: anonymous access, the password file, failed-login limits.
    pub auth: AuthConfig,
    /// Access rules (`[acl]` with `[[acl.rules]]`); absent: everything is allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Acl>,
    /// Connection limits applied when a socket is accepted.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The gateway's bridge to the cloud (tern-edge).
    pub bridge: BridgeConfig,
    /// The bridge acceptor for gateways (tern-cloud).
    pub acceptor: AcceptorConfig,
    /// The admin HTTP endpoint (`/metrics`, `/healthz`).
    pub admin: AdminConfig,
}

/// The `[admin]` section: the HTTP endpoint with Prometheus metrics and a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether to serve it at all.
    pub enabled: bool,
    /// Address and port to bind (port 0 picks a free port); loopback by default.
    pub bind: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        }
    }
}

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory for the persistent store (sessions, retained messages, bridge outbox).
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./tern-data"),
        }
    }
}

/// The `[listeners]` section: one sub-section per transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenersConfig {
    /// Plain MQTT over TCP.
    pub tcp: TcpListenerConfig,
    /// MQTT over TLS (`mqtts://`).
    pub tls: TlsListenerConfig,
    /// MQTT over WebSocket (`ws://`).
    pub ws: WsListenerConfig,
    /// MQTT over WebSocket over TLS (`wss://`).
    pub wss: WssListenerConfig,
}

/// The `[listeners.tcp]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpListenerConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address and port to bind (port 0 picks a free port).
    pub bind: SocketAddr,
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1883)),
        }
    }
}

/// The `[listeners.tls]` section. A path left empty (`""`) is not set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Whether to listen at all (needs `cert` and `key`).
    pub enabled: bool,
    /// Address and port to bind.
    pub bind: SocketAddr,
    /// PEM file with the server certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CAs that sign client certificates; set: clients may present one.
    pub client_ca: PathBuf,
    /// Refuse the TLS handshake of a client without a valid certificate.
    pub require_client_cert: bool,
    /// Use the client certificate's CN (or first DNS SAN) as the user name, without
    /// a password.
    pub use_identity_as_username: bool,
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        TlsListenerConfig {
            enabled: false,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8883)),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            require_client_cert: false,
            use_identity_as_username: false,
        }
    }
}

/// The `[listeners.ws]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsListenerConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address and port to bind.
    pub bind: SocketAddr,
    /// HTTP path of the WebSocket endpoint; other paths get 404.
    pub path: String,
}

impl Default for WsListenerConfig {
    fn default() -> Self {
        WsListenerConfig {
            enabled: false,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8083)),
            path: "/mqtt".to_owned(),
        }
    }
}

/// The `[listeners.wss]` section. Empty `cert`/`key`/`client_ca`: those of
/// `[listeners.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WssListenerConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address and port to bind.
    pub bind: SocketAddr,
    /// HTTP path of the WebSocket endpoint; other paths get 404.
    pub path: String,
    /// PEM file with the server certificate chain (empty: `listeners.tls.cert`).
    pub cert: PathBuf,
    /// PEM file with the private key (empty: `listeners.tls.key`).
    pub key: PathBuf,
    /// PEM file with the client CAs (empty: `listeners.tls.client_ca`).
    pub client_ca: PathBuf,
    /// Refuse the TLS handshake of a client without a valid certificate.
    pub require_client_cert: bool,
    /// Use the client certificate's CN (or first DNS SAN) as the user name.
    pub use_identity_as_username: bool,
}

impl Default for WssListenerConfig {
    fn default() -> Self {
        WssListenerConfig {
            enabled: false,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8084)),
            path: "/mqtt".to_owned(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            require_client_cert: false,
            use_identity_as_username: false,
        }
    }
}

impl WssListenerConfig {
    /// This listener's TLS settings, falling back to `tls`'s files where empty.
    pub fn tls_settings(&self, tls: &TlsListenerConfig) -> TlsListenerConfig {
        let or = |own: &PathBuf, base: &PathBuf| {
            if own.as_os_str().is_empty() {
                base.clone()
            } else {
                own.clone()
            }
        };
        TlsListenerConfig {
            enabled: self.enabled,
            bind: self.bind,
            cert: or(&self.cert, &tls.cert),
            key: or(&self.key, &tls.key),
            client_ca: or(&self.client_ca, &tls.client_ca),
            require_client_cert: self.require_client_cert,
            use_identity_as_username: self.use_identity_as_username,
        }
    }
}

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Let clients without a user name in (and, without a password file, any user name).
    pub allow_anonymous: bool,
    /// `user:$argon2id$...` lines, managed with `tern-edge passwd` (empty: none).
    pub password_file: PathBuf,
    /// Failed logins allowed per client address per minute before its CONNECTs are
    /// refused with 0x9F unchecked (0 = no limit).
    pub max_login_failures: u32,
    /// Password checks running at once, each holding the hash's argon2 memory (about
    /// 19 MiB with `tern-edge passwd`'s parameters); 0 = one per core, at most 4.
    pub verify_threads: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: false,
            password_file: PathBuf::new(),
            max_login_failures: 5,
            verify_threads: 0,
        }
    }
}

/// The `[limits]` section: checked when a socket is accepted; a connection beyond a
/// limit is closed at once, before any byte is read. 0 means no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most open client connections, all listeners together.
    pub max_connections: usize,
    /// Most open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// New connections accepted per second, per listener (a burst of as many).
    pub connect_rate: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            connect_rate: 500,
        }
    }
}

/// The `[store]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `redb` (durable, the default) or `memory` (nothing survives a restart).
    pub backend: StoreBackend,
    /// File name of the redb store, under `node.data_dir`.
    pub file: PathBuf,
    /// When a commit reaches stable storage: `always` (one PUBLISH per transaction),
    /// `batch` (group commit, the default) or `never` (the OS decides; a crash may lose
    /// the last second of acknowledged messages).
    pub fsync: Fsync,
    /// Most store operations in one transaction (group commit bound by count).
    pub max_batch_ops: usize,
    /// Extra time a group commit waits to gather more messages, in microseconds (0:
    /// commit as soon as the previous commit is done; batches form while it runs).
    pub commit_window_us: u64,
    /// Store budget in bytes of records (0 = unlimited). When full, publishers get
    /// reason 0x97 (quota exceeded) and nothing already stored is touched.
    pub max_bytes: u64,
    /// Compact the redb file at startup, before serving, when it is worth it (see
    /// `compact_min_bytes`).
    pub compact_on_start: bool,
    /// Seconds without a store write after which the redb file is compacted when it is
    /// worth it; while writes keep coming, it is looked at as often but compacted only
    /// when it holds little (0: never while running).
    pub compact_idle_secs: u64,
    /// A compaction is worth it when the file is more than twice the bytes in use and
    /// larger than them by at least this many bytes (at least 1 MiB).
    pub compact_min_bytes: u64,
}

/// Least `store.compact_min_bytes`: below it a store would be rewritten for a few pages.
const MIN_COMPACT_MIN_BYTES: u64 = 1024 * 1024;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Redb,
            file: PathBuf::from("tern-edge.redb"),
            fsync: Fsync::Batch,
            max_batch_ops: 16_384,
            commit_window_us: 0,
            max_bytes: 0,
            compact_on_start: true,
            compact_idle_secs: 30,
            compact_min_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Which store implementation keeps the broker's durable state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// redb file under `node.data_dir`: survives crashes and power loss.
    #[default]
    Redb,
    /// In memory: a restart forgets sessions, queues and retained messages.
    Memory,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or directives (`info,tern_edge=debug`).
    /// `RUST_LOG`, when set, replaces it.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Human,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.to_ascii_lowercase().as_str() {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format {name:?}, expected \"human\" or \"json\""
            )),
        }
    }
}

/// Where the configuration comes from (the command line, plus the environment).
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `--profile`: a built-in profile name or a path to a TOML file.
    pub profile: Option<String>,
    /// `--config`: a TOML file applied over the profile.
    pub config_file: Option<PathBuf>,
    /// The environment to read `TERN_*` from; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
}

/// Why the configuration could not be assembled. Shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--profile` named no built-in profile and no existing file.
    #[error(
        "unknown profile `{name}`: built-in profiles are {}; \
         to use a file, pass its path (e.g. ./{name}.toml)",
        profile_names()
    )]
    UnknownProfile {
        /// What was asked for.
        name: String,
    },
    /// A file could not be read.
    #[error("cannot read {origin}: {error}")]
    Read {
        /// Which layer.
        origin: Origin,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A layer is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{origin}: {message}")]
    Invalid {
        /// Which layer.
        origin: Origin,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The assembled configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Semantic(String),
}

/// One layer of the configuration, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An embedded profile.
    BuiltIn(&'static str),
    /// `--profile PATH`.
    ProfileFile(PathBuf),
    /// `--config FILE`.
    ConfigFile(PathBuf),
    /// `TERN_*` variables.
    Environment,
    /// All layers together.
    Merged,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn(name) => write!(f, "built-in profile `{name}`"),
            Origin::ProfileFile(path) => write!(f, "profile file `{}`", path.display()),
            Origin::ConfigFile(path) => write!(f, "config file `{}`", path.display()),
            Origin::Environment => {
                write!(
                    f,
                    "the environment ({ENV_PREFIX}_* variables, `{ENV_SEPARATOR}` between levels)"
                )
            }
            Origin::Merged => write!(f, "the merged configuration"),
        }
    }
}

/// The names of the built-in profiles, comma separated.
pub fn profile_names() -> String {
    PROFILES
        .iter()
        .map(|(name, _, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The TOML text of the built-in profile `name`.
pub fn builtin_profile(name: &str) -> Option<(&'static str, &'static str)> {
    PROFILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, _, text)| (*n, *text))
}

/// One source, kept with its origin so that errors can name it.
struct Layer {
    origin: Origin,
    source: Box<dyn config::Source + Send + Sync>,
}

impl EdgeConfig {
    /// Assembles the configuration from `sources` (see the module doc for the order).
    pub fn load(sources: &ConfigSources) -> Result<EdgeConfig, ConfigError> {
        let layers = layers(sources)?;
        for layer in &layers {
            // Each layer alone must already fit the model: this is what lets an error
            // name the file or the environment it came from.
            let single = Config::builder().add_source(vec![layer.source.clone_into_box()]);
            build(single, &layer.origin).map_err(|error| match error {
                // Say which variables there are: the key alone may not show which one
                // is wrong (TERN_MQTT_MAX_PACKET_SIZE reads as the key `mqtt_max_packet_size`).
                ConfigError::Invalid {
                    origin: Origin::Environment,
                    message,
                } => ConfigError::Invalid {
                    origin: Origin::Environment,
                    message: format!("{message} (set: {})", env_names(sources).join(", ")),
                },
                other => other,
            })?;
        }
        let all: Vec<_> = layers.into_iter().map(|layer| layer.source).collect();
        let merged = Config::builder().add_source(all);
        let config = build(merged, &Origin::Merged)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.listeners;
        if !(l.tcp.enabled || l.tls.enabled || l.ws.enabled || l.wss.enabled) {
            return Err(ConfigError::Semantic(
                "no listener is enabled (set `listeners.tcp.enabled = true`)".to_owned(),
            ));
        }
        validate_tls("listeners.tls", &l.tls)?;
        validate_tls("listeners.wss", &l.wss.tls_settings(&l.tls))?;
        for (name, enabled, path) in [
            ("listeners.ws", l.ws.enabled, &l.ws.path),
            ("listeners.wss", l.wss.enabled, &l.wss.path),
        ] {
            if enabled && !path.starts_with('/') {
                return Err(ConfigError::Semantic(format!(
                    "`{name}.path` = {path:?} must start with `/` (e.g. \"/mqtt\")"
                )));
            }
        }
        if self.mqtt.max_packet_size < 64 {
            return Err(ConfigError::Semantic(format!(
                "`mqtt.max_packet_size` = {} is too small to carry a CONNECT (at least 64)",
                self.mqtt.max_packet_size
            )));
        }
        if self.mqtt.receive_maximum == 0 {
            return Err(ConfigError::Semantic(
                "`mqtt.receive_maximum` must be at least 1 (MQTT 5 forbids 0)".to_owned(),
            ));
        }
        if self.mqtt.max_inflight == 0 {
            return Err(ConfigError::Semantic(
                "`mqtt.max_inflight` must be at least 1".to_owned(),
            ));
        }
        if self.store.compact_min_bytes < MIN_COMPACT_MIN_BYTES {
            return Err(ConfigError::Semantic(format!(
                "`store.compact_min_bytes` = {} is too small (at least {MIN_COMPACT_MIN_BYTES}, \
                 1 MiB); to stop compacting set `store.compact_on_start = false` and \
                 `store.compact_idle_secs = 0`",
                self.store.compact_min_bytes
            )));
        }
        self.bridge.validate().map_err(ConfigError::Semantic)?;
        if self.acceptor.enabled {
            for (key, path) in [
                ("ca", &self.acceptor.ca),
                ("cert", &self.acceptor.cert),
                ("key", &self.acceptor.key),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::Semantic(format!(
                        "`acceptor.{key}` must name a PEM file when `acceptor.enabled` = true \
                         (create them with `tern-cloud certs init`)"
                    )));
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(ConfigError::Semantic(format!(
                "`log.level` = {:?} is not a valid filter ({e}); use a level such as \
                 \"info\" or directives such as \"info,tern_edge=debug\"",
                self.log.level
            )));
        }
        Ok(())
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// A TLS listener that is enabled needs its certificate and key; client-certificate
/// options need the CA that signs them.
fn validate_tls(name: &str, tls: &TlsListenerConfig) -> Result<(), ConfigError> {
    if !tls.enabled {
        return Ok(());
    }
    for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
        if path.as_os_str().is_empty() {
            return Err(ConfigError::Semantic(format!(
                "`{name}.{key}` must be set (a PEM file) when `{name}.enabled` = true"
            )));
        }
    }
    for (key, on) in [
        ("require_client_cert", tls.require_client_cert),
        ("use_identity_as_username", tls.use_identity_as_username),
    ] {
        if on && tls.client_ca.as_os_str().is_empty() {
            return Err(ConfigError::Semantic(format!(
                "`{name}.{key}` = true needs `{name}.client_ca` (the CAs of client certificates)"
            )));
        }
    }
    Ok(())
}

/// The layers named by `sources`, lowest first.
fn layers(sources: &ConfigSources) -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::with_capacity(4);
    let builtin = |name: &'static str, text: &'static str| Layer {
        origin: Origin::BuiltIn(name),
        source: Box::new(File::from_str(text, FileFormat::Toml)),
    };
    match sources.profile.as_deref() {
        None => {
            let (name, text) = default_profile();
            layers.push(builtin(name, text));
        }
        Some(arg) => match builtin_profile(arg) {
            Some((name, text)) => layers.push(builtin(name, text)),
            None if looks_like_path(arg) => {
                let (name, text) = default_profile();
                layers.push(builtin(name, text));
                let path = PathBuf::from(arg);
                layers.push(file_layer(Origin::ProfileFile(path.clone()), &path)?);
            }
            None => {
                return Err(ConfigError::UnknownProfile {
                    name: arg.to_owned(),
                })
            }
        },
    }
    if let Some(path) = &sources.config_file {
        layers.push(file_layer(Origin::ConfigFile(path.clone()), path)?);
    }
    let mut env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .try_parsing(true);
    if let Some(vars) = &sources.env {
        env = env.source(Some(vars.clone().into_iter().collect()));
    }
    layers.push(Layer {
        origin: Origin::Environment,
        source: Box::new(env),
    });
    Ok(layers)
}

/// The names of the `TERN_*` variables in the environment of `sources`, sorted.
fn env_names(sources: &ConfigSources) -> Vec<String> {
    let prefix = format!("{ENV_PREFIX}_");
    let mut names: Vec<String> = match &sources.env {
        Some(vars) => vars.keys().cloned().collect(),
        None => std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect(),
    };
    names.retain(|name| name.to_ascii_uppercase().starts_with(&prefix));
    names.sort();
    names
}

fn default_profile() -> (&'static str, &'static str) {
    // Invariant: DEFAULT_PROFILE is one of PROFILES (checked by a unit test).
    builtin_profile(DEFAULT_PROFILE).expect("the default profile is built in")
}

/// A `--profile` argument that is not a built-in name is a path if it looks like one.
fn looks_like_path(arg: &str) -> bool {
    arg.contains(std::path::MAIN_SEPARATOR)
        || arg.contains('/')
        || arg.ends_with(".toml")
        || Path::new(arg).is_file()
}

fn file_layer(origin: Origin, path: &Path) -> Result<Layer, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Layer {
            origin,
            source: Box::new(File::from_str(&text, FileFormat::Toml)),
        }),
        Err(error) => Err(ConfigError::Read { origin, error }),
    }
}

fn build(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    origin: &Origin,
) -> Result<EdgeConfig, ConfigError> {
    let invalid = |e: config::ConfigError| ConfigError::Invalid {
        origin: origin.clone(),
        message: describe(e),
    };
    builder
        .build()
        .map_err(invalid)?
        .try_deserialize::<EdgeConfig>()
        .map_err(invalid)
}

/// The `config` crate's message, without a trailing origin of its own (we add ours).
fn describe(error: config::ConfigError) -> String {
    let text = error.to_string();
    // Sources built from strings carry no origin, and the environment calls itself
    // "the environment"; strip that so the origin is named once.
    let text = text.trim_end();
    text.strip_suffix(" in the environment")
        .unwrap_or(text)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn sources(
        profile: Option<&str>,
        config_file: Option<&Path>,
        vars: &[(&str, &str)],
    ) -> ConfigSources {
        ConfigSources {
            profile: profile.map(str::to_owned),
            config_file: config_file.map(Path::to_path_buf),
            env: env(vars),
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    fn load_err(sources: &ConfigSources) -> String {
        match EdgeConfig::load(sources) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn default_profile_is_built_in() {
        assert!(builtin_profile(DEFAULT_PROFILE).is_some());
    }

    #[test]
    fn every_builtin_profile_loads() {
        for (name, _, _) in PROFILES {
            let config = EdgeConfig::load(&sources(Some(name), None, &[]))
                .unwrap_or_else(|e| panic!("profile {name}: {e}"));
            assert!(config.listeners.tcp.enabled, "{name}");
        }
    }

    /// Every option of the model is written out (with its comment) in every profile,
    /// so that a profile documents all the knobs. A new option needs a line in each.
    #[test]
    fn every_profile_mentions_every_option() {
        fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(table) = value {
                for (k, v) in table {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if v.is_table() {
                        keys(v, &path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
        let model = toml::Value::try_from(EdgeConfig::default()).expect("model serializes");
        let mut expected = Vec::new();
        keys(&model, "", &mut expected);
        for (name, _, text) in PROFILES {
            let profile: toml::Value = toml::from_str(text).expect("profile parses");
            let mut present = Vec::new();
            keys(&profile, "", &mut present);
            let missing: Vec<_> = expected.iter().filter(|k| !present.contains(k)).collect();
            assert!(missing.is_empty(), "profile {name} lacks {missing:?}");
        }
    }

    #[test]
    fn no_profile_means_edge_gateway() {
        let config = EdgeConfig::load(&sources(None, None, &[])).expect("loads");
        let gateway = EdgeConfig::load(&sources(Some("edge-gateway"), None, &[])).expect("loads");
        assert_eq!(config, gateway);
        assert_eq!(
            config.listeners.tcp.bind,
            "0.0.0.0:1883".parse().expect("addr")
        );
    }

    #[test]
    fn named_profiles_differ() {
        let minimal = EdgeConfig::load(&sources(Some("edge-minimal"), None, &[])).expect("loads");
        let gateway = EdgeConfig::load(&sources(None, None, &[])).expect("loads");
        assert!(minimal.mqtt.max_packet_size < gateway.mqtt.max_packet_size);
        assert!(minimal.mqtt.max_queued_messages < gateway.mqtt.max_queued_messages);
        let dev = EdgeConfig::load(&sources(Some("dev"), None, &[])).expect("loads");
        assert!(dev.listeners.tcp.bind.ip().is_loopback());
        assert_eq!(dev.log.level, "debug");
    }

    #[test]
    fn layers_override_in_order() {
        // built-in < profile file < --config < environment, key by key.
        let profile = temp_file(
            "layers-profile.toml",
            "[mqtt]\nmax_packet_size = 1000\nreceive_maximum = 10\nmax_inflight = 7\n\
             [log]\nlevel = \"warn\"\n",
        );
        let config_file = temp_file(
            "layers-config.toml",
            "[mqtt]\nreceive_maximum = 20\nmax_inflight = 8\n",
        );
        let vars = [("TERN_MQTT__MAX_INFLIGHT", "9"), ("UNRELATED", "x")];
        let profile_arg = profile.to_str().expect("utf-8 temp path");
        let config = EdgeConfig::load(&sources(Some(profile_arg), Some(&config_file), &vars))
            .expect("loads");
        let builtin = EdgeConfig::load(&sources(None, None, &[])).expect("loads");
        assert_eq!(config.mqtt.max_packet_size, 1000, "from the profile file");
        assert_eq!(config.log.level, "warn", "from the profile file");
        assert_eq!(config.mqtt.receive_maximum, 20, "from --config");
        assert_eq!(config.mqtt.max_inflight, 9, "from the environment");
        assert_eq!(
            config.mqtt.topic_alias_maximum, builtin.mqtt.topic_alias_maximum,
            "built-in"
        );
        assert_eq!(config.listeners, builtin.listeners, "built-in");
    }

    #[test]
    fn environment_parses_numbers_bools_and_addresses() {
        let vars = [
            ("TERN_LISTENERS__TCP__BIND", "127.0.0.1:1884"),
            ("TERN_MQTT__MAX_PACKET_SIZE", "2048"),
            ("TERN_MQTT__RETAIN_AVAILABLE", "false"),
            ("TERN_LOG__FORMAT", "json"),
            ("TERN_NODE__DATA_DIR", "/var/lib/tern"),
        ];
        let config = EdgeConfig::load(&sources(Some("dev"), None, &vars)).expect("loads");
        assert_eq!(
            config.listeners.tcp.bind,
            "127.0.0.1:1884".parse().expect("addr")
        );
        assert_eq!(config.mqtt.max_packet_size, 2048);
        assert!(!config.mqtt.retain_available);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/tern"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let path = temp_file("unknown.toml", "[listeners.tcp]\nbnd = \"127.0.0.1:1\"\n");
        let msg = load_err(&sources(None, Some(&path), &[]));
        assert!(msg.contains("unknown field `bnd`"), "{msg}");
        assert!(msg.contains("listeners.tcp"), "{msg}");
        assert!(msg.contains("config file"), "{msg}");
        assert!(msg.contains("unknown.toml"), "{msg}");
    }

    #[test]
    fn unknown_key_in_mqtt_section() {
        let path = temp_file("unknown-mqtt.toml", "[mqtt]\nmax_packet_sise = 10\n");
        let msg = load_err(&sources(Some(path.to_str().expect("utf-8")), None, &[]));
        assert!(msg.contains("unknown field `max_packet_sise`"), "{msg}");
        assert!(msg.contains("mqtt"), "{msg}");
        assert!(msg.contains("profile file"), "{msg}");
    }

    #[test]
    fn unknown_env_key_names_environment() {
        let msg = load_err(&sources(None, None, &[("TERN_LISTENERS__TCP__BND", "1")]));
        assert!(msg.contains("unknown field `bnd`"), "{msg}");
        assert!(msg.contains("listeners.tcp"), "{msg}");
        assert!(msg.contains("environment"), "{msg}");
        assert!(msg.contains("TERN_LISTENERS__TCP__BND"), "{msg}");
    }

    #[test]
    fn single_underscore_variable_is_an_unknown_key() {
        let vars = [
            ("TERN_MQTT_MAX_PACKET_SIZE", "2048"),
            ("TERN_LOG__LEVEL", "info"),
        ];
        let msg = load_err(&sources(None, None, &vars));
        assert!(
            msg.contains("unknown field `mqtt_max_packet_size`"),
            "{msg}"
        );
        assert!(msg.contains("TERN_MQTT_MAX_PACKET_SIZE"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let path = temp_file("bad-value.toml", "[mqtt]\nreceive_maximum = \"lots\"\n");
        let msg = load_err(&sources(None, Some(&path), &[]));
        assert!(msg.contains("mqtt.receive_maximum"), "{msg}");

        let path = temp_file("bad-range.toml", "[mqtt]\nreceive_maximum = 70000\n");
        let msg = load_err(&sources(None, Some(&path), &[]));
        assert!(msg.contains("mqtt.receive_maximum"), "{msg}");

        let msg = load_err(&sources(
            None,
            None,
            &[("TERN_LISTENERS__TCP__BIND", "nowhere")],
        ));
        assert!(msg.contains("listeners.tcp.bind"), "{msg}");
        assert!(msg.contains("environment"), "{msg}");

        let msg = load_err(&sources(None, None, &[("TERN_LOG__FORMAT", "xml")]));
        assert!(msg.contains("log.format"), "{msg}");
    }

    #[test]
    fn bad_toml_names_the_file() {
        let path = temp_file("broken.toml", "[mqtt\nmax_packet_size = 1\n");
        let msg = load_err(&sources(None, Some(&path), &[]));
        assert!(msg.contains("broken.toml"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let msg = load_err(&sources(None, None, &[("TERN_LOG__LEVEL", "loud=!")]));
        assert!(msg.contains("log.level"), "{msg}");
        let msg = load_err(&sources(
            None,
            None,
            &[("TERN_LISTENERS__TCP__ENABLED", "false")],
        ));
        assert!(msg.contains("listeners.tcp.enabled"), "{msg}");
    }

    #[test]
    fn store_compaction_options() {
        let config = EdgeConfig::load(&sources(
            None,
            None,
            &[
                ("TERN_STORE__COMPACT_IDLE_SECS", "0"),
                ("TERN_STORE__COMPACT_ON_START", "false"),
            ],
        ))
        .expect("loads");
        assert_eq!(config.store.compact_idle_secs, 0);
        assert!(!config.store.compact_on_start);
        let msg = load_err(&sources(
            None,
            None,
            &[("TERN_STORE__COMPACT_MIN_BYTES", "4096")],
        ));
        assert!(msg.contains("store.compact_min_bytes"), "{msg}");
    }

    #[test]
    fn tls_listeners_need_their_files() {
        let msg = load_err(&sources(
            None,
            None,
            &[("TERN_LISTENERS__TLS__ENABLED", "true")],
        ));
        assert!(msg.contains("listeners.tls.cert"), "{msg}");
        let msg = load_err(&sources(
            None,
            None,
            &[
                ("TERN_LISTENERS__TLS__ENABLED", "true"),
                ("TERN_LISTENERS__TLS__CERT", "/c.pem"),
                ("TERN_LISTENERS__TLS__KEY", "/k.pem"),
                ("TERN_LISTENERS__TLS__REQUIRE_CLIENT_CERT", "true"),
            ],
        ));
        assert!(msg.contains("listeners.tls.client_ca"), "{msg}");
        // wss falls back to the files of [listeners.tls].
        let config = EdgeConfig::load(&sources(
            None,
            None,
            &[
                ("TERN_LISTENERS__WSS__ENABLED", "true"),
                ("TERN_LISTENERS__TLS__CERT", "/c.pem"),
                ("TERN_LISTENERS__TLS__KEY", "/k.pem"),
            ],
        ))
        .expect("loads");
        let wss = config.listeners.wss.tls_settings(&config.listeners.tls);
        assert_eq!(wss.cert, PathBuf::from("/c.pem"));
        let msg = load_err(&sources(
            None,
            None,
            &[
                ("TERN_LISTENERS__WS__ENABLED", "true"),
                ("TERN_LISTENERS__WS__PATH", "mqtt"),
            ],
        ));
        assert!(msg.contains("listeners.ws.path"), "{msg}");
    }

    #[test]
    fn security_defaults_per_profile() {
        for name in ["edge-gateway", "edge-minimal"] {
            let c = EdgeConfig::load(&sources(Some(name), None, &[])).expect("loads");
            assert!(!c.auth.allow_anonymous, "{name}");
            assert!(c.limits.max_connections > 0, "{name}");
            assert!(
                !c.listeners.tls.enabled && !c.listeners.ws.enabled,
                "{name}"
            );
            assert!(c.acl.is_none(), "{name}: no ACL, everything allowed");
        }
        let dev = EdgeConfig::load(&sources(Some("dev"), None, &[])).expect("loads");
        assert!(dev.auth.allow_anonymous);
        assert_eq!(dev.limits.max_connections, 0);
    }

    #[test]
    fn admin_endpoint_binds_loopback_in_every_profile() {
        assert_eq!(
            AdminConfig::default().bind,
            "127.0.0.1:8080".parse().expect("addr")
        );
        for (name, _, _) in PROFILES {
            let c = EdgeConfig::load(&sources(Some(name), None, &[])).expect("loads");
            assert!(c.admin.enabled, "{name}");
            assert!(c.admin.bind.ip().is_loopback(), "{name}");
        }
        let dev = EdgeConfig::load(&sources(Some("dev"), None, &[])).expect("loads");
        assert_eq!(
            dev.admin.bind.port(),
            0,
            "dev and tests must not compete for 8080"
        );
        let vars = [
            ("TERN_ADMIN__BIND", "127.0.0.1:9100"),
            ("TERN_ADMIN__ENABLED", "false"),
        ];
        let c = EdgeConfig::load(&sources(None, None, &vars)).expect("loads");
        assert_eq!(c.admin.bind.port(), 9100);
        assert!(!c.admin.enabled);
    }

    #[test]
    fn acl_rules_from_a_file() {
        use tern_core::auth::acl::{Permission, RuleAction};
        let path = temp_file(
            "acl.toml",
            "[acl]\nno_match = \"deny\"\n[[acl.rules]]\npermission = \"allow\"\n\
             topic = \"devices/%c/#\"\n[[acl.rules]]\npermission = \"deny\"\n\
             user = \"guest\"\naction = \"publish\"\ntopic = \"#\"\n",
        );
        let config = EdgeConfig::load(&sources(None, Some(&path), &[])).expect("loads");
        let acl = config.acl.clone().expect("acl");
        assert_eq!(acl.no_match, Permission::Deny);
        assert_eq!(acl.rules.len(), 2);
        assert_eq!(acl.rules[1].action, RuleAction::Publish);
        assert_eq!(acl.rules[1].user.as_deref(), Some("guest"));
        // --print-config shows it, and it loads back.
        let text = config.to_toml().expect("serializes");
        assert!(text.contains("[[acl.rules]]"), "{text}");
        let printed = temp_file("acl-printed.toml", &text);
        let again = EdgeConfig::load(&sources(None, Some(&printed), &[])).expect("loads");
        assert_eq!(again, config);

        let path = temp_file(
            "acl-bad.toml",
            "[[acl.rules]]\npermission = \"allow\"\ntopic = \"a\"\nuser_name = \"x\"\n",
        );
        let msg = load_err(&sources(None, Some(&path), &[]));
        assert!(msg.contains("user_name"), "{msg}");
        assert!(msg.contains("acl"), "{msg}");
    }

    #[test]
    fn unknown_profile_lists_builtins() {
        let msg = load_err(&sources(Some("edge-huge"), None, &[]));
        assert!(msg.contains("unknown profile `edge-huge`"), "{msg}");
        assert!(msg.contains("edge-minimal"), "{msg}");
    }

    #[test]
    fn missing_files_are_reported() {
        let msg = load_err(&sources(Some("./does/not/exist.toml"), None, &[]));
        assert!(msg.contains("cannot read profile file"), "{msg}");
        let missing = Path::new("/nonexistent/tern.toml");
        let msg = load_err(&sources(None, Some(missing), &[]));
        assert!(msg.contains("cannot read config file"), "{msg}");
    }

    #[test]
    fn printed_config_loads_back_identically() {
        let config = EdgeConfig::load(&sources(Some("edge-minimal"), None, &[])).expect("loads");
        let text = config.to_toml().expect("serializes");
        let path = temp_file("printed.toml", &text);
        let again = EdgeConfig::load(&sources(Some("dev"), Some(&path), &[])).expect("loads");
        assert_eq!(again, config);
    }
}
