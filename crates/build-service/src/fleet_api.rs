//! The HTTP side of the fleet inventory (`inventory.rs`): `POST /report` (scope `report`) and
//! `GET /fleet` (scope `read-status`). Like [`crate::api`], these handlers only translate.
//!
//! A report body is read strictly — one JSON object, no unknown or repeated keys, each field of
//! the type `build_api::NodeReport` gives it, every refusal a 422 naming the field (nested ones as
//! `timings.fetch_ms`) — and then validated by [`inventory::validate_report`]. A principal limited
//! to some distributions, architectures or driver versions may report only nodes it could request
//! builds for (403 naming the field, as `POST /build` answers): a report creates no build, but it
//! should not be able to fill the inventory with nodes of a fleet it does not serve. The answer is
//! 204 without a body.
//!
//! `GET /fleet` answers JSON (`build_api::FleetView`), or — for a browser, whose `Accept` prefers
//! `text/html`, or with `?format=html` — the page rendered by [`crate::fleet_page`].

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use build_api::{ArtifactOrigin, NodeReport, RunOutcome, RunTimings};
use serde_json::Value;

use crate::access::{Caller, Scope};
use crate::api::{ApiError, json_kind, parse_object, read_json_body, scoped, unknown_field};
use crate::coordinator::Coordinator;
use crate::{inventory, telemetry};

/// `POST /report` behind `report`, `GET /fleet` behind `read-status`.
pub fn routes(state: Arc<Coordinator>) -> Router {
    scoped(
        Router::new()
            .route("/report", post(report))
            .with_state(Arc::clone(&state)),
        Scope::Report,
    )
    .merge(scoped(
        Router::new().route("/fleet", get(fleet)).with_state(state),
        Scope::ReadStatus,
    ))
}

async fn report(
    State(coordinator): State<Arc<Coordinator>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let refused = |error: ApiError, outcome: &'static str| {
        metrics::counter!(telemetry::REPORTS, "outcome" => outcome).increment(1);
        tracing::info!(status = error.status().as_u16(), ?error, "report refused");
        error.into_response()
    };
    let parsed = match read_json_body(request).await {
        Ok(body) => parse_report(&body),
        Err(error) => Err(error),
    };
    let report = match parsed.and_then(|report| {
        inventory::validate_report(report, coordinator.driver())
            .map_err(|refusal| ApiError::invalid(&refusal.field, refusal.rule))
    }) {
        Ok(report) => report,
        Err(error) => return refused(error, "invalid"),
    };
    if let Some(principal) = &caller.principal
        && let Err((field, rule)) = principal.permits_report(&report.identity)
    {
        return refused(
            ApiError::new(StatusCode::FORBIDDEN, rule.clone(), Some(field), rule),
            "forbidden",
        );
    }
    match coordinator.record_report(&caller, report).await {
        Ok(()) => {
            metrics::counter!(telemetry::REPORTS, "outcome" => "accepted").increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => {
            let error = ApiError::coordinator(error);
            metrics::counter!(telemetry::REPORTS, "outcome" => "error").increment(1);
            tracing::warn!(?error, "could not keep a report");
            error.into_response()
        }
    }
}

/// The body as a [`NodeReport`], each field checked for its JSON type on its own so a refusal
/// names it. Every key is required, as the type always writes it (`artifact_origin` and
/// `timings.build_wait_ms` as `null` when they do not apply).
pub fn parse_report(body: &[u8]) -> Result<NodeReport, ApiError> {
    let mut fields = Fields::of(parse_object(body)?, "", &NodeReport::FIELDS)?;
    let timings_value = fields.required("timings")?;
    let Value::Object(timings) = timings_value else {
        return Err(ApiError::invalid(
            "timings",
            format!("must be an object (found {})", json_kind(&timings_value)),
        ));
    };
    let mut timings = Fields::of(
        timings.into_iter().collect(),
        "timings.",
        &RunTimings::FIELDS,
    )?;
    let timings = RunTimings {
        build_wait_ms: timings.nullable("build_wait_ms", milliseconds)?,
        fetch_ms: timings.parsed("fetch_ms", milliseconds)?,
        total_ms: timings.parsed("total_ms", milliseconds)?,
    };
    Ok(NodeReport {
        architecture: fields.parsed("architecture", string)?,
        artifact_origin: fields.nullable("artifact_origin", origin)?,
        distribution: fields.parsed("distribution", string)?,
        distro_version: fields.parsed("distro_version", string)?,
        driver_name: fields.parsed("driver_name", string)?,
        driver_version: fields.parsed("driver_version", string)?,
        exit_code: fields.parsed("exit_code", exit_code)?,
        kernel_version: fields.parsed("kernel_version", string)?,
        node_id: fields.parsed("node_id", string)?,
        outcome: fields.parsed("outcome", outcome)?,
        pending_kernels: fields.parsed("pending_kernels", strings)?,
        timings,
    })
}

/// The keys of one object, each taken once; `prefix` names nested fields in refusals.
struct Fields {
    prefix: &'static str,
    values: Vec<(String, Value)>,
}

impl Fields {
    fn of(
        values: Vec<(String, Value)>,
        prefix: &'static str,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        if let Some((key, _)) = values
            .iter()
            .find(|(key, _)| !known.contains(&key.as_str()))
        {
            return Err(unknown_field(&format!("{prefix}{key}"), known));
        }
        Ok(Self { prefix, values })
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        let at = self.values.iter().position(|(key, _)| key == field)?;
        Some(self.values.swap_remove(at).1)
    }

    fn required(&mut self, field: &str) -> Result<Value, ApiError> {
        self.take(field)
            .ok_or_else(|| ApiError::invalid(&format!("{}{field}", self.prefix), "is required"))
    }

    fn parsed<T>(
        &mut self,
        field: &str,
        parse: fn(Value) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        let value = self.required(field)?;
        parse(value).map_err(|rule| ApiError::invalid(&format!("{}{field}", self.prefix), rule))
    }

    fn nullable<T>(
        &mut self,
        field: &str,
        parse: fn(Value) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        match self.required(field)? {
            Value::Null => Ok(None),
            value => parse(value)
                .map(Some)
                .map_err(|rule| ApiError::invalid(&format!("{}{field}", self.prefix), rule)),
        }
    }
}

fn string(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("must be a string (found {})", json_kind(&other))),
    }
}

fn strings(value: Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "must be an array of strings (found {})",
            json_kind(&value)
        ));
    };
    // Bounded before anything is copied; the count rule itself is the inventory's.
    if items.len() > inventory::MAX_PENDING_KERNELS {
        return Err(format!(
            "must list at most {} kernels (got {})",
            inventory::MAX_PENDING_KERNELS,
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| string(item).map_err(|rule| format!("[{index}]: {rule}")))
        .collect()
}

fn whole_number(value: &Value, max: u64) -> Result<u64, String> {
    value
        .as_u64()
        .filter(|number| *number <= max)
        .ok_or_else(|| {
            format!(
                "must be a whole number from 0 to {max} (found {})",
                match value {
                    Value::Number(number) => number.to_string(),
                    other => json_kind(other).to_owned(),
                }
            )
        })
}

fn milliseconds(value: Value) -> Result<u64, String> {
    whole_number(&value, inventory::MAX_TIMING_MS)
}

fn exit_code(value: Value) -> Result<u8, String> {
    whole_number(&value, 255).map(|code| u8::try_from(code).unwrap_or(u8::MAX))
}

fn one_of<T: Copy>(value: Value, choices: &[(&str, T)]) -> Result<T, String> {
    let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
    let expected = || format!("must be one of {}", words.join(", "));
    match value {
        Value::String(text) => choices
            .iter()
            .find(|(word, _)| *word == text)
            .map(|(_, choice)| *choice)
            .ok_or_else(expected),
        other => Err(format!("{} (found {})", expected(), json_kind(&other))),
    }
}

fn origin(value: Value) -> Result<ArtifactOrigin, String> {
    one_of(
        value,
        &[
            ("cache", ArtifactOrigin::Cache),
            ("store", ArtifactOrigin::Store),
            ("build", ArtifactOrigin::Build),
        ],
    )
}

fn outcome(value: Value) -> Result<RunOutcome, String> {
    one_of(
        value,
        &[
            ("loaded", RunOutcome::Loaded),
            ("refused", RunOutcome::Refused),
            ("failed", RunOutcome::Failed),
        ],
    )
}

/// How `GET /fleet` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Html,
}

/// `?format=` when given (the only parameter), else what `Accept` prefers.
fn negotiate(query: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    let mut chosen = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "format" {
            return Err(unknown_field(&key, &["format"]));
        }
        chosen = Some(match value.as_ref() {
            "json" => Format::Json,
            "html" => Format::Html,
            _ => return Err(ApiError::invalid("format", "must be html or json")),
        });
    }
    if let Some(format) = chosen {
        return Ok(format);
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    Ok(if prefers_html(&accept) {
        Format::Html
    } else {
        Format::Json
    })
}

/// Whether an `Accept` header ranks `text/html` above zero and not below `application/json`:
/// what browsers send; API clients send JSON or nothing.
fn prefers_html(accept: &str) -> bool {
    let quality = |wanted: &str| -> f32 {
        accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';');
                let media = parts.next()?.trim();
                if !media.eq_ignore_ascii_case(wanted) {
                    return None;
                }
                let q = parts
                    .filter_map(|param| param.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some(q)
            })
            .fold(0.0, f32::max)
    };
    let html = quality("text/html");
    html > 0.0 && html >= quality("application/json")
}

async fn fleet(
    State(coordinator): State<Arc<Coordinator>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let format = match negotiate(query.as_deref(), &headers) {
        Ok(format) => format,
        Err(error) => return error.into_response(),
    };
    let view = match coordinator.fleet_view().await {
        Ok(view) => view,
        Err(error) => return ApiError::coordinator(error).into_response(),
    };
    let mut response = match format {
        Format::Json => axum::Json(view).into_response(),
        Format::Html => {
            let page = crate::fleet_page::render(&view, coordinator.driver().as_str());
            let mut response = page.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The page is static markup with an inline stylesheet: nothing else may load or run.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(crate::fleet_page::CONTENT_SECURITY_POLICY),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({
            "architecture": "x86_64",
            "artifact_origin": "store",
            "distribution": "debian",
            "distro_version": "12",
            "driver_name": "example-driver",
            "driver_version": "v0.1.2",
            "exit_code": 0,
            "kernel_version": "6.1.0-47-amd64",
            "node_id": "ab".repeat(32),
            "outcome": "loaded",
            "pending_kernels": ["6.1.0-48-amd64"],
            "timings": {"build_wait_ms": null, "fetch_ms": 10, "total_ms": 20},
        })
    }

    fn field_of(change: impl FnOnce(&mut Value)) -> Option<String> {
        let mut value = body();
        change(&mut value);
        let error = parse_report(value.to_string().as_bytes()).expect_err("refused");
        assert_eq!(
            error.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{error:?}"
        );
        error_field(&error)
    }

    fn error_field(error: &ApiError) -> Option<String> {
        error.field().map(str::to_owned)
    }

    #[test]
    fn a_report_body_reads_back_as_the_type() {
        let report = parse_report(body().to_string().as_bytes()).expect("valid");
        assert_eq!(serde_json::to_value(&report).expect("json"), body());
        let mut without = body();
        without["artifact_origin"] = Value::Null;
        let report = parse_report(without.to_string().as_bytes()).expect("valid");
        assert_eq!(report.artifact_origin, None);
    }

    #[test]
    fn type_refusals_name_the_field() {
        let cases: Vec<(&str, Option<String>)> = vec![
            ("node_id", field_of(|v| v["node_id"] = json!(7))),
            ("exit_code", field_of(|v| v["exit_code"] = json!(256))),
            ("exit_code", field_of(|v| v["exit_code"] = json!(-1))),
            ("exit_code", field_of(|v| v["exit_code"] = json!("0"))),
            ("outcome", field_of(|v| v["outcome"] = json!("exploded"))),
            (
                "artifact_origin",
                field_of(|v| v["artifact_origin"] = json!("usb")),
            ),
            (
                "pending_kernels",
                field_of(|v| v["pending_kernels"] = json!("6.1")),
            ),
            (
                "pending_kernels",
                field_of(|v| v["pending_kernels"] = json!([1])),
            ),
            (
                "pending_kernels",
                field_of(|v| v["pending_kernels"] = json!(vec!["6.1.0-1-amd64"; 17])),
            ),
            ("timings", field_of(|v| v["timings"] = json!([]))),
            (
                "timings.fetch_ms",
                field_of(|v| v["timings"]["fetch_ms"] = json!(1.5)),
            ),
            (
                "timings.total_ms",
                field_of(|v| {
                    v["timings"]
                        .as_object_mut()
                        .expect("object")
                        .remove("total_ms");
                }),
            ),
            ("timings.x", field_of(|v| v["timings"]["x"] = json!(1))),
            (
                "kernel_version",
                field_of(|v| {
                    v.as_object_mut().expect("object").remove("kernel_version");
                }),
            ),
            ("extra", field_of(|v| v["extra"] = json!(true))),
            (
                "artifact_origin",
                field_of(|v| {
                    v.as_object_mut().expect("object").remove("artifact_origin");
                }),
            ),
            (
                "timings.build_wait_ms",
                field_of(|v| {
                    v["timings"]
                        .as_object_mut()
                        .expect("object")
                        .remove("build_wait_ms");
                }),
            ),
        ];
        for (expected, found) in cases {
            assert_eq!(found.as_deref(), Some(expected));
        }
        let error = parse_report(br#"{"node_id":"a","node_id":"b"}"#).expect_err("duplicate");
        assert_eq!(error_field(&error).as_deref(), Some("body"));
    }

    #[test]
    fn browsers_get_the_page_and_clients_json() {
        let headers = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_str(accept).expect("header"),
            );
            headers
        };
        let chromium =
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        let cases = [
            (None, headers(chromium), Format::Html),
            (None, headers("application/json"), Format::Json),
            (None, headers("*/*"), Format::Json),
            (None, HeaderMap::new(), Format::Json),
            (
                None,
                headers("application/json, text/html;q=0.5"),
                Format::Json,
            ),
            (None, headers("text/html;q=0"), Format::Json),
            (Some("format=json"), headers(chromium), Format::Json),
            (Some("format=html"), HeaderMap::new(), Format::Html),
        ];
        for (query, headers, expected) in cases {
            assert_eq!(
                negotiate(query, &headers).expect("format"),
                expected,
                "{query:?} {headers:?}"
            );
        }
        let error = negotiate(Some("format=xml"), &HeaderMap::new()).expect_err("refused");
        assert_eq!(error_field(&error).as_deref(), Some("format"));
        let error = negotiate(Some("limit=3"), &HeaderMap::new()).expect_err("refused");
        assert_eq!(error_field(&error).as_deref(), Some("limit"));
    }
}
