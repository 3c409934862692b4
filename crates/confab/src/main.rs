//! The `confab` binary: parses the command line, sets up logging, serves.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use confab::config::{LogFormat, Overrides, Settings};

/// jemalloc, configured in `.cargo/config.toml` to hand memory freed after
/// a burst back to the OS; glibc kept ~5 KiB per connection of it.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Confab: a real-time chat server.
#[derive(Debug, Parser)]
#[command(name = "confab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the chat (the default).
    Serve(ServeArgs),
    /// Mint a connection token for the configured token_secret.
    Token(confab::ops::TokenArgs),
    /// Validate the configuration and print the effective settings, secrets masked.
    CheckConfig(confab::ops::CheckConfigArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file with the same keys as the flags (`max_connections = 100`)
    #[arg(long, env = "CONFAB_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Cmd::Serve(args)) => args,
        Some(Cmd::Token(args)) => {
            println!("{}", confab::ops::token(args)?);
            return Ok(());
        }
        Some(Cmd::CheckConfig(args)) => {
            print!("{}", confab::ops::check_config(args)?);
            return Ok(());
        }
        // Plain `confab` serves, still reading the environment.
        None => match Cli::parse_from(["confab", "serve"]).command {
            Some(Cmd::Serve(args)) => args,
            _ => unreachable!("serve was given"),
        },
    };
    let settings = Settings::load(args.overrides, args.config.as_ref())?;
    init_logging(settings.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Bound before the node starts, so a taken port fails at once; it says
    // it listens once the store and the broker are open (`server::run`).
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    confab::run(listener, settings, shutdown_signal()).await
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "confab=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
