//! The sample package cache (tests/common/sample.rs) must never hand out a package built by another
//! builder or from another driver source: its key has to change with every byte of either, and with
//! every file added, removed or renamed, while staying the same for the same inputs anywhere on disk.

mod common;

use common::sample::{cache_key, copy_tree, sample_source};

#[test]
fn the_sample_cache_key_follows_the_builder_and_every_driver_source_file() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let builder = scratch.path().join("driver-builder");
    std::fs::write(&builder, b"builder build 1").expect("write builder");
    let source = scratch.path().join("a/example-driver");
    copy_tree(&sample_source(), &source);
    let elsewhere = scratch.path().join("b/example-driver");
    copy_tree(&sample_source(), &elsewhere);
    let original = cache_key(&builder, &source);
    assert_eq!(
        cache_key(&builder, &elsewhere),
        original,
        "the same builder and source elsewhere on disk"
    );
    assert_eq!(
        cache_key(&builder, &sample_source()),
        original,
        "the copy is the committed source"
    );

    let c_file = source.join("example_driver.c");
    let text = std::fs::read(&c_file).expect("read source");
    let mut edited = text.clone();
    *edited.last_mut().expect("non-empty source") ^= 1;
    std::fs::write(&c_file, &edited).expect("edit source");
    assert_ne!(
        cache_key(&builder, &source),
        original,
        "one source byte changed"
    );
    std::fs::write(&c_file, &text).expect("restore source");
    assert_eq!(cache_key(&builder, &source), original, "restored source");

    std::fs::write(source.join("extra.h"), b"").expect("add file");
    assert_ne!(cache_key(&builder, &source), original, "a file added");
    std::fs::remove_file(source.join("extra.h")).expect("remove file");

    std::fs::rename(source.join("Kbuild"), source.join("Kbuild.old")).expect("rename");
    assert_ne!(cache_key(&builder, &source), original, "a file renamed");
    std::fs::rename(source.join("Kbuild.old"), source.join("Kbuild")).expect("rename back");

    std::fs::write(&builder, b"builder build 2").expect("rebuild builder");
    assert_ne!(
        cache_key(&builder, &source),
        original,
        "another builder binary"
    );
}
