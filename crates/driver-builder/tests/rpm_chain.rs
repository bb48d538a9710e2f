//! The RPM distributions' header chain against a loopback Koji hub: a hand-written XML-RPC
//! server following the documented hub methods (`getBuild` by NVR returning a struct or nil,
//! `listRPMs` with `__starstar` keyword arguments, `i8` sizes, faults) and serving files in the
//! topurl layout. The RPM served is a real kernel-devel-shaped package built with the rpm crate
//! and installed with the host's real `rpm --root` into a scratch root.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{LoopbackServer, RpmRootRunner, identity};
use driver_builder::headers::{
    HeaderChain, HeaderContext, HeaderOptions, HeadersError, KojiProfile,
};
use driver_builder::http::UreqHttp;
use driver_builder::system::System;
use driver_builder::xmlrpc::{self, Value};

const FEDORA_RELEASE: &str = "6.14.0-100.fc42.x86_64";
const STREAM_RELEASE: &str = "5.14.0-570.el9.x86_64";
const BUILD_ID: i64 = 2_654_321;

/// A kernel-devel RPM as Fedora lays it out: the kbuild tree under /usr/src/kernels/<release>.
fn kernel_devel_rpm(version: &str, release: &str, arch: &str) -> Vec<u8> {
    let uname = format!("{version}-{release}.{arch}");
    let tree = format!("/usr/src/kernels/{uname}");
    let mut builder = rpm::PackageBuilder::new(
        "kernel-devel",
        version,
        "GPL-2.0-only",
        arch,
        "Development package for building kernel modules to match the kernel",
    );
    builder.release(release);
    builder
        .with_file_contents(
            format!("# kbuild entry point for {uname}\n"),
            rpm::FileOptions::new(format!("{tree}/Makefile")),
        )
        .expect("Makefile");
    builder
        .with_file_contents(
            format!("#define UTS_RELEASE \"{uname}\"\n"),
            rpm::FileOptions::new(format!("{tree}/include/generated/utsrelease.h")),
        )
        .expect("utsrelease.h");
    let package = builder.build().expect("build rpm");
    let mut bytes = Vec::new();
    package.write(&mut bytes).expect("write rpm");
    bytes
}

fn struct_of(pairs: &[(&str, Value)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// One build a fake hub knows.
#[derive(Clone)]
struct FakeBuild {
    version: String,
    release: String,
    volume: String,
    rpm_names: Vec<&'static str>,
}

impl FakeBuild {
    fn nvr(&self) -> String {
        format!("kernel-{}-{}", self.version, self.release)
    }
}

/// Answers like a Koji hub: getBuild(nvr) -> struct | nil, listRPMs(**kwargs) -> [struct].
fn hub_answer(build: Option<&FakeBuild>, body: &str) -> (u16, String) {
    let Ok((method, params)) = xmlrpc::parse_call(body) else {
        return (200, xmlrpc::fault_response(1000, "malformed request"));
    };
    match method.as_str() {
        "getBuild" => {
            let Some(nvr) = params.first().and_then(Value::as_str) else {
                return (200, xmlrpc::fault_response(1000, "invalid buildInfo"));
            };
            let answer = match build.filter(|b| b.nvr() == nvr) {
                None => Value::Nil,
                Some(b) => struct_of(&[
                    ("id", Value::Int(BUILD_ID)),
                    ("build_id", Value::Int(BUILD_ID)),
                    ("name", Value::from("kernel")),
                    ("package_name", Value::from("kernel")),
                    ("version", Value::from(b.version.as_str())),
                    ("release", Value::from(b.release.as_str())),
                    ("nvr", Value::from(nvr)),
                    ("state", Value::Int(1)),
                    ("volume_name", Value::from(b.volume.as_str())),
                    ("extra", Value::Nil),
                    ("completion_ts", Value::Double(1_745_000_000.5)),
                ]),
            };
            (200, xmlrpc::response(&answer))
        }
        "listRPMs" => {
            // Keyword arguments must arrive as Koji's trailing __starstar struct.
            let Some(kwargs) = params
                .last()
                .filter(|p| p.get("__starstar") == Some(&Value::Bool(true)))
            else {
                return (
                    200,
                    xmlrpc::fault_response(1000, "listRPMs: expected keyword arguments"),
                );
            };
            let (Some(build), Some(id)) = (build, kwargs.get("buildID").and_then(Value::as_i64))
            else {
                return (200, xmlrpc::response(&Value::Array(Vec::new())));
            };
            if id != BUILD_ID {
                return (200, xmlrpc::response(&Value::Array(Vec::new())));
            }
            let arches: Vec<&str> = kwargs
                .get("arches")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let rpms = build
                .rpm_names
                .iter()
                .filter(|_| arches.contains(&"x86_64"))
                .map(|name| {
                    struct_of(&[
                        ("name", Value::from(*name)),
                        ("version", Value::from(build.version.as_str())),
                        ("release", Value::from(build.release.as_str())),
                        ("arch", Value::from("x86_64")),
                        ("build_id", Value::Int(BUILD_ID)),
                        // Larger than 32 bits: Koji sends these as <i8>.
                        ("size", Value::Int(5_000_000_000)),
                        ("external_repo_id", Value::Int(0)),
                        ("metadata_only", Value::Bool(false)),
                        ("extra", Value::Nil),
                    ])
                })
                .collect();
            (200, xmlrpc::response(&Value::Array(rpms)))
        }
        other => (
            200,
            xmlrpc::fault_response(1, &format!("Invalid method: {other}")),
        ),
    }
}

/// A hub + topurl on one loopback server.
fn fake_koji(build: Option<FakeBuild>, serve_rpm: bool) -> LoopbackServer {
    let server = LoopbackServer::start();
    if let (Some(b), true) = (&build, serve_rpm) {
        let volume = if b.volume == "DEFAULT" {
            String::new()
        } else {
            format!("/vol/{}", b.volume)
        };
        server.file(
            &format!(
                "/kojifiles{volume}/packages/kernel/{v}/{r}/x86_64/kernel-devel-{v}-{r}.x86_64.rpm",
                v = b.version,
                r = b.release
            ),
            kernel_devel_rpm(&b.version, &b.release, "x86_64"),
        );
    }
    server.on_post(move |path, body| {
        if path != "/kojihub" {
            return (404, String::new());
        }
        hub_answer(build.as_ref(), body)
    });
    server
}

fn profile(name: &str, server: &LoopbackServer) -> KojiProfile {
    KojiProfile::parse(&format!(
        "{name}={},{}",
        server.url("/kojihub"),
        server.url("/kojifiles")
    ))
    .expect("profile")
}

fn resolve(
    release: &str,
    distribution: &str,
    version: &str,
    options: &HeaderOptions,
    root: &Path,
) -> Result<driver_builder::headers::ResolvedHeaders, HeadersError> {
    let identity = identity(release, "x86_64", distribution, version);
    let system = System::new(
        root,
        Box::new(RpmRootRunner {
            root: root.to_path_buf(),
        }),
    );
    let downloads = system.scratch_dir("downloads").expect("scratch");
    let http = UreqHttp::default();
    let chain = HeaderChain::for_identity(&identity, options);
    chain.resolve(&HeaderContext {
        identity: &identity,
        system: &system,
        http: &http,
        downloads: &downloads,
    })
}

fn installed_packages(root: &Path) -> String {
    let output = Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", "/var/lib/rpm", "-qa"])
        .output()
        .expect("rpm -qa");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn fedora_headers_come_from_koji_after_dnf_and_urls() {
    let build = FakeBuild {
        version: "6.14.0".into(),
        release: "100.fc42".into(),
        volume: "DEFAULT".into(),
        rpm_names: vec!["kernel", "kernel-core", "kernel-devel", "kernel-modules"],
    };
    let server = fake_koji(Some(build), true);
    let root = tempfile::tempdir().expect("tempdir");
    let options = HeaderOptions {
        koji_profiles: vec![profile("local-fedora", &server)],
        ..HeaderOptions::default()
    };
    let resolved = resolve(FEDORA_RELEASE, "fedora", "42", &options, root.path())
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        resolved.dir,
        Path::new("/usr/src/kernels/6.14.0-100.fc42.x86_64")
    );
    let outcomes: Vec<String> = resolved
        .attempts
        .iter()
        .map(|a| {
            format!(
                "{} => {}",
                a.source,
                a.failure.as_ref().map_or("ok".into(), |f| f.to_string())
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:#?}");
    assert!(outcomes[0].starts_with("dnf install kernel-devel-6.14.0-100.fc42.x86_64 => failed: `dnf install -y --setopt=keepcache=1 kernel-devel-6.14.0-100.fc42.x86_64`: exit code 127"), "{outcomes:#?}");
    assert_eq!(
        outcomes[1],
        "explicit header URLs (0 given) => skipped: no --header-url given"
    );
    assert!(
        outcomes[2].starts_with("koji profile local-fedora"),
        "{outcomes:#?}"
    );
    assert!(outcomes[2].ends_with("=> ok"), "{outcomes:#?}");
    assert_eq!(
        server.requests(),
        vec![
            "POST /kojihub".to_owned(),
            "POST /kojihub".to_owned(),
            "GET /kojifiles/packages/kernel/6.14.0/100.fc42/x86_64/kernel-devel-6.14.0-100.fc42.x86_64.rpm".to_owned(),
        ]
    );
    assert!(
        installed_packages(root.path()).contains("kernel-devel-6.14.0-100.fc42.x86_64"),
        "rpm must have recorded the install"
    );
    // The build facts: the downloaded file, its Koji URL, its digest, and what rpm says it is.
    let [package] = &resolved.packages[..] else {
        panic!("{:#?}", resolved.packages)
    };
    let file_name = "kernel-devel-6.14.0-100.fc42.x86_64.rpm";
    let downloaded = std::fs::read_dir(root.path().join("tmp"))
        .expect("tmp")
        .flatten()
        .map(|e| e.path().join(file_name))
        .find(|p| p.is_file())
        .expect("the downloaded rpm");
    let sha256sum = Command::new("sha256sum")
        .arg(&downloaded)
        .output()
        .expect("sha256sum");
    let queried = Command::new("rpm")
        .args(["-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE}"])
        .arg(&downloaded)
        .output()
        .expect("rpm -qp");
    assert_eq!(
        format!("{} {}", package.name, package.version),
        String::from_utf8_lossy(&queried.stdout)
    );
    assert_eq!(package.file_name, file_name);
    assert_eq!(
        package.uri.as_deref(),
        Some(
            server
                .url("/kojifiles/packages/kernel/6.14.0/100.fc42/x86_64/kernel-devel-6.14.0-100.fc42.x86_64.rpm")
                .as_str()
        )
    );
    assert_eq!(
        Some(package.sha256.as_str()),
        String::from_utf8_lossy(&sha256sum.stdout)
            .split_whitespace()
            .next()
    );
}

#[test]
fn centos_stream_falls_from_the_first_hub_to_the_second_with_a_volume_path() {
    let build = FakeBuild {
        version: "5.14.0".into(),
        release: "570.el9".into(),
        volume: "kernel_archive".into(),
        rpm_names: vec!["kernel-core", "kernel-devel"],
    };
    let empty_hub = fake_koji(None, false);
    let stream_hub = fake_koji(Some(build), true);
    let root = tempfile::tempdir().expect("tempdir");
    let options = HeaderOptions {
        koji_profiles: vec![profile("cbs", &empty_hub), profile("stream", &stream_hub)],
        ..HeaderOptions::default()
    };
    let resolved = resolve(STREAM_RELEASE, "centos", "stream9", &options, root.path())
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        resolved.dir,
        Path::new("/usr/src/kernels/5.14.0-570.el9.x86_64")
    );
    assert_eq!(resolved.attempts.len(), 4);
    let cbs = resolved.attempts[2].failure.as_ref().expect("cbs failed");
    assert_eq!(
        cbs.to_string(),
        format!(
            "failed: getBuild: no build kernel-5.14.0-570.el9 on {}",
            empty_hub.url("/kojihub")
        )
    );
    assert!(stream_hub.requests().contains(
        &"GET /kojifiles/vol/kernel_archive/packages/kernel/5.14.0/570.el9/x86_64/kernel-devel-5.14.0-570.el9.x86_64.rpm".to_owned()
    ));
}

#[test]
fn every_rpm_failure_path_ends_in_an_error_listing_every_source() {
    let no_devel = FakeBuild {
        version: "6.14.0".into(),
        release: "100.fc42".into(),
        volume: "DEFAULT".into(),
        rpm_names: vec!["kernel-core", "kernel-modules"],
    };
    let listed_but_missing = FakeBuild {
        rpm_names: vec!["kernel-devel"],
        ..no_devel.clone()
    };
    let nil_hub = fake_koji(None, false);
    let no_devel_hub = fake_koji(Some(no_devel), false);
    let missing_file_hub = fake_koji(Some(listed_but_missing), false);
    let faulting = LoopbackServer::start();
    faulting.on_post(|_, _| (200, xmlrpc::fault_response(1000, "Server is read-only")));
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let header_server = LoopbackServer::start();
    let options = HeaderOptions {
        header_urls: vec![header_server.url("/gone/kernel-devel-6.14.0-100.fc42.x86_64.rpm")],
        koji_profiles: vec![
            profile("nil", &nil_hub),
            profile("fault", &faulting),
            profile("nodevel", &no_devel_hub),
            profile("nofile", &missing_file_hub),
            KojiProfile::parse(&format!(
                "dead=http://127.0.0.1:{dead_port}/kojihub,http://127.0.0.1:{dead_port}/kojifiles"
            ))
            .expect("profile"),
        ],
        ..HeaderOptions::default()
    };
    let root = tempfile::tempdir().expect("tempdir");
    let error = resolve(FEDORA_RELEASE, "fedora", "42", &options, root.path())
        .expect_err("nothing provides the headers");
    let text = error.to_string();
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "no kernel headers for 6.14.0-100.fc42.x86_64: all 7 header sources failed"
    );
    let expectations = [
        "1. dnf install kernel-devel-6.14.0-100.fc42.x86_64: failed: `dnf install -y --setopt=keepcache=1 kernel-devel-6.14.0-100.fc42.x86_64`: exit code 127: dnf: command not found in this test root; `dnf install -y --setopt=keepcache=1 kernel-devel-uname-r = 6.14.0-100.fc42.x86_64`: exit code 127",
        "2. explicit header URLs (1 given): failed: download ",
        "3. koji profile nil (",
        "4. koji profile fault (",
        "5. koji profile nodevel (",
        "6. koji profile nofile (",
        "7. koji profile dead (",
    ];
    for (line, expected) in lines[1..].iter().zip(expectations) {
        assert!(
            line.trim_start().starts_with(expected),
            "{line:?} vs {expected:?}"
        );
    }
    assert!(lines[2].contains("HTTP status 404"), "{}", lines[2]);
    assert!(
        lines[3].contains("getBuild: no build kernel-6.14.0-100.fc42"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].contains("XML-RPC fault 1000: Server is read-only"),
        "{}",
        lines[4]
    );
    assert!(
        lines[5].contains("has no kernel-devel for x86_64 (RPMs: kernel-core, kernel-modules)"),
        "{}",
        lines[5]
    );
    assert!(lines[6].contains("HTTP status 404"), "{}", lines[6]);
    assert!(lines[7].contains("getBuild: "), "{}", lines[7]);
    assert_eq!(lines.len(), 8);
}

#[test]
fn amazon_linux_tries_dnf_then_the_livepatch_package_then_urls() {
    let root = tempfile::tempdir().expect("tempdir");
    let error = resolve(
        "6.1.186-228.376.amzn2023.x86_64",
        "amazonlinux",
        "2023",
        &HeaderOptions::default(),
        root.path(),
    )
    .expect_err("no dnf here");
    let text = error.to_string();
    assert!(
        text.contains("1. dnf install kernel-devel-6.1.186-228.376.amzn2023.x86_64: failed"),
        "{text}"
    );
    assert!(
        text.contains(
            "2. dnf install kernel-livepatch-6.1.186-228.376 (kernel-livepatch repository): failed: \
             `dnf install -y --setopt=keepcache=1 --enablerepo=kernel-livepatch kernel-livepatch-6.1.186-228.376 kernel-devel-uname-r = 6.1.186-228.376.amzn2023.x86_64`"
        ),
        "{text}"
    );
    assert!(
        text.contains("3. explicit header URLs (0 given): skipped: no --header-url given"),
        "{text}"
    );
}
