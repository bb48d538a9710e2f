//! `build-service serve`: parses the command line and environment, then hands over to
//! [`build_service::serve`] until SIGINT or SIGTERM. `hash-token` and `new-token` make principals-file
//! entries; `new-signing-key` and `resign` make and rotate the signing key.

use anyhow::Context;
use build_service::config::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    match command {
        Command::Serve(args) => build_service::serve(*args).await,
        Command::Watch(args) => {
            build_service::telemetry::init_tracing(build_service::telemetry::LogFormat::Text);
            build_service::watcher::cli::run(*args).await
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
        Command::NewSigningKey { out } => {
            let public = public_key_path(&out);
            let key = integrity::SecretKey::generate(&out, &public)
                .with_context(|| format!("making a signing key at {}", out.display()))?;
            eprintln!(
                "secret key {} (0600), public key {} (key id {})",
                out.display(),
                public.display(),
                key.id()
            );
            Ok(())
        }
        Command::Resign {
            artifact_dir,
            trusted_keys,
            signing_key,
            signing_key_password_file,
        } => {
            let mut keyring = integrity::Keyring::new();
            for path in &trusted_keys {
                keyring
                    .add_file(path)
                    .with_context(|| format!("reading trusted key {}", path.display()))?;
            }
            let password = match &signing_key_password_file {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => None,
            };
            let signer = build_service::signing::ServiceSigner::load(
                &signing_key,
                password,
                build_service::signing::DEFAULT_LOCAL_BUILDER_ID,
            )
            .context("loading the new signing key")?;
            let resigned =
                build_service::signing::resign_published(&artifact_dir, &keyring, &signer)
                    .map_err(anyhow::Error::msg)?;
            for package in &resigned {
                println!("{}", package.display());
            }
            eprintln!(
                "re-signed {} packages with key {}",
                resigned.len(),
                signer.key().id()
            );
            Ok(())
        }
    }
}

/// `<secret key>.pub`, beside the secret key.
fn public_key_path(secret: &std::path::Path) -> std::path::PathBuf {
    let mut path = secret.as_os_str().to_owned();
    path.push(".pub");
    path.into()
}
