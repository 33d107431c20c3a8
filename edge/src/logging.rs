//! Log output: `tracing-subscriber` writing to standard error, human-readable or JSON,
//! filtered by `log.level` unless `RUST_LOG` is set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` is set but is not a valid filter.
    #[error("RUST_LOG is not a valid log filter: {0}")]
    BadRustLog(String),
    /// `log.level` is not a valid filter.
    #[error("`log.level` is not a valid log filter: {0}")]
    BadLevel(String),
    /// A global subscriber was already installed.
    #[error("logging is already initialised: {0}")]
    AlreadySet(String),
}

/// Installs the global log subscriber described by `config` (once per process).
pub fn init_logging(config: &LogConfig) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .parse(&directives)
            .map_err(|e| LoggingError::BadRustLog(e.to_string()))?,
        _ => EnvFilter::builder()
            .parse(&config.level)
            .map_err(|e| LoggingError::BadLevel(e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| LoggingError::AlreadySet(e.to_string()))
}
