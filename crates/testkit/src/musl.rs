//! Static binaries of workspace packages for guests (the loader inside an initramfs): built with
//! `cargo build --release --target <musl target>`, relying on cargo's own freshness check so a
//! second call is a no-op and an edited source is rebuilt.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// Builds `bin` of `package` for `target` (e.g. `x86_64-unknown-linux-musl`,
/// `aarch64-unknown-linux-musl`) and returns the executable's path.
///
/// Cross targets (another architecture than the host's) are linked with `rust-lld` unless
/// `CARGO_TARGET_<TRIPLE>_LINKER` is already set: the host C linker cannot link them, and Rust's
/// self-contained musl objects make lld sufficient.
pub fn musl_binary(package: &str, bin: &str, target: &str) -> Result<PathBuf> {
    for (what, value) in [("package", package), ("bin", bin), ("target", target)] {
        let ok = !value.is_empty()
            && !value.starts_with('-')
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            bail!(
                "{what} '{value}': must be a plain cargo name ([A-Za-z0-9._-], not starting with '-')"
            );
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", target, "-p", package, "--bin", bin])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target_arch = target.split('-').next().unwrap_or_default();
    if target_arch != std::env::consts::ARCH {
        let linker_var = format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_uppercase().replace(['-', '.'], "_")
        );
        if std::env::var_os(&linker_var).is_none() {
            command.env(linker_var, "rust-lld");
        }
    }
    let output = command
        .output()
        .with_context(|| format!("running cargo build for {package}/{bin} ({target})"))?;
    if !output.status.success() {
        bail!(
            "cargo build --release --target {target} -p {package} --bin {bin} failed ({}); \
             is the target installed (rustup target add {target})?\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    executable_from_messages(&String::from_utf8_lossy(&output.stdout), bin)
        .with_context(|| format!("cargo reported no executable for {package}/{bin} ({target})"))
}

/// The `executable` of the compiler-artifact message for binary target `bin`.
fn executable_from_messages(stdout: &str, bin: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == bin)
        .filter(|message| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_is_taken_from_the_bin_artifact() {
        let stdout = r#"{"reason":"compiler-artifact","target":{"name":"testkit","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"probe","kind":["bin"]},"executable":"/t/x86_64-unknown-linux-musl/release/probe"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_messages(stdout, "probe"),
            Some(PathBuf::from("/t/x86_64-unknown-linux-musl/release/probe"))
        );
        assert_eq!(executable_from_messages(stdout, "other"), None);
    }

    #[test]
    fn option_like_names_are_refused() {
        assert!(musl_binary("--frozen", "x", "x86_64-unknown-linux-musl").is_err());
        assert!(musl_binary("p", "a b", "x86_64-unknown-linux-musl").is_err());
    }
}
