//! What `tern-edge` and `tern-cloud` share on their command lines: the options that pick
//! and show the configuration, and the start-up of a node (configuration, logging, a
//! tokio runtime, exit codes). Each binary adds its own subcommands.
//!
//! Exit codes: 0 after a clean shutdown or `--print-config`, 2 ([`EXIT_CONFIG`]) for a
//! bad command line or configuration, 1 when the node cannot run (e.g. a port is taken).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{ConfigSources, EdgeConfig, ENV_PREFIX, ENV_SEPARATOR, PROFILES};

/// Exit code for a bad command line or configuration (as clap uses for usage errors).
pub const EXIT_CONFIG: u8 = 2;

/// The options that choose the configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Deployment profile: a built-in name (see below) or a path to a TOML file
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: Option<String>,

    /// TOML file whose keys override the profile
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,
}

/// The help text after the options: the built-in profiles and how layers combine.
pub fn after_help() -> String {
    let mut text = String::from("Built-in profiles:\n");
    for (name, about, _) in PROFILES {
        text.push_str(&format!("  {name:<14} {about}\n"));
    }
    text.push_str(&format!(
        "\nLayers, lowest first: built-in profile < profile file < --config < environment.\n\
         Environment: {ENV_PREFIX}_<SECTION>{ENV_SEPARATOR}<KEY>, e.g. \
         {ENV_PREFIX}_LISTENERS{ENV_SEPARATOR}TCP{ENV_SEPARATOR}BIND=127.0.0.1:1884, \
         {ENV_PREFIX}_MQTT{ENV_SEPARATOR}MAX_PACKET_SIZE=65536.\n\
         RUST_LOG, when set, replaces log.level."
    ));
    text
}

/// Loads the configuration of `args` (`default_profile` when none is named), refuses it
/// with `refuse` (a message naming the key), prints it for `--print-config`, or sets up
/// logging and a runtime and runs `node` on it until it returns.
pub fn run_node<F, Fut, E>(
    name: &str,
    args: NodeArgs,
    default_profile: &str,
    refuse: impl FnOnce(&EdgeConfig) -> Option<String>,
    node: F,
) -> ExitCode
where
    F: FnOnce(EdgeConfig) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    let profile = args
        .profile
        .clone()
        .unwrap_or_else(|| default_profile.to_owned());
    let sources = ConfigSources {
        profile: Some(profile.clone()),
        config_file: args.config,
        env: None,
    };
    let config = match EdgeConfig::load(&sources) {
        Ok(config) => config,
        Err(error) => return fail(&error, EXIT_CONFIG),
    };
    if let Some(why) = refuse(&config) {
        eprintln!("error: {why}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if args.print_config {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        };
    }
    if let Err(error) = crate::init_logging(&config.log) {
        return fail(&error, EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error, 1),
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %profile, "{name} starting");
    let result = runtime.block_on(node(config));
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{name} stopped");
            fail(&error, 1)
        }
    }
}

/// Prints `error` and returns exit code `code`.
pub fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}
