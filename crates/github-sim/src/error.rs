//! GitHub's error answers: a status and the JSON body GitHub sends with it
//! (`{"message", "errors"?, "documentation_url", "status"}`), plus the crate's own start-up error.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Failure to start the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind the simulator to 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("the simulated GitHub refused the operation: {0}")]
    Rejected(String),
}

/// An error answer of the REST API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub errors: Option<Value>,
    pub documentation_url: &'static str,
}

pub(crate) const DOCS_RELEASES: &str = "https://docs.github.com/rest/releases/releases";
pub(crate) const DOCS_ASSETS: &str = "https://docs.github.com/rest/releases/assets";
pub(crate) const DOCS_WORKFLOWS: &str = "https://docs.github.com/rest/actions/workflows";
pub(crate) const DOCS_RUNS: &str = "https://docs.github.com/rest/actions/workflow-runs";
pub(crate) const DOCS_CANCEL_RUN: &str =
    "https://docs.github.com/rest/actions/workflow-runs#cancel-a-workflow-run";
pub(crate) const DOCS_GIT_REFS: &str = "https://docs.github.com/rest/git/refs";
pub(crate) const DOCS_GET_REF: &str = "https://docs.github.com/rest/git/refs#get-a-reference";
pub(crate) const DOCS_GET_TAG: &str = "https://docs.github.com/rest/git/tags#get-a-tag";
pub(crate) const DOCS_REST: &str = "https://docs.github.com/rest";
pub(crate) const DOCS_APPS: &str =
    "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app";
pub(crate) const DOCS_PRIMARY_LIMIT: &str =
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
pub(crate) const DOCS_SECONDARY_LIMIT: &str = "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";

impl ApiError {
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        documentation_url: &'static str,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            errors: None,
            documentation_url,
        }
    }

    pub fn not_found(documentation_url: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", documentation_url)
    }

    /// 422 "Validation Failed" with one entry of `errors`, GitHub's shape for field-level refusals.
    pub fn validation(
        resource: &str,
        field: &str,
        code: &str,
        documentation_url: &'static str,
    ) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "Validation Failed".to_owned(),
            errors: Some(json!([{ "resource": resource, "code": code, "field": field }])),
            documentation_url,
        }
    }

    /// 422 "Validation Failed" whose entry carries a free-text `message` (GitHub's `custom` code).
    pub fn validation_custom(
        resource: &str,
        field: &str,
        message: &str,
        documentation_url: &'static str,
    ) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "Validation Failed".to_owned(),
            errors: Some(
                json!([{ "resource": resource, "code": "custom", "field": field, "message": message }]),
            ),
            documentation_url,
        }
    }

    pub fn unprocessable(message: impl Into<String>, documentation_url: &'static str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message, documentation_url)
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "message": self.message,
            "documentation_url": self.documentation_url,
            "status": self.status.as_u16().to_string(),
        });
        if let Some(errors) = &self.errors {
            body["errors"] = errors.clone();
        }
        body
    }
}
