//! The Kubernetes manifest asks for no more than the loader needs: every document of
//! `deploy/kubernetes/daemonset.yaml` parses into `testkit::deploy`'s strict types and
//! `policy_violations` finds nothing — not privileged, capabilities exactly drop ALL / add SYS_MODULE,
//! no privilege escalation, read-only root, RuntimeDefault seccomp, no envFrom, every trust variable
//! from the trust Secret or a literal, the trusted keys from a Secret volume, hostPath mounts exactly
//! the documented three (read-only but the cache), no host namespaces.
//!
//! Each rule is shown to bite: the real manifest, changed in one place, is refused with that rule's
//! message (or does not parse, for fields the check has never reviewed).

use testkit::deploy::{
    ALLOWED_CAPABILITIES, DAEMONSET_PATH, HOST_PATHS, Manifest, TRUST_SECRET, TRUSTED_KEYS_DIR,
    policy_violations,
};

fn manifest_text() -> String {
    let path = testkit::workspace_root().join(DAEMONSET_PATH);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `text` with `needle` replaced once; the needle must be there, or the mutation would test nothing.
fn mutate(text: &str, needle: &str, replacement: &str) -> String {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "the mutation's anchor {needle:?} must occur exactly once in {DAEMONSET_PATH}"
    );
    text.replacen(needle, replacement, 1)
}

#[test]
fn the_daemonset_asks_for_no_more_than_the_loader_needs() {
    let manifest = Manifest::load().expect("every document parses strictly");
    let violations = policy_violations(&manifest);
    assert!(violations.is_empty(), "{violations:#?}");

    // The facts the policy rests on, spelled out against the parsed manifest.
    let daemon_set = manifest.daemon_set().expect("one DaemonSet");
    let pod = &daemon_set.spec.template.spec;
    assert_eq!(pod.containers.len(), 1, "one container");
    let container = &pod.containers[0];
    let context = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(context.privileged, Some(false));
    assert_eq!(context.allow_privilege_escalation, Some(false));
    assert_eq!(context.read_only_root_filesystem, Some(true));
    assert_eq!(context.run_as_user, Some(0));
    assert_eq!(context.run_as_non_root, Some(false));
    let capabilities = context.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop, ["ALL"]);
    assert_eq!(capabilities.add, ALLOWED_CAPABILITIES);
    assert_eq!(
        context
            .seccomp_profile
            .as_ref()
            .map(|p| p.profile_type.as_str()),
        Some("RuntimeDefault")
    );
    assert!(container.env_from.is_none());
    for flag in [pod.host_pid, pod.host_ipc, pod.host_network] {
        assert_ne!(flag, Some(true));
    }

    let host_paths: Vec<(&str, &str, bool)> = pod
        .volumes
        .iter()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.as_str(), h.path.as_str()))
        })
        .map(|(name, path)| {
            let mount = container
                .volume_mounts
                .iter()
                .find(|m| m.name == name)
                .expect("mounted");
            (
                path,
                mount.mount_path.as_str(),
                mount.read_only == Some(true),
            )
        })
        .collect();
    let documented: Vec<(&str, &str, bool)> = HOST_PATHS
        .iter()
        .map(|h| (h.path, h.mount_path, h.read_only))
        .collect();
    assert_eq!(host_paths, documented);

    let keys = container
        .volume_mounts
        .iter()
        .find(|m| m.mount_path == TRUSTED_KEYS_DIR)
        .expect("the trusted keys are mounted (the Secret variant)");
    assert_eq!(keys.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .find(|v| v.name == keys.name)
        .expect("volume");
    assert_eq!(
        volume.secret.as_ref().map(|s| s.secret_name.as_str()),
        Some(TRUST_SECRET)
    );
    let secret = manifest.secret(TRUST_SECRET).expect("the trust Secret");
    assert!(
        secret.keys().iter().any(|k| k.ends_with(".pub")),
        "{:?}",
        secret.keys()
    );
}

#[test]
fn the_baked_keys_variant_passes_too() {
    // The documented alternative: no trusted-keys volume, the image's own directory.
    let text = manifest_text();
    let text = mutate(
        &text,
        "            - name: trusted-keys\n              mountPath: /etc/driver-loader/trusted-keys\n              readOnly: true\n",
        "",
    );
    let text = mutate(
        &text,
        "        - name: trusted-keys\n          secret:\n            secretName: driver-loader-trust\n            defaultMode: 0444\n",
        "",
    );
    let manifest = Manifest::parse(&text).expect("parses");
    let violations = policy_violations(&manifest);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// One change to the real manifest and the message it must be refused with.
struct Fault {
    what: &'static str,
    needle: &'static str,
    replacement: &'static str,
    expect: &'static str,
}

const FAULTS: &[Fault] = &[
    Fault {
        what: "privileged",
        needle: "            privileged: false\n",
        replacement: "            privileged: true\n",
        expect: "privileged",
    },
    Fault {
        what: "privilege escalation allowed",
        needle: "allowPrivilegeEscalation: false",
        replacement: "allowPrivilegeEscalation: true",
        expect: "allowPrivilegeEscalation must be false",
    },
    Fault {
        what: "privilege escalation left to the default",
        needle: "            allowPrivilegeEscalation: false\n",
        replacement: "",
        expect: "allowPrivilegeEscalation must be false",
    },
    Fault {
        what: "writable root",
        needle: "readOnlyRootFilesystem: true",
        replacement: "readOnlyRootFilesystem: false",
        expect: "readOnlyRootFilesystem must be true",
    },
    Fault {
        what: "another capability",
        needle: "add: [\"SYS_MODULE\"]",
        replacement: "add: [\"SYS_MODULE\", \"SYS_ADMIN\"]",
        expect: "capabilities.add must be exactly",
    },
    Fault {
        what: "another capability with the CAP_ prefix",
        needle: "add: [\"SYS_MODULE\"]",
        replacement: "add: [\"SYS_MODULE\", \"CAP_DAC_OVERRIDE\"]",
        expect: "capabilities.add must be exactly",
    },
    Fault {
        what: "no SYS_MODULE",
        needle: "add: [\"SYS_MODULE\"]",
        replacement: "add: []",
        expect: "capabilities.add must be exactly",
    },
    Fault {
        what: "default capabilities kept",
        needle: "drop: [\"ALL\"]",
        replacement: "drop: [\"NET_RAW\"]",
        expect: "capabilities.drop must be exactly [ALL]",
    },
    Fault {
        what: "seccomp off",
        needle: "              type: RuntimeDefault\n",
        replacement: "              type: Unconfined\n",
        expect: "seccompProfile type Unconfined",
    },
    Fault {
        what: "non-root user the loader cannot load as",
        needle: "runAsUser: 0",
        replacement: "runAsUser: 1000",
        expect: "runAsUser must be 0",
    },
    Fault {
        what: "envFrom the ConfigMap",
        needle: "          # Key by key, never envFrom: a key added to the ConfigMap reaches nothing.\n",
        replacement: "          envFrom:\n            - configMapRef:\n                name: driver-loader\n",
        expect: "envFrom imports every key",
    },
    Fault {
        what: "a trust variable from the ConfigMap",
        needle: "                secretKeyRef:\n                  name: driver-loader-trust\n                  key: allowed-builders\n",
        replacement: "                configMapKeyRef:\n                  name: driver-loader\n                  key: DRIVER_LOADER_DRIVER_NAME\n",
        expect: "trust variable DRIVER_LOADER_ALLOWED_BUILDERS comes from a ConfigMap",
    },
    Fault {
        what: "a key-like variable from the ConfigMap",
        needle: "            - name: DRIVER_LOADER_LOG_FORMAT\n",
        replacement: "            - name: DRIVER_LOADER_EXTRA_PUBLIC_KEY\n",
        expect: "trust variable DRIVER_LOADER_EXTRA_PUBLIC_KEY comes from a ConfigMap",
    },
    Fault {
        what: "the skip switch",
        needle: "            - name: DRIVER_LOADER_MODE\n",
        replacement: "            - name: DRIVER_LOADER_INSECURE_SKIP_SIGNATURE\n              value: \"true\"\n            - name: DRIVER_LOADER_MODE\n",
        expect: "DRIVER_LOADER_INSECURE_SKIP_SIGNATURE may only be absent",
    },
    Fault {
        what: "a public key in the ConfigMap",
        needle: "  DRIVER_LOADER_LOG_FORMAT: json\n",
        replacement: "  DRIVER_LOADER_LOG_FORMAT: json\n  minisign.pub: RWQ\n",
        expect: "key minisign.pub is trust configuration",
    },
    Fault {
        what: "the skip switch in the ConfigMap",
        needle: "  DRIVER_LOADER_LOG_FORMAT: json\n",
        replacement: "  DRIVER_LOADER_LOG_FORMAT: json\n  DRIVER_LOADER_INSECURE_SKIP_SIGNATURE: \"true\"\n",
        expect: "key DRIVER_LOADER_INSECURE_SKIP_SIGNATURE is trust configuration",
    },
    Fault {
        what: "the expected repository optional",
        needle: "                  key: expected-source-repository\n",
        replacement: "                  key: expected-source-repository\n                  optional: true\n",
        expect: "DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY must come from the Secret",
    },
    Fault {
        what: "the keys directory moved",
        needle: "              value: /etc/driver-loader/trusted-keys\n",
        replacement: "              value: /var/cache/driver-loader/keys\n",
        expect: "DRIVER_LOADER_TRUSTED_KEYS_DIR must be the literal",
    },
    Fault {
        what: "a trust option on the command line",
        needle: "args: [\"run\", \"--keep-running\", \"--prefetch\"]",
        replacement: "args: [\"run\", \"--keep-running\", \"--prefetch\", \"--insecure-skip-signature\"]",
        expect: "sets trust option --insecure-skip-signature",
    },
    Fault {
        what: "a ConfigMap value expanded into the command line",
        needle: "args: [\"run\", \"--keep-running\", \"--prefetch\"]",
        replacement: "args: [\"run\", \"--keep-running\", \"--prefetch\", \"$(DRIVER_LOADER_LOG_FORMAT)\"]",
        expect: "expands a variable",
    },
    Fault {
        what: "the trusted keys from a ConfigMap volume",
        needle: "          secret:\n            secretName: driver-loader-trust\n            defaultMode: 0444\n",
        replacement: "          configMap:\n            name: driver-loader\n",
        expect: "is mounted over the trusted keys at /etc/driver-loader/trusted-keys but is not the Secret",
    },
    Fault {
        what: "the trusted keys writable",
        needle: "              mountPath: /etc/driver-loader/trusted-keys\n              readOnly: true\n",
        replacement: "              mountPath: /etc/driver-loader/trusted-keys\n",
        expect: "the trusted keys mount /etc/driver-loader/trusted-keys must be readOnly",
    },
    Fault {
        what: "a ConfigMap mounted above the trusted keys",
        needle: "            - name: run\n              mountPath: /run/driver-loader\n",
        replacement: "            - name: run\n              mountPath: /etc/driver-loader\n",
        expect: "volume run is mounted over the trusted keys",
    },
    Fault {
        what: "another hostPath",
        needle: "      volumes:\n",
        replacement: "      volumes:\n        - name: host-root\n          hostPath:\n            path: /\n            type: Directory\n",
        expect: "hostPath / is not one of the documented host paths",
    },
    Fault {
        what: "the modules tree writable",
        needle: "              mountPath: /lib/modules\n              readOnly: true\n",
        replacement: "              mountPath: /lib/modules\n",
        expect: "hostPath /lib/modules must be mounted readOnly",
    },
    Fault {
        what: "os-release mounted elsewhere",
        needle: "              mountPath: /host/etc/os-release\n",
        replacement: "              mountPath: /etc/os-release\n",
        expect: "hostPath /etc/os-release must be mounted at /host/etc/os-release",
    },
    Fault {
        what: "a hostPath of the wrong type",
        needle: "            type: DirectoryOrCreate\n",
        replacement: "            type: \"\"\n",
        expect: "hostPath /var/cache/driver-loader must have type DirectoryOrCreate",
    },
    Fault {
        what: "host PID namespace",
        needle: "      hostPID: false\n",
        replacement: "      hostPID: true\n",
        expect: "hostPID is true",
    },
    Fault {
        what: "host network",
        needle: "      hostNetwork: false\n",
        replacement: "      hostNetwork: true\n",
        expect: "hostNetwork is true",
    },
    Fault {
        what: "host IPC namespace",
        needle: "      hostIPC: false\n",
        replacement: "      hostIPC: true\n",
        expect: "hostIPC is true",
    },
    Fault {
        what: "service links",
        needle: "      enableServiceLinks: false\n",
        replacement: "      enableServiceLinks: true\n",
        expect: "enableServiceLinks must be false",
    },
    Fault {
        what: "a service account token",
        needle: "      automountServiceAccountToken: false\n",
        replacement: "",
        expect: "automountServiceAccountToken must be false",
    },
];

#[test]
fn every_rule_refuses_its_fault() {
    let text = manifest_text();
    for fault in FAULTS {
        let mutated = mutate(&text, fault.needle, fault.replacement);
        let manifest = Manifest::parse(&mutated).unwrap_or_else(|e| {
            panic!(
                "{}: the mutated manifest must still parse: {e:#}",
                fault.what
            )
        });
        let violations = policy_violations(&manifest);
        assert!(
            violations.iter().any(|v| v.contains(fault.expect)),
            "{}: expected a violation containing {:?}, got {violations:#?}",
            fault.what,
            fault.expect
        );
    }
}

#[test]
fn fields_the_check_never_reviewed_are_refused() {
    let text = manifest_text();
    for (what, needle, replacement) in [
        (
            "an init container",
            "      containers:\n",
            "      initContainers:\n        - name: setup\n          image: busybox\n          securityContext:\n            privileged: true\n      containers:\n",
        ),
        (
            "host user namespace",
            "      hostPID: false\n",
            "      hostPID: false\n      hostUsers: false\n",
        ),
        (
            "a device volume",
            "      volumes:\n",
            "      volumes:\n        - name: dev\n          csi:\n            driver: x\n",
        ),
        (
            "an SELinux override",
            "            privileged: false\n",
            "            privileged: false\n            seLinuxOptions:\n              type: spc_t\n",
        ),
        (
            "an unmasked /proc",
            "            privileged: false\n",
            "            privileged: false\n            procMount: Unmasked\n",
        ),
        (
            "a second workload",
            "apiVersion: apps/v1\nkind: DaemonSet\n",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\n---\napiVersion: apps/v1\nkind: DaemonSet\n",
        ),
    ] {
        let mutated = mutate(&text, needle, replacement);
        assert!(
            Manifest::parse(&mutated).is_err(),
            "{what}: a field or kind the check does not know must not parse"
        );
    }
}
