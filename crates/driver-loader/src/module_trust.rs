//! Will the running kernel accept a module's signature? On a node with Secure Boot (lockdown) or
//! `module.sig_enforce=1` the kernel refuses a module not signed by a key it trusts, with nothing
//! more than "Key was rejected by service". The loader knows before the kernel does:
//!
//! - **enforcement**: `<sys>/module/module/parameters/sig_enforce` reads `Y`, or
//!   `<sys>/kernel/security/lockdown` has `[integrity]` or `[confidentiality]` selected (a missing file
//!   means "not enforcing, as far as can be seen", logged at debug);
//! - **the trusted keys**: `<proc>/keys` lists the asymmetric keys of `.builtin_trusted_keys`,
//!   `.secondary_trusted_keys`, `.platform` and `.machine` when the process may view them (see
//!   [`parse_proc_keys`] for the rule);
//! - **the module's signer**: [`crate::module_signature`].
//!
//! When the kernel enforces signatures, an unsigned module (or one whose signature is malformed) is
//! refused before loading, and so is a module whose signer matches none of the visible trusted keys;
//! when the keys cannot be seen, only the unsigned case is refused and the loader logs that the signer
//! could not be checked. A refusal by the kernel itself (EKEYREJECTED, ENOKEY, EBADMSG) gets the same
//! explanation. Every such refusal is [`crate::FailureKind::ModuleSignature`] (exit 11).

use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::error::LoaderError;
use crate::module_signature::{ModuleSignature, SignatureError, SignerId, colon_hex};

/// The keyrings the kernel verifies module signatures against.
pub const TRUSTED_KEYRINGS: [&str; 4] = [
    ".builtin_trusted_keys",
    ".secondary_trusted_keys",
    ".platform",
    ".machine",
];

/// The largest `/proc/keys` read (a few hundred bytes per key).
const MAX_PROC_KEYS_BYTES: u64 = 4 * 1024 * 1024;

/// Whether the running kernel refuses modules without a trusted signature, and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Enforcement {
    /// What makes it enforce: `module.sig_enforce=Y`, `lockdown=integrity`... Empty: not enforcing
    /// (or not visible).
    pub reasons: Vec<String>,
}

impl Enforcement {
    /// Reads the enforcement state under `sys_root` (normally `/sys`).
    pub fn probe(sys_root: &Path) -> Enforcement {
        let mut reasons = Vec::new();
        let sig_enforce = sys_root.join("module/module/parameters/sig_enforce");
        match std::fs::read_to_string(&sig_enforce) {
            Ok(text) if text.trim() == "Y" => reasons.push("module.sig_enforce=Y".to_owned()),
            Ok(text) => {
                debug!(path = %sig_enforce.display(), value = text.trim(), "module signatures not enforced by sig_enforce")
            }
            Err(e) => {
                debug!(path = %sig_enforce.display(), error = %e, "sig_enforce unreadable: taken as not enforcing (kernel without module signing?)")
            }
        }
        let lockdown = sys_root.join("kernel/security/lockdown");
        match std::fs::read_to_string(&lockdown) {
            Ok(text) => match selected_lockdown(&text) {
                Some(mode @ ("integrity" | "confidentiality")) => {
                    reasons.push(format!("lockdown={mode}"))
                }
                mode => {
                    debug!(path = %lockdown.display(), mode = mode.unwrap_or("(none selected)"), "lockdown does not enforce module signatures")
                }
            },
            Err(e) => {
                debug!(path = %lockdown.display(), error = %e, "lockdown state unreadable: taken as not enforcing (securityfs not mounted?)")
            }
        }
        Enforcement { reasons }
    }

    pub fn enforcing(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// `module.sig_enforce=Y, lockdown=integrity`.
    pub fn describe(&self) -> String {
        self.reasons.join(", ")
    }

    /// What the kernel answers a module it refuses: EKEYREJECTED under sig_enforce, EPERM under
    /// lockdown alone.
    fn refusal_text(&self) -> &'static str {
        if self
            .reasons
            .iter()
            .any(|r| r.starts_with("module.sig_enforce"))
        {
            "\"Key was rejected by service\""
        } else {
            "\"Operation not permitted\""
        }
    }
}

/// The bracketed word of a lockdown file (`none [integrity] confidentiality` -> `integrity`).
fn selected_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

/// A key of the kernel's keyrings as `/proc/keys` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The certificate's subject as the kernel names it (its CN, or `O: CN`).
    pub subject: String,
    /// The key id of the description: the certificate's SKID, or its serial when it has none.
    pub key_id: Vec<u8>,
}

impl TrustedKey {
    fn describe(&self) -> String {
        if self.key_id.is_empty() {
            format!("{:?}", self.subject)
        } else {
            format!("{:?} {}", self.subject, colon_hex(&self.key_id))
        }
    }
}

/// What `/proc/keys` shows of the kernel's trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedKeys {
    /// The process can see them: every asymmetric key listed.
    Visible(Vec<TrustedKey>),
    /// They cannot be seen (why).
    NotVisible(String),
}

/// Parses `/proc/keys`. The rule:
///
/// - a line is `<serial> <flags> <usage> <expiry> <perm> <uid> <gid> <type> <description>`; the
///   first eight whitespace-separated fields are skipped and the rest is the description (the type is
///   printed truncated to nine characters: `asymmetri` for asymmetric keys);
/// - a `keyring` line whose description starts with one of [`TRUSTED_KEYRINGS`] followed by `:` shows
///   that keyring (`: empty` or `: <number of links>`);
/// - an `asymmetri` line's description is `<subject>: <key id hex>` followed by the key's own
///   `: X509.rsa <last bytes of the id> []`; split at `": "`, the key id is the last part (not the
///   first) made only of an even number of hex digits, and the subject is everything before it (so a
///   subject that contains `": "`, like the kernel's `O: CN`, stays whole). A description without such a
///   part is a key with that subject and no id;
/// - anything else (other key types, malformed lines) is skipped.
///
/// The keys count as visible when a trusted keyring is listed and either some asymmetric key is
/// listed or every trusted keyring listed is empty; otherwise the keyrings hold keys this process may
/// not view (typical in a user namespace), which is `NotVisible`. Asymmetric keys of other keyrings are
/// included too: they only make the pre-check more lenient, never stricter than the kernel.
pub fn parse_proc_keys(text: &str) -> TrustedKeys {
    let mut keyrings: Vec<(&str, bool)> = Vec::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let mut rest = line.trim_start();
        let mut fields = Vec::with_capacity(8);
        for _ in 0..8 {
            let Some((field, after)) = rest.split_once(char::is_whitespace) else {
                fields.clear();
                break;
            };
            fields.push(field);
            rest = after.trim_start();
        }
        let [.., kind] = fields[..] else {
            continue;
        };
        let description = rest.trim_end();
        match kind {
            "keyring" => {
                if let Some(name) = TRUSTED_KEYRINGS.iter().find(|name| {
                    description
                        .strip_prefix(**name)
                        .is_some_and(|after| after.starts_with(':'))
                }) {
                    let empty = description.ends_with(": empty");
                    keyrings.push((name, empty));
                }
            }
            "asymmetri" => keys.push(parse_key_description(description)),
            _ => {}
        }
    }
    if keyrings.is_empty() {
        return TrustedKeys::NotVisible(format!(
            "none of the kernel's trusted keyrings ({}) is listed",
            TRUSTED_KEYRINGS.join(", ")
        ));
    }
    if keys.is_empty() && !keyrings.iter().all(|(_, empty)| *empty) {
        let names: Vec<&str> = keyrings.iter().map(|(name, _)| *name).collect();
        return TrustedKeys::NotVisible(format!(
            "{} hold keys but none is listed (this process may not view them)",
            names.join(", ")
        ));
    }
    TrustedKeys::Visible(keys)
}

fn is_key_id_hex(part: &str) -> bool {
    !part.is_empty() && part.len().is_multiple_of(2) && part.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_key_description(description: &str) -> TrustedKey {
    let parts: Vec<&str> = description.split(": ").collect();
    let id_at = parts
        .iter()
        .enumerate()
        .skip(1)
        .rev()
        .find(|(_, part)| is_key_id_hex(part))
        .map(|(i, _)| i);
    match id_at {
        Some(i) => TrustedKey {
            subject: parts.get(..i).unwrap_or_default().join(": "),
            key_id: parts.get(i).map(|hex| decode_hex(hex)).unwrap_or_default(),
        },
        None => TrustedKey {
            subject: description.to_owned(),
            key_id: Vec::new(),
        },
    }
}

fn decode_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .filter_map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// Reads `<proc_root>/keys`.
pub fn read_trusted_keys(proc_root: &Path) -> TrustedKeys {
    use std::io::Read;
    let path = proc_root.join("keys");
    let mut text = String::new();
    let read = std::fs::File::open(&path)
        .and_then(|file| file.take(MAX_PROC_KEYS_BYTES).read_to_string(&mut text));
    match read {
        Ok(_) => match parse_proc_keys(&text) {
            TrustedKeys::NotVisible(why) => {
                TrustedKeys::NotVisible(format!("{}: {why}", path.display()))
            }
            visible => visible,
        },
        Err(e) => TrustedKeys::NotVisible(format!("{}: {e}", path.display())),
    }
}

/// Is `signature`'s signer one of `keys`? By SKID when the signature names the key by SKID; by issuer
/// CN (the subject of a self-signed signing certificate, alone or as the `O: CN` the kernel makes of
/// it) or serial (a certificate without SKID is described by its serial) otherwise.
pub fn signer_is_trusted(signature: &ModuleSignature, keys: &[TrustedKey]) -> bool {
    keys.iter().any(|key| match &signature.signer {
        SignerId::SubjectKeyIdentifier(skid) => &key.key_id == skid,
        SignerId::IssuerAndSerial { issuer_cn, serial } => {
            let by_name = issuer_cn.as_deref().is_some_and(|cn| {
                !cn.is_empty() && (key.subject == cn || key.subject.ends_with(&format!(": {cn}")))
            });
            // The kernel keeps the serial's DER bytes (a leading 00 included); the signature's
            // serial has it dropped.
            let key_serial = key
                .key_id
                .get(
                    key.key_id
                        .iter()
                        .position(|&b| b != 0)
                        .unwrap_or(key.key_id.len())..,
                )
                .unwrap_or_default();
            by_name || (!serial.is_empty() && key_serial == serial.as_slice())
        }
    })
}

/// Where the loader reads what the kernel enforces and trusts, and what it says about enrolment.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    pub sys_root: PathBuf,
    pub proc_root: PathBuf,
    /// The build service's URL, to say where its certificate is served.
    pub build_service_url: Option<String>,
    /// `--skip-module-signature-precheck`: only the kernel judges.
    pub skip_precheck: bool,
}

/// The module's signature as read for a message.
fn signature_text(signature: &Result<Option<ModuleSignature>, SignatureError>) -> String {
    match signature {
        Ok(None) => "it is not signed".to_owned(),
        Ok(Some(sig)) => format!("it is signed by {sig}"),
        Err(e) => format!("its signature is malformed ({e})"),
    }
}

impl SignatureCheck {
    /// How to make the kernel trust the build service's modules.
    pub fn enrol_hint(&self) -> String {
        let served = match &self.build_service_url {
            Some(url) => format!("GET {}/module-signing-cert.der", url.trim_end_matches('/')),
            None => "GET /module-signing-cert.der on the build service".to_owned(),
        };
        format!(
            "to load modules signed by the build service, enrol its module-signing certificate \
             (served at {served}) in the kernel's trusted keys: `mokutil --import \
             module-signing-cert.der` and confirm the enrolment in MokManager at the next boot \
             (Secure Boot with shim), or add it to the UEFI db"
        )
    }

    fn refusal(&self, module: &str, reason: String) -> LoaderError {
        LoaderError::ModuleSignature {
            module: module.to_owned(),
            reason: format!("{reason}; {}", self.enrol_hint()),
        }
    }

    /// The pre-check of one module about to be loaded: refuses, when the kernel enforces signatures,
    /// an unsigned or malformed signature, and a signer none of the visible trusted keys matches.
    pub fn precheck(&self, module: &str, image: &[u8]) -> crate::Result<()> {
        if self.skip_precheck {
            info!(
                module,
                "module signature pre-check skipped (--skip-module-signature-precheck): the kernel is the only judge"
            );
            return Ok(());
        }
        let signature = crate::module_signature::read_module_signature(image);
        let enforcement = Enforcement::probe(&self.sys_root);
        if !enforcement.enforcing() {
            match &signature {
                Ok(Some(sig)) => {
                    debug!(module, signer = %sig, "module signed; the kernel does not enforce module signatures")
                }
                Ok(None) => debug!(
                    module,
                    "module unsigned; the kernel does not enforce module signatures (it will taint)"
                ),
                Err(e) => {
                    warn!(module, error = %e, "the module's signature is malformed; the kernel does not enforce signatures but may refuse it")
                }
            }
            return Ok(());
        }
        let enforces = format!(
            "the running kernel enforces module signatures ({})",
            enforcement.describe()
        );
        let sig = match signature {
            Ok(Some(sig)) => sig,
            other => {
                return Err(self.refusal(
                    module,
                    format!(
                        "refused before loading: {}, and {enforces}, so it would refuse the module \
                         ({})",
                        signature_text(&other),
                        enforcement.refusal_text()
                    ),
                ));
            }
        };
        match read_trusted_keys(&self.proc_root) {
            TrustedKeys::Visible(keys) => {
                if signer_is_trusted(&sig, &keys) {
                    info!(module, signer = %sig, "module signed by a key the kernel trusts");
                    return Ok(());
                }
                const SHOWN: usize = 4;
                let mut listed: Vec<String> =
                    keys.iter().take(SHOWN).map(TrustedKey::describe).collect();
                if keys.len() > SHOWN {
                    listed.push(format!("and {} more", keys.len() - SHOWN));
                }
                let trusted = if keys.is_empty() {
                    format!(
                        "the kernel trusts no key ({} lists none)",
                        self.proc_root.join("keys").display()
                    )
                } else {
                    format!(
                        "none of the {} key(s) the kernel trusts matches it ({}: {})",
                        keys.len(),
                        self.proc_root.join("keys").display(),
                        listed.join("; ")
                    )
                };
                Err(self.refusal(
                    module,
                    format!(
                        "refused before loading: it is signed by {sig}, but {trusted}, and \
                         {enforces}, so it would refuse the module ({})",
                        enforcement.refusal_text()
                    ),
                ))
            }
            TrustedKeys::NotVisible(why) => {
                warn!(
                    module,
                    signer = %sig,
                    enforcement = enforcement.describe(),
                    reason = why,
                    "the kernel enforces module signatures but its trusted keys are not visible; the signer could not be checked, the kernel will judge"
                );
                Ok(())
            }
        }
    }

    /// The kernel's own refusal of a module's signature, explained like the pre-check's:
    /// [`LoaderError::ModuleSignature`] from the load call, an install/load failure whose text carries
    /// the kernel's message (modprobe's "Key was rejected by service", "Required key not available",
    /// "Bad message"), and EPERM while lockdown enforces signatures and the process holds
    /// CAP_SYS_MODULE (a lockdown-only kernel refuses an unsigned or untrusted module with EPERM).
    /// Other errors pass through unchanged.
    pub fn explain_kernel_refusal(
        &self,
        module: &str,
        image: &[u8],
        error: LoaderError,
    ) -> LoaderError {
        self.explain_with_capability(module, image, error, has_cap_sys_module())
    }

    fn explain_with_capability(
        &self,
        module: &str,
        image: &[u8],
        error: LoaderError,
        cap_sys_module: Option<bool>,
    ) -> LoaderError {
        let enforcement = Enforcement::probe(&self.sys_root);
        let locked_down = enforcement
            .reasons
            .iter()
            .any(|r| r.starts_with("lockdown="));
        let kernel_says = match &error {
            LoaderError::ModuleSignature { reason, .. } => reason.clone(),
            LoaderError::Load { reason, .. } | LoaderError::Install(reason)
                if mentions_signature_refusal(reason) =>
            {
                reason.clone()
            }
            LoaderError::Load { reason, .. } | LoaderError::Install(reason)
                if locked_down
                    && cap_sys_module == Some(true)
                    && (reason.contains("EPERM") || reason.contains("Operation not permitted")) =>
            {
                format!(
                    "{reason}; with CAP_SYS_MODULE held, that is lockdown refusing the module's signature"
                )
            }
            _ => return error,
        };
        let enforces = if enforcement.enforcing() {
            format!(
                "the running kernel enforces module signatures ({})",
                enforcement.describe()
            )
        } else {
            "the running kernel enforces module signatures (Secure Boot lockdown or \
             module.sig_enforce; not visible under this sys root)"
                .to_owned()
        };
        let signature = crate::module_signature::read_module_signature(image);
        self.refusal(
            module,
            format!(
                "the kernel refused the module's signature: {kernel_says}; {}; {enforces}",
                signature_text(&signature)
            ),
        )
    }
}

/// Whether this process holds CAP_SYS_MODULE (`CapEff` of `/proc/self/status`); `None` when unknown.
fn has_cap_sys_module() -> Option<bool> {
    cap_sys_module_in(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn cap_sys_module_in(status: &str) -> Option<bool> {
    const CAP_SYS_MODULE: u32 = 16;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_SYS_MODULE) != 0)
}

/// Whether a load failure's text is the kernel refusing a signature.
fn mentions_signature_refusal(text: &str) -> bool {
    [
        "Key was rejected by service",
        "Required key not available",
        "Bad message",
        "EKEYREJECTED",
        "ENOKEY",
        "EBADMSG",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureKind;
    use crate::module_signature::tests::{signed_by, signed_by_skid};

    const IMAGE: &[u8] = b"\x7fELF fake module";

    /// A proc/keys as a Debian root sees it: the build-time key in .builtin_trusted_keys, the
    /// Secure Boot CA in .platform, a key whose subject the kernel made from `O: CN`.
    const PROC_KEYS: &str = "\
0b1f25b6 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
1a3c52c8 I------     1 perm 1f0f0000     0     0 keyring   .secondary_trusted_keys: 2
2bba2c3a I------     1 perm 1f030000     0     0 asymmetri Build time autogenerated kernel key: 9a1fc2e5f7ac86cb0d4eb4b82c9e4c40e2c1b2a1: X509.rsa e2c1b2a1 []
2e1d16d2 I------     1 perm 1f0b0000     0     0 keyring   .platform: 1
3ef1a2b0 I------     1 perm 1f030000     0     0 asymmetri Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa cbb419ea []
3f000001 I------     1 perm 1f030000     0     0 asymmetri Example Org: fleet signing: 00112233: X509.rsa 00112233 []
059ff0c1 I--Q---     1 perm 0c030000     0 65534 keyring   .user_reg: 4
";

    struct Roots {
        dir: tempfile::TempDir,
    }

    impl Roots {
        fn new() -> Roots {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("sys/module/module/parameters"))
                .expect("mkdir");
            std::fs::create_dir_all(dir.path().join("sys/kernel/security")).expect("mkdir");
            std::fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
            Roots { dir }
        }
        fn sig_enforce(self, value: &str) -> Self {
            std::fs::write(
                self.dir
                    .path()
                    .join("sys/module/module/parameters/sig_enforce"),
                format!("{value}\n"),
            )
            .expect("write");
            self
        }
        fn lockdown(self, text: &str) -> Self {
            std::fs::write(self.dir.path().join("sys/kernel/security/lockdown"), text)
                .expect("write");
            self
        }
        fn keys(self, text: &str) -> Self {
            std::fs::write(self.dir.path().join("proc/keys"), text).expect("write");
            self
        }
        fn check(&self) -> SignatureCheck {
            SignatureCheck {
                sys_root: self.dir.path().join("sys"),
                proc_root: self.dir.path().join("proc"),
                build_service_url: Some("https://builds.example/".to_owned()),
                skip_precheck: false,
            }
        }
    }

    #[test]
    fn enforcement_comes_from_sig_enforce_or_a_lockdown_mode() {
        let roots = Roots::new();
        assert!(
            !Enforcement::probe(&roots.dir.path().join("sys")).enforcing(),
            "missing files"
        );
        let roots = roots
            .sig_enforce("N")
            .lockdown("[none] integrity confidentiality\n");
        assert!(!Enforcement::probe(&roots.dir.path().join("sys")).enforcing());
        let roots = roots.lockdown("none [integrity] confidentiality\n");
        assert_eq!(
            Enforcement::probe(&roots.dir.path().join("sys")).describe(),
            "lockdown=integrity"
        );
        let roots = roots
            .sig_enforce("Y")
            .lockdown("none integrity [confidentiality]\n");
        assert_eq!(
            Enforcement::probe(&roots.dir.path().join("sys")).describe(),
            "module.sig_enforce=Y, lockdown=confidentiality"
        );
    }

    #[test]
    fn proc_keys_are_parsed_into_subjects_and_key_ids() {
        let TrustedKeys::Visible(keys) = parse_proc_keys(PROC_KEYS) else {
            panic!("visible")
        };
        assert_eq!(
            keys,
            vec![
                TrustedKey {
                    subject: "Build time autogenerated kernel key".to_owned(),
                    key_id: decode_hex("9a1fc2e5f7ac86cb0d4eb4b82c9e4c40e2c1b2a1"),
                },
                TrustedKey {
                    subject: "Debian Secure Boot CA".to_owned(),
                    key_id: decode_hex("6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"),
                },
                TrustedKey {
                    subject: "Example Org: fleet signing".to_owned(),
                    key_id: vec![0x00, 0x11, 0x22, 0x33],
                },
            ]
        );
        // Malformed lines and other types are skipped; a description without id keeps its subject.
        let TrustedKeys::Visible(keys) = parse_proc_keys(
            "garbage\n\n1 I 1 perm 1 0 0 keyring .platform: 1\n2 I 1 perm 1 0 0 asymmetri no id here\n3 I 1 perm 1 0 0 user secret: 5\n",
        ) else {
            panic!("visible")
        };
        assert_eq!(
            keys,
            vec![TrustedKey {
                subject: "no id here".to_owned(),
                key_id: vec![]
            }]
        );
    }

    #[test]
    fn keys_are_not_visible_without_a_trusted_keyring_or_with_hidden_keys() {
        assert!(matches!(parse_proc_keys(""), TrustedKeys::NotVisible(_)));
        // This machine's view in a user namespace: keyrings listed, keys not.
        let hidden = "1 I 1 perm 1 0 0 keyring   .builtin_trusted_keys: 3\n";
        let TrustedKeys::NotVisible(why) = parse_proc_keys(hidden) else {
            panic!("hidden")
        };
        assert!(why.contains(".builtin_trusted_keys hold keys"), "{why}");
        // An empty builtin keyring is a visible, empty set.
        assert_eq!(
            parse_proc_keys("1 I 1 perm 1 0 0 keyring   .builtin_trusted_keys: empty\n"),
            TrustedKeys::Visible(vec![])
        );
    }

    #[test]
    fn enforcing_and_unsigned_is_refused_with_exit_11() {
        let roots = Roots::new().sig_enforce("Y");
        let err = roots
            .check()
            .precheck("example_driver", IMAGE)
            .expect_err("unsigned");
        assert_eq!(err.kind(), FailureKind::ModuleSignature);
        assert_eq!(err.kind().exit_code(), 11);
        let text = err.to_string();
        for needle in [
            "module example_driver: refused before loading: it is not signed",
            "the running kernel enforces module signatures (module.sig_enforce=Y), so it would \
             refuse the module (\"Key was rejected by service\")",
            "GET https://builds.example/module-signing-cert.der",
            "mokutil --import module-signing-cert.der",
            "UEFI db",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
    }

    #[test]
    fn not_enforcing_lets_an_unsigned_module_through() {
        let roots = Roots::new().sig_enforce("N").keys(PROC_KEYS);
        roots
            .check()
            .precheck("example_driver", IMAGE)
            .expect("not enforcing");
    }

    #[test]
    fn enforcing_and_signed_by_a_trusted_key_proceeds() {
        let roots = Roots::new().sig_enforce("Y").keys(PROC_KEYS);
        let check = roots.check();
        // Issuer CN of a self-signed certificate, alone or as the kernel's O: CN.
        check
            .precheck(
                "example_driver",
                &signed_by(IMAGE, "Build time autogenerated kernel key", &[0x6a, 0x39]),
            )
            .expect("by CN");
        check
            .precheck("example_driver", &signed_by(IMAGE, "fleet signing", &[9]))
            .expect("by the CN part of O: CN");
        // By SKID.
        check
            .precheck(
                "example_driver",
                &signed_by_skid(
                    IMAGE,
                    &decode_hex("6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"),
                ),
            )
            .expect("by SKID");
        // By serial, for a certificate described by its serial.
        check
            .precheck(
                "example_driver",
                &signed_by(IMAGE, "someone", &[0, 0x11, 0x22, 0x33]),
            )
            .expect("by serial");
    }

    #[test]
    fn enforcing_and_signed_by_another_key_is_refused_naming_signer_and_key() {
        let roots = Roots::new()
            .lockdown("none [integrity] confidentiality")
            .keys(PROC_KEYS);
        let err = roots
            .check()
            .precheck(
                "example_driver",
                &signed_by(IMAGE, "evil signer", &[0xde, 0xad, 0xbe, 0xef]),
            )
            .expect_err("untrusted");
        assert_eq!(err.kind(), FailureKind::ModuleSignature);
        let text = err.to_string();
        for needle in [
            "module example_driver: refused before loading: it is signed by \"evil signer\" (key serial DE:AD:BE:EF, sha256)",
            "none of the 3 key(s) the kernel trusts matches it",
            "\"Debian Secure Boot CA\" 6C:CE:CE:7E",
            "(lockdown=integrity), so it would refuse the module (\"Operation not permitted\")",
            "mokutil --import",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
        // A SKID matching no key.
        let err = roots
            .check()
            .precheck("example_driver", &signed_by_skid(IMAGE, &[1, 2, 3, 4]))
            .expect_err("untrusted SKID");
        assert!(
            err.to_string()
                .contains("subject key identifier 01:02:03:04"),
            "{err}"
        );
    }

    #[test]
    fn keys_not_visible_only_refuse_the_unsigned() {
        let roots = Roots::new().sig_enforce("Y");
        let check = roots.check();
        check
            .precheck("example_driver", &signed_by(IMAGE, "evil signer", &[1]))
            .expect("signer cannot be checked: the kernel judges");
        assert!(check.precheck("example_driver", IMAGE).is_err());
        let check = SignatureCheck {
            skip_precheck: true,
            ..check
        };
        check.precheck("example_driver", IMAGE).expect("skipped");
    }

    #[test]
    fn a_malformed_signature_is_refused_when_enforcing() {
        let roots = Roots::new().sig_enforce("Y").keys(PROC_KEYS);
        let mut image = signed_by(IMAGE, "x", &[1]);
        let at = image.len() - crate::module_signature::MODULE_SIG_MAGIC.len() - 10;
        image[at] = 1; // id_type
        let err = roots.check().precheck("m", &image).expect_err("malformed");
        assert!(
            err.to_string()
                .contains("its signature is malformed (module signature: struct module_signature"),
            "{err}"
        );
    }

    #[test]
    fn the_kernels_own_refusal_is_explained_and_other_errors_pass_through() {
        let roots = Roots::new().sig_enforce("Y");
        let check = roots.check();
        let image = signed_by(IMAGE, "evil signer", &[1]);
        for error in [
            LoaderError::ModuleSignature {
                module: "m".to_owned(),
                reason: "the kernel refused (EKEYREJECTED: Key was rejected by service)".to_owned(),
            },
            LoaderError::Load {
                module: "m".to_owned(),
                reason: "install: modprobe failed (exit status: 1): modprobe: ERROR: could not insert 'm': Key was rejected by service".to_owned(),
            },
        ] {
            let explained = check.explain_kernel_refusal("m", &image, error);
            assert_eq!(explained.kind(), FailureKind::ModuleSignature);
            let text = explained.to_string();
            assert!(
                text.contains("Key was rejected by service")
                    && text.contains("\"evil signer\" (key serial 01, sha256)")
                    && text.contains("module.sig_enforce=Y")
                    && text.contains("mokutil"),
                "{text}"
            );
        }
        let other = LoaderError::Load {
            module: "m".to_owned(),
            reason: "out of kernel memory".to_owned(),
        };
        assert_eq!(
            check.explain_kernel_refusal("m", &image, other).kind(),
            FailureKind::Load
        );
    }

    #[test]
    fn eperm_under_lockdown_with_cap_sys_module_is_a_signature_refusal() {
        let eperm = || LoaderError::Load {
            module: "m".to_owned(),
            reason: "not permitted: missing CAP_SYS_MODULE, module loading disabled, or lockdown \
                     (EPERM: Operation not permitted)"
                .to_owned(),
        };
        let image = signed_by(IMAGE, "evil signer", &[1]);
        let locked = Roots::new().lockdown("none [integrity] confidentiality");
        let explained = locked
            .check()
            .explain_with_capability("m", &image, eperm(), Some(true));
        assert_eq!(explained.kind(), FailureKind::ModuleSignature);
        assert!(
            explained
                .to_string()
                .contains("lockdown refusing the module's signature")
                && explained.to_string().contains("(lockdown=integrity)"),
            "{explained}"
        );
        // Without the capability (or not knowing), EPERM is that: exit 8.
        for capability in [Some(false), None] {
            let kept = locked
                .check()
                .explain_with_capability("m", &image, eperm(), capability);
            assert_eq!(kept.kind(), FailureKind::Load);
        }
        // sig_enforce alone answers EKEYREJECTED, never EPERM: EPERM stays exit 8.
        let enforced = Roots::new().sig_enforce("Y");
        let kept = enforced
            .check()
            .explain_with_capability("m", &image, eperm(), Some(true));
        assert_eq!(kept.kind(), FailureKind::Load);
    }

    #[test]
    fn cap_sys_module_is_bit_16_of_cap_eff() {
        assert_eq!(
            cap_sys_module_in("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(true)
        );
        assert_eq!(
            cap_sys_module_in("CapPrm:\t000001ffffffffff\nCapEff:\t000001fffffeffff\n"),
            Some(false)
        );
        assert_eq!(cap_sys_module_in("CapEff:\tzz\n"), None);
        assert_eq!(cap_sys_module_in(""), None);
    }
}
