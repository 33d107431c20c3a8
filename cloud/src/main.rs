//! The `tern-cloud` binary: runs the cloud node on its profile (`cloud-single` unless
//! told otherwise; start-up shared with `tern-edge` in `tern_edge::cli`), or manages
//! the bridge certificates (`tern-cloud certs ...`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tern_edge::cli::{after_help, fail, run_node, NodeArgs};

/// The profile used when `--profile` is not given.
const DEFAULT_PROFILE: &str = "cloud-single";

/// Where `certs` commands keep files by default (the cloud-single profile's paths).
const DEFAULT_CERT_DIR: &str = "./tern-cloud-data/certs";

#[derive(Debug, Parser)]
#[command(
    name = "tern-cloud",
    version,
    about = "Tern cloud node: MQTT broker and bridge acceptor for tern-edge gateways",
    after_help = after_help()
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands other than running the node.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create and manage the bridge certificates (CA, server, gateways)
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `tern-cloud certs ...`
#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA and the server certificate (refuses to overwrite)
    Init {
        /// Directory for the files
        #[arg(long, default_value = DEFAULT_CERT_DIR)]
        dir: PathBuf,
        /// Names the server certificate is valid for (DNS names or IP addresses);
        /// default: localhost, 127.0.0.1, ::1 and this host's name
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
    /// Create a gateway's key and certificate, signed by the CA
    IssueGateway {
        /// The gateway id (its certificate's CN; `bridge.gateway_id` on the gateway)
        id: String,
        /// Directory holding the CA
        #[arg(long, default_value = DEFAULT_CERT_DIR)]
        dir: PathBuf,
    },
    /// Revoke a gateway's certificate (writes crl.pem; the acceptor reads it at start)
    Revoke {
        /// The gateway id
        id: String,
        /// Directory holding the CA
        #[arg(long, default_value = DEFAULT_CERT_DIR)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Certs(command)) = cli.command {
        return certs(command);
    }
    let refuse = |config: &tern_edge::EdgeConfig| {
        config
            .bridge
            .enabled
            .then(|| "`bridge.enabled` = true: tern-cloud does not bridge onwards yet".to_owned())
    };
    run_node(
        "tern-cloud",
        cli.node,
        DEFAULT_PROFILE,
        refuse,
        tern_cloud::run,
    )
}

fn certs(command: CertsCommand) -> ExitCode {
    use tern_bridge::certs;
    let result = match command {
        CertsCommand::Init { dir, names } => {
            let names = if names.is_empty() {
                tern_cloud::default_server_names()
            } else {
                names
            };
            certs::init(&dir, &names).map(|paths| format!("created {paths:?}"))
        }
        CertsCommand::IssueGateway { id, dir } => {
            certs::issue_gateway(&dir, &id).map(|cert| format!("issued {cert:?}"))
        }
        CertsCommand::Revoke { id, dir } => certs::revoke_gateway(&dir, &id)
            .map(|crl| format!("revoked {id}; CRL written to {}", crl.display())),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error, 1),
    }
}
