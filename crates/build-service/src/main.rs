//! `build-service serve`: parses the command line and environment, then hands over to
//! [`build_service::run`] until SIGINT or SIGTERM. `hash-token` and `new-token` make principals-file
//! entries.

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
        Command::HashToken => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .context("reading the token from standard input")?;
            let token = token.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!token.is_empty(), "standard input holds no token");
            println!("{}", build_service::access::token_digest_hex(token));
            Ok(())
        }
        Command::NewToken { name, scopes } => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            let scopes: Vec<String> = scopes.iter().map(|scope| format!("{scope:?}")).collect();
            eprintln!(
                "[[principal]]\nname = {name:?}\ntoken_sha256 = \"{}\"\nscopes = [{}]",
                build_service::access::token_digest_hex(&token),
                scopes.join(", ")
            );
            println!("{token}");
            Ok(())
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
