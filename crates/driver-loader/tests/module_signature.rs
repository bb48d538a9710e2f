//! The loader knows before the kernel does: module signatures against what the running kernel
//! enforces and trusts.
//!
//! - `driver-loader inspect` names a module's signer exactly as modinfo(8) (kmod, built with OpenSSL)
//!   does, for a module signed by the kernel's own `scripts/sign-file` (from Debian's
//!   `linux-kbuild-6.1`, fetched through testkit's isolated apt), plain and compressed, and for a
//!   signature by subject key identifier (`openssl cms -keyid`) that modinfo does not show, against
//!   the certificate's SKID as openssl prints it;
//! - the real binary's `--mode container --dry-run run` against a fake host whose sys root says
//!   whether signatures are enforced (`module/module/parameters/sig_enforce`,
//!   `kernel/security/lockdown`) and whose proc root lists the kernel's keys (`keys`, in the kernel's
//!   format): refused with exit 11 before anything would be loaded, or would load.
//!
//! Module signatures are made by openssl exactly as sign-file lays them out (CMS, SHA-256, detached,
//! no certificates, no signed attributes; the 12-byte `struct module_signature`; the marker).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// Logged by the loader right after it extracted a package's modules.
const EXTRACTED: &str = "no in-tree module found to compare the full vermagic with";

fn openssl(args: &[&str], paths: &[&Path]) {
    let out = Command::new("openssl")
        .args(args)
        .args(paths)
        .output()
        .expect("openssl is part of the test environment (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A module-signing key pair: RSA 2048, self-signed, with a subject key identifier, like the kernel's
/// `certs/default_x509.genkey` (and the build service's module-signing certificate).
struct SigningKey {
    dir: tempfile::TempDir,
    common_name: String,
}

impl SigningKey {
    fn generate(common_name: &str) -> SigningKey {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey {
            dir,
            common_name: common_name.to_owned(),
        };
        openssl(
            &[
                "req",
                "-new",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={common_name}"),
                "-addext",
                "subjectKeyIdentifier=hash",
                "-keyout",
            ],
            &[&key.key(), Path::new("-out"), &key.cert_pem()],
        );
        openssl(
            &["x509", "-outform", "DER", "-in"],
            &[&key.cert_pem(), Path::new("-out"), &key.cert_der()],
        );
        key
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("signing_key.pem")
    }

    fn cert_pem(&self) -> PathBuf {
        self.dir.path().join("signing_key.crt")
    }

    fn cert_der(&self) -> PathBuf {
        self.dir.path().join("module-signing-cert.der")
    }

    /// A certificate field as openssl prints it: `-serial` or the SKID extension, as upper-case
    /// colon-separated hex (what modinfo prints as sig_key).
    fn skid(&self) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectKeyIdentifier", "-in"])
            .arg(self.cert_pem())
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(1)
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| panic!("no SKID in {text:?}"))
    }

    /// The kernel's `/proc/keys` line for this certificate once it is in a trusted keyring:
    /// `<CN>: <SKID lower-case hex>` followed by the key's own description.
    fn proc_keys_line(&self, serial: u32) -> String {
        let skid = self.skid().replace(':', "").to_ascii_lowercase();
        format!(
            "{serial:08x} I------     1 perm 1f030000     0     0 asymmetri {}: {skid}: X509.rsa {} []\n",
            self.common_name,
            &skid[skid.len() - 8..]
        )
    }

    /// `image` signed with `openssl cms` as sign-file signs (issuer and serial; by SKID with
    /// `keyid`), with the struct and the marker appended.
    fn sign(&self, image: &[u8], keyid: bool) -> Vec<u8> {
        let scratch = tempfile::tempdir().expect("tempdir");
        let input = scratch.path().join("module.ko");
        let signature = scratch.path().join("module.p7s");
        std::fs::write(&input, image).expect("write");
        let mut args = vec![
            "cms", "-sign", "-binary", "-noattr", "-nocerts", "-outform", "DER", "-md", "sha256",
        ];
        if keyid {
            args.push("-keyid");
        }
        args.extend(["-signer"]);
        openssl(
            &args,
            &[
                &self.cert_pem(),
                Path::new("-inkey"),
                &self.key(),
                Path::new("-in"),
                &input,
                Path::new("-out"),
                &signature,
            ],
        );
        let pkcs7 = std::fs::read(&signature).expect("signature");
        let mut out = image.to_vec();
        out.extend_from_slice(&pkcs7);
        out.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&u32::try_from(pkcs7.len()).expect("small").to_be_bytes());
        out.extend_from_slice(b"~Module signature appended~\n");
        out
    }
}

/// The sample module (as [`Artifact::signed`] makes it), unsigned.
fn module_image() -> Vec<u8> {
    tiny_module(&[
        "version=v0.1.2",
        "license=GPL",
        "srcversion=0123456789ABCDEF0123456",
        "depends=",
        "name=example_driver",
        &format!("vermagic={VERMAGIC_47}"),
    ])
}

fn loader() -> Command {
    Command::new(env!("CARGO_BIN_EXE_driver-loader"))
}

/// `driver-loader inspect` of `module`: field -> value.
fn inspect(module: &Path) -> Vec<(String, String)> {
    let out = loader()
        .arg("inspect")
        .arg(module)
        .output()
        .expect("inspect");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `modinfo -F <field> <module>`, one value (empty when modinfo shows none).
fn modinfo(module: &Path, name: &str) -> String {
    let out = Command::new("modinfo")
        .args(["-F", name])
        .arg(module)
        .output()
        .expect("modinfo (kmod) is part of the test environment");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// The kernel's own sign-file, from Debian's linux-kbuild-6.1 (linked against the system's libcrypto).
fn sign_file() -> (tempfile::TempDir, PathBuf) {
    let deb = testkit::download_deb("linux-kbuild-6.1", None).expect("linux-kbuild-6.1 .deb");
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.path())
        .status()
        .expect("dpkg-deb");
    assert!(status.success());
    let tool = dir
        .path()
        .join("usr/lib/linux-kbuild-6.1/scripts/sign-file");
    assert!(tool.is_file(), "{} in the package", tool.display());
    (dir, tool)
}

#[test]
fn inspect_names_the_signer_exactly_as_modinfo_for_a_module_signed_by_sign_file() {
    let key = SigningKey::generate("build-service module signing");
    let (_kbuild, sign_file) = sign_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("example_driver.ko");
    std::fs::write(&module, module_image()).expect("write");

    // Unsigned: no signer, and modinfo agrees.
    let fields = inspect(&module);
    assert_eq!(field(&fields, "signature"), Some("none"), "{fields:?}");
    assert_eq!(field(&fields, "signer"), None);
    assert_eq!(modinfo(&module, "signer"), "");

    // sign-file sha256 <key> <cert> <module>, as the builder signs.
    let status = Command::new(&sign_file)
        .arg("sha256")
        .arg(key.key())
        .arg(key.cert_der())
        .arg(&module)
        .status()
        .expect("sign-file runs");
    assert!(status.success());
    // Compressed after signing, as kbuild and Debian do: the signature is on the decompressed image.
    let xz = dir.path().join("xz/example_driver.ko.xz");
    let zst = dir.path().join("zst/example_driver.ko.zst");
    for (path, tool) in [(&xz, "xz"), (&zst, "zstd")] {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let compressed = Command::new(tool)
            .args(["-c", "-q"])
            .arg(&module)
            .output()
            .expect("compressor (xz-utils, zstd) installed");
        assert!(compressed.status.success());
        std::fs::write(path, compressed.stdout).expect("write");
    }
    for file in [&module, &xz, &zst] {
        let fields = inspect(file);
        for name in ["signer", "sig_key", "sig_hashalgo"] {
            let theirs = modinfo(file, name);
            assert!(
                !theirs.is_empty(),
                "modinfo shows {name} of {}",
                file.display()
            );
            assert_eq!(
                field(&fields, name),
                Some(theirs.as_str()),
                "{name} of {}: driver-loader inspect vs modinfo(8)",
                file.display()
            );
        }
        assert_eq!(
            field(&fields, "signer"),
            Some("build-service module signing")
        );
        assert_eq!(field(&fields, "sig_hashalgo"), Some("sha256"));
        assert_eq!(field(&fields, "sig_id"), Some("PKCS#7"));
        assert_eq!(field(&fields, "signature"), None);
    }
    // sig_key is the certificate's serial, as openssl shows it.
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(key.cert_pem())
        .output()
        .expect("openssl");
    let serial = stdout(&serial)
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches("00")
        .to_owned();
    let sig_key = field(&inspect(&module), "sig_key")
        .expect("sig_key")
        .replace(':', "");
    assert_eq!(sig_key, serial);
}

#[test]
fn inspect_shows_a_subject_key_identifier_signature_that_modinfo_cannot() {
    let key = SigningKey::generate("skid signer");
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("example_driver.ko");
    std::fs::write(&module, key.sign(&module_image(), true)).expect("write");
    let fields = inspect(&module);
    assert_eq!(
        field(&fields, "sig_key"),
        Some(key.skid().as_str()),
        "{fields:?}"
    );
    assert_eq!(field(&fields, "sig_hashalgo"), Some("sha256"));
    assert_eq!(field(&fields, "signer"), None, "a SKID names no signer");
    // kmod reads PKCS#7 issuer-and-serial only; it shows nothing for this one.
    assert_eq!(modinfo(&module, "sig_key"), "");

    // A signature the kernel would call malformed is shown as such, not as unsigned.
    let mut image = std::fs::read(&module).expect("read");
    let at = image.len() - 28 - 10;
    image[at] = 1; // id_type
    std::fs::write(&module, &image).expect("write");
    let out = loader()
        .arg("inspect")
        .arg(&module)
        .output()
        .expect("inspect");
    assert!(
        stdout(&out).contains(
            "signature:      malformed: module signature: struct module_signature.id_type is 1"
        ),
        "{}",
        stdout(&out)
    );
}

/// A fake host's kernel: signature enforcement and the keys `/proc/keys` lists.
struct KernelState<'a> {
    sig_enforce: Option<&'a str>,
    lockdown: Option<&'a str>,
    proc_keys: Option<String>,
}

const BUILTIN_KEYRINGS: &str = "\
0b1f25b6 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
1a3c52c8 I------     1 perm 1f0f0000     0     0 keyring   .secondary_trusted_keys: 2
2e1d16d2 I------     1 perm 1f0b0000     0     0 keyring   .platform: 1
2bba2c3a I------     1 perm 1f030000     0     0 asymmetri Build time autogenerated kernel key: 9a1fc2e5f7ac86cb0d4eb4b82c9e4c40e2c1b2a1: X509.rsa e2c1b2a1 []
";

impl KernelState<'_> {
    fn apply(&self, host: &FakeHost) {
        let root = host.dir.path();
        if let Some(value) = self.sig_enforce {
            let path = root.join("sys/module/module/parameters/sig_enforce");
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, format!("{value}\n")).expect("write");
        }
        if let Some(text) = self.lockdown {
            let path = root.join("sys/kernel/security/lockdown");
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, format!("{text}\n")).expect("write");
        }
        if let Some(text) = &self.proc_keys {
            std::fs::write(root.join("proc/keys"), text).expect("write");
        }
    }
}

/// Serves a package whose one module is `module`, and dry-runs the loader against a host with
/// `kernel`; `extra` adds options.
fn dry_run_with(module: Vec<u8>, kernel: &KernelState<'_>, extra: &[&str]) -> (FakeHost, Output) {
    let keys = Keys::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let package = make_deb(
        dir.path(),
        &identity(RELEASE),
        vec![("example_driver.ko".to_owned(), module)],
    );
    let bytes = std::fs::read(package).expect("package");
    let server = serve_artifact(Artifact::from_package(&keys, &identity(RELEASE), bytes));
    let host = FakeHost::new(RELEASE);
    kernel.apply(&host);
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.args(["--build-service-url", "http://builds.example:8080"])
        .args(extra)
        .args(["--mode", "container", "--dry-run", "run"]);
    let out = run_with_timeout(cmd, LIMIT);
    (host, out)
}

fn assert_would_load(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    assert!(
        stdout(out).contains("example_driver: would load"),
        "{}",
        stdout(out)
    );
}

/// Exit 11, the message contains every needle, the module was read (the refusal comes after the
/// package verified and its modules were checked) and nothing would be loaded.
fn assert_refused(out: &Output, host: &FakeHost, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(11), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("driver-loader: error:"))
        .unwrap_or_default();
    for needle in needles {
        assert!(line.contains(needle), "expected {needle:?} in:\n{line}");
    }
    for needle in [
        "module example_driver: ",
        "mokutil --import module-signing-cert.der",
        "GET http://builds.example:8080/module-signing-cert.der",
        "UEFI db",
    ] {
        assert!(line.contains(needle), "expected {needle:?} in:\n{line}");
    }
    assert!(err.contains(EXTRACTED), "checked after extraction: {err}");
    assert!(
        stdout(out).trim().is_empty(),
        "no module action may be reported: {}",
        stdout(out)
    );
    assert!(!host.dir.path().join("sys/module/example_driver").exists());
}

#[test]
fn enforcing_refuses_an_unsigned_module_and_not_enforcing_lets_it_through() {
    let (host, out) = dry_run_with(
        module_image(),
        &KernelState {
            sig_enforce: Some("Y"),
            lockdown: None,
            proc_keys: Some(BUILTIN_KEYRINGS.to_owned()),
        },
        &[],
    );
    assert_refused(
        &out,
        &host,
        &[
            "refused before loading: it is not signed",
            "the running kernel enforces module signatures (module.sig_enforce=Y)",
        ],
    );

    let (_, out) = dry_run_with(
        module_image(),
        &KernelState {
            sig_enforce: Some("N"),
            lockdown: Some("[none] integrity confidentiality"),
            proc_keys: Some(BUILTIN_KEYRINGS.to_owned()),
        },
        &[],
    );
    assert_would_load(&out);
}

#[test]
fn lockdown_integrity_counts_as_enforcing() {
    let (host, out) = dry_run_with(
        module_image(),
        &KernelState {
            sig_enforce: Some("N"),
            lockdown: Some("none [integrity] confidentiality"),
            proc_keys: None,
        },
        &[],
    );
    assert_refused(
        &out,
        &host,
        &[
            "it is not signed",
            "enforces module signatures (lockdown=integrity)",
        ],
    );
}

#[test]
fn enforcing_loads_a_module_signed_by_a_trusted_key_and_refuses_another_key() {
    let trusted = SigningKey::generate("build-service module signing");
    let other = SigningKey::generate("someone else");
    let keys_file = format!("{BUILTIN_KEYRINGS}{}", trusted.proc_keys_line(0x3f00_0001));
    let kernel = KernelState {
        sig_enforce: Some("Y"),
        lockdown: None,
        proc_keys: Some(keys_file),
    };

    // By issuer and serial (sign-file's default): the self-signed certificate's CN.
    let (_, out) = dry_run_with(trusted.sign(&module_image(), false), &kernel, &[]);
    assert_would_load(&out);
    assert!(
        stderr(&out).contains("module signed by a key the kernel trusts"),
        "{}",
        stderr(&out)
    );
    // By subject key identifier.
    let (_, out) = dry_run_with(trusted.sign(&module_image(), true), &kernel, &[]);
    assert_would_load(&out);

    // Another key, by issuer and serial: refused naming the signer and its key id.
    let signed = other.sign(&module_image(), false);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("example_driver.ko");
    std::fs::write(&file, &signed).expect("write");
    let sig_key = modinfo(&file, "sig_key");
    let (host, out) = dry_run_with(signed, &kernel, &[]);
    assert_refused(
        &out,
        &host,
        &[
            &format!("it is signed by \"someone else\" (key serial {sig_key}, sha256)"),
            "none of the 2 key(s) the kernel trusts matches it",
            "\"build-service module signing\"",
            "module.sig_enforce=Y",
        ],
    );
    // Another key, by SKID.
    let (host, out) = dry_run_with(other.sign(&module_image(), true), &kernel, &[]);
    assert_refused(
        &out,
        &host,
        &[&format!(
            "it is signed by the key with subject key identifier {} (sha256)",
            other.skid()
        )],
    );
}

#[test]
fn with_the_keys_not_visible_a_signed_module_proceeds_and_the_log_says_so() {
    let other = SigningKey::generate("someone else");
    let kernel = KernelState {
        sig_enforce: Some("Y"),
        lockdown: None,
        // What a process in a user namespace sees: the keyrings, none of their keys.
        proc_keys: Some(
            "0b1f25b6 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1\n"
                .to_owned(),
        ),
    };
    let (_, out) = dry_run_with(other.sign(&module_image(), false), &kernel, &[]);
    assert_would_load(&out);
    let err = stderr(&out);
    assert!(
        err.contains("its trusted keys are not visible; the signer could not be checked")
            && err.contains("someone else"),
        "{err}"
    );
    // No /proc/keys at all: the same.
    let (_, out) = dry_run_with(
        other.sign(&module_image(), false),
        &KernelState {
            proc_keys: None,
            ..kernel
        },
        &[],
    );
    assert_would_load(&out);
}

#[test]
fn the_skip_switch_lets_the_kernel_be_the_only_judge() {
    let kernel = KernelState {
        sig_enforce: Some("Y"),
        lockdown: Some("none [integrity] confidentiality"),
        proc_keys: Some(BUILTIN_KEYRINGS.to_owned()),
    };
    let (_, out) = dry_run_with(
        module_image(),
        &kernel,
        &["--skip-module-signature-precheck"],
    );
    assert_would_load(&out);
    assert!(
        stderr(&out).contains("module signature pre-check skipped"),
        "{}",
        stderr(&out)
    );

    // The environment variable, as the systemd unit and the DaemonSet set options.
    let keys = Keys::generate();
    let server = serve_artifact(Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47));
    let host = FakeHost::new(RELEASE);
    kernel.apply(&host);
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.env("DRIVER_LOADER_SKIP_MODULE_SIGNATURE_PRECHECK", "true")
        .args(["--mode", "container", "--dry-run", "run"]);
    assert_would_load(&run_with_timeout(cmd, LIMIT));
}
