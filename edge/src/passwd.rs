//! `tern-edge passwd add|remove|list FILE [USER]`: manages the password file that
//! `auth.password_file` names (see [`crate::auth::password_file`] for its format).
//!
//! `add` creates the file if needed and adds the user or replaces their password. The
//! password is prompted for (twice, without echo) on a terminal; otherwise one line is
//! read from standard input, so scripts can pipe it in (`printf '%s\n' "$PW" | ...`).
//! The file is written atomically with mode 0600. A running broker picks the change
//! up at the next login, without a restart.

use std::io::{self, BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::auth::password_file::{check_username, hash_password, PasswordFile};

/// The `passwd` actions.
#[derive(Debug, Subcommand)]
pub enum PasswdCommand {
    /// Add USER to FILE (created if missing) or change their password
    Add {
        /// The password file
        file: PathBuf,
        /// The user name
        user: String,
    },
    /// Remove USER from FILE
    Remove {
        /// The password file
        file: PathBuf,
        /// The user name
        user: String,
    },
    /// List the users in FILE
    List {
        /// The password file
        file: PathBuf,
    },
}

/// Why a `passwd` command failed; shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The file could not be read, parsed or written.
    #[error(transparent)]
    File(#[from] crate::auth::password_file::PasswordFileError),
    /// The user name cannot be stored.
    #[error("{0}")]
    BadUser(String),
    /// `remove` of a user that is not there.
    #[error("no user {user:?} in {}", file.display())]
    NoSuchUser {
        /// The user name.
        user: String,
        /// The file.
        file: PathBuf,
    },
    /// The password could not be read, was empty, or the two entries differed.
    #[error("{0}")]
    Password(String),
}

/// Runs one `passwd` command, printing what it did to standard output.
pub fn run(command: PasswdCommand) -> Result<(), PasswdError> {
    match command {
        PasswdCommand::Add { file, user } => {
            check_username(&user).map_err(PasswdError::BadUser)?;
            let mut passwords = load_or_new(&file)?;
            let password = read_password()?;
            let hash = hash_password(password.as_bytes())?;
            let existed = passwords.set(&user, hash);
            passwords.save(&file)?;
            let verb = if existed { "updated" } else { "added" };
            println!("{verb} user {user:?} in {}", file.display());
        }
        PasswdCommand::Remove { file, user } => {
            let mut passwords = PasswordFile::load(&file)?;
            if !passwords.remove(&user) {
                return Err(PasswdError::NoSuchUser { user, file });
            }
            passwords.save(&file)?;
            println!("removed user {user:?} from {}", file.display());
        }
        PasswdCommand::List { file } => {
            for user in PasswordFile::load(&file)?.users() {
                println!("{user}");
            }
        }
    }
    Ok(())
}

fn load_or_new(file: &Path) -> Result<PasswordFile, PasswdError> {
    if file.exists() {
        Ok(PasswordFile::load(file)?)
    } else {
        Ok(PasswordFile::default())
    }
}

/// The new password: prompted for twice on a terminal, else one line of stdin.
fn read_password() -> Result<String, PasswdError> {
    let failed = |e: io::Error| PasswdError::Password(format!("cannot read the password: {e}"));
    let password = if io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(failed)?;
        let again = rpassword::prompt_password("Password again: ").map_err(failed)?;
        if first != again {
            return Err(PasswdError::Password(
                "the passwords differ; nothing changed".to_owned(),
            ));
        }
        first
    } else {
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line).map_err(failed)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err(PasswdError::Password(
            "empty password; nothing changed".to_owned(),
        ));
    }
    Ok(password)
}
