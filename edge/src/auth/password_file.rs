//! The password file: one `user:$argon2id$v=19$m=...,t=...,p=...$salt$hash` line per
//! user, as Mosquitto's `mosquitto_passwd` keeps its file (with argon2id PHC strings
//! instead of Mosquitto's hashes).
//!
//! Blank lines and lines starting with `#` are ignored when reading and not written
//! back. Writing is atomic: a temporary file (mode 0600) in the same directory, synced,
//! then renamed over the old one, so a crash leaves either the old or the new file.
//!
//! [`PasswordDb`] is what the broker uses: it re-reads the file when it changes (size
//! or modification time), so `tern-edge passwd` takes effect without a restart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Largest argon2 memory cost accepted in a password file, in KiB (256 MiB): a hash
/// asking for more is refused rather than allowed to exhaust memory.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// The parsed file: users in file order with their PHC strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    entries: Vec<(String, String)>,
}

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// A line is not `user:$argon2id$...`.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the hash itself).
        message: String,
    },
    /// Hashing failed (should not happen with the default parameters).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

impl PasswordFile {
    /// Parses the text of a password file; `path` is for error messages.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let mut file = PasswordFile::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let syntax = |message: String| PasswordFileError::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(syntax("expected `user:$argon2id$...`".to_owned()));
            };
            check_username(user).map_err(syntax)?;
            let params = PasswordHash::new(hash)
                .ok()
                .filter(|_| hash.starts_with("$argon2"))
                .and_then(|parsed| Params::try_from(&parsed).ok());
            match params {
                None => {
                    return Err(syntax(format!(
                        "the hash of user {user:?} is not an argon2 PHC string \
                         (create entries with `tern-edge passwd add`)"
                    )))
                }
                Some(p) if p.m_cost() > MAX_MEMORY_KIB => {
                    return Err(syntax(format!(
                        "the hash of user {user:?} asks for {} KiB of memory \
                         (at most {MAX_MEMORY_KIB})",
                        p.m_cost()
                    )))
                }
                Some(_) => {}
            }
            if file.get(user).is_some() {
                return Err(syntax(format!("user {user:?} appears twice")));
            }
            file.entries.push((user.to_owned(), hash.to_owned()));
        }
        Ok(file)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = fs::read_to_string(path).map_err(|error| PasswordFileError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        PasswordFile::parse(&text, path)
    }

    /// The PHC string of `user`.
    pub fn get(&self, user: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, h)| h.as_str())
    }

    /// The user names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(u, _)| u.as_str())
    }

    /// Adds `user` or replaces its hash. Returns true if the user existed.
    pub fn set(&mut self, user: &str, hash: String) -> bool {
        match self.entries.iter_mut().find(|(u, _)| u == user) {
            Some(entry) => {
                entry.1 = hash;
                true
            }
            None => {
                self.entries.push((user.to_owned(), hash));
                false
            }
        }
    }

    /// Removes `user`. Returns true if it was there.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(u, _)| u != user);
        self.entries.len() != before
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(u, h)| format!("{u}:{h}\n"))
            .collect()
    }

    /// Writes the file atomically with mode 0600 (see the module doc).
    pub fn save(&self, path: &Path) -> Result<(), PasswordFileError> {
        let io_err = |error| PasswordFileError::Io {
            path: path.to_path_buf(),
            error,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "passwd".to_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut file = create_private(&tmp)?;
            file.write_all(self.to_text().as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            // The rename itself must reach the disk too.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err)
    }
}

/// Creates `path` (which must not exist) readable and writable by its owner only.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A temporary file left by a crashed run of the same pid: replace it.
            fs::remove_file(path)?;
            options.open(path)
        }
        other => other,
    }
}

/// A user name may be stored if it is not empty and has no `:` or control character.
pub fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".to_owned());
    }
    if user.contains(':') || user.chars().any(char::is_control) {
        return Err(format!(
            "user name {user:?} contains `:` or a control character"
        ));
    }
    Ok(())
}

/// The argon2id PHC string of `password` with a random salt and the crate's default
/// parameters (19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &[u8]) -> Result<String, PasswordFileError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordFileError::Hash(e.to_string()))
}

/// Working memory for argon2, kept by a verifying thread between verifications so
/// that each one does not allocate (and, with glibc, retain) another 19 MiB.
#[derive(Debug, Default)]
pub struct Scratch(Vec<Block>);

/// True if `password` matches the PHC string `hash`. Slow on purpose: call it off the
/// async workers.
pub fn verify_password(password: &[u8], hash: &str) -> bool {
    verify_password_with(password, hash, &mut Scratch::default())
}

/// [`verify_password`] with reusable working memory.
pub fn verify_password_with(password: &[u8], hash: &str, scratch: &mut Scratch) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_MEMORY_KIB {
        return false;
    }
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let blocks = params.block_count();
    if scratch.0.len() < blocks {
        scratch.0.resize(blocks, Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password, salt, &mut out, &mut scratch.0[..blocks])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// A hash of nothing anyone knows, verified against for unknown users so that the
/// answer takes as long as for known ones (no user enumeration by timing).
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let secret = format!("{:?}{:?}", SystemTime::now(), std::thread::current().id());
        // Hashing with default parameters cannot fail; an empty decoy only makes
        // unknown users fail faster.
        hash_password(secret.as_bytes()).unwrap_or_default()
    })
}

/// What the file last looked like, to notice a change.
type Stamp = (Option<SystemTime>, u64);

/// The password file as the broker uses it: loaded at start, re-read when it changes.
#[derive(Debug)]
pub struct PasswordDb {
    path: PathBuf,
    current: Mutex<(Stamp, Arc<PasswordFile>)>,
}

impl PasswordDb {
    /// Loads `path`; fails if it cannot be read or parsed.
    pub fn open(path: &Path) -> Result<PasswordDb, PasswordFileError> {
        let stamp = stamp(path);
        let file = PasswordFile::load(path)?;
        Ok(PasswordDb {
            path: path.to_path_buf(),
            current: Mutex::new((stamp, Arc::new(file))),
        })
    }

    /// The number of users in the current file.
    pub fn users(&self) -> usize {
        self.file().entries.len()
    }

    /// The current file, re-read first if it changed on disk. A file that became
    /// unreadable or invalid is reported and the last good one kept.
    fn file(&self) -> Arc<PasswordFile> {
        let now = stamp(&self.path);
        let mut current = match self.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if now != current.0 {
            match PasswordFile::load(&self.path) {
                Ok(file) => {
                    tracing::info!(path = %self.path.display(), users = file.entries.len(), "password file reloaded");
                    *current = (now, Arc::new(file));
                }
                Err(error) => {
                    tracing::warn!(%error, "password file changed but cannot be used; keeping the previous one");
                    current.0 = now;
                }
            }
        }
        current.1.clone()
    }

    /// True if `user` exists and `password` is theirs. Slow on purpose (argon2id):
    /// call it off the async workers. Unknown users take as long as known ones.
    pub fn verify(&self, user: &str, password: &[u8], scratch: &mut Scratch) -> bool {
        let file = self.file();
        match file.get(user) {
            Some(hash) => verify_password_with(password, hash, scratch),
            None => {
                let _ = verify_password_with(password, decoy_hash(), scratch);
                false
            }
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    match fs::metadata(path) {
        Ok(meta) => (meta.modified().ok(), meta.len()),
        Err(_) => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-passwd-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn hash_then_verify() {
        let hash = hash_password(b"s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(verify_password(b"s3cret", &hash));
        assert!(!verify_password(b"s3cret!", &hash));
        assert!(!verify_password(b"s3cret", "not a hash"));
        // Reused memory, and hashes with other parameters (argon2i, more memory).
        let mut scratch = Scratch::default();
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(32 * 1024, 3, 1, None).expect("params"),
        )
        .hash_password(b"other")
        .expect("hash")
        .to_string();
        assert!(verify_password_with(b"s3cret", &hash, &mut scratch));
        assert!(verify_password_with(b"other", &other, &mut scratch));
        assert!(!verify_password_with(b"s3cret", &other, &mut scratch));
        assert!(verify_password_with(b"s3cret", &hash, &mut scratch));
    }

    #[test]
    fn parse_refuses_hashes_that_want_too_much_memory() {
        let greedy = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(MAX_MEMORY_KIB + 8, 1, 1, None).expect("params"),
        );
        // Only the PHC string is needed: hash with a tiny cost, then claim a big one.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).expect("params"),
        )
        .hash_password(b"x")
        .expect("hash")
        .to_string();
        let claimed = small.replace("m=8,", &format!("m={},", greedy.params().m_cost()));
        let err = PasswordFile::parse(&format!("a:{claimed}\n"), Path::new("pw"))
            .expect_err("too much memory");
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn parse_rejects_bad_lines_without_showing_hashes() {
        let path = Path::new("pw");
        let err = PasswordFile::parse("alice\n", path).expect_err("no colon");
        assert!(err.to_string().contains("pw:1"), "{err}");
        let err = PasswordFile::parse("# c\n\nbob:plaintext\n", path).expect_err("plain");
        assert!(err.to_string().contains("pw:3"), "{err}");
        assert!(!err.to_string().contains("plaintext"), "{err}");
        let hash = hash_password(b"x").expect("hash");
        let text = format!("a:{hash}\na:{hash}\n");
        let err = PasswordFile::parse(&text, path).expect_err("twice");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn save_is_private_and_round_trips() {
        let dir = temp_dir("save");
        let path = dir.join("passwd");
        let mut file = PasswordFile::default();
        assert!(!file.set("alice", hash_password(b"a").expect("hash")));
        assert!(!file.set("bob", hash_password(b"b").expect("hash")));
        file.save(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = PasswordFile::load(&path).expect("load");
        assert_eq!(again, file);
        assert_eq!(again.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(file.remove("alice"));
        assert!(!file.remove("alice"));
        file.save(&path).expect("save");
        assert_eq!(
            fs::read_dir(&dir).expect("dir").count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn db_reloads_when_the_file_changes() {
        let dir = temp_dir("reload");
        let path = dir.join("passwd");
        let mut file = PasswordFile::default();
        file.set("alice", hash_password(b"one").expect("hash"));
        file.save(&path).expect("save");
        let db = PasswordDb::open(&path).expect("open");
        let mut scratch = Scratch::default();
        assert!(db.verify("alice", b"one", &mut scratch));
        assert!(!db.verify("nobody", b"one", &mut scratch));
        file.set("alice", hash_password(b"two-and-longer").expect("hash"));
        file.save(&path).expect("save");
        assert!(db.verify("alice", b"two-and-longer", &mut scratch));
        // A broken file keeps the last good one.
        fs::write(&path, "garbage\n").expect("write");
        assert!(db.verify("alice", b"two-and-longer", &mut scratch));
        assert_eq!(db.users(), 1);
    }

    #[test]
    fn usernames() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("a:b").is_err());
        assert!(check_username("a\nb").is_err());
    }
}
