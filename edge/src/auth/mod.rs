//! Authentication for the broker's parked CONNECTs (`Output::Authenticate`).
//!
//! The [`Authenticator`] lives in the hub, under its lock, and decides what is cheap
//! at once: a client-certificate identity used as the user name, anonymous clients,
//! addresses that failed too often ([`rate_limit`]). A password is checked against the
//! [`password_file`] off the hub lock and off the tokio workers: a task waits for one
//! of a few verification slots, runs argon2id on a blocking thread and sends the
//! outcome back, where the hub applies it under the lock (`Server::run_auth`).
//!
//! Refusals (CONNACK reason codes; MQTT 3.1.1 return codes in brackets):
//! no user name while anonymous access is off → 0x87 (5); wrong user name or
//! password → 0x86 (4); an address past its failed-login allowance → 0x9F (5); too
//! many verifications waiting → 0x89 server busy (3). Passwords are never logged.
//! MQTT 5 enhanced authentication (AUTH packets) stays refused by the broker itself.

pub mod password_file;
pub mod rate_limit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use tern_core::auth::AuthRequest;
use tern_core::broker::ConnId;
use tern_core::mqtt::reason;
use tokio::sync::{mpsc, Semaphore};

use crate::config::AuthConfig;
use password_file::{PasswordDb, PasswordFileError};
use rate_limit::LoginLimiter;

/// Most password verifications waiting or running at once; beyond, 0x89 (busy).
const MAX_PENDING: usize = 256;

/// Most argon2id verifications running at once (each takes ~19 MiB and a core).
const MAX_PARALLEL: usize = 4;

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
#[derive(Debug)]
pub(crate) struct Authenticator {
    allow_anonymous: bool,
    passwords: Option<Arc<PasswordDb>>,
    /// Some listener takes user names from client certificates.
    identity_listeners: bool,
    limiter: LoginLimiter,
    slots: Arc<Semaphore>,
    pending: Arc<AtomicUsize>,
    results: mpsc::UnboundedSender<Verified>,
    runtime: tokio::runtime::Handle,
}

impl Authenticator {
    /// An authenticator for `config`; `identity_listeners`: some listener has
    /// `use_identity_as_username`. Loads the password file (an error names it).
    /// Returns the receiver of finished verifications. Call within a tokio runtime.
    pub(crate) fn new(
        config: &AuthConfig,
        identity_listeners: bool,
    ) -> Result<(Authenticator, mpsc::UnboundedReceiver<Verified>), PasswordFileError> {
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
        let parallel = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_PARALLEL);
        let (results, receiver) = mpsc::unbounded_channel();
        let auth = Authenticator {
            allow_anonymous: config.allow_anonymous,
            passwords,
            identity_listeners,
            limiter: LoginLimiter::new(config.max_login_failures),
            slots: Arc::new(Semaphore::new(parallel)),
            pending: Arc::new(AtomicUsize::new(0)),
            results,
            runtime: tokio::runtime::Handle::current(),
        };
        Ok((auth, receiver))
    }

    /// Whether the broker must park CONNECTs for us at all. Not when anonymous access
    /// is on and nothing could be checked: then every CONNECT goes straight through.
    pub(crate) fn required(&self) -> bool {
        !self.allow_anonymous || self.passwords.is_some() || self.identity_listeners
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
        let Some(passwords) = self.passwords.clone() else {
            if self.allow_anonymous {
                // Nothing to check against: the name is taken as given.
                return Decision::Now(Ok(None));
            }
            tracing::info!(conn = conn.0, %peer, client_id = %request.client_id, %username, "client refused: no password file to check against");
            return Decision::Now(Err(reason::NOT_AUTHORIZED));
        };
        let ip = peer.ip();
        if self.limiter.is_blocked(ip, now) {
            tracing::debug!(conn = conn.0, %peer, %username, "login refused unchecked: too many failures from this address");
            return Decision::Now(Err(reason::CONNECTION_RATE_EXCEEDED));
        }
        let Some(password) = request.password else {
            self.failed(conn, peer, &request.client_id, &username, now);
            return Decision::Now(Err(reason::BAD_USERNAME_OR_PASSWORD));
        };
        if self.pending.load(Ordering::Relaxed) >= MAX_PENDING {
            tracing::warn!(conn = conn.0, %peer, "too many logins waiting for verification; refusing (server busy)");
            return Decision::Now(Err(reason::SERVER_BUSY));
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let slots = self.slots.clone();
        let pending = self.pending.clone();
        let results = self.results.clone();
        let client_id = request.client_id;
        self.runtime.spawn(async move {
            let ok = match slots.acquire_owned().await {
                Ok(_slot) => {
                    let user = username.clone();
                    tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
                        .await
                        .unwrap_or(false)
                }
                Err(_) => false, // Closed: shutting down.
            };
            pending.fetch_sub(1, Ordering::Relaxed);
            // Fails only at shutdown, when nobody waits for the answer any more.
            let _ = results.send(Verified {
                conn,
                peer,
                client_id,
                username,
                ok,
            });
        });
        Decision::Later
    }

    /// The answer for a finished verification (counting a failure).
    pub(crate) fn finish(&mut self, verified: &Verified, now: Instant) -> AuthResult {
        if verified.ok {
            tracing::debug!(conn = verified.conn.0, peer = %verified.peer, username = %verified.username, "password accepted");
            return Ok(None);
        }
        self.failed(
            verified.conn,
            verified.peer,
            &verified.client_id,
            &verified.username,
            now,
        );
        Err(reason::BAD_USERNAME_OR_PASSWORD)
    }

    fn failed(
        &mut self,
        conn: ConnId,
        peer: SocketAddr,
        client_id: &str,
        username: &str,
        now: Instant,
    ) {
        tracing::info!(conn = conn.0, %peer, client_id, username, "login failed: bad user name or password");
        if self.limiter.record_failure(peer.ip(), now) {
            let wait = self.limiter.retry_after(peer.ip(), now);
            tracing::warn!(
                ip = %peer.ip(),
                retry_after_s = wait.as_secs_f32(),
                "too many failed logins from this address: its CONNECTs are refused (0x9F) for now"
            );
        }
    }
}
