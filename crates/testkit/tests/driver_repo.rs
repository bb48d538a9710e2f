//! The sample driver repository against git itself: tags name the commits they should (an annotated
//! tag peels to its commit, not to the tag object), a moved tag names the new commit, the files at a
//! commit are that commit's, and nothing depends on a git identity or configuration of the machine.

use std::process::Command;

use testkit::SampleDriverRepo;

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn tags_name_their_commits_and_follow_a_move() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SampleDriverRepo::create_tagged(dir.path(), &["v0.1.2", "v0.1.3"]).unwrap();
    let first = repo.head().unwrap();
    assert_eq!(first.len(), 40);
    assert!(repo.path().join("example_driver.c").is_file());
    assert_eq!(repo.tag_commit("v0.1.2").unwrap(), first);

    let second = repo
        .commit_file("VERSION", b"second\n", "second commit")
        .unwrap();
    assert_ne!(second, first);
    let tag_object = repo.tag_annotated("v0.2.0", &second, "annotated").unwrap();
    assert_ne!(
        tag_object, second,
        "an annotated tag is an object of its own"
    );
    assert_eq!(git(dir.path(), &["cat-file", "-t", &tag_object]), "tag");
    assert_eq!(repo.tag_commit("v0.2.0").unwrap(), second);
    assert_eq!(
        git(dir.path(), &["rev-parse", "v0.2.0^{commit}"]),
        second,
        "git peels the tag to the same commit"
    );

    repo.move_tag("v0.1.3", &second).unwrap();
    let tags = repo.tags().unwrap();
    assert_eq!(tags["v0.1.2"], first);
    assert_eq!(tags["v0.1.3"], second);
    assert_eq!(tags["v0.2.0"], second);
    assert_eq!(tags.len(), 3);

    assert!(repo.file_at(&first, "VERSION").is_err());
    assert_eq!(repo.file_at(&second, "VERSION").unwrap(), b"second\n");
    assert_eq!(
        git(dir.path(), &["log", "-1", "--format=%an <%ae>"]),
        format!(
            "{} <{}>",
            testkit::driver_repo::IDENTITY_NAME,
            testkit::driver_repo::IDENTITY_EMAIL
        )
    );
    repo.delete_tag("v0.1.3").unwrap();
    assert!(repo.tag_commit("v0.1.3").is_err());
}

#[test]
fn a_subdirectory_layout_and_a_refresh_that_follows_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SampleDriverRepo::create_in(dir.path(), "driver/example-driver").unwrap();
    assert!(
        dir.path()
            .join("driver/example-driver/example_driver.c")
            .is_file()
    );
    let head = repo.head().unwrap();
    let refreshed =
        SampleDriverRepo::refresh(dir.path(), "driver/example-driver", &["v0.1.0"]).unwrap();
    assert_eq!(
        refreshed.head().unwrap(),
        head,
        "nothing changed, no commit"
    );
    assert_eq!(refreshed.tag_commit("v0.1.0").unwrap(), head);

    // An edit in the repository is undone by the next refresh, in a new commit the tag follows.
    let edited = repo
        .commit_file("example_driver.c", b"/* edited */\n", "edit")
        .unwrap();
    let refreshed =
        SampleDriverRepo::refresh(dir.path(), "driver/example-driver", &["v0.1.0"]).unwrap();
    let now = refreshed.head().unwrap();
    assert_ne!(now, edited);
    assert_eq!(refreshed.tag_commit("v0.1.0").unwrap(), now);
    let workspace_source =
        std::fs::read(testkit::workspace_root().join("driver/example-driver/example_driver.c"))
            .unwrap();
    assert_eq!(
        refreshed.file_at(&now, "example_driver.c").unwrap(),
        workspace_source
    );
}
