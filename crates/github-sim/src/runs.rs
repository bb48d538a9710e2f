//! `workflow_dispatch` and the life of a dispatched run: validation as GitHub does it (workflow, ref,
//! declared inputs, the 25-input limit, unknown body keys), the answer per [`DispatchMode`], and the run's
//! progress queued -> in_progress -> completed. A successful run publishes what the test's hook asks for
//! the way `driver-build.yml` does: create a draft release, upload, publish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::config::{Conclusion, DispatchMode, Inputs, PublishedFile, RunStatus, WorkflowSpec};
use crate::error::{ApiError, DOCS_CANCEL_RUN, DOCS_WORKFLOWS};
use crate::json;
use crate::routes::Target;
use crate::server::{ApiResult, Reply, Shared};
use crate::state::{ACTIONS_BOT_LOGIN, Caller, ReleasePatch, Run, now, sha_of_ref};

/// Run ids on GitHub are far past 2^32; starting there catches clients that store them in 32 bits.
const FIRST_RUN_ID: u64 = 19_000_000_000;

fn invalid(message: String) -> ApiError {
    ApiError::unprocessable(format!("Invalid request.\n\n{message}"), DOCS_WORKFLOWS)
}

/// Substitutes `${{ inputs.x }}` and `${{ github.event.inputs.x }}` in a `run-name`.
pub(crate) fn render_run_name(template: &str, inputs: &Inputs) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 3..start + end].trim();
        let name = expr
            .strip_prefix("inputs.")
            .or_else(|| expr.strip_prefix("github.event.inputs."));
        if let Some(value) = name.and_then(|n| inputs.get(n.trim())) {
            out.push_str(value);
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Checks the request against the workflow's declared inputs and fills in defaults.
fn validate_inputs(workflow: &WorkflowSpec, mut given: Inputs) -> Result<Inputs, ApiError> {
    let Some(declared) = &workflow.inputs else {
        return Ok(given);
    };
    let unexpected: Vec<&String> = given
        .keys()
        .filter(|k| !declared.iter().any(|d| &d.name == *k))
        .collect();
    if !unexpected.is_empty() {
        let list = unexpected
            .iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::unprocessable(
            format!("Unexpected inputs provided: [{list}]"),
            DOCS_WORKFLOWS,
        ));
    }
    for input in declared {
        match given.get(&input.name) {
            Some(value) => {
                if let Some(options) = &input.options
                    && !options.contains(value)
                {
                    return Err(ApiError::unprocessable(
                        format!(
                            "Provided value '{value}' for input '{}' not in the list of allowed values",
                            input.name
                        ),
                        DOCS_WORKFLOWS,
                    ));
                }
            }
            None => match &input.default {
                Some(default) => {
                    given.insert(input.name.clone(), default.clone());
                }
                None if input.required => {
                    return Err(ApiError::unprocessable(
                        format!("Required input '{}' not provided", input.name),
                        DOCS_WORKFLOWS,
                    ));
                }
                None => {}
            },
        }
    }
    Ok(given)
}

pub(crate) fn dispatch(
    shared: &Arc<Shared>,
    target: &Target,
    caller: &Caller,
    body: &[u8],
) -> ApiResult {
    let base = shared.base_url.as_str();
    let mut state = shared.lock();
    state.stats.dispatches_received += 1;
    let workflow = state
        .config
        .workflows
        .iter()
        .find(|w| w.file == target.name || w.id.to_string() == target.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(DOCS_WORKFLOWS))?;
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
            DOCS_WORKFLOWS,
        )
    })?;
    let object = value.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
            DOCS_WORKFLOWS,
        )
    })?;
    let mode = state.config.dispatch_mode;
    for key in object.keys() {
        let permitted = match key.as_str() {
            "ref" | "inputs" => true,
            "return_run_details" => !matches!(mode, DispatchMode::RejectRunDetailsField { .. }),
            _ => false,
        };
        if !permitted {
            let status = match (key.as_str(), mode) {
                ("return_run_details", DispatchMode::RejectRunDetailsField { status }) => {
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST)
                }
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return Err(ApiError::new(
                status,
                format!("Invalid request.\n\n{key:?} is not a permitted key."),
                DOCS_WORKFLOWS,
            ));
        }
    }
    let reference = match object.get("ref") {
        Some(Value::String(r)) => r.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "For 'properties/ref', {other} is not a string."
            )));
        }
        None => return Err(invalid("\"ref\" wasn't supplied.".to_owned())),
    };
    let want_details = match object.get("return_run_details") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "For 'properties/return_run_details', {other} is not a boolean."
            )));
        }
    };
    let mut inputs = BTreeMap::new();
    match object.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            let max = state.config.max_dispatch_inputs;
            if map.len() > max {
                return Err(invalid(format!(
                    "For 'properties/inputs', {} properties were given, the maximum is {max}.",
                    map.len()
                )));
            }
            for (k, v) in map {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(_) | Value::Number(_) => v.to_string(),
                    other => {
                        return Err(invalid(format!(
                            "For 'properties/{k}', {other} is not a string."
                        )));
                    }
                };
                inputs.insert(k.clone(), text);
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "For 'properties/inputs', {other} is not an object."
            )));
        }
    }
    if !workflow.dispatchable {
        return Err(ApiError::unprocessable(
            "Workflow does not have 'workflow_dispatch' trigger",
            DOCS_WORKFLOWS,
        ));
    }
    let branch = reference
        .strip_prefix("refs/heads/")
        .or_else(|| reference.strip_prefix("refs/tags/"))
        .unwrap_or(&reference);
    if !state.config.refs.iter().any(|r| r == branch) {
        return Err(ApiError::unprocessable(
            format!("No ref found for: {reference}"),
            DOCS_WORKFLOWS,
        ));
    }
    let branch = branch.to_owned();
    let inputs = validate_inputs(&workflow, inputs)?;

    let id = FIRST_RUN_ID + state.next_id();
    let run_number = state
        .runs
        .iter()
        .filter(|r| r.workflow_id == workflow.id)
        .count() as u64
        + 1;
    let display_title = match &workflow.run_name {
        Some(template) => render_run_name(template, &inputs),
        None => workflow.name.clone(),
    };
    let actor = state.config.actor_login.clone();
    let created = now();
    state.runs.push(Run {
        id,
        workflow_id: workflow.id,
        run_number,
        inputs,
        display_title,
        head_sha: sha_of_ref(&branch),
        head_branch: branch,
        status: RunStatus::Queued,
        conclusion: None,
        created_at: created,
        updated_at: created,
        run_started_at: created,
        actor,
        failure_reason: None,
        finishing: false,
    });
    state.stats.runs_created += 1;
    let run_url = format!("{}/actions/runs/{id}", json::repo_api(base, &state.config));
    let html_url = format!("{}/actions/runs/{id}", json::repo_html(base, &state.config));
    drop(state);
    tracing::debug!(run_id = id, ?caller, "github-sim dispatched run");

    let task = tokio::spawn(progress(Arc::clone(shared), id));
    shared
        .tasks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(task.abort_handle());

    if want_details && mode == DispatchMode::RunDetails {
        Ok(Reply::json(
            StatusCode::OK,
            json!({ "workflow_run_id": id, "run_url": run_url, "html_url": html_url }),
        ))
    } else {
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }
}

/// `POST .../actions/runs/{id}/cancel`: a run that has not completed is cancelled (GitHub answers
/// `202 Accepted` with `{}`; the run ends `completed` / `cancelled` and no further step of it runs,
/// so nothing more is published); a completed run is `409 Conflict`; an unknown one 404.
pub(crate) fn cancel(shared: &Shared, target: &Target) -> ApiResult {
    let mut state = shared.lock();
    let run = state
        .run_mut(target.id)
        .ok_or_else(|| ApiError::not_found(DOCS_CANCEL_RUN))?;
    if run.status == RunStatus::Completed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Cannot cancel a workflow run that is completed.",
            DOCS_CANCEL_RUN,
        ));
    }
    let t = now();
    run.status = RunStatus::Completed;
    run.conclusion = Some(Conclusion::Cancelled);
    // A timer (or a test) finishing the run later finds it finishing and publishes nothing.
    run.finishing = true;
    run.updated_at = t;
    drop(state);
    tracing::debug!(run_id = target.id, "github-sim cancelled run");
    Ok(Reply::json(StatusCode::ACCEPTED, json!({})))
}

/// Moves a run along by the configured timing; a `None` duration leaves it to the test.
async fn progress(shared: Arc<Shared>, run_id: u64) {
    let timing = shared.lock().config.run_timing;
    let Some(queued) = timing.queued else { return };
    tokio::time::sleep(queued).await;
    start_run(&shared, run_id);
    let Some(in_progress) = timing.in_progress else {
        return;
    };
    tokio::time::sleep(in_progress).await;
    let decided = {
        let state = shared.lock();
        let outcome = Arc::clone(&state.config.outcome);
        state
            .runs
            .iter()
            .find(|r| r.id == run_id)
            .map(|r| (outcome, r.inputs.clone()))
    };
    if let Some((outcome, inputs)) = decided {
        finish_run(&shared, run_id, outcome(&inputs)).await;
    }
}

/// queued -> in_progress. False when the run is unknown or already past queued.
pub(crate) fn start_run(shared: &Shared, run_id: u64) -> bool {
    let mut state = shared.lock();
    let Some(run) = state.run_mut(run_id) else {
        return false;
    };
    if run.status != RunStatus::Queued {
        return false;
    }
    let t = now();
    run.status = RunStatus::InProgress;
    run.run_started_at = t;
    run.updated_at = t;
    true
}

/// Completes a run; on success it first publishes the hook's files. False when the run is unknown or
/// already completing.
pub(crate) async fn finish_run(shared: &Shared, run_id: u64, conclusion: Conclusion) -> bool {
    start_run(shared, run_id);
    let (inputs, publish, step) = {
        let mut state = shared.lock();
        let publish = Arc::clone(&state.config.publish);
        let step = state.config.run_timing.publish_step;
        let Some(run) = state.run_mut(run_id) else {
            return false;
        };
        if run.finishing {
            return false;
        }
        run.finishing = true;
        (run.inputs.clone(), publish, step)
    };
    let mut conclusion = conclusion;
    let mut failure_reason = None;
    if conclusion == Conclusion::Success {
        let files = publish(&inputs);
        if let Err(reason) = publish_files(shared, files, step).await {
            tracing::debug!(run_id, %reason, "github-sim run failed to publish");
            conclusion = Conclusion::Failure;
            failure_reason = Some(reason);
        }
    }
    let mut state = shared.lock();
    // A run cancelled while it published stays cancelled (the step in flight still completed).
    if let Some(run) = state.run_mut(run_id)
        && run.status != RunStatus::Completed
    {
        run.status = RunStatus::Completed;
        run.conclusion = Some(conclusion);
        run.failure_reason = failure_reason;
        run.updated_at = now();
    }
    true
}

fn describe(err: &ApiError) -> String {
    match &err.errors {
        Some(errors) => format!("{} {} {errors}", err.status.as_u16(), err.message),
        None => format!("{} {}", err.status.as_u16(), err.message),
    }
}

/// Publishes files grouped by tag: into the existing published release of the tag when there is one
/// (the per-driver-version layout), else draft -> upload -> publish.
pub(crate) async fn publish_files(
    shared: &Shared,
    files: Vec<PublishedFile>,
    step: Duration,
) -> Result<(), String> {
    let mut by_tag: Vec<(String, Vec<PublishedFile>)> = Vec::new();
    for file in files {
        match by_tag.iter_mut().find(|(tag, _)| *tag == file.tag) {
            Some((_, group)) => group.push(file),
            None => by_tag.push((file.tag.clone(), vec![file])),
        }
    }
    for (tag, group) in by_tag {
        let (release_id, created) = {
            let mut state = shared.lock();
            match state.published_by_tag(&tag) {
                Some(existing) if existing.immutable => {
                    return Err(format!(
                        "422 Cannot upload assets to an immutable release ({tag})"
                    ));
                }
                Some(existing) => (existing.id, false),
                None => {
                    let patch = ReleasePatch {
                        tag_name: Some(tag.clone()),
                        name: Some(tag.clone()),
                        draft: Some(true),
                        ..ReleasePatch::default()
                    };
                    (
                        state
                            .create_release(patch, ACTIONS_BOT_LOGIN)
                            .map_err(|e| describe(&e))?,
                        true,
                    )
                }
            }
        };
        tokio::time::sleep(step).await;
        {
            let mut state = shared.lock();
            for file in group {
                state
                    .upload_asset(
                        release_id,
                        &file.name,
                        None,
                        &file.content_type,
                        file.bytes,
                        ACTIONS_BOT_LOGIN,
                    )
                    .map_err(|e| describe(&e))?;
            }
        }
        if created {
            tokio::time::sleep(step).await;
            let patch = ReleasePatch {
                draft: Some(false),
                ..ReleasePatch::default()
            };
            shared
                .lock()
                .update_release(release_id, patch)
                .map_err(|e| describe(&e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkflowInput;

    #[test]
    fn run_name_substitutes_inputs() {
        let inputs = Inputs::from([("build_id".to_owned(), "b-42".to_owned())]);
        assert_eq!(
            render_run_name("driver-build ${{ inputs.build_id }}", &inputs),
            "driver-build b-42"
        );
        assert_eq!(
            render_run_name("x ${{github.event.inputs.build_id}} y", &inputs),
            "x b-42 y"
        );
        assert_eq!(render_run_name("${{ inputs.missing }}!", &inputs), "!");
        assert_eq!(
            render_run_name("broken ${{ inputs.build_id", &inputs),
            "broken ${{ inputs.build_id"
        );
    }

    #[test]
    fn declared_inputs_are_enforced() {
        let mut workflow = WorkflowSpec::driver_build();
        workflow.inputs = Some(vec![
            WorkflowInput::required("a"),
            WorkflowInput::optional("b", Some("dflt")),
            WorkflowInput {
                name: "c".into(),
                required: false,
                default: None,
                options: Some(vec!["x".into()]),
            },
        ]);
        let given = |pairs: &[(&str, &str)]| -> Inputs {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let ok = validate_inputs(&workflow, given(&[("a", "1")])).expect("valid");
        assert_eq!(ok.get("b").map(String::as_str), Some("dflt"));
        let msg = |r: Result<Inputs, ApiError>| r.err().map(|e| e.message).unwrap_or_default();
        assert!(msg(validate_inputs(&workflow, given(&[]))).contains("Required input 'a'"));
        assert!(
            msg(validate_inputs(&workflow, given(&[("a", "1"), ("z", "2")])))
                .contains("Unexpected inputs")
        );
        assert!(
            msg(validate_inputs(&workflow, given(&[("a", "1"), ("c", "y")])))
                .contains("allowed values")
        );
    }
}
