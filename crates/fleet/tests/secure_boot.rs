//! Secure Boot: nodes whose kernel enforces module signatures (`module.sig_enforce=1`) and trusts
//! exactly the certificates UEFI's `db` holds. Debian's stock 6.1.0-47-amd64 boots through OVMF
//! whose variable store has the build-service's module-signing certificate enrolled in `db` — the
//! certificate as the service publishes it at `GET /module-signing-cert.der`, so what operators are
//! told to enrol is what the kernel is shown to trust — and puts it in its `.platform` keyring.
//!
//! 1. Against a service started with a module-signing key: the cold path (404, build, signed
//!    package) ends with the driver's own `example_driver: loaded ...` line from the kernel, with
//!    no "module verification failed" taint. The node's console shows `sig_enforce` = Y and the
//!    kernel's own line for the db certificate (`integrity: Loaded X.509 cert '<CN>: <skid>'`).
//! 2. The same node kind against a second, fresh service without module signing: the loader sees
//!    that the kernel enforces signatures and the module is unsigned, and refuses before the
//!    kernel is asked (exit 11, module absent, its reason on the console).
//! 3. Once more with `--skip-module-signature-precheck`: now the kernel itself refuses ("Loading
//!    of unsigned module is rejected"), the loader reports the kernel's refusal (exit 11), and the
//!    module is absent.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fleet::service::{ModuleSigningKey, ServiceOptions};
use fleet::{Fleet, ModuleState, NodeOptions, NodeOutcome, NodeSpec};
use testkit::modsign;
use testkit::uefi::{self, UefiFirmware};

const RELEASE: &str = "6.1.0-47-amd64";
const SIG_ENFORCE_MARKER: &str = "FLEET-SIG-ENFORCE";
const PLATFORM_CERT_MARKER: &str = "FLEET-PLATFORM-CERT";
const KEYS_MARKER: &str = "FLEET-KEYS";
/// The loader's exit code for a module the kernel will not (or did not) accept for its signature.
const EXIT_MODULE_SIGNATURE: i32 = 11;
/// What the kernel logs when `module.sig_enforce=1` meets an unsigned module.
const KERNEL_UNSIGNED_REJECTED: &str = "Loading of unsigned module is rejected";

/// A node on OVMF whose `db` is `vars`, booted with `module.sig_enforce=1`, printing the kernel's
/// enforcement state and platform keyring before its loader runs; `loader_args` are added to the
/// loader's command line.
fn enforcing_node(vars: &Path, loader_args: &[&str]) -> NodeOptions {
    NodeOptions {
        firmware: Some(UefiFirmware::ovmf(vars).expect("OVMF firmware")),
        kernel_args: vec!["module.sig_enforce=1".to_owned()],
        loader_args: loader_args.iter().map(|arg| (*arg).to_owned()).collect(),
        commands_before_loader: vec![
            format!(
                "echo \"{SIG_ENFORCE_MARKER} $(cat /sys/module/module/parameters/sig_enforce)\""
            ),
            format!("grep -E ' \\.platform: |asymmetri' /proc/keys | sed 's/^/{KEYS_MARKER} /'"),
            format!(
                "dmesg | grep -F 'integrity: Loaded X.509 cert' | sed 's/^/{PLATFORM_CERT_MARKER} /'"
            ),
        ],
        ..NodeOptions::default()
    }
}

/// The rest of the first console line starting with `marker`, trimmed.
fn marker<'a>(console: &'a str, marker: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|line| line.trim().strip_prefix(marker))
        .map(str::trim)
}

/// The node's kernel enforced signatures and had `cert_description` in its platform keyring.
fn assert_enforcing_with_cert(fleet: &Fleet, outcome: &NodeOutcome, cert_description: &str) {
    let context = fleet.failure_context(&outcome.describe());
    assert_eq!(
        marker(&outcome.console, SIG_ENFORCE_MARKER),
        Some("Y"),
        "the node's kernel must enforce module signatures: {context}\n{}",
        outcome.console
    );
    let expected = format!("integrity: Loaded X.509 cert '{cert_description}'");
    assert!(
        outcome
            .console
            .lines()
            .any(|line| line.starts_with(PLATFORM_CERT_MARKER) && line.contains(&expected)),
        "the kernel must have loaded the db certificate ({expected}): {context}\n{}",
        outcome.console
    );
    let keys: Vec<&str> = outcome
        .console
        .lines()
        .filter(|line| line.starts_with(KEYS_MARKER))
        .collect();
    assert!(
        keys.iter()
            .any(|line| line.contains(" keyring ") && line.contains(".platform: 1")),
        "/proc/keys must show the .platform keyring holding the one db certificate: {context}\n{}",
        outcome.console
    );
    assert!(
        keys.iter()
            .any(|line| line.contains(&format!(" asymmetri {cert_description}: X509."))),
        "/proc/keys must list the db certificate's key: {context}\n{}",
        outcome.console
    );
    for line in outcome.console.lines().filter(|line| {
        line.starts_with(SIG_ENFORCE_MARKER)
            || line.starts_with(PLATFORM_CERT_MARKER)
            || line.starts_with(KEYS_MARKER)
    }) {
        eprintln!("{}: {line}", outcome.name);
    }
}

/// The loader exited 11 (module signature), the module is absent and never ran, and every one of
/// `reasons` is on the console.
fn assert_refused_for_signature(fleet: &Fleet, outcome: &NodeOutcome, reasons: &[&str]) {
    let context = fleet.failure_context(&outcome.describe());
    assert_eq!(
        outcome.loader_exit,
        Some(EXIT_MODULE_SIGNATURE),
        "{context}\n{}",
        outcome.console
    );
    assert_eq!(outcome.result.as_deref(), Some("refused"), "{context}");
    assert_eq!(
        outcome.module_state,
        Some(ModuleState::Absent),
        "the node's init must report the module absent: {context}"
    );
    assert!(
        !outcome.console.contains("example_driver: loaded version="),
        "an unsigned module must never run on an enforcing kernel: {context}"
    );
    for reason in reasons {
        assert!(
            outcome.console.contains(reason),
            "expected '{reason}' on the console: {context}\n{}",
            outcome.console
        );
    }
    for line in outcome
        .console
        .lines()
        .filter(|line| line.starts_with("driver-loader: error:") || line.contains("rejected"))
    {
        eprintln!("{}: {}", outcome.name, line.trim());
    }
}

/// `GET <service>/module-signing-cert.der`, written to `out`.
fn published_cert(fleet: &Fleet, out: &Path) -> PathBuf {
    let url = format!("{}/module-signing-cert.der", fleet.service.url());
    let mut response = ureq::get(&url)
        .call()
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let bytes = response.body_mut().read_to_vec().expect("certificate body");
    std::fs::write(out, &bytes).expect("write the published certificate");
    out.to_path_buf()
}

#[test]
fn enforcing_node_loads_only_modules_signed_by_the_key_its_db_trusts() {
    let started = Instant::now();

    // 1. A service that signs modules; the node's db holds the certificate it publishes.
    let dir = fleet::run_dir("secure-boot").expect("run dir");
    let signing = ModuleSigningKey::generate(&dir.join("module-signing")).expect("module key");
    let fleet = Fleet::start_in_with(
        &dir,
        &ServiceOptions {
            module_signing: Some(signing.clone()),
            ..ServiceOptions::default()
        },
    )
    .expect("fleet service with module signing");
    let cert = published_cert(&fleet, &dir.join("published-module-signing-cert.der"));
    assert_eq!(
        std::fs::read(&cert).expect("published"),
        std::fs::read(&signing.cert_der).expect("configured"),
        "the service must publish the certificate it signs with"
    );
    let description = format!(
        "{}: {}",
        ModuleSigningKey::COMMON_NAME,
        modsign::subject_key_id(&cert).expect("subject key id")
    );
    let vars = uefi::vars_with_db(&cert, &dir.join("vars-with-db.fd")).expect("db with the cert");

    let spec = NodeSpec::debian("signed", RELEASE, "12").expect("node spec");
    let node = fleet
        .prepare_with_options(&spec, &fleet.settings, &enforcing_node(&vars, &[]))
        .expect("prepare node");
    let outcome = fleet.run_node(&node).expect("boot node");
    let context = fleet.failure_context(&outcome.describe());
    assert!(outcome.loaded(), "{context}\n{}", outcome.console);
    assert_enforcing_with_cert(&fleet, &outcome, &description);
    assert!(
        !outcome.console.contains("module verification failed"),
        "the kernel must have verified the module's signature (no taint): {context}\n{}",
        outcome.console
    );
    // The cold path: the node's download missed, it asked for the build, one build ran.
    assert!(
        outcome
            .console
            .contains("artifact not published; requesting a build"),
        "the loader must have missed and asked for a build: {context}\n{}",
        outcome.console
    );
    let counters = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(counters.dispatches_ok, 1.0, "{context}");
    assert_eq!(counters.builds_done, 1.0, "{context}");
    let signed_node_time = outcome.total;
    eprintln!(
        "secure boot: signed node: driver live after {:.1}s ({})",
        outcome
            .time_to_driver_live
            .unwrap_or_default()
            .as_secs_f64(),
        outcome.driver_line.as_deref().unwrap_or_default()
    );
    fleet.tidy();
    drop(fleet);

    // 2. A fresh service without module signing, nodes of the same kind (db as before).
    let unsigned = Fleet::start("secure-boot-unsigned").expect("fleet service without signing");
    let node = unsigned
        .prepare_with_options(
            &NodeSpec {
                name: "unsigned".into(),
                ..spec.clone()
            },
            &unsigned.settings,
            &enforcing_node(&vars, &[]),
        )
        .expect("prepare node");
    let outcome = unsigned.run_node(&node).expect("boot node");
    assert_enforcing_with_cert(&unsigned, &outcome, &description);
    assert_refused_for_signature(
        &unsigned,
        &outcome,
        &[
            "refused before loading: it is not signed",
            "module.sig_enforce=Y",
            "/module-signing-cert.der",
        ],
    );
    assert!(
        !outcome.console.contains(KERNEL_UNSIGNED_REJECTED),
        "the loader must refuse before the kernel is asked: {}\n{}",
        unsigned.failure_context(&outcome.describe()),
        outcome.console
    );

    // 3. The same, with the loader's pre-check switched off: the kernel itself refuses.
    let node = unsigned
        .prepare_with_options(
            &NodeSpec {
                name: "unsigned-no-precheck".into(),
                ..spec.clone()
            },
            &unsigned.settings,
            &enforcing_node(&vars, &["--skip-module-signature-precheck"]),
        )
        .expect("prepare node");
    let outcome = unsigned.run_node(&node).expect("boot node");
    assert_enforcing_with_cert(&unsigned, &outcome, &description);
    assert_refused_for_signature(
        &unsigned,
        &outcome,
        &[
            KERNEL_UNSIGNED_REJECTED,
            "the kernel refused the module's signature",
            "Key was rejected by service",
        ],
    );
    unsigned.tidy();

    eprintln!(
        "fleet secure boot: signed node {:.1}s, whole scenario {:.1}s (logs {} and {})",
        signed_node_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        dir.display(),
        unsigned.dir().display()
    );
}
