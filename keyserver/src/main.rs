//! `xlb-keyserver --config keyserver.toml`: serves signatures until SIGINT/SIGTERM;
//! SIGHUP reloads the keys directory.

use std::path::PathBuf;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info};

/// The xlb Key Server: holds private keys, signs TLS handshakes for appliances.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Configuration file (TOML, see docs/KEYSERVER.md).
    #[arg(long, short, env = "XLB_KEYSERVER_CONFIG")]
    config: PathBuf,
    /// Check the config and load the keys, then exit (0 when every key file loaded).
    #[arg(long)]
    check: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if let Err(e) = run(Args::parse()) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = xlb_keyserver::config::Config::load(&args.config)?;
    if args.check {
        let (keys, errors) = xlb_keyserver::keys::KeyStore::load_dir(&config.keys_dir, None)?;
        for k in keys.entries() {
            println!("{} {} {}", k.id, k.kind.name(), k.file_name);
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
        anyhow::ensure!(errors.is_empty(), "{} key file(s) could not be loaded", errors.len());
        return Ok(());
    }
    // Registered before serving, so an early SIGHUP reloads instead of killing the process.
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    let server = xlb_keyserver::server::start(config)?;
    for sig in signals.forever() {
        if sig == SIGHUP {
            info!("SIGHUP: reloading keys");
            if let Err(e) = server.reload_keys() {
                error!("key reload failed, keeping the previous keys: {e:#}");
            }
        } else {
            info!("signal {sig}: shutting down");
            break;
        }
    }
    server.shutdown();
    Ok(())
}
