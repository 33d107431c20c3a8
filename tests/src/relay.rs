//! A link-impairing relay for the bridge tests, in the manner of toxiproxy.
//!
//! The kernels the suite runs on have no `netem` qdisc, so a bad link between an edge and a
//! cloud is built here instead: a [`Relay`] listens on a local address, forwards to an
//! upstream address and applies an [`Impairment`] to the traffic, independently in each
//! direction:
//!
//! * [`Relay::udp`] (for QUIC) gives every client source address its own upstream socket,
//!   like a NAT, and delays, jitters, drops, reorders and rate-limits single datagrams. A
//!   capped link has a bounded router queue ([`QUEUE_BYTES`]): a datagram that does not
//!   fit is dropped.
//! * [`Relay::tcp`] (for the TLS-over-TCP fallback) copies each connection both ways with
//!   delay, jitter and a rate cap. Loss and reordering do not apply to a byte stream; the
//!   bytes keep their order and a full router queue pauses reading instead of dropping.
//! * [`Relay::udp_and_tcp`] does both on the same port number, as the bridge acceptor does.
//!
//! While traffic flows a test can change the impairment ([`Relay::set_impairment`]), cut the
//! link entirely ([`Relay::blackhole`], [`Relay::blackhole_for`]: UDP datagrams are dropped,
//! TCP bytes stall and are delivered when the blackhole ends, connections stay open),
//! simulate a link loss ([`Relay::cut`]: UDP flows are forgotten, TCP connections reset) and
//! read counters ([`Relay::stats`]).
//!
//! Every random decision comes from a small PRNG (SplitMix64) seeded by
//! [`Impairment::seed`], the flow number and the direction, and each datagram draws the same
//! number of values whatever the settings, so the same seed gives the same loss pattern on
//! every run and every machine. (Timing still varies: which datagrams a full rate-limit
//! queue drops depends on how fast they arrive.)
//!
//! A relay runs on its own thread with its own single-threaded tokio runtime, so it works
//! from synchronous tests and from async tests alike, and a test that blocks its own runtime
//! does not stall the link. Dropping the [`Relay`] stops it and closes all its sockets before
//! `drop` returns.

use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};

/// Size of the router queue in front of a rate-capped link: a UDP datagram that does not
/// fit is dropped, a TCP reader waits.
pub const QUEUE_BYTES: usize = 256 * 1024;

/// Largest UDP datagram the relay forwards.
const MAX_DATAGRAM: usize = 65_536;
/// Read size of the TCP relay on an uncapped link.
const TCP_CHUNK: usize = 16 * 1024;
/// Read size of the TCP relay on a capped link (one segment), so that bytes are released
/// at the link's pace rather than in large bursts.
const TCP_CHUNK_CAPPED: usize = 1460;
/// Chunks in flight between a TCP reader and its writer (the "wire" of one direction).
const TCP_PIPE_CHUNKS: usize = 1024;
/// How often a stalled TCP writer looks whether the blackhole has ended.
const BLACKHOLE_POLL: Duration = Duration::from_millis(5);
/// Smallest hold-back of a reordered datagram (when the delay is shorter).
const MIN_REORDER_HOLD: Duration = Duration::from_millis(10);
/// Attempts at finding a port free for both UDP and TCP in [`Relay::udp_and_tcp`].
const PORT_ATTEMPTS: usize = 20;

/// How a relay impairs the link; the same settings apply to each direction independently.
///
/// `Impairment::default()` is a perfect link: everything is forwarded at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Impairment {
    /// One-way delay added in each direction (the round trip grows by twice this).
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per datagram or chunk (UDP datagrams
    /// may overtake each other; TCP bytes keep their order).
    pub jitter: Duration,
    /// Probability (0 to 1) that a datagram is lost (UDP only).
    pub loss: f64,
    /// Probability (0 to 1) that a datagram is held back by an extra delay drawn from
    /// `[h/2, h]`, `h = max(delay + jitter, 10 ms)`, so that later ones overtake it (UDP only).
    pub reorder: f64,
    /// Link rate per direction in bits per second (serialization delay, with a queue of
    /// [`QUEUE_BYTES`]); `None` or `Some(0)` for no cap.
    pub rate_bits_per_sec: Option<u64>,
    /// Seed of every random decision.
    pub seed: u64,
}

impl Impairment {
    /// The rate cap in bits per second, if there is one.
    fn rate(&self) -> Option<u64> {
        self.rate_bits_per_sec.filter(|&r| r > 0)
    }
}

/// Counters of one direction of a relay (a snapshot).
///
/// For UDP the units are datagrams; for TCP they are the chunks the relay read and wrote
/// (only the byte counts are meaningful there, and nothing is ever dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams (chunks) the relay received from the sending side.
    pub received: u64,
    /// Bytes the relay received from the sending side.
    pub received_bytes: u64,
    /// Datagrams (chunks) delivered to the receiving side.
    pub forwarded: u64,
    /// Bytes delivered to the receiving side.
    pub forwarded_bytes: u64,
    /// Datagrams dropped by the random loss.
    pub dropped_loss: u64,
    /// Datagrams dropped because the link was blackholed when they arrived or left.
    pub dropped_blackhole: u64,
    /// Datagrams dropped because the queue in front of the capped link was full.
    pub dropped_queue: u64,
    /// Datagrams that could not be sent on (socket error, or no upstream socket).
    pub dropped_error: u64,
    /// Datagrams held back to be reordered.
    pub reordered: u64,
}

impl DirStats {
    /// All datagrams dropped, whatever the cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_blackhole + self.dropped_queue + self.dropped_error
    }
}

/// Counters of a relay (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client to upstream.
    pub to_upstream: DirStats,
    /// Upstream to client.
    pub to_client: DirStats,
    /// UDP flows created plus TCP connections accepted since the start.
    pub flows: u64,
}

/// A running relay; see the module documentation. Stops when dropped.
pub struct Relay {
    local: SocketAddr,
    shared: Arc<Shared>,
    ctrl: watch::Sender<Ctrl>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local", &self.local)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts a UDP relay listening on `listen` and forwarding to `upstream`.
    pub fn udp(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Relay> {
        let socket = bind_udp(listen)?;
        let local = socket.local_addr()?;
        Relay::start(local, impairment, Some(socket), None, upstream)
    }

    /// Starts a TCP relay listening on `listen` and forwarding to `upstream`.
    pub fn tcp(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Relay> {
        let listener = bind_tcp(listen)?;
        let local = listener.local_addr()?;
        Relay::start(local, impairment, None, Some(listener), upstream)
    }

    /// Starts one relay for UDP and TCP on the same port (`listen`'s, or a free one for
    /// port 0), both forwarding to the same `upstream` address and sharing the controls and
    /// counters.
    pub fn udp_and_tcp(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Relay> {
        let mut attempt = 0;
        let (socket, listener) = loop {
            attempt += 1;
            let socket = bind_udp(listen)?;
            let local = socket.local_addr()?;
            match bind_tcp(local) {
                Ok(listener) => break (socket, listener),
                Err(e)
                    if listen.port() == 0
                        && e.kind() == io::ErrorKind::AddrInUse
                        && attempt < PORT_ATTEMPTS =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        };
        let local = socket.local_addr()?;
        Relay::start(local, impairment, Some(socket), Some(listener), upstream)
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Replaces the impairment; applies to traffic arriving from now on.
    pub fn set_impairment(&self, impairment: Impairment) {
        *lock(&self.shared.impairment) = impairment;
        self.shared.version.fetch_add(1, Ordering::SeqCst);
    }

    /// The impairment in force.
    pub fn impairment(&self) -> Impairment {
        lock(&self.shared.impairment).clone()
    }

    /// Turns the blackhole on or off: while on, UDP datagrams are dropped both ways and TCP
    /// bytes stall. Turning it off also ends a [`Relay::blackhole_for`].
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
        if !on {
            *lock(&self.shared.blackhole_until) = None;
        }
    }

    /// Blackholes the link for `duration` from now.
    pub fn blackhole_for(&self, duration: Duration) {
        *lock(&self.shared.blackhole_until) = Some(std::time::Instant::now() + duration);
    }

    /// Whether the link is blackholed right now.
    pub fn is_blackholed(&self) -> bool {
        self.shared.blackholed()
    }

    /// Simulates a link loss: every UDP flow is forgotten (with the datagrams in flight; the
    /// next datagram from a client gets a new upstream socket, hence a new source port) and
    /// every TCP connection is reset both ways. New traffic is relayed again at once.
    pub fn cut(&self) {
        self.ctrl.send_modify(|c| c.cut += 1);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        Stats {
            to_upstream: self.shared.to_upstream.snapshot(),
            to_client: self.shared.to_client.snapshot(),
            flows: self.shared.flows.load(Ordering::Relaxed),
        }
    }

    fn start(
        local: SocketAddr,
        impairment: Impairment,
        udp: Option<std::net::UdpSocket>,
        tcp: Option<std::net::TcpListener>,
        upstream: SocketAddr,
    ) -> io::Result<Relay> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registering the sockets needs the relay's runtime as the current one; entering
        // it (unlike blocking on it) is allowed from inside another runtime.
        let (udp, tcp) = {
            let _guard = runtime.enter();
            let udp = udp.map(UdpSocket::from_std).transpose()?;
            let tcp = tcp.map(TcpListener::from_std).transpose()?;
            (udp, tcp)
        };
        let shared = Arc::new(Shared::new(impairment));
        let (ctrl, ctrl_rx) = watch::channel(Ctrl::default());
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("tern-relay-{}", local.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let udp_main = run_optional(udp.map(|socket| {
                        udp_main(socket, upstream, Arc::clone(&task_shared), ctrl_rx.clone())
                    }));
                    let tcp_main = run_optional(tcp.map(|listener| {
                        tcp_main(
                            listener,
                            upstream,
                            Arc::clone(&task_shared),
                            ctrl_rx.clone(),
                        )
                    }));
                    tokio::join!(udp_main, tcp_main);
                });
                // Dropping the runtime drops every task, hence every socket, here.
                drop(runtime);
            })?;
        Ok(Relay {
            local,
            shared,
            ctrl,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.ctrl.send_modify(|c| c.shutdown = true);
        if let Some(thread) = self.thread.take() {
            // A panic in the relay thread has been printed already; nothing to add here.
            let _ = thread.join();
        }
    }
}

async fn run_optional<F: Future<Output = ()>>(f: Option<F>) {
    if let Some(f) = f {
        f.await;
    }
}

fn bind_udp(listen: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_tcp(listen: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Locks a mutex, ignoring poisoning (the data are plain values, always consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Signals from the [`Relay`] handle to its tasks.
#[derive(Clone, Copy, Debug, Default)]
struct Ctrl {
    /// Incremented by every [`Relay::cut`].
    cut: u64,
    /// Set when the relay is dropped.
    shutdown: bool,
}

/// State shared by the handle and the tasks.
struct Shared {
    impairment: Mutex<Impairment>,
    /// Incremented on every change of `impairment`, so tasks reload it cheaply.
    version: AtomicU64,
    blackhole: AtomicBool,
    blackhole_until: Mutex<Option<std::time::Instant>>,
    to_upstream: Counters,
    to_client: Counters,
    flows: AtomicU64,
}

impl Shared {
    fn new(impairment: Impairment) -> Self {
        Shared {
            impairment: Mutex::new(impairment),
            version: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            blackhole_until: Mutex::new(None),
            to_upstream: Counters::default(),
            to_client: Counters::default(),
            flows: AtomicU64::new(0),
        }
    }

    fn blackholed(&self) -> bool {
        self.blackhole.load(Ordering::SeqCst)
            || lock(&self.blackhole_until).is_some_and(|until| std::time::Instant::now() < until)
    }

    fn counters(&self, dir: Dir) -> &Counters {
        match dir {
            Dir::ToUpstream => &self.to_upstream,
            Dir::ToClient => &self.to_client,
        }
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    received_bytes: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_error: AtomicU64,
    reordered: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirStats {
            received: get(&self.received),
            received_bytes: get(&self.received_bytes),
            forwarded: get(&self.forwarded),
            forwarded_bytes: get(&self.forwarded_bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_blackhole: get(&self.dropped_blackhole),
            dropped_queue: get(&self.dropped_queue),
            dropped_error: get(&self.dropped_error),
            reordered: get(&self.reordered),
        }
    }

    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn received(&self, len: usize) {
        Self::bump(&self.received, 1);
        Self::bump(&self.received_bytes, len as u64);
    }

    fn forwarded(&self, len: usize) {
        Self::bump(&self.forwarded, 1);
        Self::bump(&self.forwarded_bytes, len as u64);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToUpstream,
    ToClient,
}

/// SplitMix64: tiny, seedable, and the same sequence forever (unlike a dependency's
/// generator, which may change between versions).
struct Rng(u64);

impl Rng {
    fn new(seed: u64, flow: u64, dir: Dir) -> Self {
        let dir = match dir {
            Dir::ToUpstream => 0x5555_5555_5555_5555,
            Dir::ToClient => 0xAAAA_AAAA_AAAA_AAAA,
        };
        let mut mixer = Rng(seed ^ flow.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ dir);
        Rng(mixer.next_u64())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Time to put `len` bytes on a link of `rate` bits per second.
fn serialization(len: usize, rate: u64) -> Duration {
    let nanos = (len as u128) * 8 * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Bytes a link of `rate` bits per second sends in `time`.
fn bytes_in(time: Duration, rate: u64) -> usize {
    let bytes = time.as_nanos() * u128::from(rate) / 8 / 1_000_000_000;
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The impairment of one direction of one flow (UDP) or connection (TCP).
struct Shaper {
    shared: Arc<Shared>,
    dir: Dir,
    flow: u64,
    version: u64,
    impairment: Impairment,
    rng: Rng,
    /// When the capped link finishes sending what is queued.
    link_free_at: Instant,
    /// Delivery time of the previous TCP chunk (TCP keeps the order).
    last_at: Instant,
}

impl Shaper {
    fn new(shared: Arc<Shared>, dir: Dir, flow: u64) -> Self {
        let version = shared.version.load(Ordering::SeqCst);
        let impairment = lock(&shared.impairment).clone();
        let rng = Rng::new(impairment.seed, flow, dir);
        let now = Instant::now();
        Shaper {
            shared,
            dir,
            flow,
            version,
            impairment,
            rng,
            link_free_at: now,
            last_at: now,
        }
    }

    fn counters(&self) -> &Counters {
        self.shared.counters(self.dir)
    }

    /// Picks up a new impairment; a new seed restarts the random sequence.
    fn refresh(&mut self) {
        let version = self.shared.version.load(Ordering::SeqCst);
        if version == self.version {
            return;
        }
        let impairment = lock(&self.shared.impairment).clone();
        if impairment.seed != self.impairment.seed {
            self.rng = Rng::new(impairment.seed, self.flow, self.dir);
        }
        self.impairment = impairment;
        self.version = version;
    }

    /// Decides the fate of a datagram of `len` bytes arriving at `now`: when to deliver it,
    /// or `None` to drop it.
    fn datagram(&mut self, len: usize, now: Instant) -> Option<Instant> {
        self.refresh();
        // Always the same draws, so that the pattern of one setting does not depend on the
        // others.
        let u_loss = self.rng.f64();
        let u_reorder = self.rng.f64();
        let u_hold = self.rng.f64();
        let u_jitter = self.rng.f64();
        let counters = self.shared.counters(self.dir);
        counters.received(len);
        if self.shared.blackholed() {
            Counters::bump(&counters.dropped_blackhole, 1);
            return None;
        }
        let imp = &self.impairment;
        let mut departure = now;
        if let Some(rate) = imp.rate() {
            let start = self.link_free_at.max(now);
            if bytes_in(start - now, rate).saturating_add(len) > QUEUE_BYTES {
                Counters::bump(&counters.dropped_queue, 1);
                return None;
            }
            self.link_free_at = start + serialization(len, rate);
            departure = self.link_free_at;
        }
        // Lost on the wire, after having used its share of the link.
        if u_loss < imp.loss {
            Counters::bump(&counters.dropped_loss, 1);
            return None;
        }
        let mut at = departure + imp.delay + imp.jitter.mul_f64(u_jitter);
        if u_reorder < imp.reorder {
            let hold = (imp.delay + imp.jitter).max(MIN_REORDER_HOLD);
            at += hold.mul_f64(0.5 + 0.5 * u_hold);
            Counters::bump(&counters.reordered, 1);
        }
        Some(at)
    }

    /// When to deliver a TCP chunk of `len` bytes read at `now` (never before the previous).
    fn chunk(&mut self, len: usize, now: Instant) -> Instant {
        self.refresh();
        let u_jitter = self.rng.f64();
        self.counters().received(len);
        let imp = &self.impairment;
        let mut departure = now;
        if let Some(rate) = imp.rate() {
            self.link_free_at = self.link_free_at.max(now) + serialization(len, rate);
            departure = self.link_free_at;
        }
        let at = (departure + imp.delay + imp.jitter.mul_f64(u_jitter)).max(self.last_at);
        self.last_at = at;
        at
    }

    /// How long a TCP reader must wait before the queue in front of the capped link has
    /// room again; `None` when it has room now.
    fn queue_wait(&mut self, now: Instant) -> Option<Duration> {
        self.refresh();
        let rate = self.impairment.rate()?;
        let queued = self.link_free_at.saturating_duration_since(now);
        let room = serialization(QUEUE_BYTES, rate);
        queued.checked_sub(room).filter(|d| !d.is_zero())
    }

    fn capped(&self) -> bool {
        self.impairment.rate().is_some()
    }
}

/// A datagram waiting for its delivery time.
struct Pending {
    at: Instant,
    /// Arrival order, to break ties (first in, first out).
    order: u64,
    data: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed, so that the max-heap yields the earliest delivery first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// The datagrams of one direction of a flow that are "on the wire".
#[derive(Default)]
struct Wire {
    heap: BinaryHeap<Pending>,
    order: u64,
}

impl Wire {
    fn push(&mut self, at: Instant, data: Bytes) {
        self.order += 1;
        self.heap.push(Pending {
            at,
            order: self.order,
            data,
        });
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|p| p.at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        if self.heap.peek()?.at <= now {
            self.heap.pop().map(|p| p.data)
        } else {
            None
        }
    }
}

/// Sleeps until `at`, or forever for `None` (a disabled `select!` branch).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn udp_main(
    listener: UdpSocket,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut ctrl: watch::Receiver<Ctrl>,
) {
    let listener = Arc::new(listener);
    let mut flows: HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>> = HashMap::new();
    let mut next_flow = 0u64;
    let mut cut = ctrl.borrow_and_update().cut;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            changed = ctrl.changed() => {
                if changed.is_err() {
                    return;
                }
                let c = *ctrl.borrow_and_update();
                if c.shutdown {
                    return;
                }
                if c.cut != cut {
                    cut = c.cut;
                    // Dropping the senders ends the flow tasks and their upstream sockets.
                    flows.clear();
                }
            }
            received = listener.recv_from(&mut buf) => {
                // Errors here are ICMP reports about earlier datagrams: nothing to do.
                let Ok((n, client)) = received else { continue };
                let data = Bytes::copy_from_slice(&buf[..n]);
                let data = match flows.get(&client) {
                    Some(flow) => match flow.send(data) {
                        Ok(()) => continue,
                        Err(mpsc::error::SendError(data)) => data,
                    },
                    None => data,
                };
                match new_udp_flow(client, upstream, &listener, &shared, next_flow).await {
                    Ok(flow) => {
                        next_flow += 1;
                        shared.flows.fetch_add(1, Ordering::Relaxed);
                        // The task holds the receiver, so this cannot fail.
                        let _ = flow.send(data);
                        flows.insert(client, flow);
                    }
                    Err(_) => {
                        let counters = &shared.to_upstream;
                        counters.received(n);
                        Counters::bump(&counters.dropped_error, 1);
                    }
                }
            }
        }
    }
}

async fn new_udp_flow(
    client: SocketAddr,
    upstream: SocketAddr,
    listener: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    flow: u64,
) -> io::Result<mpsc::UnboundedSender<Bytes>> {
    let any: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(upstream).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(udp_flow(
        client,
        Arc::clone(listener),
        socket,
        rx,
        Shaper::new(Arc::clone(shared), Dir::ToUpstream, flow),
        Shaper::new(Arc::clone(shared), Dir::ToClient, flow),
    ));
    Ok(tx)
}

/// One client's flow: datagrams from the client arrive on `from_client`, go out on
/// `socket`; datagrams arriving on `socket` go back to the client through `listener`.
async fn udp_flow(
    client: SocketAddr,
    listener: Arc<UdpSocket>,
    socket: UdpSocket,
    mut from_client: mpsc::UnboundedReceiver<Bytes>,
    mut up: Shaper,
    mut down: Shaper,
) {
    let shared = Arc::clone(&up.shared);
    let mut up_wire = Wire::default();
    let mut down_wire = Wire::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let up_next = up_wire.next_at();
        let down_next = down_wire.next_at();
        tokio::select! {
            data = from_client.recv() => {
                // None: the flow was cut (or the relay is stopping).
                let Some(data) = data else { return };
                if let Some(at) = up.datagram(data.len(), Instant::now()) {
                    up_wire.push(at, data);
                }
            }
            received = socket.recv(&mut buf) => {
                // Errors are ICMP reports (upstream not listening, e.g. while it restarts).
                if let Ok(n) = received {
                    if let Some(at) = down.datagram(n, Instant::now()) {
                        down_wire.push(at, Bytes::copy_from_slice(&buf[..n]));
                    }
                }
            }
            () = sleep_until_opt(up_next) => {
                let counters = &shared.to_upstream;
                while let Some(data) = up_wire.pop_due(Instant::now()) {
                    if shared.blackholed() {
                        Counters::bump(&counters.dropped_blackhole, 1);
                    } else if socket.send(&data).await.is_ok() {
                        counters.forwarded(data.len());
                    } else {
                        Counters::bump(&counters.dropped_error, 1);
                    }
                }
            }
            () = sleep_until_opt(down_next) => {
                let counters = &shared.to_client;
                while let Some(data) = down_wire.pop_due(Instant::now()) {
                    if shared.blackholed() {
                        Counters::bump(&counters.dropped_blackhole, 1);
                    } else if listener.send_to(&data, client).await.is_ok() {
                        counters.forwarded(data.len());
                    } else {
                        Counters::bump(&counters.dropped_error, 1);
                    }
                }
            }
        }
    }
}

async fn tcp_main(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut ctrl: watch::Receiver<Ctrl>,
) {
    let mut next_conn = 0u64;
    loop {
        tokio::select! {
            changed = ctrl.changed() => {
                if changed.is_err() || ctrl.borrow_and_update().shutdown {
                    return;
                }
            }
            accepted = listener.accept() => {
                match accepted {
                    Ok((client, _)) => {
                        shared.flows.fetch_add(1, Ordering::Relaxed);
                        let stop = Stop::new(ctrl.clone());
                        tokio::spawn(tcp_conn(client, upstream, Arc::clone(&shared), next_conn, stop));
                        next_conn += 1;
                    }
                    // Out of descriptors and the like: let it pass rather than spin.
                    Err(_) => sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }
}

/// When the tasks of one TCP connection must stop: on a cut, on shutdown, or when another
/// task of the connection failed.
#[derive(Clone)]
struct Stop {
    ctrl: watch::Receiver<Ctrl>,
    generation: u64,
    abort: watch::Sender<bool>,
    aborted: watch::Receiver<bool>,
}

impl Stop {
    fn new(mut ctrl: watch::Receiver<Ctrl>) -> Self {
        let generation = ctrl.borrow_and_update().cut;
        let (abort, aborted) = watch::channel(false);
        Stop {
            ctrl,
            generation,
            abort,
            aborted,
        }
    }

    /// Tells the other tasks of the connection to stop.
    fn abort(&self) {
        self.abort.send_replace(true);
    }

    /// Whether the connection must stop, from the current values (not the notifications).
    fn stopped(&mut self) -> bool {
        let c = *self.ctrl.borrow_and_update();
        c.shutdown || c.cut != self.generation || *self.aborted.borrow_and_update()
    }

    /// Resolves when the connection must stop (cancel-safe).
    async fn wait(&mut self) {
        loop {
            if self.stopped() {
                return;
            }
            tokio::select! {
                changed = self.ctrl.changed() => if changed.is_err() { return },
                changed = self.aborted.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Runs `f` unless the connection must stop first (`None`). Stopping wins when both
    /// happen: a writer whose reader was stopped must reset, not pass on an end of stream.
    /// (The watch wakes its waiters one after another, so the reader may have seen a cut,
    /// and closed the channel, before this task's notification arrives: hence the check of
    /// the current values after `f`.)
    async fn or_stop<F: Future>(&mut self, f: F) -> Option<F::Output> {
        let out = tokio::select! {
            biased;
            () = self.wait() => return None,
            out = f => out,
        };
        if self.stopped() {
            None
        } else {
            Some(out)
        }
    }
}

async fn tcp_conn(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    conn: u64,
    mut stop: Stop,
) {
    let server = match stop.or_stop(TcpStream::connect(upstream)).await {
        Some(Ok(server)) => server,
        _ => {
            // Upstream refused: the client sees its connection reset.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    for (read, write, dir) in [
        (client_read, server_write, Dir::ToUpstream),
        (server_read, client_write, Dir::ToClient),
    ] {
        let (tx, rx) = mpsc::channel(TCP_PIPE_CHUNKS);
        let shaper = Shaper::new(Arc::clone(&shared), dir, conn);
        tokio::spawn(tcp_read(read, tx, shaper, stop.clone()));
        tokio::spawn(tcp_write(write, rx, Arc::clone(&shared), dir, stop.clone()));
    }
}

/// Reads one direction of a connection and puts the chunks "on the wire".
async fn tcp_read(
    mut read: OwnedReadHalf,
    wire: mpsc::Sender<(Instant, Bytes)>,
    mut shaper: Shaper,
    mut stop: Stop,
) {
    let mut buf = vec![0u8; TCP_CHUNK];
    loop {
        while let Some(wait) = shaper.queue_wait(Instant::now()) {
            if stop.or_stop(sleep(wait)).await.is_none() {
                return reset(read.as_ref());
            }
        }
        let size = if shaper.capped() {
            TCP_CHUNK_CAPPED
        } else {
            TCP_CHUNK
        };
        let n = match stop.or_stop(read.read(&mut buf[..size])).await {
            None => return reset(read.as_ref()),
            // End of stream: dropping the sender lets the writer flush and close its side.
            Some(Ok(0)) => return,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                stop.abort();
                return reset(read.as_ref());
            }
        };
        let at = shaper.chunk(n, Instant::now());
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        match stop.or_stop(wire.send((at, chunk))).await {
            Some(Ok(())) => {}
            // The writer is gone (it failed and aborted the connection).
            Some(Err(_)) | None => return reset(read.as_ref()),
        }
    }
}

/// Delivers the chunks of one direction when they are due, stalling while blackholed.
async fn tcp_write(
    mut write: OwnedWriteHalf,
    mut wire: mpsc::Receiver<(Instant, Bytes)>,
    shared: Arc<Shared>,
    dir: Dir,
    mut stop: Stop,
) {
    let counters = shared.counters(dir);
    loop {
        let (at, chunk) = match stop.or_stop(wire.recv()).await {
            None => return reset_write(write),
            Some(None) => {
                // The reader saw the end of the stream: pass it on.
                let _ = write.shutdown().await;
                return;
            }
            Some(Some(item)) => item,
        };
        if stop.or_stop(sleep_until(at)).await.is_none() {
            return reset_write(write);
        }
        while shared.blackholed() {
            if stop.or_stop(sleep(BLACKHOLE_POLL)).await.is_none() {
                return reset_write(write);
            }
        }
        match stop.or_stop(write.write_all(&chunk)).await {
            Some(Ok(())) => counters.forwarded(chunk.len()),
            Some(Err(_)) => {
                stop.abort();
                return reset_write(write);
            }
            None => return reset_write(write),
        }
    }
}

/// Makes the socket send a reset, not a FIN, once both halves are dropped.
fn reset(stream: &TcpStream) {
    // Best effort: the socket may already be gone on the other side.
    let _ = stream.set_zero_linger();
}

/// [`reset`] for a write half, which must not send its FIN on the way out.
fn reset_write(write: OwnedWriteHalf) {
    reset(write.as_ref());
    write.forget();
}
