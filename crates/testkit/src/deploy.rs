//! The Kubernetes deployment as data: [`Manifest`] parses every document of
//! `deploy/kubernetes/daemonset.yaml` into strict types (a field this module does not know is a parse
//! error, so a new way to ask for more — `initContainers`, `hostUsers`, a `csi` volume — is refused
//! until someone reviews it here), [`policy_violations`] says where the manifest asks for more than the
//! loader needs or lets a ConfigMap reach the trust anchor, and [`ContainerRun`] turns the DaemonSet's
//! container into what a container runtime is asked for (environment resolved from the ConfigMap and
//! Secret data, mounts, capabilities, read-only root), with [`ContainerRun::podman_args`] spelling it for
//! podman so a test proves what the manifest declares rather than a hand-copied list.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_norway::Value;

/// The DaemonSet manifest, relative to the workspace root.
pub const DAEMONSET_PATH: &str = "deploy/kubernetes/daemonset.yaml";
/// Where the trusted minisign public keys are: the Secret's mount, or the keys baked into the image.
pub const TRUSTED_KEYS_DIR: &str = "/etc/driver-loader/trusted-keys";
/// The Secret holding the trust anchor (keys and provenance policy).
pub const TRUST_SECRET: &str = "driver-loader-trust";
/// The only capability the loader's container may add.
pub const ALLOWED_CAPABILITIES: [&str; 1] = ["SYS_MODULE"];

/// Trust configuration of the loader, by name; see also [`is_trust_variable`].
pub const TRUST_VARIABLES: [&str; 7] = [
    "DRIVER_LOADER_TRUSTED_KEYS_DIR",
    "DRIVER_LOADER_PUBLIC_KEY_FILE",
    "DRIVER_LOADER_PUBLIC_KEY",
    "DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY",
    "DRIVER_LOADER_ALLOWED_BUILDERS",
    "DRIVER_LOADER_PINNED_COMMIT",
    "DRIVER_LOADER_INSECURE_SKIP_SIGNATURE",
];

/// Trust variables the DaemonSet must set, each from the trust Secret (or, for the keys directory,
/// as the literal [`TRUSTED_KEYS_DIR`]).
pub const REQUIRED_TRUST_VARIABLES: [&str; 3] = [
    "DRIVER_LOADER_TRUSTED_KEYS_DIR",
    "DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY",
    "DRIVER_LOADER_ALLOWED_BUILDERS",
];

/// Command-line options that configure trust; none may appear in a container's command or args.
pub const TRUST_OPTIONS: [&str; 7] = [
    "--trusted-keys-dir",
    "--public-key-file",
    "--public-key",
    "--expected-source-repository",
    "--allowed-builder",
    "--pinned-commit",
    "--insecure-skip-signature",
];

/// A hostPath volume the loader needs, where it is mounted and whether it is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPathMount {
    pub path: &'static str,
    pub kind: &'static str,
    pub mount_path: &'static str,
    pub read_only: bool,
}

/// Exactly the host paths the loader reads or writes: os-release and the modules tree read-only, the
/// package cache writable.
pub const HOST_PATHS: [HostPathMount; 5] = [
    HostPathMount {
        path: "/etc/os-release",
        kind: "File",
        mount_path: "/host/etc/os-release",
        read_only: true,
    },
    HostPathMount {
        path: "/lib/modules",
        kind: "Directory",
        mount_path: "/lib/modules",
        read_only: true,
    },
    // The node id of the run report is hashed from it.
    HostPathMount {
        path: "/etc/machine-id",
        kind: "File",
        mount_path: "/host/etc/machine-id",
        read_only: true,
    },
    // `vmlinuz-R` beside `/lib/modules/R` marks a kernel installed but not booted (prefetch).
    HostPathMount {
        path: "/boot",
        kind: "Directory",
        mount_path: "/host/boot",
        read_only: true,
    },
    HostPathMount {
        path: "/var/cache/driver-loader",
        kind: "DirectoryOrCreate",
        mount_path: "/var/cache/driver-loader",
        read_only: false,
    },
];

/// A `DRIVER_LOADER_*` variable that configures trust: one of [`TRUST_VARIABLES`], or any name with
/// KEY, SKIP, TRUST, EXPECTED, ALLOWED or PINNED in it.
pub fn is_trust_variable(name: &str) -> bool {
    TRUST_VARIABLES.contains(&name)
        || name.strip_prefix("DRIVER_LOADER_").is_some_and(|rest| {
            ["KEY", "SKIP", "TRUST", "EXPECTED", "ALLOWED", "PINNED"]
                .iter()
                .any(|word| rest.contains(word))
        })
}

// ---------------------------------------------------------------------------------------------------
// The documents.

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(rename = "type")]
    pub secret_type: Option<String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    /// Base64 values, as Kubernetes stores them; this module only needs their keys.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

impl Secret {
    /// Every key of the Secret (`data` and `stringData`).
    pub fn keys(&self) -> BTreeSet<&str> {
        self.string_data
            .keys()
            .chain(self.data.keys())
            .map(String::as_str)
            .collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonSet {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DaemonSetSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonSetSpec {
    pub selector: Value,
    pub update_strategy: Option<Value>,
    pub min_ready_seconds: Option<u32>,
    pub revision_history_limit: Option<u32>,
    pub template: PodTemplate,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodTemplate {
    pub metadata: Option<Value>,
    pub spec: PodSpec,
}

/// The pod fields the loader's pod may use. Anything else (init or ephemeral containers, host users,
/// process namespace sharing, a runtime class...) does not parse.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(rename = "hostPID")]
    pub host_pid: Option<bool>,
    #[serde(rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    pub host_network: Option<bool>,
    pub security_context: Option<PodSecurityContext>,
    pub priority_class_name: Option<String>,
    pub tolerations: Option<Value>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub affinity: Option<Value>,
    pub termination_grace_period_seconds: Option<u64>,
    pub automount_service_account_token: Option<bool>,
    pub service_account_name: Option<String>,
    pub enable_service_links: Option<bool>,
    pub image_pull_secrets: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub seccomp_profile: Option<Profile>,
    pub app_armor_profile: Option<Profile>,
}

/// A seccomp or AppArmor profile reference.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    #[serde(rename = "type")]
    pub profile_type: String,
    pub localhost_profile: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Present only to be refused by name ([`policy_violations`]).
    pub env_from: Option<Value>,
    pub security_context: Option<SecurityContext>,
    pub resources: Option<Resources>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    pub privileged: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub capabilities: Option<Capabilities>,
    pub seccomp_profile: Option<Profile>,
    pub app_armor_profile: Option<Profile>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub requests: Option<BTreeMap<String, Value>>,
    pub limits: Option<BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    pub exec: Option<ExecAction>,
    pub initial_delay_seconds: Option<u32>,
    pub period_seconds: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub success_threshold: Option<u32>,
    pub failure_threshold: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarSource {
    pub config_map_key_ref: Option<KeyRef>,
    pub secret_key_ref: Option<KeyRef>,
    pub field_ref: Option<Value>,
    pub resource_field_ref: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
    pub optional: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: Option<bool>,
    pub sub_path: Option<String>,
    pub mount_propagation: Option<String>,
}

/// The volume kinds the loader's pod may use; any other kind does not parse.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub host_path: Option<HostPathSource>,
    pub secret: Option<SecretSource>,
    pub config_map: Option<ConfigMapSource>,
    pub empty_dir: Option<EmptyDirSource>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathSource {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSource {
    pub secret_name: String,
    #[serde(default, deserialize_with = "file_mode")]
    pub default_mode: Option<u32>,
    pub optional: Option<bool>,
    pub items: Option<Vec<KeyToPath>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapSource {
    pub name: String,
    #[serde(default, deserialize_with = "file_mode")]
    pub default_mode: Option<u32>,
    pub optional: Option<bool>,
    pub items: Option<Vec<KeyToPath>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default, deserialize_with = "file_mode")]
    pub mode: Option<u32>,
}

/// A file mode as Kubernetes reads YAML (1.1): `292` is decimal, `0444` octal.
fn file_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("file mode {n} out of range"))),
        Some(Value::String(text)) => text
            .strip_prefix("0o")
            .or_else(|| text.strip_prefix('0'))
            .and_then(|digits| u32::from_str_radix(digits, 8).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("file mode {text:?} is not octal"))),
        Some(other) => Err(D::Error::custom(format!("file mode {other:?}"))),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDirSource {
    pub medium: Option<String>,
    pub size_limit: Option<Value>,
}

/// Every document of a manifest file, by kind. Kinds other than these four are refused: the file
/// should not quietly grow a ClusterRoleBinding or a second workload.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub namespaces: Vec<Namespace>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub daemon_sets: Vec<DaemonSet>,
}

impl Manifest {
    /// Parses every `---`-separated document of `yaml`.
    pub fn parse(yaml: &str) -> Result<Manifest> {
        let mut manifest = Manifest::default();
        for (index, document) in serde_norway::Deserializer::from_str(yaml).enumerate() {
            let value = Value::deserialize(document)
                .with_context(|| format!("document {}: not YAML", index + 1))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .with_context(|| format!("document {}: no kind", index + 1))?
                .to_owned();
            let context = || format!("document {} ({kind})", index + 1);
            match kind.as_str() {
                "Namespace" => manifest
                    .namespaces
                    .push(serde_norway::from_value(value).with_context(context)?),
                "ConfigMap" => manifest
                    .config_maps
                    .push(serde_norway::from_value(value).with_context(context)?),
                "Secret" => manifest
                    .secrets
                    .push(serde_norway::from_value(value).with_context(context)?),
                "DaemonSet" => manifest
                    .daemon_sets
                    .push(serde_norway::from_value(value).with_context(context)?),
                other => bail!(
                    "document {}: kind {other} is not part of the loader's deployment \
                     (Namespace, ConfigMap, Secret, DaemonSet)",
                    index + 1
                ),
            }
        }
        Ok(manifest)
    }

    /// The project's own manifest ([`DAEMONSET_PATH`]).
    pub fn load() -> Result<Manifest> {
        let path = crate::workspace_root().join(DAEMONSET_PATH);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Manifest::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The one DaemonSet.
    pub fn daemon_set(&self) -> Result<&DaemonSet> {
        match self.daemon_sets.as_slice() {
            [one] => Ok(one),
            other => bail!("expected exactly one DaemonSet, found {}", other.len()),
        }
    }

    pub fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps.iter().find(|c| c.metadata.name == name)
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.metadata.name == name)
    }
}

// ---------------------------------------------------------------------------------------------------
// The policy.

fn normalise_capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
}

/// `path` is `dir` or below it.
fn within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Everything in `manifest` that asks for more than the loader needs, or lets a ConfigMap (or anything
/// but the trust Secret) reach the trust anchor. Empty when the manifest is as documented.
pub fn policy_violations(manifest: &Manifest) -> Vec<String> {
    let mut violations = Vec::new();
    let mut violation = |text: String| violations.push(text);

    for config_map in &manifest.config_maps {
        for key in config_map.data.keys() {
            if is_trust_variable(key) || key.ends_with(".pub") {
                violation(format!(
                    "ConfigMap {}: key {key} is trust configuration; it belongs in the Secret {TRUST_SECRET}",
                    config_map.metadata.name
                ));
            }
        }
    }

    let daemon_set = match manifest.daemon_set() {
        Ok(daemon_set) => daemon_set,
        Err(e) => {
            violation(format!("{e}"));
            return violations;
        }
    };
    let pod = &daemon_set.spec.template.spec;
    for (field, value) in [
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
        ("hostNetwork", pod.host_network),
    ] {
        if value == Some(true) {
            violation(format!(
                "pod: {field} is true; the loader needs none of the host's namespaces"
            ));
        }
    }
    if pod.enable_service_links != Some(false) {
        violation(
            "pod: enableServiceLinks must be false, or every Service in the namespace adds variables \
             to the loader's environment"
                .to_owned(),
        );
    }
    if pod.automount_service_account_token != Some(false) {
        violation(
            "pod: automountServiceAccountToken must be false; the loader never calls the API server"
                .to_owned(),
        );
    }
    let pod_seccomp = pod
        .security_context
        .as_ref()
        .and_then(|c| c.seccomp_profile.as_ref());
    for (what, profile) in [
        ("pod seccompProfile", pod_seccomp),
        (
            "pod appArmorProfile",
            pod.security_context
                .as_ref()
                .and_then(|c| c.app_armor_profile.as_ref()),
        ),
    ] {
        if let Some(profile) = profile
            && profile.profile_type != "RuntimeDefault"
        {
            violation(format!(
                "{what}: type {} (only RuntimeDefault)",
                profile.profile_type
            ));
        }
    }

    // Volumes.
    let volumes: BTreeMap<&str, &Volume> =
        pod.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
    if volumes.len() != pod.volumes.len() {
        violation("pod: two volumes share a name".to_owned());
    }
    let mut host_paths_seen = BTreeSet::new();
    for volume in &pod.volumes {
        let kinds = [
            volume.host_path.is_some(),
            volume.secret.is_some(),
            volume.config_map.is_some(),
            volume.empty_dir.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            violation(format!(
                "volume {}: must have exactly one source",
                volume.name
            ));
        }
        if let Some(host_path) = &volume.host_path {
            match HOST_PATHS.iter().find(|h| h.path == host_path.path) {
                None => violation(format!(
                    "volume {}: hostPath {} is not one of the documented host paths ({})",
                    volume.name,
                    host_path.path,
                    HOST_PATHS.map(|h| h.path).join(", ")
                )),
                Some(documented) => {
                    if host_path.kind.as_deref() != Some(documented.kind) {
                        violation(format!(
                            "volume {}: hostPath {} must have type {}",
                            volume.name, host_path.path, documented.kind
                        ));
                    }
                    if !host_paths_seen.insert(documented.path) {
                        violation(format!(
                            "volume {}: hostPath {} is mounted twice",
                            volume.name, host_path.path
                        ));
                    }
                }
            }
        }
    }
    for documented in HOST_PATHS {
        if !host_paths_seen.contains(documented.path) {
            violation(format!(
                "pod: the hostPath volume {} is missing",
                documented.path
            ));
        }
    }

    for container in &pod.containers {
        container_violations(
            container,
            pod,
            &volumes,
            manifest,
            pod_seccomp,
            &mut violation,
        );
    }
    violations
}

fn container_violations(
    container: &Container,
    pod: &PodSpec,
    volumes: &BTreeMap<&str, &Volume>,
    manifest: &Manifest,
    pod_seccomp: Option<&Profile>,
    violation: &mut impl FnMut(String),
) {
    let name = &container.name;
    let context = container
        .security_context
        .clone()
        .unwrap_or(SecurityContext {
            privileged: None,
            allow_privilege_escalation: None,
            read_only_root_filesystem: None,
            run_as_user: None,
            run_as_group: None,
            run_as_non_root: None,
            capabilities: None,
            seccomp_profile: None,
            app_armor_profile: None,
        });
    if context.privileged == Some(true) {
        violation(format!("container {name}: privileged"));
    }
    if context.allow_privilege_escalation != Some(false) {
        violation(format!(
            "container {name}: allowPrivilegeEscalation must be false"
        ));
    }
    if context.read_only_root_filesystem != Some(true) {
        violation(format!(
            "container {name}: readOnlyRootFilesystem must be true"
        ));
    }
    let pod_context = pod.security_context.as_ref();
    let run_as_user = context
        .run_as_user
        .or(pod_context.and_then(|c| c.run_as_user));
    if run_as_user != Some(0) {
        violation(format!(
            "container {name}: runAsUser must be 0 explicitly (module loading needs root)"
        ));
    }
    let run_as_non_root = context
        .run_as_non_root
        .or(pod_context.and_then(|c| c.run_as_non_root));
    if run_as_non_root != Some(false) {
        violation(format!(
            "container {name}: runAsNonRoot must be false explicitly"
        ));
    }
    let capabilities = context.capabilities.clone().unwrap_or_default();
    let dropped: Vec<String> = capabilities
        .drop
        .iter()
        .map(|c| normalise_capability(c))
        .collect();
    if dropped != ["ALL"] {
        violation(format!(
            "container {name}: capabilities.drop must be exactly [ALL], not {:?}",
            capabilities.drop
        ));
    }
    let added: BTreeSet<String> = capabilities
        .add
        .iter()
        .map(|c| normalise_capability(c))
        .collect();
    let allowed: BTreeSet<String> = ALLOWED_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    if added != allowed || capabilities.add.len() != added.len() {
        violation(format!(
            "container {name}: capabilities.add must be exactly {:?}, not {:?}",
            ALLOWED_CAPABILITIES, capabilities.add
        ));
    }
    match context.seccomp_profile.as_ref().or(pod_seccomp) {
        Some(profile) if profile.profile_type == "RuntimeDefault" => {}
        Some(profile) => violation(format!(
            "container {name}: seccompProfile type {} (only RuntimeDefault)",
            profile.profile_type
        )),
        None => violation(format!(
            "container {name}: seccompProfile must be RuntimeDefault explicitly"
        )),
    }
    if let Some(profile) = &context.app_armor_profile
        && profile.profile_type != "RuntimeDefault"
    {
        violation(format!(
            "container {name}: appArmorProfile type {} (only RuntimeDefault)",
            profile.profile_type
        ));
    }
    if container.env_from.is_some() {
        violation(format!(
            "container {name}: envFrom imports every key of its source; read settings key by key"
        ));
    }

    // Command line: no trust option, no $(VAR) expansion (which would let a ConfigMap value in).
    for word in container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
    {
        if TRUST_OPTIONS
            .iter()
            .any(|option| word == option || word.starts_with(&format!("{option}=")))
        {
            violation(format!(
                "container {name}: command line sets trust option {word}; trust comes from the Secret"
            ));
        }
        if word.contains("$(") {
            violation(format!(
                "container {name}: command line word {word:?} expands a variable"
            ));
        }
    }

    // Environment.
    let mut names = BTreeSet::new();
    for var in &container.env {
        if !names.insert(var.name.as_str()) {
            violation(format!("container {name}: {} is set twice", var.name));
        }
        let source = var.value_from.as_ref();
        let sources = source.map_or(0, |s| {
            [
                s.config_map_key_ref.is_some(),
                s.secret_key_ref.is_some(),
                s.field_ref.is_some(),
                s.resource_field_ref.is_some(),
            ]
            .iter()
            .filter(|k| **k)
            .count()
        });
        if usize::from(var.value.is_some()) + sources != 1 {
            violation(format!(
                "container {name}: {} must have exactly one value or source",
                var.name
            ));
        }
        if let Some(reference) = source.and_then(|s| s.config_map_key_ref.as_ref()) {
            match manifest.config_map(&reference.name) {
                None => violation(format!(
                    "container {name}: {} reads ConfigMap {}, which the manifest does not define",
                    var.name, reference.name
                )),
                Some(config_map) => {
                    if reference.optional != Some(true)
                        && !config_map.data.contains_key(&reference.key)
                    {
                        violation(format!(
                            "container {name}: {} reads key {} that ConfigMap {} lacks",
                            var.name, reference.key, reference.name
                        ));
                    }
                }
            }
        }
        if let Some(reference) = source.and_then(|s| s.secret_key_ref.as_ref()) {
            match manifest.secret(&reference.name) {
                None => violation(format!(
                    "container {name}: {} reads Secret {}, which the manifest does not define",
                    var.name, reference.name
                )),
                Some(secret) => {
                    if reference.optional != Some(true)
                        && !secret.keys().contains(reference.key.as_str())
                    {
                        violation(format!(
                            "container {name}: {} reads key {} that Secret {} lacks",
                            var.name, reference.key, reference.name
                        ));
                    }
                }
            }
        }
        if !is_trust_variable(&var.name) {
            continue;
        }
        if var.name == "DRIVER_LOADER_INSECURE_SKIP_SIGNATURE" {
            if var.value.as_deref() != Some("false") {
                violation(format!(
                    "container {name}: {} may only be absent or the literal \"false\"",
                    var.name
                ));
            }
            continue;
        }
        match (&var.value, source) {
            // A path (or a file/directory variable, relative or not) must lead to the trusted keys.
            (Some(value), None)
                if value.starts_with('/')
                    || var.name.ends_with("_FILE")
                    || var.name.ends_with("_DIR") =>
            {
                trusted_path_violations(container, volumes, &var.name, value, violation);
            }
            (None, Some(source)) => {
                let from_trust_secret = source
                    .secret_key_ref
                    .as_ref()
                    .is_some_and(|r| r.name == TRUST_SECRET);
                if !from_trust_secret {
                    let what = if source.config_map_key_ref.is_some() {
                        "a ConfigMap"
                    } else {
                        "something other than the Secret"
                    };
                    violation(format!(
                        "container {name}: trust variable {} comes from {what}; only the Secret \
                         {TRUST_SECRET} or a literal may set it",
                        var.name
                    ));
                }
            }
            _ => {}
        }
    }
    for required in REQUIRED_TRUST_VARIABLES {
        let Some(var) = container.env.iter().find(|v| v.name == required) else {
            violation(format!(
                "container {name}: {required} is not set; the trust anchor is incomplete"
            ));
            continue;
        };
        if required == "DRIVER_LOADER_TRUSTED_KEYS_DIR" {
            if var.value.as_deref() != Some(TRUSTED_KEYS_DIR) {
                violation(format!(
                    "container {name}: {required} must be the literal {TRUSTED_KEYS_DIR}"
                ));
            }
        } else if !var
            .value_from
            .as_ref()
            .and_then(|s| s.secret_key_ref.as_ref())
            .is_some_and(|r| r.name == TRUST_SECRET && r.optional != Some(true))
        {
            violation(format!(
                "container {name}: {required} must come from the Secret {TRUST_SECRET} (not optional)"
            ));
        }
    }

    // Mounts.
    let mut mounted = BTreeSet::new();
    for mount in &container.volume_mounts {
        let Some(volume) = volumes.get(mount.name.as_str()) else {
            violation(format!(
                "container {name}: mount {} names no volume",
                mount.name
            ));
            continue;
        };
        mounted.insert(mount.name.as_str());
        if mount
            .mount_propagation
            .as_deref()
            .is_some_and(|p| p != "None")
        {
            violation(format!(
                "container {name}: mount {} propagates mounts",
                mount.name
            ));
        }
        if let Some(host_path) = &volume.host_path
            && let Some(documented) = HOST_PATHS.iter().find(|h| h.path == host_path.path)
        {
            if mount.mount_path != documented.mount_path {
                violation(format!(
                    "container {name}: hostPath {} must be mounted at {}, not {}",
                    documented.path, documented.mount_path, mount.mount_path
                ));
            }
            if mount.read_only.unwrap_or(false) != documented.read_only {
                violation(format!(
                    "container {name}: hostPath {} must be mounted {}",
                    documented.path,
                    if documented.read_only {
                        "readOnly"
                    } else {
                        "writable"
                    }
                ));
            }
            if mount.sub_path.is_some() {
                violation(format!(
                    "container {name}: hostPath {} mounted with a subPath",
                    documented.path
                ));
            }
        }
        if within(&mount.mount_path, TRUSTED_KEYS_DIR)
            || within(TRUSTED_KEYS_DIR, &mount.mount_path)
        {
            let trust_secret = volume
                .secret
                .as_ref()
                .is_some_and(|s| s.secret_name == TRUST_SECRET && s.optional != Some(true));
            if !trust_secret {
                violation(format!(
                    "container {name}: volume {} is mounted over the trusted keys at {} but is not \
                     the Secret {TRUST_SECRET}",
                    mount.name, mount.mount_path
                ));
            }
            if mount.read_only != Some(true) {
                violation(format!(
                    "container {name}: the trusted keys mount {} must be readOnly",
                    mount.mount_path
                ));
            }
        }
    }
    for volume in volumes.values() {
        if !mounted.contains(volume.name.as_str()) {
            violation(format!(
                "container {name}: volume {} is not mounted",
                volume.name
            ));
        }
    }
}

/// A trust variable's literal path must be answered by the trust Secret's mount or by the image (no
/// mount covers it), never by another volume.
fn trusted_path_violations(
    container: &Container,
    volumes: &BTreeMap<&str, &Volume>,
    variable: &str,
    path: &str,
    violation: &mut impl FnMut(String),
) {
    if !within(path, TRUSTED_KEYS_DIR) {
        violation(format!(
            "container {}: {variable}={path} is outside {TRUSTED_KEYS_DIR}",
            container.name
        ));
    }
    for mount in &container.volume_mounts {
        if !(within(path, &mount.mount_path) || within(&mount.mount_path, path)) {
            continue;
        }
        let is_trust_secret = volumes
            .get(mount.name.as_str())
            .and_then(|v| v.secret.as_ref())
            .is_some_and(|s| s.secret_name == TRUST_SECRET);
        if !is_trust_secret {
            violation(format!(
                "container {}: {variable}={path} is served by volume {}, not the Secret {TRUST_SECRET}",
                container.name, mount.name
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// What a container runtime is asked for.

/// How the node provides a volume before the container starts (what the kubelet would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeVolume {
    /// A hostPath of type File or Directory: must already exist on the node.
    MustExist { path: String, directory: bool },
    /// A hostPath of type DirectoryOrCreate: created (0755, root) when missing.
    CreateDirectory { path: String },
    /// A Secret's keys written as files into `dir` (the kubelet's pod volume directory).
    SecretFiles {
        dir: String,
        files: Vec<(String, Vec<u8>)>,
        mode: u32,
    },
}

/// One mount of the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeMount {
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size_bytes: Option<u64>,
    },
}

/// The DaemonSet's container as a runtime sees it: every value resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRun {
    pub env: Vec<(String, String)>,
    pub node_volumes: Vec<NodeVolume>,
    pub mounts: Vec<RuntimeMount>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub privileged: bool,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub user: Option<(i64, i64)>,
    /// `None` = the runtime's default profile.
    pub seccomp_unconfined: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub command: Option<Vec<String>>,
    pub args: Vec<String>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_limit: Option<String>,
    pub stop_timeout_seconds: Option<u64>,
    pub readiness_command: Option<Vec<String>>,
}

/// The data a cluster holds for the manifest's ConfigMaps and Secrets (by object name, then key).
#[derive(Clone, Debug, Default)]
pub struct ClusterData {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Where the kubelet keeps a pod's Secret volume `volume` (the test nodes use the same layout).
pub fn secret_volume_dir(pod: &str, volume: &str) -> String {
    format!("/var/lib/kubelet/pods/{pod}/volumes/kubernetes.io~secret/{volume}")
}

fn parse_quantity_bytes(value: &Value) -> Result<u64> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => bail!("quantity {other:?} is not a string or number"),
    };
    let (digits, factor) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|d| (d, *factor)))
    .unwrap_or((text.as_str(), 1));
    let number: u64 = digits
        .parse()
        .with_context(|| format!("quantity {text}: not an integer with a binary or SI suffix"))?;
    Ok(number * factor)
}

impl ContainerRun {
    /// `container` of `daemon_set` with its environment resolved from `data` (a missing key of a
    /// non-optional reference is an error, as the kubelet refuses to start such a container) and its
    /// volumes laid out as the kubelet would for a pod named `pod`.
    pub fn from_daemon_set(
        daemon_set: &DaemonSet,
        container: &str,
        pod_name: &str,
        data: &ClusterData,
    ) -> Result<ContainerRun> {
        let pod = &daemon_set.spec.template.spec;
        let container = pod
            .containers
            .iter()
            .find(|c| c.name == container)
            .with_context(|| format!("no container {container}"))?;
        if container.env_from.is_some() {
            bail!("container {}: envFrom is not supported", container.name);
        }
        let mut env = Vec::new();
        for var in &container.env {
            let value = match (&var.value, &var.value_from) {
                (Some(value), None) => Some(value.clone()),
                (None, Some(source)) => {
                    if let Some(r) = &source.config_map_key_ref {
                        match data.config_maps.get(&r.name).and_then(|m| m.get(&r.key)) {
                            Some(value) => Some(value.clone()),
                            None if r.optional == Some(true) => None,
                            None => bail!(
                                "{}: ConfigMap {} has no key {} (the kubelet would not start the container)",
                                var.name,
                                r.name,
                                r.key
                            ),
                        }
                    } else if let Some(r) = &source.secret_key_ref {
                        match data.secrets.get(&r.name).and_then(|m| m.get(&r.key)) {
                            Some(value) => Some(
                                String::from_utf8(value.clone())
                                    .with_context(|| format!("{}: not UTF-8", var.name))?,
                            ),
                            None if r.optional == Some(true) => None,
                            None => bail!(
                                "{}: Secret {} has no key {} (the kubelet would not start the container)",
                                var.name,
                                r.name,
                                r.key
                            ),
                        }
                    } else {
                        bail!(
                            "{}: only configMapKeyRef and secretKeyRef are supported",
                            var.name
                        );
                    }
                }
                _ => bail!("{}: needs exactly one of value and valueFrom", var.name),
            };
            if let Some(value) = value {
                env.retain(|(name, _): &(String, String)| name != &var.name);
                env.push((var.name.clone(), value));
            }
        }

        let volumes: BTreeMap<&str, &Volume> =
            pod.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        let mut node_volumes = Vec::new();
        let mut mounts = Vec::new();
        for mount in &container.volume_mounts {
            if mount.sub_path.is_some() {
                bail!("mount {}: subPath is not supported", mount.name);
            }
            let volume = volumes
                .get(mount.name.as_str())
                .with_context(|| format!("mount {} names no volume", mount.name))?;
            let read_only = mount.read_only.unwrap_or(false);
            if let Some(host_path) = &volume.host_path {
                node_volumes.push(match host_path.kind.as_deref() {
                    Some("DirectoryOrCreate") => NodeVolume::CreateDirectory {
                        path: host_path.path.clone(),
                    },
                    Some("Directory") => NodeVolume::MustExist {
                        path: host_path.path.clone(),
                        directory: true,
                    },
                    Some("File") => NodeVolume::MustExist {
                        path: host_path.path.clone(),
                        directory: false,
                    },
                    other => bail!(
                        "volume {}: hostPath type {other:?} is not supported",
                        volume.name
                    ),
                });
                mounts.push(RuntimeMount::Bind {
                    source: host_path.path.clone(),
                    target: mount.mount_path.clone(),
                    read_only,
                });
            } else if let Some(secret) = &volume.secret {
                if secret.items.is_some() {
                    bail!("volume {}: secret items are not supported", volume.name);
                }
                let values = data.secrets.get(&secret.secret_name).with_context(|| {
                    format!(
                        "volume {}: no data for Secret {}",
                        volume.name, secret.secret_name
                    )
                })?;
                let dir = secret_volume_dir(pod_name, &volume.name);
                node_volumes.push(NodeVolume::SecretFiles {
                    dir: dir.clone(),
                    files: values
                        .iter()
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect(),
                    mode: secret.default_mode.unwrap_or(0o644),
                });
                mounts.push(RuntimeMount::Bind {
                    source: dir,
                    target: mount.mount_path.clone(),
                    read_only,
                });
            } else if let Some(empty_dir) = &volume.empty_dir {
                if empty_dir.medium.as_deref() != Some("Memory") {
                    bail!(
                        "volume {}: only emptyDir medium Memory is supported",
                        volume.name
                    );
                }
                mounts.push(RuntimeMount::Tmpfs {
                    target: mount.mount_path.clone(),
                    size_bytes: empty_dir
                        .size_limit
                        .as_ref()
                        .map(parse_quantity_bytes)
                        .transpose()?,
                });
            } else {
                bail!(
                    "volume {}: only hostPath, secret and emptyDir are supported",
                    volume.name
                );
            }
        }

        let context = container.security_context.as_ref();
        let pod_context = pod.security_context.as_ref();
        let capabilities = context
            .and_then(|c| c.capabilities.clone())
            .unwrap_or_default();
        let seccomp = context
            .and_then(|c| c.seccomp_profile.as_ref())
            .or(pod_context.and_then(|c| c.seccomp_profile.as_ref()));
        let seccomp_unconfined = match seccomp.map(|p| p.profile_type.as_str()) {
            None | Some("RuntimeDefault") => false,
            Some("Unconfined") => true,
            Some(other) => bail!("seccompProfile type {other} is not supported"),
        };
        let run_as_user = context
            .and_then(|c| c.run_as_user)
            .or(pod_context.and_then(|c| c.run_as_user));
        let run_as_group = context
            .and_then(|c| c.run_as_group)
            .or(pod_context.and_then(|c| c.run_as_group));
        let limits = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        Ok(ContainerRun {
            env,
            node_volumes,
            mounts,
            cap_drop: capabilities
                .drop
                .iter()
                .map(|c| normalise_capability(c))
                .collect(),
            cap_add: capabilities
                .add
                .iter()
                .map(|c| normalise_capability(c))
                .collect(),
            privileged: context.and_then(|c| c.privileged).unwrap_or(false),
            read_only_root: context
                .and_then(|c| c.read_only_root_filesystem)
                .unwrap_or(false),
            no_new_privileges: context.and_then(|c| c.allow_privilege_escalation) == Some(false),
            user: run_as_user.map(|user| (user, run_as_group.unwrap_or(user))),
            seccomp_unconfined,
            host_network: pod.host_network.unwrap_or(false),
            host_pid: pod.host_pid.unwrap_or(false),
            host_ipc: pod.host_ipc.unwrap_or(false),
            command: container.command.clone(),
            args: container.args.clone().unwrap_or_default(),
            memory_limit_bytes: limits.get("memory").map(parse_quantity_bytes).transpose()?,
            cpu_limit: limits.get("cpu").map(|v| match v {
                Value::String(s) => s.clone(),
                other => serde_norway::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            }),
            stop_timeout_seconds: pod.termination_grace_period_seconds,
            readiness_command: container
                .readiness_probe
                .as_ref()
                .and_then(|p| p.exec.as_ref())
                .map(|e| e.command.clone()),
        })
    }

    /// `podman run` options for this container (without `run` itself, the image, `--name`, `-d` or
    /// `--rm`), followed by nothing: append the image and [`ContainerRun::args`].
    pub fn podman_options(&self) -> Result<Vec<String>> {
        let mut options = Vec::new();
        if self.privileged {
            options.push("--privileged".to_owned());
        }
        for cap in &self.cap_drop {
            options.push(format!("--cap-drop={cap}"));
        }
        for cap in &self.cap_add {
            options.push(format!("--cap-add={cap}"));
        }
        if self.read_only_root {
            // Kubernetes gives a read-only root no writable /run, /tmp or /var/tmp; podman would.
            options.push("--read-only".to_owned());
            options.push("--read-only-tmpfs=false".to_owned());
        }
        if self.no_new_privileges {
            options.push("--security-opt=no-new-privileges".to_owned());
        }
        if self.seccomp_unconfined {
            options.push("--security-opt=seccomp=unconfined".to_owned());
        }
        if let Some((user, group)) = self.user {
            options.push(format!("--user={user}:{group}"));
        }
        if self.host_network {
            options.push("--network=host".to_owned());
        }
        if self.host_pid {
            options.push("--pid=host".to_owned());
        }
        if self.host_ipc {
            options.push("--ipc=host".to_owned());
        }
        if let Some(bytes) = self.memory_limit_bytes {
            options.push(format!("--memory={bytes}b"));
        }
        if let Some(cpu) = &self.cpu_limit {
            let cpus = match cpu.strip_suffix('m') {
                Some(milli) => {
                    let milli: u64 = milli.parse().with_context(|| format!("cpu limit {cpu}"))?;
                    format!("{}.{:03}", milli / 1000, milli % 1000)
                }
                None => cpu.clone(),
            };
            options.push(format!("--cpus={cpus}"));
        }
        if let Some(seconds) = self.stop_timeout_seconds {
            options.push(format!("--stop-timeout={seconds}"));
        }
        for mount in &self.mounts {
            for part in [mount_source(mount), mount_target(mount)] {
                if part.contains([',', '=']) {
                    bail!("mount path {part:?} cannot be spelled in a --mount option");
                }
            }
            options.push(match mount {
                RuntimeMount::Bind {
                    source,
                    target,
                    read_only,
                } => format!(
                    "--mount=type=bind,source={source},destination={target}{}",
                    if *read_only { ",ro=true" } else { "" }
                ),
                RuntimeMount::Tmpfs { target, size_bytes } => format!(
                    "--mount=type=tmpfs,destination={target}{}",
                    size_bytes.map_or(String::new(), |b| format!(",tmpfs-size={b}"))
                ),
            });
        }
        for (name, value) in &self.env {
            options.push(format!("--env={name}={value}"));
        }
        if let Some(command) = &self.command {
            options.push(format!(
                "--entrypoint={}",
                serde_json::to_string(command).context("entrypoint")?
            ));
        }
        Ok(options)
    }
}

fn mount_source(mount: &RuntimeMount) -> &str {
    match mount {
        RuntimeMount::Bind { source, .. } => source,
        RuntimeMount::Tmpfs { .. } => "",
    }
}

fn mount_target(mount: &RuntimeMount) -> &str {
    match mount {
        RuntimeMount::Bind { target, .. } | RuntimeMount::Tmpfs { target, .. } => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: ns}
data:
  A: a-value
---
apiVersion: v1
kind: Secret
metadata: {name: driver-loader-trust, namespace: ns}
stringData:
  k.pub: key
  repo: https://example/repo
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  selector: {}
  template:
    spec:
      terminationGracePeriodSeconds: 7
      containers:
        - name: c
          image: img
          args: ["run", "--keep-running"]
          env:
            - name: A
              valueFrom: {configMapKeyRef: {name: cm, key: A}}
            - name: B
              valueFrom: {configMapKeyRef: {name: cm, key: B, optional: true}}
            - name: REPO
              valueFrom: {secretKeyRef: {name: driver-loader-trust, key: repo}}
            - name: LITERAL
              value: x
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            runAsUser: 0
            capabilities: {drop: [ALL], add: [SYS_MODULE]}
          resources:
            limits: {cpu: 500m, memory: 256Mi}
          readinessProbe:
            exec: {command: [/bin/ready]}
          volumeMounts:
            - {name: os, mountPath: /host/os, readOnly: true}
            - {name: cache, mountPath: /cache}
            - {name: keys, mountPath: /keys, readOnly: true}
            - {name: run, mountPath: /run/x}
      volumes:
        - {name: os, hostPath: {path: /etc/os-release, type: File}}
        - {name: cache, hostPath: {path: /var/cache/x, type: DirectoryOrCreate}}
        - {name: keys, secret: {secretName: driver-loader-trust, defaultMode: 0444}}
        - {name: run, emptyDir: {medium: Memory, sizeLimit: 1Mi}}
"#;

    fn data() -> ClusterData {
        let mut data = ClusterData::default();
        data.config_maps.insert(
            "cm".into(),
            BTreeMap::from([("A".to_owned(), "a-value".to_owned())]),
        );
        data.secrets.insert(
            "driver-loader-trust".into(),
            BTreeMap::from([
                ("k.pub".to_owned(), b"key".to_vec()),
                ("repo".to_owned(), b"https://example/repo".to_vec()),
            ]),
        );
        data
    }

    #[test]
    fn a_container_becomes_podman_options() {
        let manifest = Manifest::parse(SMALL).expect("parse");
        let ds = manifest.daemon_set().expect("one");
        let run = ContainerRun::from_daemon_set(ds, "c", "pod", &data()).expect("run");
        assert_eq!(
            run.env,
            [
                ("A".to_owned(), "a-value".to_owned()),
                ("REPO".to_owned(), "https://example/repo".to_owned()),
                ("LITERAL".to_owned(), "x".to_owned()),
            ]
        );
        assert_eq!(
            run.node_volumes,
            [
                NodeVolume::MustExist {
                    path: "/etc/os-release".into(),
                    directory: false
                },
                NodeVolume::CreateDirectory {
                    path: "/var/cache/x".into()
                },
                NodeVolume::SecretFiles {
                    dir: "/var/lib/kubelet/pods/pod/volumes/kubernetes.io~secret/keys".into(),
                    files: vec![
                        ("k.pub".into(), b"key".to_vec()),
                        ("repo".into(), b"https://example/repo".to_vec())
                    ],
                    mode: 0o444,
                },
            ]
        );
        assert_eq!(run.readiness_command, Some(vec!["/bin/ready".to_owned()]));
        let options = run.podman_options().expect("options");
        assert_eq!(
            options,
            [
                "--cap-drop=ALL",
                "--cap-add=SYS_MODULE",
                "--read-only",
                "--read-only-tmpfs=false",
                "--security-opt=no-new-privileges",
                "--user=0:0",
                "--memory=268435456b",
                "--cpus=0.500",
                "--stop-timeout=7",
                "--mount=type=bind,source=/etc/os-release,destination=/host/os,ro=true",
                "--mount=type=bind,source=/var/cache/x,destination=/cache",
                "--mount=type=bind,source=/var/lib/kubelet/pods/pod/volumes/kubernetes.io~secret/keys,destination=/keys,ro=true",
                "--mount=type=tmpfs,destination=/run/x,tmpfs-size=1048576",
                "--env=A=a-value",
                "--env=REPO=https://example/repo",
                "--env=LITERAL=x",
            ]
        );
        assert_eq!(run.args, ["run", "--keep-running"]);
    }

    #[test]
    fn a_missing_required_key_stops_the_container_like_the_kubelet() {
        let manifest = Manifest::parse(SMALL).expect("parse");
        let mut data = data();
        data.config_maps.get_mut("cm").expect("cm").clear();
        let error =
            ContainerRun::from_daemon_set(manifest.daemon_set().expect("one"), "c", "p", &data)
                .expect_err("A is required");
        assert!(
            format!("{error:#}").contains("ConfigMap cm has no key A"),
            "{error:#}"
        );
    }

    #[test]
    fn unknown_fields_and_kinds_do_not_parse() {
        let error = Manifest::parse(&SMALL.replace(
            "      terminationGracePeriodSeconds: 7\n",
            "      hostUsers: true\n",
        ))
        .expect_err("hostUsers is unknown");
        assert!(format!("{error:#}").contains("hostUsers"), "{error:#}");
        let error = Manifest::parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
            .expect_err("a Pod is not part of the deployment");
        assert!(format!("{error:#}").contains("kind Pod"), "{error:#}");
    }

    #[test]
    fn trust_variables_are_recognised_by_name_and_pattern() {
        for name in TRUST_VARIABLES {
            assert!(is_trust_variable(name), "{name}");
        }
        assert!(is_trust_variable("DRIVER_LOADER_EXTRA_KEYS"));
        assert!(is_trust_variable("DRIVER_LOADER_SKIP_PROVENANCE"));
        assert!(!is_trust_variable("DRIVER_LOADER_DRIVER_NAME"));
        assert!(!is_trust_variable("DRIVER_LOADER_TOKEN_FILE"));
    }

    #[test]
    fn paths_within_directories() {
        assert!(within("/etc/a/b", "/etc/a"));
        assert!(within("/etc/a", "/etc/a/"));
        assert!(!within("/etc/ab", "/etc/a"));
    }
}
