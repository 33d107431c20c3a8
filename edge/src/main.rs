//! The `tern-edge` binary: parses the command line and runs the gateway broker until
//! SIGTERM or SIGINT (start-up shared with `tern-cloud` in `tern_edge::cli`).
//!
//! `tern-edge passwd add|remove|list FILE [USER]` manages a password file instead.
//!
//! Exit codes: 0 after a clean shutdown or `--print-config`, 2 for a bad command line
//! or configuration, 1 when the broker cannot run (e.g. the port is taken) or a
//! `passwd` command fails.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tern_edge::cli::{after_help, fail, run_node, NodeArgs};
use tern_edge::config::DEFAULT_PROFILE;

/// Tern's gateway broker: MQTT 3.1.1/5.0 for devices, bridged to the cloud.
#[derive(Debug, Parser)]
#[command(name = "tern-edge", version, after_help = after_help())]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd(command)) = cli.command {
        return match tern_edge::passwd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error, 1),
        };
    }
    let refuse = |config: &tern_edge::EdgeConfig| {
        config.acceptor.enabled.then(|| {
            "`acceptor.enabled` = true: the bridge acceptor runs in tern-cloud, not in \
             tern-edge (use `bridge` to connect this gateway to a cloud)"
                .to_owned()
        })
    };
    run_node(
        "tern-edge",
        cli.node,
        DEFAULT_PROFILE,
        refuse,
        tern_edge::run,
    )
}
