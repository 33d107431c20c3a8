//! Authentication for the broker's parked CONNECTs (`Output::Authenticate`).
//!
//! The [`Authenticator`] lives in the hub, under its lock, and decides what is cheap
//! at once: a client-certificate identity used as the user name, anonymous clients,
//! addresses that failed too often ([`rate_limit`]). A password is checked against the
//! [`password_file`] off the hub lock and off the tokio workers, by a few dedicated
//! threads (one per core, at most [`MAX_PARALLEL`]) fed through a bounded queue; each
//! keeps its argon2 working memory (19 MiB with the default parameters) between
//! verifications, so a flood of logins costs a fixed amount of memory. The outcome is
//! sent back and applied by the hub under its lock (`Server::run_auth`).
//!
//! A login attempt is charged to its address's failed-login allowance before its
//! password is checked (and refunded if it succeeds), so concurrent guesses count too:
//! an address never has more logins being checked than it has failures left. Logins
//! beyond that wait for those being checked (a burst of good logins from one NAT all
//! get in); once the allowance is used up by failures, they are refused with 0x9F.
//!
//! Refusals (CONNACK reason codes; MQTT 3.1.1 return codes in brackets):
//! no user name while anonymous access is off → 0x87 (5); wrong user name or
//! password → 0x86 (4); an address past its failed-login allowance → 0x9F (5); too
//! many verifications waiting → 0x89 server busy (3). Passwords are never logged.
//! MQTT 5 enhanced authentication (AUTH packets) stays refused by the broker itself.

pub mod password_file;
pub mod rate_limit;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use tern_core::auth::AuthRequest;
use tern_core::broker::ConnId;
use tern_core::mqtt::reason;
use tokio::sync::mpsc;

use crate::config::AuthConfig;
use password_file::{PasswordDb, PasswordFileError, Scratch};
use rate_limit::{address_key, LoginLimiter};

/// Most password verifications waiting at once; beyond, 0x89 (server busy).
const MAX_PENDING: usize = 256;

/// Most argon2id verifications running at once (each takes ~19 MiB and a core).
pub const MAX_PARALLEL: usize = 4;

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The password file could not be read or parsed.
    #[error("auth.password_file: {0}")]
    PasswordFile(#[from] PasswordFileError),
    /// The verification threads could not be started.
    #[error("cannot start the password verification threads: {0}")]
    Threads(std::io::Error),
}

/// A password to check, queued for a verification thread.
struct Job {
    conn: ConnId,
    peer: SocketAddr,
    client_id: ByteString,
    username: ByteString,
    password: Bytes,
}

/// The answer the broker wants: the user name to use, or a CONNACK reason code.
pub(crate) type AuthResult = Result<Option<ByteString>, u8>;

/// A password verification that finished, for the hub to apply.
#[derive(Debug)]
pub(crate) struct Verified {
    /// The parked connection.
    pub(crate) conn: ConnId,
    peer: SocketAddr,
    client_id: ByteString,
    username: ByteString,
    ok: bool,
}

/// What [`Authenticator::start`] decided.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The answer, now.
    Now(AuthResult),
    /// A password is being verified; a [`Verified`] will come.
    Later,
}

/// Decides who may connect (see the module doc).
pub(crate) struct Authenticator {
    allow_anonymous: bool,
    /// The queue of the verification threads, if there is a password file.
    verifier: Option<SyncSender<Job>>,
    /// Some listener takes user names from client certificates.
    identity_listeners: bool,
    limiter: LoginLimiter,
    /// Logins being checked, per address (see `address_key`).
    in_flight: HashMap<IpAddr, usize>,
    /// Logins waiting for their address's logins being checked, per address.
    waiting: HashMap<IpAddr, VecDeque<Job>>,
    /// Total of `waiting`.
    waiting_total: usize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("password_file", &self.verifier.is_some())
            .field("identity_listeners", &self.identity_listeners)
            .finish_non_exhaustive()
    }
}

/// Starts the verification threads; they end when the returned sender is dropped.
fn spawn_verifiers(
    db: Arc<PasswordDb>,
    results: mpsc::UnboundedSender<Verified>,
    threads: usize,
) -> Result<SyncSender<Job>, AuthSetupError> {
    let (jobs, queue) = sync_channel::<Job>(MAX_PENDING);
    let queue = Arc::new(Mutex::new(queue));
    let parallel = match threads {
        0 => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_PARALLEL),
        n => n.min(MAX_PARALLEL),
    };
    for n in 0..parallel {
        let (db, queue, results) = (db.clone(), queue.clone(), results.clone());
        std::thread::Builder::new()
            .name(format!("tern-auth-{n}"))
            .spawn(move || verify_loop(&db, &queue, &results))
            .map_err(AuthSetupError::Threads)?;
    }
    Ok(jobs)
}

/// One verification thread: checks queued passwords until the queue is closed.
fn verify_loop(
    db: &PasswordDb,
    queue: &Mutex<Receiver<Job>>,
    results: &mpsc::UnboundedSender<Verified>,
) {
    let mut scratch = Scratch::default();
    loop {
        let job = {
            let queue = match queue.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return, // The authenticator is gone.
            }
        };
        let ok = db.verify(&job.username, &job.password, &mut scratch);
        // Fails only at shutdown, when nobody waits for the answer any more.
        let _ = results.send(Verified {
            conn: job.conn,
            peer: job.peer,
            client_id: job.client_id,
            username: job.username,
            ok,
        });
    }
}

impl Authenticator {
    /// An authenticator for `config`; `identity_listeners`: some listener has
    /// `use_identity_as_username`. Loads the password file (an error names it).
    /// Returns the receiver of finished verifications. Call within a tokio runtime.
    pub(crate) fn new(
        config: &AuthConfig,
        identity_listeners: bool,
    ) -> Result<(Authenticator, mpsc::UnboundedReceiver<Verified>), AuthSetupError> {
        let passwords = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            let db = PasswordDb::open(Path::new(&config.password_file))?;
            tracing::info!(
                path = %config.password_file.display(),
                users = db.users(),
                "password file loaded"
            );
            Some(Arc::new(db))
        };
        if !config.allow_anonymous && passwords.is_none() && !identity_listeners {
            tracing::warn!(
                "anonymous access is off and there is no password file: every client \
                 will be refused (set auth.password_file, or auth.allow_anonymous = true)"
            );
        }
        let (results, receiver) = mpsc::unbounded_channel();
        let verifier = match passwords {
            Some(db) => Some(spawn_verifiers(db, results, config.verify_threads)?),
            None => None,
        };
        let auth = Authenticator {
            allow_anonymous: config.allow_anonymous,
            verifier,
            identity_listeners,
            limiter: LoginLimiter::new(config.max_login_failures),
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            waiting_total: 0,
        };
        Ok((auth, receiver))
    }

    /// Whether the broker must park CONNECTs for us at all. Not when anonymous access
    /// is on and nothing could be checked: then every CONNECT goes straight through.
    pub(crate) fn required(&self) -> bool {
        !self.allow_anonymous || self.verifier.is_some() || self.identity_listeners
    }

    /// Decides on a CONNECT from `peer`; `cert_as_username`: its listener takes the user
    /// name from the client certificate.
    pub(crate) fn start(
        &mut self,
        conn: ConnId,
        request: AuthRequest,
        peer: SocketAddr,
        cert_as_username: bool,
        now: Instant,
    ) -> Decision {
        if cert_as_username {
            if let Some(identity) = request.certificate {
                tracing::debug!(conn = conn.0, %peer, %identity, "authenticated by client certificate");
                return Decision::Now(Ok(Some(identity)));
            }
        }
        let Some(username) = request.username else {
            if self.allow_anonymous {
                return Decision::Now(Ok(None));
            }
            tracing::info!(conn = conn.0, %peer, client_id = %request.client_id, "anonymous client refused");
            return Decision::Now(Err(reason::NOT_AUTHORIZED));
        };
        if self.verifier.is_none() {
            if self.allow_anonymous {
                // Nothing to check against: the name is taken as given.
                return Decision::Now(Ok(None));
            }
            tracing::info!(conn = conn.0, %peer, client_id = %request.client_id, %username, "client refused: no password file to check against");
            return Decision::Now(Err(reason::NOT_AUTHORIZED));
        }
        let ip = peer.ip();
        let key = address_key(ip);
        let Some(password) = request.password else {
            if self.limiter.is_blocked(ip, now) {
                return Decision::Now(Err(reason::CONNECTION_RATE_EXCEEDED));
            }
            self.limiter.record_failure(ip, now);
            self.failed(conn, peer, &request.client_id, &username);
            return Decision::Now(Err(reason::BAD_USERNAME_OR_PASSWORD));
        };
        let job = Job {
            conn,
            peer,
            client_id: request.client_id,
            username,
            password,
        };
        // Charged now, refunded on success: guesses checked in parallel count too.
        if self.limiter.take(ip, now) {
            return match self.dispatch(key, job, now) {
                None => Decision::Later,
                Some(refusal) => Decision::Now(refusal),
            };
        }
        if self.in_flight.get(&key).copied().unwrap_or(0) == 0 {
            tracing::debug!(conn = conn.0, %peer, "login refused unchecked: too many failures from this address");
            return Decision::Now(Err(reason::CONNECTION_RATE_EXCEEDED));
        }
        // The allowance is held by logins being checked: wait for their outcome.
        if self.waiting_total >= MAX_PENDING {
            tracing::warn!(conn = conn.0, %peer, "too many logins waiting for verification; refusing (server busy)");
            return Decision::Now(Err(reason::SERVER_BUSY));
        }
        self.waiting.entry(key).or_default().push_back(job);
        self.waiting_total += 1;
        Decision::Later
    }

    /// Hands a charged login to the verification threads; `Some` refusal if it cannot.
    fn dispatch(&mut self, key: IpAddr, job: Job, now: Instant) -> Option<AuthResult> {
        let Some(verifier) = &self.verifier else {
            return Some(Err(reason::NOT_AUTHORIZED));
        };
        let (conn, peer) = (job.conn, job.peer);
        match verifier.try_send(job) {
            Ok(()) => {
                *self.in_flight.entry(key).or_default() += 1;
                None
            }
            Err(TrySendError::Full(_)) => {
                self.limiter.refund(peer.ip(), now);
                tracing::warn!(conn = conn.0, %peer, "too many logins waiting for verification; refusing (server busy)");
                Some(Err(reason::SERVER_BUSY))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.limiter.refund(peer.ip(), now);
                tracing::error!(conn = conn.0, %peer, "password verification threads are gone; refusing");
                Some(Err(reason::SERVER_UNAVAILABLE))
            }
        }
    }

    /// Starts the logins waiting for `key` that its allowance now permits; refuses them
    /// all (0x9F) once failures used it up. Answers go to `out`.
    fn pump(&mut self, key: IpAddr, now: Instant, out: &mut Vec<(ConnId, AuthResult)>) {
        while let Some(job) = self.waiting.get_mut(&key).and_then(VecDeque::pop_front) {
            self.waiting_total -= 1;
            let (conn, ip) = (job.conn, job.peer.ip());
            if self.limiter.take(ip, now) {
                if let Some(refusal) = self.dispatch(key, job, now) {
                    out.push((conn, refusal));
                }
            } else if self.in_flight.get(&key).copied().unwrap_or(0) == 0 {
                tracing::debug!(conn = conn.0, %ip, "login refused unchecked: too many failures from this address");
                out.push((conn, Err(reason::CONNECTION_RATE_EXCEEDED)));
            } else {
                self.waiting.entry(key).or_default().push_front(job);
                self.waiting_total += 1;
                return;
            }
        }
        self.waiting.remove(&key);
    }

    /// The answers after a finished verification: its own, and those of logins from
    /// the same address that were waiting for it.
    pub(crate) fn finish(
        &mut self,
        verified: &Verified,
        now: Instant,
    ) -> Vec<(ConnId, AuthResult)> {
        let key = address_key(verified.peer.ip());
        if let Some(n) = self.in_flight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&key);
            }
        }
        let result = self.outcome(verified, now);
        let mut out = vec![(verified.conn, result)];
        self.pump(key, now, &mut out);
        out
    }

    /// The answer for a finished verification (a failure stays charged).
    fn outcome(&mut self, verified: &Verified, now: Instant) -> AuthResult {
        if verified.ok {
            self.limiter.refund(verified.peer.ip(), now);
            tracing::debug!(conn = verified.conn.0, peer = %verified.peer, username = %verified.username, "password accepted");
            return Ok(None);
        }
        self.failed(
            verified.conn,
            verified.peer,
            &verified.client_id,
            &verified.username,
        );
        if self.limiter.is_blocked(verified.peer.ip(), now) {
            let wait = self.limiter.retry_after(verified.peer.ip(), now);
            tracing::warn!(
                ip = %verified.peer.ip(),
                retry_after_s = wait.as_secs_f32(),
                "too many failed logins from this address: its CONNECTs are refused (0x9F) for now"
            );
        }
        Err(reason::BAD_USERNAME_OR_PASSWORD)
    }

    /// Logs a failed login (never the password). The attempt was charged already.
    fn failed(&self, conn: ConnId, peer: SocketAddr, client_id: &str, username: &str) {
        tracing::info!(conn = conn.0, %peer, client_id, username, "login failed: bad user name or password");
    }
}
