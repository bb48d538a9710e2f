//! The driver's git repository as the service reads it, against real git: tags listed through the
//! bare mirror name commits (an annotated tag peels to its commit, never to the tag object), a
//! moved or deleted tag is seen at the next listing, `git archive` of a commit (or of a
//! subdirectory of it) is exactly that commit's tree, a path and a `file://` URL name the same
//! repository, and the resolver lists the tags at most once per interval however many unknown
//! versions arrive at once (counted in git fetches).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use build_service::source::{
    GitRepository, Resolution, SourceRepository, SourceResolver, SourceSettings,
};
use kernel_id::{DriverVersion, SourceCommit};
use testkit::SampleDriverRepo;

fn commit(id: &str) -> SourceCommit {
    SourceCommit::parse(id).unwrap()
}

fn version(raw: &str) -> DriverVersion {
    DriverVersion::parse(raw).unwrap()
}

#[tokio::test]
async fn tags_resolve_to_their_commits_through_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SampleDriverRepo::create_tagged(&dir.path().join("repo"), &["v0.1.2"]).unwrap();
    let first = repo.head().unwrap();
    let second = repo.commit_file("VERSION", b"2\n", "second").unwrap();
    let tag_object = repo.tag_annotated("v0.2.0", &second, "v0.2.0").unwrap();
    let git = GitRepository::new(
        &repo.path().to_string_lossy(),
        dir.path().join("state/driver-source.git"),
    )
    .unwrap();
    let canonical = std::fs::canonicalize(repo.path()).unwrap();
    assert_eq!(git.uri(), format!("file://{}", canonical.display()));
    assert_eq!(
        git.slsa_uri(),
        format!("git+file://{}", canonical.display())
    );

    let tags = git.list_tags().await.unwrap();
    assert!(
        git.mirror().join("HEAD").is_file(),
        "a bare mirror was made"
    );
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert_eq!(tags["v0.1.2"], commit(&first));
    assert_eq!(
        tags["v0.2.0"],
        commit(&second),
        "the annotated tag's commit, not its tag object {tag_object}"
    );

    // Moved, deleted and new tags are seen at the next listing.
    let third = repo.commit_file("VERSION", b"3\n", "third").unwrap();
    repo.move_tag("v0.1.2", &third).unwrap();
    repo.delete_tag("v0.2.0").unwrap();
    repo.tag("v0.3.0", &first).unwrap();
    let tags = git.list_tags().await.unwrap();
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert_eq!(tags["v0.1.2"], commit(&third));
    assert_eq!(tags["v0.3.0"], commit(&first));
    assert_eq!(git.refreshes(), 2, "one clone, one fetch");

    // A file:// URL of the same repository lists the same tags.
    let url = GitRepository::new(
        &format!("file://{}", canonical.display()),
        dir.path().join("state/other.git"),
    )
    .unwrap();
    assert_eq!(url.list_tags().await.unwrap(), tags);
    assert_eq!(url.uri(), format!("file://{}", canonical.display()));
}

#[tokio::test]
async fn an_export_is_exactly_the_commits_tree() {
    let dir = tempfile::tempdir().unwrap();
    let repo =
        SampleDriverRepo::create_in(&dir.path().join("repo"), "driver/example-driver").unwrap();
    let first = repo.head().unwrap();
    repo.tag("v0.1.2", &first).unwrap();
    let second = repo
        .commit_file("extra/notes.txt", b"second\n", "second")
        .unwrap();
    // A commit the tags no longer name stays exportable (builds reserved earlier use it).
    repo.move_tag("v0.1.2", &second).unwrap();
    let git = GitRepository::new(
        &repo.path().to_string_lossy(),
        dir.path().join("driver-source.git"),
    )
    .unwrap();
    git.list_tags().await.unwrap();

    let subdir = PathBuf::from("driver/example-driver");
    let old = dir.path().join("old");
    git.export_blocking(&commit(&first), &subdir, &old).unwrap();
    let new = dir.path().join("new");
    git.export_blocking(&commit(&second), &subdir, &new)
        .unwrap();
    let whole = dir.path().join("whole");
    git.export_blocking(&commit(&second), &PathBuf::new(), &whole)
        .unwrap();

    let workspace = common::tree(&testkit::workspace_root().join("driver/example-driver"));
    assert_eq!(
        common::tree(&old),
        workspace,
        "the first commit is the driver"
    );
    let mut expected = workspace.clone();
    expected.insert("extra/notes.txt".to_owned(), b"second\n".to_vec());
    assert_eq!(common::tree(&new), expected);
    assert!(
        whole
            .join("driver/example-driver/extra/notes.txt")
            .is_file()
    );
    assert!(!whole.join(".git").exists());
    assert!(
        !whole.join("pax_global_header").exists(),
        "git archive's pax header is metadata, not a file"
    );

    // Nothing is written over an existing directory, and an unknown commit is an error naming it.
    assert!(git.export_blocking(&commit(&first), &subdir, &old).is_err());
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let error = git
        .export_blocking(&commit(unknown), &subdir, &dir.path().join("none"))
        .unwrap_err();
    assert!(error.to_string().contains(unknown), "{error}");
    let error = git
        .export_blocking(
            &commit(&first),
            &PathBuf::from("no/such/dir"),
            &dir.path().join("nodir"),
        )
        .unwrap_err();
    assert!(error.to_string().contains("no/such/dir"), "{error}");
    assert!(
        git.export_blocking(
            &commit(&first),
            &PathBuf::from("../escape"),
            &dir.path().join("escape")
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_fresh_mirror_exports_a_commit_without_a_listing_first() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SampleDriverRepo::create_tagged(&dir.path().join("repo"), &["v0.1.2"]).unwrap();
    let head = repo.head().unwrap();
    let git = GitRepository::new(
        &repo.path().to_string_lossy(),
        dir.path().join("driver-source.git"),
    )
    .unwrap();
    let out = dir.path().join("out");
    git.export_blocking(&commit(&head), &PathBuf::new(), &out)
        .unwrap();
    assert!(out.join("example_driver.c").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_versions_fetches_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SampleDriverRepo::create_tagged(&dir.path().join("repo"), &["v0.1.2"]).unwrap();
    let git = GitRepository::new(
        &repo.path().to_string_lossy(),
        dir.path().join("driver-source.git"),
    )
    .unwrap();
    let interval = Duration::from_secs(3);
    let resolver = Arc::new(SourceResolver::new(
        Arc::new(git.clone()),
        SourceSettings {
            refresh_interval: interval,
            max_age: Duration::from_secs(60),
        },
    ));
    assert_eq!(
        resolver.resolve(&version("v0.1.2")).await,
        Resolution::Resolved(commit(&repo.head().unwrap()))
    );
    assert_eq!(git.refreshes(), 1);
    let started = std::time::Instant::now();
    let burst: Vec<_> = (0..100)
        .map(|n| {
            let resolver = Arc::clone(&resolver);
            tokio::spawn(async move { resolver.resolve(&version(&format!("v9.9.{n}"))).await })
        })
        .collect();
    for lookup in burst {
        assert_eq!(lookup.await.unwrap(), Resolution::UnknownVersion);
    }
    let within_interval = started.elapsed() < interval;
    assert!(
        git.refreshes() <= 2,
        "{} fetches for a burst of unknown versions",
        git.refreshes()
    );
    if within_interval {
        // The first listing was less than an interval ago: the whole burst listed nothing.
        assert_eq!(git.refreshes(), 1, "the burst fetched within the interval");
    }
    // A tag pushed now is found by the first lookup after the interval, with one more fetch.
    repo.tag("v0.2.0", &repo.head().unwrap()).unwrap();
    tokio::time::sleep(interval).await;
    let before = git.refreshes();
    assert!(matches!(
        resolver.resolve(&version("v0.2.0")).await,
        Resolution::Resolved(_)
    ));
    assert_eq!(git.refreshes(), before + 1);
}

#[tokio::test]
async fn an_unreachable_repository_is_unavailable_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SampleDriverRepo::create_tagged(&dir.path().join("repo"), &["v0.1.2"]).unwrap();
    let git = GitRepository::new(
        &repo.path().to_string_lossy(),
        dir.path().join("driver-source.git"),
    )
    .unwrap();
    std::fs::rename(repo.path(), dir.path().join("gone")).unwrap();
    let resolver = SourceResolver::new(Arc::new(git.clone()), SourceSettings::default());
    let Resolution::Unavailable(reason) = resolver.resolve(&version("v0.1.2")).await else {
        panic!("a repository that cannot be cloned is unavailable");
    };
    assert!(reason.contains(&git.uri()), "{reason}");
    assert!(!git.mirror().exists(), "no half-made mirror is left");
    assert!(
        GitRepository::new("/no/such/repository", dir.path().join("m.git")).is_err(),
        "a missing local path is refused at once"
    );
}
