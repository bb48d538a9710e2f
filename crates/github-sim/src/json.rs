//! JSON renderings of the simulator's objects in the REST v3 (2022-11-28) shapes: simple-user,
//! minimal-repository, release, release-asset, workflow-run, git-ref and git-tag, plus timestamp
//! formats.
//!
//! URLs point at the simulator itself: API URLs at `{base}/repos/...`, "html" and browser-download URLs at
//! `{base}/{owner}/{repo}/...`, uploads at the same server (GitHub uses uploads.github.com).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::config::{SimConfig, WorkflowSpec};
use crate::state::{ACTIONS_BOT_ID, ACTIONS_BOT_LOGIN, Asset, GitRef, Release, Run, TagObject};

const ISO8601: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const HTTP_DATE: &[BorrowedFormatItem<'static>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// Path-segment encoding as GitHub emits it in download URLs (`+` becomes `%2B`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

pub(crate) fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// `2026-11-22T23:08:26Z`
pub(crate) fn iso(t: OffsetDateTime) -> String {
    t.format(ISO8601).unwrap_or_default()
}

/// `Sun, 22 Nov 2026 23:08:26 GMT` (HTTP `Last-Modified`).
pub(crate) fn http_date(t: OffsetDateTime) -> String {
    t.format(HTTP_DATE).unwrap_or_default()
}

pub(crate) fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(text.trim(), HTTP_DATE)
        .ok()
        .map(|t| t.assume_utc())
}

/// Stable small ids for the accounts the simulator knows.
pub(crate) fn user_id(login: &str) -> u64 {
    if login == ACTIONS_BOT_LOGIN {
        return ACTIONS_BOT_ID;
    }
    login.bytes().fold(1_000_003u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(b))
    }) % 90_000_000
        + 1_000_000
}

/// GitHub's `simple-user`.
pub(crate) fn user(base: &str, login: &str, kind: &str) -> Value {
    let id = user_id(login);
    let api = format!("{base}/users/{}", encode_segment(login));
    json!({
        "login": login,
        "id": id,
        "node_id": format!("U_kgDO{id:08X}"),
        "avatar_url": format!("{base}/_avatars/u/{id}?v=4"),
        "gravatar_id": "",
        "url": api,
        "html_url": format!("{base}/{}", encode_segment(login)),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": kind,
        "user_view_type": "public",
        "site_admin": false,
    })
}

fn account(base: &str, login: &str) -> Value {
    let kind = if login == ACTIONS_BOT_LOGIN {
        "Bot"
    } else {
        "User"
    };
    user(base, login, kind)
}

pub(crate) fn repo_api(base: &str, config: &SimConfig) -> String {
    format!(
        "{base}/repos/{}/{}",
        encode_segment(&config.owner),
        encode_segment(&config.repo)
    )
}

pub(crate) fn repo_html(base: &str, config: &SimConfig) -> String {
    format!(
        "{base}/{}/{}",
        encode_segment(&config.owner),
        encode_segment(&config.repo)
    )
}

/// GitHub's `minimal-repository` as embedded in workflow runs.
pub(crate) fn minimal_repository(base: &str, config: &SimConfig, repo_id: u64) -> Value {
    let api = repo_api(base, config);
    let mut repo = json!({
        "id": repo_id,
        "node_id": format!("R_kgDO{repo_id:08X}"),
        "name": config.repo,
        "full_name": format!("{}/{}", config.owner, config.repo),
        "private": true,
        "owner": user(base, &config.owner, "Organization"),
        "html_url": repo_html(base, config),
        "description": "Kernel driver artifacts",
        "fork": false,
        "url": api,
    });
    let templated = [
        ("archive_url", "/{archive_format}{/ref}"),
        ("assignees_url", "/assignees{/user}"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("branches_url", "/branches{/branch}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("comments_url", "/comments{/number}"),
        ("commits_url", "/commits{/sha}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("contents_url", "/contents/{+path}"),
        ("contributors_url", "/contributors"),
        ("deployments_url", "/deployments"),
        ("downloads_url", "/downloads"),
        ("events_url", "/events"),
        ("forks_url", "/forks"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("issue_events_url", "/issues/events{/number}"),
        ("issues_url", "/issues{/number}"),
        ("keys_url", "/keys{/key_id}"),
        ("labels_url", "/labels{/name}"),
        ("languages_url", "/languages"),
        ("merges_url", "/merges"),
        ("milestones_url", "/milestones{/number}"),
        (
            "notifications_url",
            "/notifications{?since,all,participating}",
        ),
        ("pulls_url", "/pulls{/number}"),
        ("releases_url", "/releases{/id}"),
        ("stargazers_url", "/stargazers"),
        ("statuses_url", "/statuses/{sha}"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("tags_url", "/tags"),
        ("teams_url", "/teams"),
        ("trees_url", "/git/trees{/sha}"),
        ("hooks_url", "/hooks"),
    ];
    for (field, suffix) in templated {
        repo[field] = Value::String(format!("{api}{suffix}"));
    }
    repo
}

pub(crate) fn browser_download_url(
    base: &str,
    config: &SimConfig,
    tag: &str,
    name: &str,
) -> String {
    format!(
        "{}/releases/download/{}/{}",
        repo_html(base, config),
        encode_segment(tag),
        encode_segment(name)
    )
}

pub(crate) fn storage_url(base: &str, asset: &Asset) -> String {
    format!(
        "{base}/_storage/{}/{}",
        asset.id,
        encode_segment(&asset.name)
    )
}

/// GitHub's `release-asset`.
pub(crate) fn asset(base: &str, config: &SimConfig, release: &Release, asset: &Asset) -> Value {
    json!({
        "url": format!("{}/releases/assets/{}", repo_api(base, config), asset.id),
        "browser_download_url": browser_download_url(base, config, &release.tag_name, &asset.name),
        "id": asset.id,
        "node_id": format!("RA_kwDO{:08X}", asset.id),
        "name": asset.name,
        "label": asset.label,
        "state": "uploaded",
        "content_type": asset.content_type,
        "size": asset.bytes.len(),
        "digest": asset.digest,
        "download_count": asset.download_count,
        "created_at": iso(asset.created_at),
        "updated_at": iso(asset.updated_at),
        "uploader": account(base, &asset.uploader),
    })
}

/// GitHub's `release`.
pub(crate) fn release(base: &str, config: &SimConfig, release: &Release) -> Value {
    let api = format!("{}/releases/{}", repo_api(base, config), release.id);
    let html_tag = if release.draft {
        // Drafts have no tag yet; GitHub shows them under a generated "untagged-..." name.
        format!(
            "untagged-{:020x}",
            u128::from(release.id).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    } else {
        encode_segment(&release.tag_name)
    };
    let archive = |kind: &str| -> Value {
        if release.draft {
            Value::Null
        } else {
            Value::String(format!(
                "{}/{kind}/{}",
                repo_api(base, config),
                encode_segment(&release.tag_name)
            ))
        }
    };
    json!({
        "url": api,
        "html_url": format!("{}/releases/tag/{html_tag}", repo_html(base, config)),
        "assets_url": format!("{api}/assets"),
        "upload_url": format!("{api}/assets{{?name,label}}"),
        "tarball_url": archive("tarball"),
        "zipball_url": archive("zipball"),
        "id": release.id,
        "node_id": format!("RE_kwDO{:08X}", release.id),
        "tag_name": release.tag_name,
        "target_commitish": release.target_commitish,
        "name": release.name,
        "body": release.body,
        "draft": release.draft,
        "prerelease": release.prerelease,
        "immutable": release.immutable,
        "created_at": iso(release.created_at),
        "updated_at": iso(release.updated_at),
        "published_at": release.published_at.map(iso),
        "author": account(base, &release.author),
        "assets": release.assets.iter().map(|a| asset(base, config, release, a)).collect::<Vec<_>>(),
    })
}

/// A ref name as a URL path, each segment encoded (`refs/tags/v1.0.0+x` -> `refs/tags/v1.0.0%2Bx`).
pub(crate) fn encode_ref_path(name: &str) -> String {
    name.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn git_object(base: &str, config: &SimConfig, object_type: &str, sha: &str) -> Value {
    let kind = match object_type {
        "tag" => "tags",
        "tree" => "trees",
        "blob" => "blobs",
        _ => "commits",
    };
    json!({
        "sha": sha,
        "type": object_type,
        "url": format!("{}/git/{kind}/{sha}", repo_api(base, config)),
    })
}

/// GitHub's `git-ref`: `{ref, node_id, url, object: {sha, type, url}}`.
pub(crate) fn git_ref(base: &str, config: &SimConfig, reference: &GitRef) -> Value {
    let digest = crate::state::sha_of_ref(&format!("node {}", reference.name));
    json!({
        "ref": reference.name,
        "node_id": format!("REF_kwDO{}", &digest[..16].to_ascii_uppercase()),
        "url": format!("{}/git/{}", repo_api(base, config), encode_ref_path(&reference.name)),
        "object": git_object(base, config, reference.object_type, &reference.sha),
    })
}

/// GitHub's `git-tag`: an annotated tag object.
pub(crate) fn git_tag(base: &str, config: &SimConfig, tag: &TagObject) -> Value {
    json!({
        "node_id": format!("TA_kwDO{}", &tag.sha[..16].to_ascii_uppercase()),
        "sha": tag.sha,
        "url": format!("{}/git/tags/{}", repo_api(base, config), tag.sha),
        "tag": tag.tag,
        "message": tag.message,
        "tagger": {
            "name": tag.tagger,
            "email": format!("{}@users.noreply.example", tag.tagger),
            "date": iso(tag.created_at),
        },
        "object": git_object(base, config, "commit", &tag.commit),
        "verification": {
            "verified": false,
            "reason": "unsigned",
            "signature": null,
            "payload": null,
            "verified_at": null,
        },
    })
}

/// The check suite a run belongs to (one per run here).
pub(crate) fn check_suite_id(run_id: u64) -> u64 {
    run_id + 5_000_000_000
}

/// GitHub's `workflow-run`.
pub(crate) fn run(
    base: &str,
    config: &SimConfig,
    repo_id: u64,
    workflow: &WorkflowSpec,
    run: &Run,
) -> Value {
    let repo_api = repo_api(base, config);
    let api = format!("{repo_api}/actions/runs/{}", run.id);
    let check_suite_id = check_suite_id(run.id);
    let repository = minimal_repository(base, config, repo_id);
    let commit_author =
        json!({ "name": run.actor, "email": format!("{}@users.noreply.example", run.actor) });
    json!({
        "id": run.id,
        "name": workflow.name,
        "node_id": format!("WFR_kwLO{:08X}", run.id),
        "check_suite_id": check_suite_id,
        "check_suite_node_id": format!("CS_kwDO{check_suite_id:08X}"),
        "head_branch": run.head_branch,
        "head_sha": run.head_sha,
        "path": format!(".github/workflows/{}", workflow.file),
        "display_title": run.display_title,
        "run_number": run.run_number,
        "run_attempt": 1,
        "event": "workflow_dispatch",
        "status": run.status.as_str(),
        "conclusion": run.conclusion.map(|c| c.as_str()),
        "workflow_id": workflow.id,
        "url": api,
        "html_url": format!("{}/actions/runs/{}", repo_html(base, config), run.id),
        "pull_requests": [],
        "referenced_workflows": [],
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "run_started_at": iso(run.run_started_at),
        "actor": account(base, &run.actor),
        "triggering_actor": account(base, &run.actor),
        "jobs_url": format!("{api}/jobs"),
        "logs_url": format!("{api}/logs"),
        "check_suite_url": format!("{repo_api}/check-suites/{check_suite_id}"),
        "artifacts_url": format!("{api}/artifacts"),
        "cancel_url": format!("{api}/cancel"),
        "rerun_url": format!("{api}/rerun"),
        "previous_attempt_url": null,
        "workflow_url": format!("{repo_api}/actions/workflows/{}", workflow.id),
        "head_commit": {
            "id": run.head_sha,
            "tree_id": crate::state::sha_of_ref(&format!("tree:{}", run.head_sha)),
            "message": format!("Merge {}", run.head_branch),
            "timestamp": iso(run.created_at),
            "author": commit_author,
            "committer": commit_author,
        },
        "repository": repository,
        "head_repository": repository,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip_at_second_precision() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("valid timestamp");
        let text = http_date(t);
        assert!(text.ends_with(" GMT"), "{text}");
        assert_eq!(parse_http_date(&text), Some(t));
        assert_eq!(iso(t).len(), "2026-11-22T23:08:26Z".len());
    }

    #[test]
    fn download_segments_encode_plus_and_tilde() {
        assert_eq!(encode_segment("6.12.1+deb12~x"), "6.12.1%2Bdeb12%7Ex");
    }
}
