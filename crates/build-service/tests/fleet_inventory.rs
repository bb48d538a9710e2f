//! The fleet inventory through the real `build-service` binary: nodes report their loader runs
//! (`POST /report`, scope `report`), the service keeps the latest report per node and `GET /fleet`
//! aggregates them per kernel family, kernel and driver version — exact numbers — with each
//! artifact's status from the builds table (a build that failed) and the artifact store (a kernel
//! prebuilt outside this service); `/metrics` carries the `kdriver_fleet_*` gauges. Refusals: a
//! token without the scope (403), a principal limited to another distribution (403 naming the
//! field), bad bodies (422 naming the field), and none of them changes the inventory. On
//! PostgreSQL, two replicas show the same view, a build in flight shows as building and, once done,
//! as published with its build id.

#![allow(clippy::unwrap_used)]

mod common;
mod fleet_support;

use build_api::{ArtifactOrigin, FleetView};
use fleet_support::{
    Principal, Service, build_and_wait, client, identity, node_id, post_report, report,
};
use serde_json::{Value, json};

const NODES: &str = "nodes-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const BUILDER: &str = "builder-token-0123456789abcdef";
const UBUNTU_NODES: &str = "ubuntu-token-0123456789abcdef";

fn principals() -> [Principal<'static>; 4] {
    [
        Principal {
            name: "nodes",
            token: NODES,
            entry: "scopes = [\"request-build\", \"report\"]",
        },
        Principal {
            name: "reader",
            token: READER,
            entry: "scopes = [\"read-status\"]",
        },
        Principal {
            name: "prebuilder",
            token: BUILDER,
            entry: "scopes = [\"request-build\", \"read-status\"]",
        },
        Principal {
            name: "ubuntu-nodes",
            token: UBUNTU_NODES,
            entry: "scopes = [\"report\"]\ndistributions = [\"ubuntu\"]",
        },
    ]
}

async fn fleet(client: &reqwest::Client, base: &str) -> Value {
    let response = client
        .get(format!("{base}/fleet"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    response.json().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels), from `/metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn labels(release: &str, architecture: &str) -> String {
    format!(
        "{{distribution=\"debian\",distro_version=\"12\",architecture=\"{architecture}\",kernel_version=\"{release}\",driver_version=\"v0.1.2\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_become_the_fleet_view_and_its_gauges() {
    let service = Service::start(&principals()).await;
    let base = service.base.clone();
    let client = client();

    // A newer kernel of the main family, published outside this service (the nightly batch), and
    // one whose on-demand build fails (this service has no driver-builder).
    service.publish(&identity("6.1.0-48-amd64", "x86_64", "v0.1.2"));
    let failed = build_and_wait(
        &client,
        &base,
        Some(BUILDER),
        &identity("6.1.0-49-amd64", "x86_64", "v0.1.2"),
    )
    .await;
    assert_eq!(failed["status"], "error", "{failed}");
    let failed_build = failed["build_id"].as_str().unwrap().to_owned();

    let mut first_boot = report(1, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Build));
    first_boot.pending_kernels = vec!["6.1.0-48-amd64".to_owned()];
    let mut warm = report(2, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Store));
    warm.pending_kernels = vec!["6.1.0-48-amd64".to_owned()];
    let signature_refused = report(3, "6.1.0-47-amd64", 6, Some(ArtifactOrigin::Store));
    let old_kernel_failed = report(4, "6.1.0-46-amd64", 3, None);
    let cloud_failed = report(5, "6.1.0-47-cloud-amd64", 4, None);
    let mut arm = report(6, "6.1.0-47-arm64", 0, Some(ArtifactOrigin::Build));
    arm.timings.build_wait_ms = Some(30_000);
    for body in [
        &first_boot,
        &warm,
        &signature_refused,
        &old_kernel_failed,
        &cloud_failed,
        &arm,
    ] {
        let (code, answer) = post_report(
            &client,
            &base,
            Some(NODES),
            &serde_json::to_value(body).unwrap(),
        )
        .await;
        assert_eq!(code, 204, "{answer}");
    }
    // Latest per node: node 4 rebooted into 6.1.0-47 (its driver came from its cache; 6.1.0-46 is
    // still installed), and node 1 restarted from its cache (its first-boot wait stays on record).
    let mut rebooted = report(4, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Cache));
    rebooted.pending_kernels = vec!["6.1.0-46-amd64".to_owned()];
    let mut restarted = report(1, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Cache));
    restarted.pending_kernels = vec!["6.1.0-48-amd64".to_owned()];
    for body in [&rebooted, &restarted] {
        let (code, answer) = post_report(
            &client,
            &base,
            Some(NODES),
            &serde_json::to_value(body).unwrap(),
        )
        .await;
        assert_eq!(code, 204, "{answer}");
    }

    let view = fleet(&client, &base).await;
    let typed: FleetView = serde_json::from_value(view.clone()).unwrap();
    assert_eq!(
        (
            typed.nodes,
            typed.nodes_without_driver,
            typed.first_boot_waits
        ),
        (6, 2, 2),
        "{view:#}"
    );
    let mut expected = json!({
        "families": [
            {
                "architecture": "aarch64",
                "distribution": "debian",
                "distro_version": "12",
                "family": "debian/12/aarch64/6.1/arm64",
                "flavor": "arm64",
                "kernels": [{
                    "drivers": [{
                        "artifact": "published", "build_id": null, "driver_version": "v0.1.2",
                        "first_boot_wait_ms_max": 30000, "first_boot_waits": 1,
                        "nodes_failed": 0, "nodes_loaded": 1, "nodes_refused": 0
                    }],
                    "kernel_version": "6.1.0-47-arm64",
                    "nodes_pending": 0, "nodes_running": 1, "upcoming": false
                }],
                "nodes": 1,
                "series": "6.1"
            },
            {
                "architecture": "x86_64",
                "distribution": "debian",
                "distro_version": "12",
                "family": "debian/12/x86_64/6.1/amd64",
                "flavor": "amd64",
                "kernels": [
                    {
                        "drivers": [{
                            "artifact": "failed", "build_id": failed_build, "driver_version": "v0.1.2",
                            "first_boot_wait_ms_max": null, "first_boot_waits": 0,
                            "nodes_failed": 0, "nodes_loaded": 0, "nodes_refused": 0
                        }],
                        "kernel_version": "6.1.0-49-amd64",
                        "nodes_pending": 0, "nodes_running": 0, "upcoming": true
                    },
                    {
                        "drivers": [{
                            "artifact": "published", "build_id": null, "driver_version": "v0.1.2",
                            "first_boot_wait_ms_max": null, "first_boot_waits": 0,
                            "nodes_failed": 0, "nodes_loaded": 0, "nodes_refused": 0
                        }],
                        "kernel_version": "6.1.0-48-amd64",
                        "nodes_pending": 2, "nodes_running": 0, "upcoming": true
                    },
                    {
                        "drivers": [{
                            "artifact": "published", "build_id": null, "driver_version": "v0.1.2",
                            "first_boot_wait_ms_max": 120000, "first_boot_waits": 1,
                            "nodes_failed": 0, "nodes_loaded": 3, "nodes_refused": 1
                        }],
                        "kernel_version": "6.1.0-47-amd64",
                        "nodes_pending": 0, "nodes_running": 4, "upcoming": false
                    },
                    {
                        "drivers": [{
                            "artifact": "none", "build_id": null, "driver_version": "v0.1.2",
                            "first_boot_wait_ms_max": null, "first_boot_waits": 0,
                            "nodes_failed": 0, "nodes_loaded": 0, "nodes_refused": 0
                        }],
                        "kernel_version": "6.1.0-46-amd64",
                        "nodes_pending": 1, "nodes_running": 0, "upcoming": false
                    }
                ],
                "nodes": 4,
                "series": "6.1"
            },
            {
                "architecture": "x86_64",
                "distribution": "debian",
                "distro_version": "12",
                "family": "debian/12/x86_64/6.1/cloud-amd64",
                "flavor": "cloud-amd64",
                "kernels": [{
                    "drivers": [{
                        "artifact": "none", "build_id": null, "driver_version": "v0.1.2",
                        "first_boot_wait_ms_max": null, "first_boot_waits": 0,
                        "nodes_failed": 1, "nodes_loaded": 0, "nodes_refused": 0
                    }],
                    "kernel_version": "6.1.0-47-cloud-amd64",
                    "nodes_pending": 0, "nodes_running": 1, "upcoming": false
                }],
                "nodes": 1,
                "series": "6.1"
            }
        ],
        "first_boot_waits": 2,
        "nodes": 6,
        "nodes_without_driver": 2
    });
    expected["generated_at"] = view["generated_at"].clone();
    assert_eq!(view, expected, "{view:#}");

    // The gauges, per identity.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let main = labels("6.1.0-47-amd64", "x86_64");
    let cloud = labels("6.1.0-47-cloud-amd64", "x86_64");
    let arm = labels("6.1.0-47-arm64", "aarch64");
    for (series, value) in [
        (format!("kdriver_fleet_nodes{main}"), Some(4.0)),
        (
            format!("kdriver_fleet_nodes_without_driver{main}"),
            Some(1.0),
        ),
        (format!("kdriver_fleet_first_boot_waits{main}"), Some(1.0)),
        (
            format!("kdriver_fleet_first_boot_wait_seconds_max{main}"),
            Some(120.0),
        ),
        (format!("kdriver_fleet_nodes{cloud}"), Some(1.0)),
        (
            format!("kdriver_fleet_nodes_without_driver{cloud}"),
            Some(1.0),
        ),
        (format!("kdriver_fleet_first_boot_waits{cloud}"), Some(0.0)),
        (
            format!("kdriver_fleet_first_boot_wait_seconds_max{cloud}"),
            None,
        ),
        (format!("kdriver_fleet_nodes{arm}"), Some(1.0)),
        (
            format!("kdriver_fleet_first_boot_wait_seconds_max{arm}"),
            Some(30.0),
        ),
        (
            format!("kdriver_fleet_nodes{}", labels("6.1.0-46-amd64", "x86_64")),
            None,
        ),
        ("kdriver_fleet_identities_omitted".to_owned(), Some(0.0)),
    ] {
        assert_eq!(sample(&metrics, &series), value, "{series} in\n{metrics}");
    }
    assert!(
        metrics.contains("# TYPE kdriver_fleet_nodes gauge"),
        "{metrics}"
    );
    assert!(
        service.log().contains("node report"),
        "reports are logged:\n{}",
        service.log()
    );
    assert!(!service.log().contains(NODES), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reports_name_the_field_and_change_nothing() {
    let service = Service::start(&principals()).await;
    let base = service.base.clone();
    let client = client();
    let valid =
        serde_json::to_value(report(1, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Store))).unwrap();

    // Scope and identity limits.
    for (token, expected, field) in [
        (None, 401, "authorization"),
        (Some(BUILDER), 403, "authorization"),
        (Some(READER), 403, "authorization"),
        (Some(UBUNTU_NODES), 403, "distribution"),
    ] {
        let (code, answer) = post_report(&client, &base, token, &valid).await;
        assert_eq!(
            (code, answer["field"].as_str()),
            (expected, Some(field)),
            "{answer}"
        );
    }
    let (code, answer) = post_report(&client, &base, Some(UBUNTU_NODES), &valid).await;
    assert!(
        answer["rule"]
            .as_str()
            .unwrap()
            .contains("may not report distribution debian"),
        "{code} {answer}"
    );
    // Reading the fleet is read-status's: the nodes' token has none.
    let response = client
        .get(format!("{base}/fleet"))
        .bearer_auth(NODES)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // Bad bodies: 422 naming the field, 400 for what is not JSON.
    let changed = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("node_id");
    let mut nested = valid.clone();
    nested["timings"]["fetch_ms"] = json!(999_999);
    let cases = [
        (
            changed("kernel_version", json!("6.1$(reboot)")),
            "kernel_version",
        ),
        (changed("architecture", json!("sparc64")), "architecture"),
        (changed("distro_version", json!("7")), "distro_version"),
        (changed("driver_version", json!("main")), "driver_version"),
        (changed("driver_name", json!("other-driver")), "driver_name"),
        (
            changed("node_id", json!(node_id(1).to_uppercase())),
            "node_id",
        ),
        (changed("node_id", json!("machine-id")), "node_id"),
        (changed("outcome", json!("refused")), "outcome"),
        (changed("exit_code", json!(300)), "exit_code"),
        (
            changed("artifact_origin", json!("usb-stick")),
            "artifact_origin",
        ),
        (
            changed("pending_kernels", json!(["6.14.0-63.fc42.x86_64"])),
            "pending_kernels",
        ),
        (
            changed(
                "pending_kernels",
                json!(
                    (30..47)
                        .map(|n| format!("6.1.0-{n}-amd64"))
                        .collect::<Vec<_>>()
                ),
            ),
            "pending_kernels",
        ),
        (changed("surprise", json!(1)), "surprise"),
        (missing, "node_id"),
        (nested, "timings.fetch_ms"),
    ];
    for (body, field) in cases {
        let (code, answer) = post_report(&client, &base, Some(NODES), &body).await;
        assert_eq!(
            (code, answer["field"].as_str()),
            (422, Some(field)),
            "{answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let response = client
        .post(format!("{base}/report"))
        .bearer_auth(NODES)
        .header("content-type", "application/json")
        .body("{\"node_id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = client
        .post(format!("{base}/report"))
        .bearer_auth(NODES)
        .header("content-type", "text/plain")
        .body(valid.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);

    let view = fleet(&client, &base).await;
    assert_eq!(view["nodes"], 0, "{view}");
    assert_eq!(view["families"], json!([]));
    // The one valid report is kept.
    let (code, answer) = post_report(&client, &base, Some(NODES), &valid).await;
    assert_eq!(code, 204, "{answer}");
    assert_eq!(fleet(&client, &base).await["nodes"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_show_the_same_fleet_and_follow_a_build() {
    use common::{Env, Mode, Postgres, TestExecutor, wait_until_ended};
    let postgres = Postgres::start();
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let first = env.start_with(&postgres.url, |_| {}).await;
    let second = env.start_with(&postgres.url, |_| {}).await;
    let client = client();
    let upcoming = identity("6.1.0-48-amd64", "x86_64", "v0.1.2");
    // Prebuilt ahead of the fleet, held in flight until released.
    let response = client
        .post(format!("{}/build", first.url()))
        .json(&build_api::BuildRequest::from(&upcoming))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let build_id = response.json::<Value>().await.unwrap()["build_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut waited = report(1, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Build));
    waited.pending_kernels = vec!["6.1.0-48-amd64".to_owned()];
    let mut restarted = waited.clone();
    restarted.artifact_origin = Some(ArtifactOrigin::Cache);
    restarted.timings.build_wait_ms = None;
    let other = report(2, "6.1.0-47-amd64", 0, Some(ArtifactOrigin::Cache));
    for (base, body) in [
        (first.url(), &waited),
        (second.url(), &other),
        (first.url(), &restarted),
    ] {
        let (code, answer) =
            post_report(&client, &base, None, &serde_json::to_value(body).unwrap()).await;
        assert_eq!(code, 204, "{answer}");
    }
    let view = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/fleet"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let mut from_first = view(first.url()).await;
    let mut from_second = view(second.url()).await;
    from_first["generated_at"] = Value::Null;
    from_second["generated_at"] = Value::Null;
    assert_eq!(from_first, from_second);
    let kernels = &from_second["families"][0]["kernels"];
    assert_eq!(
        kernels[0]["kernel_version"], "6.1.0-48-amd64",
        "{from_second:#}"
    );
    assert_eq!(kernels[0]["upcoming"], true);
    assert_eq!(kernels[0]["nodes_pending"], 1);
    assert_eq!(kernels[0]["drivers"][0]["artifact"], "building");
    assert_eq!(kernels[0]["drivers"][0]["build_id"], build_id.as_str());
    assert_eq!(kernels[1]["nodes_running"], 2);
    assert_eq!(
        kernels[1]["drivers"][0]["first_boot_waits"], 1,
        "the restart keeps the wait"
    );
    assert_eq!(from_second["first_boot_waits"], 1);

    executor.release();
    let ended = wait_until_ended(&client, &second.url(), &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    let after = view(second.url()).await;
    let driver = &after["families"][0]["kernels"][0]["drivers"][0];
    assert_eq!(driver["artifact"], "published", "{after:#}");
    assert_eq!(driver["build_id"], build_id.as_str());

    let metrics = client
        .get(format!("{}/metrics", first.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let main = labels("6.1.0-47-amd64", "x86_64");
    assert_eq!(
        sample(&metrics, &format!("kdriver_fleet_nodes{main}")),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("kdriver_fleet_first_boot_wait_seconds_max{main}")
        ),
        Some(120.0)
    );
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}
