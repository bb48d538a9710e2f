//! The GitHub backend's Prometheus metrics, read from a real recorder: calls by endpoint and status,
//! 304s counted separately (they cost no quota), and the remaining primary rate limit.
//!
//! One test per binary: the recorder is process-global.

mod github_support;

use build_service::Backend;
use github_sim::Route;
use github_support::*;
use kernel_id::ReleaseLayout;
use metrics_exporter_prometheus::PrometheusBuilder;

fn sample(rendered: &str, series: &str) -> Option<f64> {
    rendered
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn api_calls_not_modified_and_remaining_quota_are_exported() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("install the global recorder");
    let sim = start_sim(ReleaseLayout::PerDriverVersion).await;
    let present = debian("6.1.0-48-amd64");
    let tag = ReleaseLayout::PerDriverVersion.release_tag(&driver(), &present);
    let file = present.package_file_name(&driver());
    sim.publish_release(&tag, &[(file.as_str(), b"pkg".as_slice())])
        .expect("seed");
    let backend = backend_for(&sim, ReleaseLayout::PerDriverVersion);
    let missing = debian("6.1.0-47-amd64");
    for _ in 0..5 {
        assert_eq!(
            backend
                .find_artifact(&driver(), &missing)
                .await
                .expect("lookup"),
            None
        );
    }
    backend.health().await.expect("healthy");

    let rendered = handle.render();
    let calls = |status: &str| {
        sample(
            &rendered,
            &format!("github_api_calls_total{{endpoint=\"release_by_tag\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(calls("200"), Some(1.0), "{rendered}");
    assert_eq!(calls("304"), Some(4.0), "{rendered}");
    assert_eq!(
        sample(&rendered, "github_api_not_modified_total"),
        Some(4.0),
        "{rendered}"
    );
    let stats = sim.stats();
    assert_eq!(stats.not_modified, 4);
    assert_eq!(stats.requests_to(Route::ReleaseByTag), 5);
    let remaining = sample(&rendered, "github_rate_limit_remaining").expect("gauge exported");
    assert_eq!(remaining, sim.rate_limit_remaining() as f64, "{rendered}");
}
