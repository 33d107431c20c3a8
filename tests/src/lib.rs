//! Shared harness for Tern's end-to-end tests.
//!
//! Two things live here:
//!
//! * [`Broker`]: starts the real `tern-edge` binary on a free loopback port with its own
//!   data directory and a captured stderr log, waits until it accepts TCP connections and
//!   kills it when dropped (SIGTERM, then SIGKILL). When the environment variable
//!   `TERN_TEST_BROKER=host:port` is set nothing is spawned and that address is used
//!   instead, so the suite can be validated against another broker (mosquitto). Tests that
//!   need a particular broker configuration or read the broker's log use
//!   [`Broker::start_configured`], which returns `None` (and says why) under an external
//!   broker.
//!
//!   For durability tests the same broker can be killed and brought back on its data
//!   directory: [`Broker::kill`] (SIGKILL, nothing flushed), [`Broker::stop`] (SIGTERM),
//!   [`Broker::restart`] (same data directory, same port, same environment) and
//!   [`Broker::try_start`] (for a broker that is expected to refuse to start, e.g. on a
//!   corrupt store; see [`Broker::configured_stopped`]). Every run appends to the same
//!   stderr log, after a `=== tern-test harness: start N ===` line; [`Broker::run_log`] is
//!   the log of the current (or last) run only.
//! * [`raw`] and [`RawClient`]: a deliberately small, independent MQTT 3.1.1 / 5.0 packet
//!   writer and reader over a plain TCP socket, for the tests that must see or produce exact
//!   bytes (DUP flags, packet ids, reason codes, topic aliases, malformed input). It is
//!   written from the specification, not from `tern-core`'s codec, so that a bug shared by
//!   the codec's encoder and decoder cannot hide itself.
//!
//! The library uses only `std`, `tokio` and `bytes`; the third-party MQTT clients
//! (rumqttc) are dev-dependencies and wrapped in `tests/tests/common/mod.rs`.

pub mod relay;
use std::fs::File;
use std::io;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Environment variable naming an already running broker (`host:port`) to test instead of
/// spawning `tern-edge`.
pub const EXTERNAL_BROKER_ENV: &str = "TERN_TEST_BROKER";
/// Environment variable overriding the path of the `tern-edge` binary.
pub const BIN_ENV: &str = "TERN_EDGE_BIN";

/// How long a spawned broker gets to start accepting connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// When the broker's log does not say which address it listens on, how long it must stay
/// alive after its port answered before the harness believes it is the one listening.
const OWN_PORT_GRACE: Duration = Duration::from_secs(2);

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A string unique within this machine for this run: process id, a counter and the clock.
/// Used for client ids, topic prefixes and temporary directories so tests sharing an
/// external broker cannot see each other's traffic.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// The address of the external broker, if `TERN_TEST_BROKER` is set.
pub fn external_broker() -> Option<String> {
    std::env::var(EXTERNAL_BROKER_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Path of the `tern-edge` binary: `TERN_EDGE_BIN`, else next to the test executable's
/// `deps/` directory (`target/<profile>/tern-edge`), which also works with a custom
/// `CARGO_TARGET_DIR`.
pub fn edge_binary() -> PathBuf {
    if let Ok(p) = std::env::var(BIN_ENV) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("tern-edge{}", std::env::consts::EXE_SUFFIX))
}

/// Path of the `tern-cloud` binary, next to `tern-edge` (see [`edge_binary`]).
pub fn cloud_binary() -> PathBuf {
    edge_binary().with_file_name(format!("tern-cloud{}", std::env::consts::EXE_SUFFIX))
}

/// A broker under test: a spawned `tern-edge` (or `tern-cloud`) process or an external broker.
pub struct Broker {
    /// The binary and the built-in profile it runs with.
    program: (PathBuf, &'static str),
    host: String,
    port: u16,
    child: Option<Child>,
    /// Not spawned by this harness (`TERN_TEST_BROKER`).
    external: bool,
    log_path: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    /// Environment overrides of every run.
    env: Vec<(String, String)>,
    /// Offset in the log file where the current (or last) run starts.
    run_log_start: u64,
    /// Extra command-line arguments of every run (e.g. `--config FILE`).
    args: Vec<String>,
    /// Number of runs started so far.
    runs: u32,
}

/// Why a spawned `tern-edge` did not come up (see [`Broker::try_start`]).
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status if the process exited by itself; `None` if it was still running at the
    /// timeout (it has been killed since).
    pub status: Option<ExitStatus>,
    /// What this run wrote to stderr.
    pub log: String,
}

impl Broker {
    /// Starts `tern-edge` with its default `dev` profile, or uses the external broker.
    pub fn start() -> Broker {
        match external_broker() {
            Some(addr) => Broker::external(&addr),
            None => Broker::spawn(&[]),
        }
    }

    /// Starts `tern-edge` with extra environment overrides (e.g.
    /// `("TERN_MQTT__MAX_PACKET_SIZE", "1024")`). Under an external broker the overrides
    /// cannot be applied: prints `SKIP: <test>: <why>` and returns `None`.
    pub fn start_configured(env: &[(&str, &str)], why: &str) -> Option<Broker> {
        if let Some(addr) = external_broker() {
            eprintln!(
                "SKIP: {}: needs a tern-edge it starts itself ({why}); external broker {addr}",
                std::thread::current().name().unwrap_or("?")
            );
            return None;
        }
        Some(Broker::spawn(env))
    }

    /// Starts `tern-edge` with extra environment overrides; under an external broker the
    /// overrides are ignored and the external broker is used as it is (for tests that still
    /// work there, e.g. with a broker configured the same way by hand).
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        match external_broker() {
            Some(addr) => Broker::external(&addr),
            None => Broker::spawn(env),
        }
    }

    /// Prepares a `tern-edge` with extra environment overrides (work directory, data
    /// directory, port) without starting it, e.g. to put a file into the data directory
    /// first; start it with [`Broker::try_start`] or [`Broker::restart`]. Under an
    /// external broker: prints `SKIP: <test>: <why>` and returns `None`.
    pub fn configured_stopped(env: &[(&str, &str)], why: &str) -> Option<Broker> {
        if let Some(addr) = external_broker() {
            eprintln!(
                "SKIP: {}: needs a tern-edge it starts itself ({why}); external broker {addr}",
                std::thread::current().name().unwrap_or("?")
            );
            return None;
        }
        Some(Broker::prepare(env))
    }

    /// Starts `tern-edge` with `config_toml` as its `--config` file (written into the
    /// broker's work directory) and extra environment overrides, for settings the
    /// environment cannot express (e.g. `[[acl.rules]]`). Under an external broker:
    /// prints `SKIP: <test>: <why>` and returns `None`.
    pub fn start_with_config_file(
        env: &[(&str, &str)],
        config_toml: &str,
        why: &str,
    ) -> Option<Broker> {
        let mut broker = Broker::configured_stopped(env, why)?;
        let work_dir = broker
            .work_dir
            .clone()
            .expect("work dir of a spawned broker");
        let file = work_dir.join("config.toml");
        std::fs::write(&file, config_toml).expect("write config file");
        broker.args = vec!["--config".to_string(), file.display().to_string()];
        broker.launch();
        broker.wait_ready();
        Some(broker)
    }

    /// True when the broker is not one this harness spawned.
    pub fn is_external(&self) -> bool {
        self.external
    }

    fn external(addr: &str) -> Broker {
        let (host, port) = addr
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{EXTERNAL_BROKER_ENV} must be host:port, got {addr:?}"));
        Broker {
            program: (edge_binary(), "dev"),
            host: host.to_string(),
            port: port.parse().expect("port of TERN_TEST_BROKER"),
            child: None,
            external: true,
            log_path: None,
            work_dir: None,
            env: Vec::new(),
            args: Vec::new(),
            run_log_start: 0,
            runs: 0,
        }
    }

    fn spawn(env: &[(&str, &str)]) -> Broker {
        let mut broker = Broker::prepare(env);
        broker.launch();
        broker.wait_ready();
        broker
    }

    /// Prepares a `tern-cloud` (profile `cloud-single`) with extra environment
    /// overrides, without starting it; MQTT on a free loopback port, data in its work
    /// directory. Start it with [`Broker::try_start`] or [`Broker::restart`].
    pub fn cloud_stopped(env: &[(&str, &str)]) -> Broker {
        let mut broker = Broker::prepare_program((cloud_binary(), "cloud-single"), env);
        // Anonymous clients in, and the admin endpoint on a free port: tests run
        // several clouds at once, which would all want 127.0.0.1:8080.
        for (k, v) in [
            ("TERN_AUTH__ALLOW_ANONYMOUS", "true"),
            ("TERN_ADMIN__BIND", "127.0.0.1:0"),
        ] {
            broker.env.insert(0, (k.to_string(), v.to_string()));
        }
        broker
    }

    /// Runs the prepared broker with `--config FILE` holding `config_toml` (written
    /// into its work directory), for settings the environment cannot express.
    pub fn set_config_file(&mut self, config_toml: &str) {
        let file = self.work_dir().join("config.toml");
        std::fs::write(&file, config_toml).expect("write config file");
        self.args = vec!["--config".to_string(), file.display().to_string()];
    }

    /// The work directory of a spawned broker (its data directory is `data/` in it).
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().expect("work dir of a spawned broker")
    }

    /// Work directory, data directory, log file and port; nothing started yet.
    fn prepare(env: &[(&str, &str)]) -> Broker {
        Broker::prepare_program((edge_binary(), "dev"), env)
    }

    fn prepare_program(program: (PathBuf, &'static str), env: &[(&str, &str)]) -> Broker {
        let bin = program.0.clone();
        assert!(
            bin.exists(),
            "binary not found at {} (build the workspace first: cargo build --workspace, \
             with the same CARGO_TARGET_DIR, or set {BIN_ENV})",
            bin.display()
        );
        let work_dir = std::env::temp_dir().join(unique("tern-test"));
        let data_dir = work_dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log_path = work_dir.join("stderr.log");
        File::create(&log_path).expect("create log file");
        Broker {
            program,
            host: "127.0.0.1".to_string(),
            port: free_port(),
            child: None,
            external: false,
            log_path: Some(log_path),
            work_dir: Some(work_dir),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: Vec::new(),
            run_log_start: 0,
            runs: 0,
        }
    }

    /// Spawns the process of a prepared broker (not running) without waiting for it.
    fn launch(&mut self) {
        assert!(!self.external, "cannot start an external broker");
        assert!(self.child.is_none(), "the broker is already running");
        let (bin, profile) = self.program.clone();
        let work_dir = self.work_dir.clone().expect("work dir of a spawned broker");
        let data_dir = work_dir.join("data");
        let log_path = self.log_path.clone().expect("log of a spawned broker");
        self.runs += 1;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .expect("open log file");
        self.run_log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(log, "=== tern-test harness: start {} ===", self.runs);
        let stdout_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work_dir.join("stdout.log"))
            .expect("create log file");
        let mut cmd = Command::new(&bin);
        cmd.arg("--profile")
            .arg(profile)
            .args(&self.args)
            .env(
                "TERN_LISTENERS__TCP__BIND",
                format!("127.0.0.1:{}", self.port),
            )
            .env("TERN_NODE__DATA_DIR", &data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout_log))
            .stderr(Stdio::from(log));
        // tern-edge reads every TERN_* variable as configuration and rejects unknown keys:
        // keep the harness's own variables away from it.
        for k in [
            BIN_ENV,
            EXTERNAL_BROKER_ENV,
            "TERN_TEST_KEEP_LOGS",
            "TERN_TEST_SEED",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// Starts a broker that is not running (prepared with [`Broker::configured_stopped`],
    /// or killed/stopped before) on its data directory and port, and waits up to
    /// `timeout` until it accepts connections. When it exits first, or is still not
    /// ready at the timeout (it is killed then), returns the exit status and the run's log.
    pub fn try_start(&mut self, timeout: Duration) -> Result<(), StartFailure> {
        self.launch();
        self.poll_ready(timeout)
    }

    /// Waits until the spawned process accepts connections on its port *and* is the one
    /// listening there: its log says `listening on mqtt://HOST:PORT`, or (when its log
    /// level hides that line) it is still alive [`OWN_PORT_GRACE`] after the port
    /// answered. Without that, a broker that lost its port to another process (the port
    /// was free a moment ago, see [`free_port`]) and exits would go unnoticed while the
    /// test talks to someone else's broker.
    fn poll_ready(&mut self, timeout: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        let addr = self.addr();
        let own_line = format!("listening on mqtt://{addr}");
        let mut answered: Option<Instant> = None;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(StartFailure {
                        status: Some(status),
                        log: self.run_log(),
                    });
                }
            }
            if answered.is_none() && StdTcpStream::connect(&addr).is_ok() {
                answered = Some(Instant::now());
            }
            if let Some(at) = answered {
                if self.run_log().contains(&own_line) || at.elapsed() >= OWN_PORT_GRACE {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(StartFailure {
                    status: None,
                    log: self.run_log(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the broker again on the same data directory, port and environment, and
    /// waits until it accepts connections (panics with the log otherwise). A running
    /// broker is stopped first with [`Broker::stop`].
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
        self.wait_ready();
    }

    /// Kills the spawned broker with SIGKILL (no chance to flush anything) and reaps it.
    /// The work and data directories stay. Panics for an external broker.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        assert!(!self.external, "cannot kill an external broker");
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Stops the spawned broker with SIGTERM, then SIGKILL after 5 s; returns its exit
    /// status. The work and data directories stay. Panics for an external broker.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        assert!(!self.external, "cannot stop an external broker");
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits up to `timeout` for the spawned broker to exit by itself; its status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Process id of the running spawned broker.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's data directory (`TERN_NODE__DATA_DIR`); `None` for an external broker.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.work_dir.as_ref().map(|d| d.join("data"))
    }

    /// What the current (or last) run wrote to stderr, after the harness's start line.
    pub fn run_log(&self) -> String {
        let Some(path) = self.log_path.as_ref() else {
            return String::new();
        };
        let bytes = std::fs::read(path).unwrap_or_default();
        let start = (self.run_log_start as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn wait_ready(&mut self) {
        if let Err(e) = self.poll_ready(READY_TIMEOUT) {
            match e.status {
                Some(status) => panic!(
                    "tern-edge exited before accepting connections ({status}); log:\n{}",
                    e.log
                ),
                None => panic!(
                    "tern-edge did not accept connections on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.addr(),
                    e.log
                ),
            }
        }
    }

    /// Host to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Everything the spawned broker wrote to stderr so far ("" for an external broker).
    pub fn log(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for a log line containing any of `needles`
    /// (case-insensitive); returns that line.
    pub fn wait_log_line(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| {
                let l = l.to_lowercase();
                needles.iter().any(|n| l.contains(&n.to_lowercase()))
            }) {
                return Some(line.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the spawned broker process runs (always true for an external broker;
    /// false after [`Broker::kill`] or [`Broker::stop`]).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self.external,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.work_dir.take() {
            if std::thread::panicking() || std::env::var_os("TERN_TEST_KEEP_LOGS").is_some() {
                eprintln!("broker work dir kept at {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A minimal MQTT 3.1.1 / 5.0 packet writer and reader, written from the specification.
pub mod raw {
    /// Protocol level 4 (MQTT 3.1.1).
    pub const V4: u8 = 4;
    /// Protocol level 5 (MQTT 5.0).
    pub const V5: u8 = 5;

    /// Packet type numbers (upper nibble of the first byte).
    pub mod kind {
        /// CONNECT
        pub const CONNECT: u8 = 1;
        /// CONNACK
        pub const CONNACK: u8 = 2;
        /// PUBLISH
        pub const PUBLISH: u8 = 3;
        /// PUBACK
        pub const PUBACK: u8 = 4;
        /// PUBREC
        pub const PUBREC: u8 = 5;
        /// PUBREL
        pub const PUBREL: u8 = 6;
        /// PUBCOMP
        pub const PUBCOMP: u8 = 7;
        /// SUBSCRIBE
        pub const SUBSCRIBE: u8 = 8;
        /// SUBACK
        pub const SUBACK: u8 = 9;
        /// UNSUBSCRIBE
        pub const UNSUBSCRIBE: u8 = 10;
        /// UNSUBACK
        pub const UNSUBACK: u8 = 11;
        /// PINGREQ
        pub const PINGREQ: u8 = 12;
        /// PINGRESP
        pub const PINGRESP: u8 = 13;
        /// DISCONNECT
        pub const DISCONNECT: u8 = 14;
        /// AUTH
        pub const AUTH: u8 = 15;
    }

    /// MQTT 5 property identifiers.
    pub mod prop {
        /// Payload Format Indicator (byte)
        pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
        /// Message Expiry Interval (u32)
        pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
        /// Content Type (string)
        pub const CONTENT_TYPE: u8 = 0x03;
        /// Response Topic (string)
        pub const RESPONSE_TOPIC: u8 = 0x08;
        /// Correlation Data (binary)
        pub const CORRELATION_DATA: u8 = 0x09;
        /// Subscription Identifier (varint)
        pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
        /// Session Expiry Interval (u32)
        pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
        /// Assigned Client Identifier (string)
        pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
        /// Server Keep Alive (u16)
        pub const SERVER_KEEP_ALIVE: u8 = 0x13;
        /// Reason String (string)
        pub const REASON_STRING: u8 = 0x1F;
        /// Will Delay Interval (u32)
        pub const WILL_DELAY_INTERVAL: u8 = 0x18;
        /// Receive Maximum (u16)
        pub const RECEIVE_MAXIMUM: u8 = 0x21;
        /// Topic Alias Maximum (u16)
        pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
        /// Topic Alias (u16)
        pub const TOPIC_ALIAS: u8 = 0x23;
        /// Maximum QoS (byte)
        pub const MAXIMUM_QOS: u8 = 0x24;
        /// Retain Available (byte)
        pub const RETAIN_AVAILABLE: u8 = 0x25;
        /// User Property (string pair)
        pub const USER_PROPERTY: u8 = 0x26;
        /// Maximum Packet Size (u32)
        pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
        /// Wildcard Subscription Available (byte)
        pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
        /// Subscription Identifiers Available (byte)
        pub const SUBSCRIPTION_IDENTIFIERS_AVAILABLE: u8 = 0x29;
        /// Shared Subscription Available (byte)
        pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
    }

    /// Appends `n` as a variable byte integer.
    pub fn put_varint(out: &mut Vec<u8>, mut n: u32) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }

    /// Appends a two-byte-length-prefixed UTF-8 string.
    pub fn put_str(out: &mut Vec<u8>, s: &str) {
        put_bin(out, s.as_bytes());
    }

    /// Appends two-byte-length-prefixed binary data.
    pub fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }

    /// A whole packet: first byte, remaining length, body.
    pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first_byte];
        put_varint(&mut out, body.len() as u32);
        out.extend_from_slice(body);
        out
    }

    /// Builder for a v5 property block.
    #[derive(Debug, Clone, Default)]
    pub struct Props(Vec<u8>);

    impl Props {
        /// An empty property block.
        pub fn new() -> Props {
            Props(Vec::new())
        }
        /// Adds a byte property.
        pub fn byte(mut self, id: u8, v: u8) -> Props {
            self.0.push(id);
            self.0.push(v);
            self
        }
        /// Adds a two-byte integer property.
        pub fn u16(mut self, id: u8, v: u16) -> Props {
            self.0.push(id);
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        /// Adds a four-byte integer property.
        pub fn u32(mut self, id: u8, v: u32) -> Props {
            self.0.push(id);
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        /// Adds a variable byte integer property.
        pub fn varint(mut self, id: u8, v: u32) -> Props {
            self.0.push(id);
            put_varint(&mut self.0, v);
            self
        }
        /// Adds a UTF-8 string property.
        pub fn str(mut self, id: u8, v: &str) -> Props {
            self.0.push(id);
            put_str(&mut self.0, v);
            self
        }
        /// Adds a binary property.
        pub fn bin(mut self, id: u8, v: &[u8]) -> Props {
            self.0.push(id);
            put_bin(&mut self.0, v);
            self
        }
        /// Adds a user property.
        pub fn user(mut self, k: &str, v: &str) -> Props {
            self.0.push(prop::USER_PROPERTY);
            put_str(&mut self.0, k);
            put_str(&mut self.0, v);
            self
        }
        /// Appends the block (length prefix + properties).
        pub fn write(&self, out: &mut Vec<u8>) {
            put_varint(out, self.0.len() as u32);
            out.extend_from_slice(&self.0);
        }
    }

    /// Will message of a CONNECT.
    #[derive(Debug, Clone)]
    pub struct Will {
        /// Will topic.
        pub topic: String,
        /// Will payload.
        pub payload: Vec<u8>,
        /// Will QoS.
        pub qos: u8,
        /// Will retain.
        pub retain: bool,
        /// v5 will properties (e.g. will delay interval).
        pub props: Props,
    }

    /// Fields of a CONNECT.
    #[derive(Debug, Clone)]
    pub struct Connect {
        /// 4 or 5.
        pub version: u8,
        /// Client identifier (may be empty).
        pub client_id: String,
        /// Clean session / clean start.
        pub clean: bool,
        /// Keep alive in seconds.
        pub keep_alive: u16,
        /// v5 CONNECT properties.
        pub props: Props,
        /// Will, if any.
        pub will: Option<Will>,
    }

    impl Connect {
        /// A clean CONNECT with a 60 s keep alive and no will.
        pub fn new(version: u8, client_id: &str) -> Connect {
            Connect {
                version,
                client_id: client_id.to_string(),
                clean: true,
                keep_alive: 60,
                props: Props::new(),
                will: None,
            }
        }
        /// Sets clean session / clean start.
        pub fn clean(mut self, clean: bool) -> Connect {
            self.clean = clean;
            self
        }
        /// Sets the keep alive.
        pub fn keep_alive(mut self, secs: u16) -> Connect {
            self.keep_alive = secs;
            self
        }
        /// Sets the v5 properties.
        pub fn props(mut self, props: Props) -> Connect {
            self.props = props;
            self
        }
        /// Sets the will.
        pub fn will(mut self, will: Will) -> Connect {
            self.will = Some(will);
            self
        }
        /// Encodes the packet.
        pub fn encode(&self) -> Vec<u8> {
            let mut b = Vec::new();
            put_str(&mut b, "MQTT");
            b.push(self.version);
            let mut flags = 0u8;
            if self.clean {
                flags |= 0x02;
            }
            if let Some(w) = &self.will {
                flags |= 0x04 | (w.qos << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            b.push(flags);
            b.extend_from_slice(&self.keep_alive.to_be_bytes());
            if self.version == V5 {
                self.props.write(&mut b);
            }
            put_str(&mut b, &self.client_id);
            if let Some(w) = &self.will {
                if self.version == V5 {
                    w.props.write(&mut b);
                }
                put_str(&mut b, &w.topic);
                put_bin(&mut b, &w.payload);
            }
            frame(0x10, &b)
        }
    }

    /// SUBSCRIBE with one options byte per filter (QoS in bits 0-1; v5: no-local 0x04,
    /// retain-as-published 0x08, retain handling in bits 4-5).
    pub fn subscribe(version: u8, pid: u16, filters: &[(&str, u8)], props: &Props) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if version == V5 {
            props.write(&mut b);
        }
        for (f, o) in filters {
            put_str(&mut b, f);
            b.push(*o);
        }
        frame(0x82, &b)
    }

    /// UNSUBSCRIBE.
    pub fn unsubscribe(version: u8, pid: u16, filters: &[&str]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if version == V5 {
            Props::new().write(&mut b);
        }
        for f in filters {
            put_str(&mut b, f);
        }
        frame(0xA2, &b)
    }

    /// Fields of an outgoing PUBLISH.
    #[derive(Debug, Clone)]
    pub struct PublishOut {
        /// Topic name (may be empty with a v5 topic alias).
        pub topic: String,
        /// QoS 0..2.
        pub qos: u8,
        /// RETAIN flag.
        pub retain: bool,
        /// DUP flag.
        pub dup: bool,
        /// Packet id (used when qos > 0).
        pub pid: u16,
        /// v5 properties.
        pub props: Props,
        /// Payload.
        pub payload: Vec<u8>,
    }

    impl PublishOut {
        /// A QoS 0 PUBLISH without properties.
        pub fn new(topic: &str, payload: &[u8]) -> PublishOut {
            PublishOut {
                topic: topic.to_string(),
                qos: 0,
                retain: false,
                dup: false,
                pid: 1,
                props: Props::new(),
                payload: payload.to_vec(),
            }
        }
        /// Sets QoS and packet id.
        pub fn qos(mut self, qos: u8, pid: u16) -> PublishOut {
            self.qos = qos;
            self.pid = pid;
            self
        }
        /// Sets RETAIN.
        pub fn retain(mut self, retain: bool) -> PublishOut {
            self.retain = retain;
            self
        }
        /// Sets the v5 properties.
        pub fn props(mut self, props: Props) -> PublishOut {
            self.props = props;
            self
        }
        /// Encodes for `version`.
        pub fn encode(&self, version: u8) -> Vec<u8> {
            let mut b = Vec::new();
            put_str(&mut b, &self.topic);
            if self.qos > 0 {
                b.extend_from_slice(&self.pid.to_be_bytes());
            }
            if version == V5 {
                self.props.write(&mut b);
            }
            b.extend_from_slice(&self.payload);
            let first = 0x30 | ((self.dup as u8) << 3) | (self.qos << 1) | self.retain as u8;
            frame(first, &b)
        }
    }

    /// PUBACK/PUBREC/PUBREL/PUBCOMP (`kind` from [`kind`]) with an optional v5 reason code.
    pub fn ack(kind: u8, pid: u16, reason: Option<u8>) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if let Some(r) = reason {
            b.push(r);
        }
        let flags = if kind == self::kind::PUBREL { 0x02 } else { 0 };
        frame((kind << 4) | flags, &b)
    }

    /// DISCONNECT; v5 with a reason code and properties, v4 empty.
    pub fn disconnect(version: u8, reason: u8, props: &Props) -> Vec<u8> {
        if version == V5 {
            let mut b = vec![reason];
            props.write(&mut b);
            frame(0xE0, &b)
        } else {
            vec![0xE0, 0x00]
        }
    }

    /// PINGREQ.
    pub fn pingreq() -> Vec<u8> {
        vec![0xC0, 0x00]
    }

    /// A value of a decoded property.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum PropValue {
        /// Byte.
        Byte(u8),
        /// Two-byte integer.
        U16(u16),
        /// Four-byte integer.
        U32(u32),
        /// Variable byte integer.
        Var(u32),
        /// UTF-8 string.
        Str(String),
        /// Binary data.
        Bin(Vec<u8>),
        /// String pair.
        Pair(String, String),
    }

    /// Decoded v5 properties, in wire order.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Properties(pub Vec<(u8, PropValue)>);

    impl Properties {
        /// First value of property `id`.
        pub fn get(&self, id: u8) -> Option<&PropValue> {
            self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
        }
        /// Property `id` as an integer of any width.
        pub fn int(&self, id: u8) -> Option<u32> {
            match self.get(id)? {
                PropValue::Byte(v) => Some(*v as u32),
                PropValue::U16(v) => Some(*v as u32),
                PropValue::U32(v) | PropValue::Var(v) => Some(*v),
                _ => None,
            }
        }
        /// All integer values of property `id` (subscription identifiers repeat).
        pub fn ints(&self, id: u8) -> Vec<u32> {
            self.0
                .iter()
                .filter(|(i, _)| *i == id)
                .filter_map(|(_, v)| match v {
                    PropValue::Byte(v) => Some(*v as u32),
                    PropValue::U16(v) => Some(*v as u32),
                    PropValue::U32(v) | PropValue::Var(v) => Some(*v),
                    _ => None,
                })
                .collect()
        }
        /// Property `id` as a string.
        pub fn str(&self, id: u8) -> Option<&str> {
            match self.get(id)? {
                PropValue::Str(s) => Some(s),
                _ => None,
            }
        }
        /// Property `id` as binary data.
        pub fn bin(&self, id: u8) -> Option<&[u8]> {
            match self.get(id)? {
                PropValue::Bin(b) => Some(b),
                _ => None,
            }
        }
        /// User properties in order.
        pub fn user(&self) -> Vec<(String, String)> {
            self.0
                .iter()
                .filter_map(|(_, v)| match v {
                    PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect()
        }
    }

    /// A packet split off the stream: type, flags and body (after the remaining length).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Packet {
        /// Packet type (1..15).
        pub kind: u8,
        /// Lower nibble of the first byte.
        pub flags: u8,
        /// Variable header and payload.
        pub body: Vec<u8>,
    }

    /// A decoded PUBLISH.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Publish {
        /// DUP flag.
        pub dup: bool,
        /// QoS.
        pub qos: u8,
        /// RETAIN flag.
        pub retain: bool,
        /// Topic name as sent (empty when only an alias is used).
        pub topic: String,
        /// Packet id for QoS > 0.
        pub pid: Option<u16>,
        /// v5 properties.
        pub props: Properties,
        /// Payload.
        pub payload: Vec<u8>,
    }

    /// A decoded CONNACK.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConnAck {
        /// Session present.
        pub session_present: bool,
        /// Return code (v4) / reason code (v5).
        pub code: u8,
        /// v5 properties.
        pub props: Properties,
    }

    /// A cursor over a packet body.
    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.pos + n > self.b.len() {
                return Err(format!(
                    "need {n} bytes at {}, body has {}",
                    self.pos,
                    self.b.len()
                ));
            }
            let s = &self.b[self.pos..self.pos + n];
            self.pos += n;
            Ok(s)
        }
        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Result<u16, String> {
            let s = self.take(2)?;
            Ok(u16::from_be_bytes([s[0], s[1]]))
        }
        fn u32(&mut self) -> Result<u32, String> {
            let s = self.take(4)?;
            Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        }
        fn varint(&mut self) -> Result<u32, String> {
            let mut v = 0u32;
            for i in 0..4 {
                let b = self.u8()?;
                v |= ((b & 0x7F) as u32) << (7 * i);
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("variable byte integer longer than 4 bytes".into())
        }
        fn bin(&mut self) -> Result<Vec<u8>, String> {
            let n = self.u16()? as usize;
            Ok(self.take(n)?.to_vec())
        }
        fn str(&mut self) -> Result<String, String> {
            String::from_utf8(self.bin()?).map_err(|e| format!("invalid UTF-8: {e}"))
        }
        fn rest(&mut self) -> Vec<u8> {
            let s = self.b[self.pos..].to_vec();
            self.pos = self.b.len();
            s
        }
        fn remaining(&self) -> usize {
            self.b.len() - self.pos
        }
        fn props(&mut self) -> Result<Properties, String> {
            let len = self.varint()? as usize;
            let block = self.take(len)?;
            let mut r = Reader { b: block, pos: 0 };
            let mut out = Vec::new();
            while r.remaining() > 0 {
                let id = r.u8()?;
                let v = match id {
                    0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                        PropValue::Byte(r.u8()?)
                    }
                    0x13 | 0x21 | 0x22 | 0x23 => PropValue::U16(r.u16()?),
                    0x02 | 0x11 | 0x18 | 0x27 => PropValue::U32(r.u32()?),
                    0x0B => PropValue::Var(r.varint()?),
                    0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(r.str()?),
                    0x09 | 0x16 => PropValue::Bin(r.bin()?),
                    0x26 => PropValue::Pair(r.str()?, r.str()?),
                    other => return Err(format!("unknown property id 0x{other:02x}")),
                };
                out.push((id, v));
            }
            Ok(Properties(out))
        }
    }

    impl Packet {
        fn reader(&self) -> Reader<'_> {
            Reader {
                b: &self.body,
                pos: 0,
            }
        }

        /// Decodes a PUBLISH.
        pub fn publish(&self, version: u8) -> Result<Publish, String> {
            if self.kind != kind::PUBLISH {
                return Err(format!("expected PUBLISH, got type {}", self.kind));
            }
            let qos = (self.flags >> 1) & 3;
            let mut r = self.reader();
            let topic = r.str()?;
            let pid = if qos > 0 { Some(r.u16()?) } else { None };
            let props = if version == V5 {
                r.props()?
            } else {
                Properties::default()
            };
            Ok(Publish {
                dup: self.flags & 0x08 != 0,
                qos,
                retain: self.flags & 0x01 != 0,
                topic,
                pid,
                props,
                payload: r.rest(),
            })
        }

        /// Decodes a CONNACK.
        pub fn connack(&self, version: u8) -> Result<ConnAck, String> {
            if self.kind != kind::CONNACK {
                return Err(format!("expected CONNACK, got type {}", self.kind));
            }
            let mut r = self.reader();
            let flags = r.u8()?;
            let code = r.u8()?;
            let props = if version == V5 && r.remaining() > 0 {
                r.props()?
            } else {
                Properties::default()
            };
            Ok(ConnAck {
                session_present: flags & 1 != 0,
                code,
                props,
            })
        }

        /// Decodes a SUBACK or UNSUBACK: (packet id, properties, reason codes).
        pub fn suback(&self, version: u8) -> Result<(u16, Properties, Vec<u8>), String> {
            if self.kind != kind::SUBACK && self.kind != kind::UNSUBACK {
                return Err(format!("expected SUBACK/UNSUBACK, got type {}", self.kind));
            }
            let mut r = self.reader();
            let pid = r.u16()?;
            let props = if version == V5 {
                r.props()?
            } else {
                Properties::default()
            };
            Ok((pid, props, r.rest()))
        }

        /// Decodes a PUBACK/PUBREC/PUBREL/PUBCOMP: (packet id, reason code).
        pub fn ack(&self) -> Result<(u16, u8), String> {
            let mut r = self.reader();
            let pid = r.u16()?;
            let reason = if r.remaining() > 0 { r.u8()? } else { 0 };
            Ok((pid, reason))
        }

        /// Decodes a DISCONNECT: (reason code, properties). An empty body is 0x00.
        pub fn disconnect(&self) -> Result<(u8, Properties), String> {
            if self.kind != kind::DISCONNECT {
                return Err(format!("expected DISCONNECT, got type {}", self.kind));
            }
            let mut r = self.reader();
            if r.remaining() == 0 {
                return Ok((0, Properties::default()));
            }
            let reason = r.u8()?;
            let props = if r.remaining() > 0 {
                r.props()?
            } else {
                Properties::default()
            };
            Ok((reason, props))
        }
    }

    /// Splits one packet off the front of `buf`; `Ok(None)` if it is not complete yet.
    pub fn split_packet(buf: &mut Vec<u8>) -> Result<Option<Packet>, String> {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut len = 0usize;
        let mut i = 1;
        loop {
            if i >= buf.len() {
                return Ok(None);
            }
            if i > 4 {
                return Err("remaining length longer than 4 bytes".into());
            }
            let b = buf[i];
            len |= ((b & 0x7F) as usize) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if buf.len() < i + len {
            return Ok(None);
        }
        let p = Packet {
            kind: buf[0] >> 4,
            flags: buf[0] & 0x0F,
            body: buf[i..i + len].to_vec(),
        };
        buf.drain(..i + len);
        Ok(Some(p))
    }
}

/// What [`RawClient::recv`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// A whole packet.
    Packet(raw::Packet),
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing within the timeout.
    Timeout,
    /// Bytes that are not an MQTT packet.
    Garbage(String),
}

/// A raw MQTT client on a plain TCP socket: sends bytes, reads whole packets.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Protocol level used to decode what arrives (4 or 5).
    pub version: u8,
}

impl RawClient {
    /// Opens a TCP connection (no MQTT yet).
    pub async fn tcp(addr: &str, version: u8) -> RawClient {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: Vec::new(),
            version,
        }
    }

    /// Opens a connection, sends `connect` and waits for the CONNACK (panics otherwise).
    pub async fn connect(addr: &str, connect: &raw::Connect) -> (RawClient, raw::ConnAck) {
        let mut c = RawClient::tcp(addr, connect.version).await;
        c.send(&connect.encode()).await.expect("send CONNECT");
        let p = c.expect(Duration::from_secs(5), "CONNACK").await;
        let ack = p.connack(connect.version).expect("decode CONNACK");
        (c, ack)
    }

    /// Like [`RawClient::connect`], but returns an error instead of panicking when the
    /// TCP connection is refused, the CONNACK does not arrive within `timeout`, or the
    /// connection closes first (for clients that reconnect to a restarting broker).
    pub async fn try_connect(
        addr: &str,
        connect: &raw::Connect,
        timeout: Duration,
    ) -> Result<(RawClient, raw::ConnAck), String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(format!("TCP connect to {addr} timed out")),
            Ok(Err(e)) => return Err(format!("TCP connect to {addr}: {e}")),
            Ok(Ok(s)) => s,
        };
        stream.set_nodelay(true).ok();
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
            version: connect.version,
        };
        c.send(&connect.encode())
            .await
            .map_err(|e| format!("send CONNECT: {e}"))?;
        match c.recv(timeout).await {
            Recv::Packet(p) => {
                let ack = p
                    .connack(connect.version)
                    .map_err(|e| format!("bad CONNACK: {e}"))?;
                Ok((c, ack))
            }
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    /// Writes bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads the next packet, waiting at most `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match raw::split_packet(&mut self.buf) {
                Ok(Some(p)) => return Recv::Packet(p),
                Ok(None) => {}
                Err(e) => return Recv::Garbage(e),
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) => return Recv::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => return Recv::Closed,
            }
        }
    }

    /// Reads the next packet or panics naming `what` was expected.
    pub async fn expect(&mut self, timeout: Duration, what: &str) -> raw::Packet {
        match self.recv(timeout).await {
            Recv::Packet(p) => p,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// Reads the next packet, skipping PINGRESPs, and decodes it as a PUBLISH.
    pub async fn expect_publish(&mut self, timeout: Duration) -> raw::Publish {
        loop {
            let p = self.expect(timeout, "PUBLISH").await;
            if p.kind == raw::kind::PINGRESP {
                continue;
            }
            return p
                .publish(self.version)
                .unwrap_or_else(|e| panic!("expected a PUBLISH: {e}: {p:?}"));
        }
    }

    /// Subscribes and returns the SUBACK reason codes.
    pub async fn subscribe(
        &mut self,
        pid: u16,
        filters: &[(&str, u8)],
        props: &raw::Props,
    ) -> Vec<u8> {
        self.send(&raw::subscribe(self.version, pid, filters, props))
            .await
            .expect("send SUBSCRIBE");
        let p = self.expect(Duration::from_secs(5), "SUBACK").await;
        let (got_pid, _, codes) = p
            .suback(self.version)
            .unwrap_or_else(|e| panic!("bad SUBACK: {e}: {p:?}"));
        assert_eq!(got_pid, pid, "SUBACK packet id");
        codes
    }

    /// Reads until the connection closes or `timeout` passes. Returns the packets that
    /// arrived before the close, or `Err(packets)` if it was still open at the timeout.
    pub async fn wait_closed(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<raw::Packet>, Vec<raw::Packet>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Recv::Packet(p) => seen.push(p),
                Recv::Closed => return Ok(seen),
                Recv::Garbage(_) => {
                    // Undecodable bytes: drop them and keep waiting for the close.
                    self.buf.clear();
                }
                Recv::Timeout => return Err(seen),
            }
        }
    }

    /// Half-closes the socket (no more bytes from us); reading still works.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Closes the socket without DISCONNECT (an abnormal close for will purposes).
    pub async fn abort(self) {
        let std = self.stream.into_std().expect("into_std");
        // SO_LINGER 0 would send RST; a plain close is abnormal enough for MQTT.
        drop(std);
    }
}
