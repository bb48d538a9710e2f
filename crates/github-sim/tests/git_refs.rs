//! The repository's tags as the git database endpoints show them, over real HTTP: `matching-refs`
//! (a name prefix, `200 []` when nothing matches, paginated with `Link`), `ref` (exact, GitHub's 404
//! shape), annotated tag objects through `git/tags/{sha}` (the ref names the tag object, the object
//! names the commit), tags created and moved by the test; and octocrab's own `Ref` and `GitTag`
//! models read every answer.

use github_sim::{GithubSim, Route, SimConfig, SimHandle};
use reqwest::{StatusCode, header};
use serde_json::Value;

const TOKEN: &str = "ghp_simulated";

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

async fn get(sim: &SimHandle, path: &str) -> (StatusCode, Option<String>, Value) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/repos/{}/{}{path}",
            sim.base_url(),
            sim.owner(),
            sim.repo()
        ))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::ACCEPT, "application/vnd.github+json")
        .send()
        .await
        .expect("the simulator answers");
    let status = response.status();
    let link = response
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, link, response.json().await.unwrap_or(Value::Null))
}

fn names(refs: &Value) -> Vec<&str> {
    refs.as_array()
        .expect("an array of refs")
        .iter()
        .map(|r| r["ref"].as_str().expect("ref"))
        .collect()
}

#[tokio::test]
async fn lightweight_and_annotated_tags_and_their_objects() {
    let sim = GithubSim::start(SimConfig::default()).await.unwrap();
    sim.create_tag("v0.1.2", C1).unwrap();
    let object = sim
        .create_annotated_tag("v0.2.0", C2, "release v0.2.0")
        .unwrap();
    assert_eq!(object.len(), 40);
    assert_ne!(object, C2);
    assert!(
        sim.create_tag("v0.1.2", C2).is_err(),
        "tags are not replaced"
    );
    assert!(sim.create_tag("bad tag", C1).is_err());
    assert!(sim.create_tag("v9.9.9", "ABC").is_err());

    let (status, link, refs) = get(&sim, "/git/matching-refs/tags").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(link, None);
    assert_eq!(names(&refs), ["refs/tags/v0.1.2", "refs/tags/v0.2.0"]);
    assert_eq!(refs[0]["object"]["type"], "commit");
    assert_eq!(refs[0]["object"]["sha"], C1);
    assert_eq!(refs[1]["object"]["type"], "tag");
    assert_eq!(refs[1]["object"]["sha"], object.as_str());
    assert!(
        refs[1]["object"]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/git/tags/{object}"))
    );

    let (status, _, tag) = get(&sim, &format!("/git/tags/{object}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tag["tag"], "v0.2.0");
    assert_eq!(tag["message"], "release v0.2.0");
    assert_eq!(tag["object"]["type"], "commit");
    assert_eq!(tag["object"]["sha"], C2);

    let (status, _, one) = get(&sim, "/git/ref/tags/v0.1.2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["ref"], "refs/tags/v0.1.2");

    // The branch the workflows run on is a ref too, never a tag.
    let (_, _, heads) = get(&sim, "/git/matching-refs/heads").await;
    assert_eq!(names(&heads), ["refs/heads/main"]);
    assert_eq!(sim.tags().len(), 2);
    assert_eq!(sim.tags()["v0.2.0"], C2, "the handle peels annotated tags");
}

#[tokio::test]
async fn missing_refs_answer_as_github_does() {
    let sim = GithubSim::start(SimConfig::default()).await.unwrap();
    sim.create_tag("v1.0.0", C1).unwrap();
    sim.create_tag("v10.0.0", C1).unwrap();

    // A prefix, not a path component: tags/v1 matches v1.0.0 and v10.0.0.
    let (_, _, refs) = get(&sim, "/git/matching-refs/tags/v1").await;
    assert_eq!(names(&refs), ["refs/tags/v1.0.0", "refs/tags/v10.0.0"]);
    let (status, _, refs) = get(&sim, "/git/matching-refs/tags/v9").await;
    assert_eq!((status, refs), (StatusCode::OK, Value::Array(Vec::new())));

    // Exact lookups do not match prefixes; 404 has GitHub's error shape.
    let (status, _, body) = get(&sim, "/git/ref/tags/v1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "Not Found");
    assert_eq!(
        body["documentation_url"],
        "https://docs.github.com/rest/git/refs#get-a-reference"
    );
    assert_eq!(body["status"], "404");
    let (status, _, body) = get(&sim, &format!("/git/tags/{C1}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["documentation_url"],
        "https://docs.github.com/rest/git/tags#get-a-tag"
    );
    // Another repository is not found at all.
    let response = reqwest::Client::new()
        .get(format!(
            "{}/repos/someone/else/git/matching-refs/tags",
            sim.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.requests(Route::MatchingRefs), 3);
}

#[tokio::test]
async fn matching_refs_are_paginated() {
    let sim = GithubSim::start(SimConfig::default()).await.unwrap();
    for n in 0..35 {
        sim.create_tag(&format!("v0.0.{n}"), C1).unwrap();
    }
    let (_, link, first) = get(&sim, "/git/matching-refs/tags").await;
    assert_eq!(
        first.as_array().unwrap().len(),
        30,
        "30 per page by default"
    );
    let link = link.expect("a Link header when more pages follow");
    assert!(link.contains("rel=\"next\""), "{link}");
    assert!(link.contains("page=2"), "{link}");
    let (_, _, second) = get(&sim, "/git/matching-refs/tags?page=2").await;
    assert_eq!(second.as_array().unwrap().len(), 5);
    let (_, link, all) = get(&sim, "/git/matching-refs/tags?per_page=100").await;
    assert_eq!(all.as_array().unwrap().len(), 35);
    assert_eq!(link, None);
}

#[tokio::test]
async fn moving_a_tag_renames_its_commit_and_keeps_old_objects_readable() {
    let sim = GithubSim::start(SimConfig::default()).await.unwrap();
    sim.create_tag("v0.1.2", C1).unwrap();
    let old_object = sim.create_annotated_tag("v0.2.0", C1, "first").unwrap();
    sim.move_tag("v0.1.2", C2).unwrap();
    sim.move_tag("v0.2.0", C2).unwrap();
    sim.move_tag("v0.3.0", C2).unwrap();
    let tags = sim.tags();
    assert_eq!(
        (
            tags["v0.1.2"].as_str(),
            tags["v0.2.0"].as_str(),
            tags["v0.3.0"].as_str()
        ),
        (C2, C2, C2)
    );
    let (_, _, moved) = get(&sim, "/git/ref/tags/v0.2.0").await;
    assert_eq!(moved["object"]["type"], "tag", "still annotated");
    let new_object = moved["object"]["sha"].as_str().unwrap();
    assert_ne!(new_object, old_object);
    let (_, _, old) = get(&sim, &format!("/git/tags/{old_object}")).await;
    assert_eq!(old["object"]["sha"], C1);
    let (_, _, new) = get(&sim, &format!("/git/tags/{new_object}")).await;
    assert_eq!(new["object"]["sha"], C2);
    assert_eq!(new["message"], "first");
    assert!(sim.delete_tag("v0.3.0"));
    assert!(!sim.delete_tag("v0.3.0"));
    let (status, _, _) = get(&sim, "/git/ref/tags/v0.3.0").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refs_and_tag_objects_deserialize_into_octocrab_models() {
    let sim = GithubSim::start(SimConfig::default()).await.unwrap();
    sim.create_tag("v0.1.2", C1).unwrap();
    let object = sim.create_annotated_tag("v0.2.0", C2, "annotated").unwrap();
    let gh = octocrab::Octocrab::builder()
        .base_uri(sim.base_url())
        .unwrap()
        .personal_token(TOKEN.to_owned())
        .build()
        .unwrap();
    let repo = format!("/repos/{}/{}", sim.owner(), sim.repo());
    let refs: Vec<octocrab::models::repos::Ref> = gh
        .get(format!("{repo}/git/matching-refs/tags"), None::<&()>)
        .await
        .expect("refs deserialize");
    assert_eq!(refs.len(), 2);
    assert!(matches!(
        &refs[0].object,
        octocrab::models::repos::Object::Commit { sha, .. } if sha == C1
    ));
    assert!(matches!(
        &refs[1].object,
        octocrab::models::repos::Object::Tag { sha, .. } if *sha == object
    ));
    let one: octocrab::models::repos::Ref = gh
        .get(format!("{repo}/git/ref/tags/v0.1.2"), None::<&()>)
        .await
        .expect("a ref deserializes");
    assert_eq!(one.ref_field, "refs/tags/v0.1.2");
    let tag: octocrab::models::repos::GitTag = gh
        .get(format!("{repo}/git/tags/{object}"), None::<&()>)
        .await
        .expect("a tag object deserializes");
    assert_eq!(tag.tag, "v0.2.0");
    let target = tag.object.expect("the tag names an object");
    assert_eq!(
        (target.r#type.as_str(), target.sha.as_str()),
        ("commit", C2)
    );
    assert!(tag.tagger.is_some() && tag.verification.is_some());
}
