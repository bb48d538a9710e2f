//! `build-service serve`: parses the command line and environment, then hands over to
//! [`build_service::run`] until SIGINT or SIGTERM.

use anyhow::Context;
use build_service::config::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    match command {
        Command::Serve(args) => {
            build_service::telemetry::init_tracing(args.log_format);
            let listen = args.listen;
            let config = args.into_config()?;
            let listener =
                build_service::bind(listen).with_context(|| format!("binding {listen}"))?;
            build_service::run(config, listener, shutdown_signal()).await
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
