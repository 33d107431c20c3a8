//! The `tern-cloud` binary: parse arguments, load the profile (`cloud-single` unless
//! told otherwise), set up logging, run the node; or manage bridge certificates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tern_edge::config::{profile_names, ConfigSources, EdgeConfig};

/// Exit status for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

/// The profile used when `--profile` is not given.
const DEFAULT_PROFILE: &str = "cloud-single";

/// Where `certs` commands keep files by default (the cloud-single profile's paths).
const DEFAULT_CERT_DIR: &str = "./tern-cloud-data/certs";

#[derive(Debug, Parser)]
#[command(
    name = "tern-cloud",
    version,
    about = "Tern cloud node: MQTT broker and bridge acceptor for tern-edge gateways"
)]
struct Cli {
    /// Deployment profile: a built-in name or a path to a TOML file (default cloud-single)
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
    let profile = cli.profile.unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let sources = ConfigSources {
        profile: Some(profile.clone()),
        config_file: cli.config,
        env: None,
    };
    let config = match EdgeConfig::load(&sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}\n(built-in profiles: {})", profile_names());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        };
    }
    if config.bridge.enabled {
        eprintln!("error: `bridge.enabled` = true: tern-cloud does not bridge onwards yet");
        return ExitCode::from(EXIT_CONFIG);
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
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %profile, "tern-cloud starting");
    let result = runtime.block_on(tern_cloud::run(config));
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tern-cloud stopped");
            fail(&error, 1)
        }
    }
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

fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}
