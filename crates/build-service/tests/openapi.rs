//! The OpenAPI document against the build API's types (crate `build-api`) and against what the
//! service really sends, so neither can drift from the other:
//!
//! - every schema component belongs to one type, and a fully populated example of the type (every
//!   optional value set) writes exactly the component's properties, while a minimal one (every
//!   optional value unset) writes exactly its `required` keys; both examples validate;
//! - every JSON answer and the request body of each route names the component of the type the
//!   service uses there;
//! - the service's real answers (a build dispatched, polled, done and hit again; refusals; health)
//!   validate against the schema the document gives for their route and status code;
//! - the request's `architecture` and `distribution` enums are the values kernel-id accepts.
//!
//! Validation is a small checker of exactly the JSON Schema subset the document uses; a keyword it
//! does not know is an error, not silently skipped. It treats every object schema as closed: a key
//! the schema does not list is an error, so an undocumented field cannot slip into an answer.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use build_api::{
    ApiErrorBody, ArtifactOrigin, ArtifactStatus, BackendHealth, BuildAccepted, BuildDone,
    BuildList, BuildListing, BuildRequest, BuildState, BuildStatus, Check, DriverView, FamilyView,
    FleetView, Health, HealthState, KernelView, NodeReport, RequestOutcome, Requester, RunOutcome,
    RunTimings,
};
use build_api::{PrebuildOutcome, WatchBytes, WatchFamily, WatchPass, WatchPrebuild};
use common::{Env, Mode, TestExecutor, bookworm, client, post_build, wait_until_ended};
use kernel_id::{Arch, Distribution};
use serde::Serialize;
use serde_json::{Value, json};

fn document() -> Value {
    serde_json::from_str(build_service::api::OPENAPI).expect("openapi.json is JSON")
}

fn component<'a>(document: &'a Value, name: &str) -> &'a Value {
    document["components"]["schemas"]
        .get(name)
        .unwrap_or_else(|| panic!("no schema component {name}"))
}

/// Follows a `$ref` (only local component references are used).
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
            resolve(document, component(document, name))
        }
        None => schema,
    }
}

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "examples", "title"];

/// Every way `value` breaks `schema`, each naming the JSON path.
fn violations(document: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some(keywords) = schema.as_object() else {
        return vec![format!("{at}: the schema is not an object: {schema}")];
    };
    for (keyword, argument) in keywords {
        match keyword.as_str() {
            "$ref" => found.extend(violations(document, resolve(document, schema), value, at)),
            "type" => {
                let allowed: Vec<&str> = match argument {
                    Value::String(one) => vec![one.as_str()],
                    Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                    other => panic!("{at}: type {other}"),
                };
                if !allowed.iter().any(|kind| is_of_type(value, kind)) {
                    found.push(format!("{at}: {value} is not of type {allowed:?}"));
                }
            }
            "const" if value != argument => {
                found.push(format!("{at}: {value} is not the constant {argument}"));
            }
            "enum" if !argument.as_array().unwrap().contains(value) => {
                found.push(format!("{at}: {value} is not one of {argument}"));
            }
            "const" | "enum" => {}
            "required" => {
                for key in argument.as_array().unwrap() {
                    let key = key.as_str().unwrap();
                    if value.is_object() && value.get(key).is_none() {
                        found.push(format!("{at}: required key {key} is missing"));
                    }
                }
            }
            "properties" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                let properties = argument.as_object().unwrap();
                for (key, item) in object {
                    match properties.get(key) {
                        Some(property) => found.extend(violations(
                            document,
                            property,
                            item,
                            &format!("{at}.{key}"),
                        )),
                        None => found.push(format!("{at}: key {key} is not documented")),
                    }
                }
            }
            "additionalProperties" => assert_eq!(argument, &json!(false), "{at}"),
            "oneOf" => {
                let matching = argument
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|branch| violations(document, branch, value, at).is_empty())
                    .count();
                if matching != 1 {
                    found.push(format!("{at}: {value} matches {matching} of oneOf"));
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (index, item) in items.iter().enumerate() {
                        found.extend(violations(
                            document,
                            argument,
                            item,
                            &format!("{at}[{index}]"),
                        ));
                    }
                }
            }
            "maximum" => {
                if value
                    .as_f64()
                    .is_some_and(|number| number > argument.as_f64().unwrap())
                {
                    found.push(format!("{at}: {value} is above {argument}"));
                }
            }
            "minimum" => {
                if value
                    .as_f64()
                    .is_some_and(|number| number < argument.as_f64().unwrap())
                {
                    found.push(format!("{at}: {value} is below {argument}"));
                }
            }
            "minLength" | "maxLength" => {
                let bound = argument.as_u64().unwrap();
                if let Some(text) = value.as_str() {
                    let length = text.chars().count() as u64;
                    if (keyword == "minLength" && length < bound)
                        || (keyword == "maxLength" && length > bound)
                    {
                        found.push(format!("{at}: {text:?} breaks {keyword} {bound}"));
                    }
                }
            }
            "maxItems" => {
                if value
                    .as_array()
                    .is_some_and(|items| items.len() as u64 > argument.as_u64().unwrap())
                {
                    found.push(format!("{at}: more than {argument} items"));
                }
            }
            "format" => {
                if let Some(text) = value.as_str()
                    && !has_format(text, argument.as_str().unwrap())
                {
                    found.push(format!("{at}: {text:?} is not a {argument}"));
                }
            }
            "pattern" => {
                if let Some(text) = value.as_str()
                    && !matches_pattern(text, argument.as_str().unwrap())
                {
                    found.push(format!("{at}: {text:?} does not match {argument}"));
                }
            }
            annotation if ANNOTATIONS.contains(&annotation) => {}
            unknown => panic!("{at}: the checker does not know the keyword {unknown}"),
        }
    }
    found
}

fn is_of_type(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}

fn has_format(text: &str, format: &str) -> bool {
    match format {
        "uuid" => uuid::Uuid::parse_str(text).is_ok(),
        "uri" => url::Url::parse(text).is_ok(),
        "date-time" => {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .is_ok()
        }
        other => panic!("the checker does not know the format {other}"),
    }
}

/// The one pattern shape the document uses: `^[class]+$` (ranges and single characters; a `-`
/// last is itself).
fn matches_pattern(text: &str, pattern: &str) -> bool {
    let class: Vec<char> = pattern
        .strip_prefix("^[")
        .and_then(|rest| rest.strip_suffix("]+$"))
        .unwrap_or_else(|| panic!("the checker does not know the pattern {pattern}"))
        .chars()
        .collect();
    let mut allowed: Vec<(char, char)> = Vec::new();
    let mut index = 0;
    while index < class.len() {
        if index + 2 < class.len() && class[index + 1] == '-' {
            allowed.push((class[index], class[index + 2]));
            index += 3;
        } else {
            allowed.push((class[index], class[index]));
            index += 1;
        }
    }
    !text.is_empty()
        && text.chars().all(|c| {
            allowed
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&c))
        })
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|object| object.keys().cloned().collect())
        .unwrap_or_default()
}

fn schema_keys(schema: &Value, keyword: &str) -> BTreeSet<String> {
    match &schema[keyword] {
        Value::Object(object) => object.keys().cloned().collect(),
        Value::Array(array) => array
            .iter()
            .map(|key| key.as_str().unwrap().to_owned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// A type's examples: every optional value set, and every optional value unset.
struct Examples {
    component: &'static str,
    full: Vec<Value>,
    minimal: Value,
}

fn examples<T: Serialize>(component: &'static str, full: &[T], minimal: &T) -> Examples {
    Examples {
        component,
        full: full
            .iter()
            .map(|example| serde_json::to_value(example).unwrap())
            .collect(),
        minimal: serde_json::to_value(minimal).unwrap(),
    }
}

const BUILD_ID: &str = "0b6f1c9e-3a5d-4e8f-9a7b-2c1d0e9f8a7b";
const AT: &str = "2026-01-02T03:04:05.678Z";
const URL: &str = "https://github.com/o/r/releases/download/t/p.deb";

fn request(distro_version: Option<&str>) -> BuildRequest {
    BuildRequest {
        architecture: "x86_64".to_owned(),
        distribution: "debian".to_owned(),
        distro_version: distro_version.map(str::to_owned),
        driver_version: "v0.1.2".to_owned(),
        kernel_version: "6.1.0-47-amd64".to_owned(),
    }
}

fn status(set: bool) -> BuildStatus {
    let some = |text: &str| set.then(|| text.to_owned());
    BuildStatus {
        build_id: BUILD_ID.to_owned(),
        cache_key: "debian/12/x86_64/6.1.0-47-amd64/v0.1.2".to_owned(),
        created_at: AT.to_owned(),
        deadline_at: AT.to_owned(),
        dispatch_attempts: 1,
        download_url: some(URL),
        driver_name: "example-driver".to_owned(),
        error: some("kbuild failed"),
        finished_at: some(AT),
        log_url: some("https://github.com/o/r/actions/runs/1"),
        request: request(Some("12")),
        run_id: some("1"),
        run_url: some("https://github.com/o/r/actions/runs/1"),
        source_commit: some("0123456789abcdef0123456789abcdef01234567"),
        started_at: some(AT),
        status: BuildState::Done,
        updated_at: AT.to_owned(),
    }
}

fn report(set: bool) -> NodeReport {
    NodeReport {
        architecture: "x86_64".to_owned(),
        artifact_origin: set.then_some(ArtifactOrigin::Build),
        distribution: "debian".to_owned(),
        distro_version: "12".to_owned(),
        driver_name: "example-driver".to_owned(),
        driver_version: "v0.1.2".to_owned(),
        exit_code: if set { 0 } else { 1 },
        kernel_version: "6.1.0-47-amd64".to_owned(),
        node_id: "0a".repeat(32),
        outcome: if set {
            RunOutcome::Loaded
        } else {
            RunOutcome::Failed
        },
        pending_kernels: if set {
            vec!["6.1.0-48-amd64".to_owned()]
        } else {
            Vec::new()
        },
        timings: timings(set),
    }
}

fn timings(set: bool) -> RunTimings {
    RunTimings {
        build_wait_ms: set.then_some(90_000),
        fetch_ms: 95_000,
        total_ms: 96_000,
    }
}

fn driver_view(set: bool, artifact: ArtifactStatus) -> DriverView {
    DriverView {
        artifact,
        build_id: set.then(|| BUILD_ID.to_owned()),
        driver_version: "v0.1.2".to_owned(),
        first_boot_wait_ms_max: set.then_some(90_000),
        first_boot_waits: u64::from(set),
        nodes_failed: 0,
        nodes_loaded: 3,
        nodes_refused: 1,
    }
}

fn kernel_view(set: bool) -> KernelView {
    KernelView {
        drivers: if set {
            [
                ArtifactStatus::Published,
                ArtifactStatus::Building,
                ArtifactStatus::Failed,
                ArtifactStatus::None,
            ]
            .map(|status| driver_view(true, status))
            .to_vec()
        } else {
            Vec::new()
        },
        kernel_version: "6.1.0-48-amd64".to_owned(),
        nodes_pending: 2,
        nodes_running: 0,
        upcoming: set,
    }
}

fn family_view(set: bool) -> FamilyView {
    FamilyView {
        architecture: "x86_64".to_owned(),
        distribution: "debian".to_owned(),
        distro_version: "12".to_owned(),
        family: "debian/12/x86_64/6.1/amd64".to_owned(),
        flavor: "amd64".to_owned(),
        kernels: if set {
            vec![kernel_view(true)]
        } else {
            Vec::new()
        },
        nodes: 2,
        series: "6.1".to_owned(),
    }
}

fn fleet_view(set: bool) -> FleetView {
    FleetView {
        families: if set {
            vec![family_view(true)]
        } else {
            Vec::new()
        },
        first_boot_waits: 1,
        generated_at: AT.to_owned(),
        nodes: 2,
        nodes_without_driver: 0,
    }
}

/// One entry per schema component: the type it documents.
fn every_type() -> Vec<Examples> {
    let failed = Check::Failed("connection refused".to_owned());
    let health = |store: Check, backend: Check| Health {
        backend: BackendHealth {
            name: "local".to_owned(),
            status: backend,
        },
        status: HealthState::Degraded,
        store,
    };
    let statuses: Vec<BuildStatus> = BuildState::ALL
        .into_iter()
        .map(|state| BuildStatus {
            status: state,
            ..status(true)
        })
        .collect();
    let requester = |outcome: RequestOutcome| Requester {
        client: "192.0.2.7".to_owned(),
        first_at: AT.to_owned(),
        last_at: AT.to_owned(),
        outcome,
        principal: "fleet-eu".to_owned(),
        requests: 3,
    };
    let listing = |set: bool| BuildListing {
        build: status(set),
        requested_by: set.then(|| "fleet-eu".to_owned()),
        requesters: if set {
            RequestOutcome::ALL.into_iter().map(requester).collect()
        } else {
            Vec::new()
        },
    };
    vec![
        examples(
            "NodeReport",
            &[
                report(true),
                NodeReport {
                    artifact_origin: Some(ArtifactOrigin::Cache),
                    timings: RunTimings {
                        build_wait_ms: None,
                        ..timings(true)
                    },
                    ..report(true)
                },
                NodeReport {
                    artifact_origin: Some(ArtifactOrigin::Store),
                    ..report(false)
                },
                NodeReport {
                    exit_code: 6,
                    outcome: RunOutcome::Refused,
                    ..report(false)
                },
            ],
            &report(false),
        ),
        examples("RunTimings", &[timings(true)], &timings(false)),
        examples(
            "DriverView",
            &[driver_view(true, ArtifactStatus::Published)],
            &driver_view(false, ArtifactStatus::None),
        ),
        examples("KernelView", &[kernel_view(true)], &kernel_view(false)),
        examples("FamilyView", &[family_view(true)], &family_view(false)),
        examples("FleetView", &[fleet_view(true)], &fleet_view(false)),
        examples(
            "Requester",
            &RequestOutcome::ALL.map(requester),
            &requester(RequestOutcome::Created),
        ),
        examples("BuildListing", &[listing(true)], &listing(false)),
        examples(
            "BuildList",
            &[BuildList {
                builds: vec![listing(true), listing(false)],
            }],
            &BuildList { builds: Vec::new() },
        ),
        examples("BuildRequest", &[request(Some("12"))], &request(None)),
        examples("Done", &[BuildDone::new(URL)], &BuildDone::new(URL)),
        examples(
            "Dispatched",
            &[BuildAccepted::new(BUILD_ID)],
            &BuildAccepted::new(BUILD_ID),
        ),
        examples("Status", &statuses, &status(false)),
        examples(
            "Health",
            &[
                health(failed.clone(), Check::Ok),
                health(Check::Ok, failed.clone()),
            ],
            &health(Check::Ok, Check::Ok),
        ),
        examples(
            "BackendHealth",
            &[BackendHealth {
                name: "github".to_owned(),
                status: failed.clone(),
            }],
            &BackendHealth {
                name: "github".to_owned(),
                status: Check::Ok,
            },
        ),
        examples("Check", &[Check::Ok, failed], &Check::Ok),
        examples("WatchBytes", &[watch_bytes()], &WatchBytes::default()),
        examples("WatchFamily", &[watch_family(true)], &watch_family(false)),
        examples(
            "WatchPrebuild",
            &[
                PrebuildOutcome::Created,
                PrebuildOutcome::Joined,
                PrebuildOutcome::Published,
                PrebuildOutcome::Accepted,
                PrebuildOutcome::Refused,
            ]
            .map(|outcome| watch_prebuild(outcome, true)),
            &watch_prebuild(PrebuildOutcome::Created, false),
        ),
        examples(
            "WatchPass",
            &[WatchPass {
                bytes: watch_bytes(),
                duration_ms: 1_312,
                errors: vec![
                    "http://deb.debian.org/debian/dists/bookworm-backports/InRelease: not found (404)"
                        .to_owned(),
                ],
                families: vec![watch_family(true), watch_family(false)],
                indexes_checked: 4,
                indexes_unchanged: 3,
                new_index_to_prebuild_ms: Some(40),
                prebuilds: vec![watch_prebuild(PrebuildOutcome::Created, true)],
            }],
            &WatchPass {
                bytes: WatchBytes::default(),
                duration_ms: 0,
                errors: Vec::new(),
                families: Vec::new(),
                indexes_checked: 0,
                indexes_unchanged: 0,
                new_index_to_prebuild_ms: None,
                prebuilds: Vec::new(),
            },
        ),
        examples(
            "Error",
            &[ApiErrorBody {
                error: "kernel_version: must not be empty".to_owned(),
                field: Some("kernel_version".to_owned()),
                rule: "must not be empty".to_owned(),
            }],
            &ApiErrorBody {
                error: "artifact store unavailable".to_owned(),
                field: None,
                rule: "artifact store unavailable; retry".to_owned(),
            },
        ),
    ]
}

fn watch_bytes() -> WatchBytes {
    WatchBytes {
        inrelease: 300_680,
        packages: 9_483_360,
        primary: 12_586,
        repomd: 3_004,
    }
}

fn watch_family(set: bool) -> WatchFamily {
    WatchFamily {
        family: "debian/12/x86_64/6.1/amd64".to_owned(),
        kernels_found: 12,
        newest: set.then(|| "6.1.0-57-amd64".to_owned()),
        prebuild: set.then(|| "6.1.0-57-amd64".to_owned()),
    }
}

fn watch_prebuild(outcome: PrebuildOutcome, set: bool) -> WatchPrebuild {
    WatchPrebuild {
        build_id: set.then(|| BUILD_ID.to_owned()),
        download_url: set.then(|| URL.to_owned()),
        error: set.then(|| "too many builds in flight".to_owned()),
        family: "debian/12/x86_64/6.1/amd64".to_owned(),
        outcome,
        request: request(Some("12")),
    }
}

#[test]
fn every_schema_component_matches_its_type_both_ways() {
    let document = document();
    let types = every_type();
    let documented = schema_keys(&document["components"], "schemas");
    let covered: BTreeSet<String> = types.iter().map(|t| t.component.to_owned()).collect();
    assert_eq!(
        documented, covered,
        "every schema component must be the schema of one build-api type"
    );
    for examples in &types {
        let schema = component(&document, examples.component);
        for example in examples.full.iter().chain([&examples.minimal]) {
            let found = violations(&document, schema, example, examples.component);
            assert!(found.is_empty(), "{example}:\n{}", found.join("\n"));
        }
        if let Some(branches) = schema["oneOf"].as_array() {
            // Each documented alternative is one the type writes.
            for (index, branch) in branches.iter().enumerate() {
                assert!(
                    examples
                        .full
                        .iter()
                        .any(|example| violations(&document, branch, example, "").is_empty()),
                    "{}: no value of the type is oneOf[{index}]",
                    examples.component
                );
            }
            continue;
        }
        let properties = schema_keys(schema, "properties");
        for example in &examples.full {
            assert_eq!(
                keys(example),
                properties,
                "{}: documented properties vs the fields the type writes",
                examples.component
            );
        }
        assert_eq!(
            schema_keys(schema, "required"),
            keys(&examples.minimal),
            "{}: required vs the keys the type always writes",
            examples.component
        );
    }
}

/// The component each JSON body of each route must name.
fn expected_component(path: &str, method: &str, code: &str) -> &'static str {
    match (path, method, code) {
        ("/build", "post", "request") => "BuildRequest",
        ("/build", "post", "200") => "Done",
        ("/build", "post", "202") => "Dispatched",
        ("/status/{build_id}", "get", "200") => "Status",
        ("/healthz", "get", "200" | "503") => "Health",
        ("/builds", "get", "200") => "BuildList",
        ("/report", "post", "request") => "NodeReport",
        ("/fleet", "get", "200") => "FleetView",
        ("/watcher/run", "post", "200") => "WatchPass",
        (_, _, code) if code.starts_with('4') || code.starts_with('5') => "Error",
        _ => panic!("{method} {path} {code}: a JSON body with no build-api type"),
    }
}

fn json_schema_ref(content: &Value) -> Option<&str> {
    content["application/json"]["schema"]["$ref"].as_str()
}

#[test]
fn every_route_names_the_component_of_the_type_the_service_uses() {
    let document = document();
    let mut seen = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let mut bodies: Vec<(String, &Value)> = Vec::new();
            if let Some(request) = operation.get("requestBody") {
                bodies.push(("request".to_owned(), &request["content"]));
            }
            for (code, response) in operation["responses"].as_object().unwrap() {
                bodies.push((code.clone(), &response["content"]));
            }
            for (code, content) in bodies {
                let Some(reference) = json_schema_ref(content) else {
                    continue;
                };
                let expected = expected_component(path, method, &code);
                assert_eq!(
                    reference,
                    format!("#/components/schemas/{expected}"),
                    "{method} {path} {code}"
                );
                seen.insert(format!("{method} {path} {code}"));
            }
        }
    }
    for body in [
        "post /build request",
        "post /build 200",
        "post /build 202",
        "post /build 422",
        "get /status/{build_id} 200",
        "get /status/{build_id} 404",
        "get /healthz 200",
        "get /healthz 503",
        "get /builds 200",
        "get /builds 401",
        "get /builds 403",
        "post /build 401",
        "post /build 403",
        "post /build 429",
        "get /status/{build_id} 401",
        "get /status/{build_id} 403",
        "post /report request",
        "post /report 401",
        "post /report 403",
        "post /report 422",
        "get /fleet 200",
        "get /fleet 401",
        "get /fleet 403",
        "post /watcher/run 200",
        "post /watcher/run 401",
        "post /watcher/run 403",
        "post /watcher/run 404",
    ] {
        assert!(seen.contains(body), "{body} is not documented: {seen:?}");
    }
}

/// A change that breaks a valid body.
type Change = fn(&mut Value);

#[test]
fn the_checker_finds_drift() {
    let document = document();
    let schema = component(&document, "Status");
    let good = serde_json::to_value(status(false)).unwrap();
    assert!(violations(&document, schema, &good, "").is_empty());
    let broken = |change: Change| {
        let mut value = good.clone();
        change(&mut value);
        violations(&document, schema, &value, "")
    };
    let cases: [(&str, Change); 7] = [
        ("missing", |v| {
            v.as_object_mut().unwrap().remove("driver_name");
        }),
        ("undocumented", |v| v["extra"] = json!(1)),
        ("wrong type", |v| v["dispatch_attempts"] = json!("1")),
        ("null", |v| v["created_at"] = Value::Null),
        ("unknown state", |v| v["status"] = json!("dispatching")),
        ("format", |v| v["started_at"] = json!("yesterday")),
        ("nested", |v| {
            v["request"]["kernel_version"] = json!("6.1$(id)")
        }),
    ];
    for (what, change) in cases {
        assert!(!broken(change).is_empty(), "{what} not found");
    }
}

#[test]
fn request_enums_are_what_kernel_id_accepts() {
    let document = document();
    let properties = &component(&document, "BuildRequest")["properties"];
    let values = |field: &str| -> BTreeSet<String> {
        properties[field]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_str().unwrap().to_owned())
            .collect()
    };
    let architectures: BTreeSet<String> = Arch::ALL
        .iter()
        .flat_map(|arch| [arch.as_str().to_owned(), arch.debian_name().to_owned()])
        .collect();
    assert_eq!(values("architecture"), architectures);
    for alias in values("architecture") {
        assert!(Arch::parse(&alias).is_ok(), "{alias}");
    }
    let distributions: BTreeSet<String> = Distribution::all()
        .map(|distribution| distribution.as_str().to_owned())
        .collect();
    assert_eq!(values("distribution"), distributions);
    let fields: Vec<String> = schema_keys(component(&document, "BuildRequest"), "properties")
        .into_iter()
        .collect();
    assert_eq!(fields, BuildRequest::FIELDS, "the keys POST /build accepts");
}

/// `value`, answered with `code` on `method path`, against the document's schema for it.
fn assert_documented(document: &Value, path: &str, method: &str, code: u16, value: &Value) {
    let response = &document["paths"][path][method]["responses"][code.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} answered {code}, which is not documented: {value}"
    );
    let found = violations(document, schema, value, &format!("{method} {path} {code}"));
    assert!(found.is_empty(), "{value}:\n{}", found.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_answers_as_documented() {
    let document = document();
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let status_route = "/status/{build_id}";

    let (code, accepted) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{accepted}");
    assert_documented(&document, "/build", "post", code, &accepted);
    let build_id = accepted["build_id"].as_str().unwrap().to_owned();

    let response = client
        .get(format!("{base}/status/{build_id}"))
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let early: Value = response.json().await.unwrap();
    assert_documented(&document, status_route, "get", code, &early);

    let ended = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert_documented(&document, status_route, "get", 200, &ended);

    let (code, done) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 200, "{done}");
    assert_documented(&document, "/build", "post", code, &done);

    let mut invalid = bookworm("v0.1.2");
    invalid["kernel_version"] = json!("6.1$(id)");
    for body in [invalid.to_string(), "{".to_owned()] {
        let response = client
            .post(format!("{base}/build"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let refusal: Value = response.json().await.unwrap();
        assert!(code == 400 || code == 422, "{code} {refusal}");
        assert_documented(&document, "/build", "post", code, &refusal);
    }

    for target in [
        "/status/00000000-0000-4000-8000-000000000000".to_owned(),
        format!("/status/{build_id}?wait=soon"),
    ] {
        let response = client.get(format!("{base}{target}")).send().await.unwrap();
        let code = response.status().as_u16();
        let refusal: Value = response.json().await.unwrap();
        assert_documented(&document, status_route, "get", code, &refusal);
    }

    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    let code = response.status().as_u16();
    let health: Value = response.json().await.unwrap();
    assert_documented(&document, "/healthz", "get", code, &health);

    // The fleet inventory: a report kept (204, documented without a body), a refused one, and the
    // view it shows, as JSON and as the page.
    let node_report = serde_json::to_value(report(true)).unwrap();
    let response = client
        .post(format!("{base}/report"))
        .json(&node_report)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert!(document["paths"]["/report"]["post"]["responses"]["204"].is_object());
    assert!(response.bytes().await.unwrap().is_empty());
    let mut bad = node_report.clone();
    bad["exit_code"] = json!(7);
    let response = client
        .post(format!("{base}/report"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let refusal: Value = response.json().await.unwrap();
    assert_eq!(
        (code, refusal["field"].as_str()),
        (422, Some("outcome")),
        "{refusal}"
    );
    assert_documented(&document, "/report", "post", code, &refusal);
    let response = client.get(format!("{base}/fleet")).send().await.unwrap();
    let code = response.status().as_u16();
    let view: Value = response.json().await.unwrap();
    assert_eq!(view["nodes"], 1, "{view}");
    assert_documented(&document, "/fleet", "get", code, &view);
    let response = client
        .get(format!("{base}/fleet?format=html"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        document["paths"]["/fleet"]["get"]["responses"]["200"]["content"]["text/html"].is_object()
    );
    let response = client
        .get(format!("{base}/fleet?format=xml"))
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let refusal: Value = response.json().await.unwrap();
    assert_eq!(code, 422);
    assert_documented(&document, "/fleet", "get", code, &refusal);

    // No module-signing certificate configured: a documented 404.
    let response = client
        .get(format!("{base}/module-signing-cert.der"))
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    assert_eq!(code, 404);
    let missing: Value = response.json().await.unwrap();
    assert_documented(&document, "/module-signing-cert.der", "get", code, &missing);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_signing_certificate_is_served_to_anyone_as_documented() {
    use build_service::access::{AccessConfig, Principals};
    let document = document();
    let operation = &document["paths"]["/module-signing-cert.der"]["get"];
    assert!(
        operation["responses"]["200"]["content"]["application/pkix-cert"].is_object(),
        "{operation}"
    );
    assert!(operation.get("security").is_none(), "no token is needed");
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let cert = b"0\x82\x01\x0a not really DER, but the bytes the service was given".to_vec();
    let served = cert.clone();
    // Principals configured: the certificate still needs no token.
    let service = env
        .start_with(&env.sqlite_url(), move |config| {
            config.module_signing_cert = Some(served);
            config.access = AccessConfig {
                principals: Some(
                    Principals::parse(&format!(
                        "[[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
                        build_service::access::token_digest_hex("ops-token-0123456789abcdef")
                    ))
                    .unwrap(),
                ),
                ..AccessConfig::default()
            };
        })
        .await;
    let client = client();
    let response = client
        .get(format!("{}/module-signing-cert.der", service.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/pkix-cert"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), cert.as_slice());
    let head = client
        .head(format!("{}/module-signing-cert.der", service.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governed_answers_are_documented() {
    use build_service::access::{AccessConfig, Principals, token_digest_hex};
    let (fleet, ops) = ("fleet-token-0123456789abcdef", "ops-token-0123456789abcdef");
    let principals = Principals::parse(&format!(
        "[[principal]]\nname = \"fleet\"\ntoken_sha256 = \"{}\"\nscopes = [\"request-build\", \"read-status\"]\n\
         max_in_flight = 1\ndistributions = [\"debian\"]\n\
         [[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
        token_digest_hex(fleet),
        token_digest_hex(ops)
    ))
    .unwrap();
    let document = document();
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.access = AccessConfig {
                principals: Some(principals),
                ..AccessConfig::default()
            };
        })
        .await;
    let base = service.url();
    let client = client();
    let send = async |request: reqwest::RequestBuilder| {
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json::<Value>().await.unwrap())
    };
    let post = |token: Option<&str>, body: &Value| {
        let request = client.post(format!("{base}/build")).json(body);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let (code, accepted) = send(post(Some(fleet), &bookworm("v0.1.2"))).await;
    assert_eq!(code, 202, "{accepted}");
    let fedora = json!({"kernel_version": "6.14.0-63.fc42.x86_64", "architecture": "x86_64",
        "distribution": "fedora", "driver_version": "v0.1.2"});
    for (token, body, expected) in [
        (None, bookworm("v0.1.2"), 401),
        (Some(ops), bookworm("v0.1.2"), 403),
        (Some(fleet), fedora, 403),
        (Some(fleet), bookworm("v0.1.3"), 429),
    ] {
        let (code, answer) = send(post(token, &body)).await;
        assert_eq!(code, expected, "{answer}");
        assert_documented(&document, "/build", "post", code, &answer);
    }
    let status_path = format!("{base}/status/{}", accepted["build_id"].as_str().unwrap());
    for (token, expected) in [(None, 401), (Some(ops), 403)] {
        let mut request = client.get(&status_path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (code, answer) = send(request).await;
        assert_eq!(code, expected, "{answer}");
        assert_documented(&document, "/status/{build_id}", "get", code, &answer);
    }
    for (token, query, expected) in [
        (Some(ops), "", 200),
        (Some(ops), "?limit=9999", 422),
        (Some(fleet), "", 403),
        (None, "", 401),
    ] {
        let mut request = client.get(format!("{base}/builds{query}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (code, answer) = send(request).await;
        assert_eq!(code, expected, "{answer}");
        assert_documented(&document, "/builds", "get", code, &answer);
    }
    let node_report = serde_json::to_value(report(true)).unwrap();
    for (token, expected) in [(None, 401), (Some(ops), 403), (Some(fleet), 403)] {
        let mut request = client.post(format!("{base}/report")).json(&node_report);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (code, answer) = send(request).await;
        assert_eq!(code, expected, "{answer}");
        assert_documented(&document, "/report", "post", code, &answer);
    }
    for (token, expected) in [(None, 401), (Some(ops), 403)] {
        let mut request = client.get(format!("{base}/fleet"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (code, answer) = send(request).await;
        assert_eq!(code, expected, "{answer}");
        assert_documented(&document, "/fleet", "get", code, &answer);
    }
    executor.release();
    service.stop().await.unwrap();
}
