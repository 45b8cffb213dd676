//! `xlb`: the load-balancer appliance.
//!
//! `xlb run --config FILE` runs it in the foreground (logs to stderr, SIGINT/SIGTERM stop it cleanly);
//! `xlb check --config FILE` validates a config and names the bad field.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xlb_tools::config::Config;

#[derive(Parser)]
#[command(name = "xlb", version, about = "xlb load-balancer appliance (AF_XDP datapath)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance in the foreground.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if it is valid, else print the bad field and exit 1.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// What needs the host, not just the file: the tables must fit in its memory.
fn preflight(path: &std::path::Path, config: Config) -> Result<Config, String> {
    xlb_tools::instance::check_memory(&config, xlb_tools::instance::host_memory_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let result = match cli.command {
        Command::Check { config } => Config::load(&config).and_then(|c| preflight(&config, c)).map(|c| {
            let workers = c
                .interfaces
                .iter()
                .flat_map(|i| i.cores.iter())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            println!(
                "{}: OK ({} interface(s), {} worker(s))",
                config.display(),
                c.interfaces.len(),
                workers
            );
        }),
        Command::Run { config } => Config::load(&config)
            .and_then(|c| preflight(&config, c))
            .and_then(|c| xlb_tools::daemon::run(c, config.clone())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e}");
            ExitCode::FAILURE
        }
    }
}
