//! The `tern-edge` binary: parses the command line, assembles the configuration, sets
//! up logging and runs the gateway broker until SIGTERM or SIGINT.
//!
//! `tern-edge passwd add|remove|list FILE [USER]` manages a password file instead.
//!
//! Exit codes: 0 after a clean shutdown or `--print-config`, 2 for a bad command line
//! or configuration, 1 when the broker cannot run (e.g. the port is taken) or a
//! `passwd` command fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tern_edge::config::{
    ConfigSources, EdgeConfig, DEFAULT_PROFILE, ENV_PREFIX, ENV_SEPARATOR, PROFILES,
};

/// Exit code for a bad command line or configuration (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;

/// Tern's gateway broker: MQTT 3.1.1/5.0 for devices, bridged to the cloud.
#[derive(Debug, Parser)]
#[command(name = "tern-edge", version, after_help = after_help())]
struct Cli {
    /// Deployment profile: a built-in name (see below) or a path to a TOML file
    /// [default: edge-gateway]
    #[arg(long, value_name = "NAME|PATH")]
    profile: Option<String>,

    /// TOML file whose keys override the profile
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands other than running the broker.
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage a password file (auth.password_file): users with argon2id hashes
    #[command(subcommand)]
    Passwd(tern_edge::passwd::PasswdCommand),
}

fn after_help() -> String {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd(command)) = cli.command {
        return match tern_edge::passwd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error, 1),
        };
    }
    let profile = cli
        .profile
        .clone()
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let sources = ConfigSources {
        profile: cli.profile,
        config_file: cli.config,
        env: None,
    };
    let config = match EdgeConfig::load(&sources) {
        Ok(config) => config,
        Err(error) => return fail(&error, EXIT_CONFIG),
    };
    if config.acceptor.enabled {
        eprintln!(
            "error: `acceptor.enabled` = true: the bridge acceptor runs in tern-cloud, \
             not in tern-edge (use `bridge` to connect this gateway to a cloud)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.print_config {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        };
    }
    if let Err(error) = tern_edge::init_logging(&config.log) {
        return fail(&error, EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error, 1),
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %profile, "tern-edge starting");
    let result = runtime.block_on(tern_edge::run(config));
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tern-edge stopped");
            fail(&error, 1)
        }
    }
}

fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}
