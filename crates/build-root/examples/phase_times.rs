//! Prints how long each phase of a real sample-driver build takes in a clean root: base image
//! creation (when not cached), unpack, header install with apt, kbuild compile and cleanup.
//!
//! Usage: `cargo run -p build-root --example phase_times -- <distro version> <arch> <kernel release>...`,
//! e.g. `-- 12 x86_64 6.1.0-47-amd64` (Debian; run as root). Uses the same cache as the tests.

#[path = "../tests/integration/helpers.rs"]
#[allow(dead_code)]
mod helpers;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [distro_version, arch, releases @ ..] = args.as_slice() else {
        eprintln!("usage: phase_times <distro version> <arch> <kernel release>...");
        std::process::exit(2);
    };
    println!("| kernel | root | root creation | unpack | headers | compile | cleanup |");
    println!("|---|---|---|---|---|---|---|");
    for release in releases {
        let identity = helpers::identity(release, arch, distro_version);
        let scratch = tempfile::tempdir().expect("tempdir");
        let build = helpers::build_sample_driver(
            &identity,
            &scratch.path().join("out"),
            &scratch.path().join("build.log"),
        );
        println!(
            "| {release} | debian {distro_version} {arch} | {} | {:.1} s | {:.1} s | {:.1} s | {:.1} s |",
            build
                .root_created_in
                .map_or("cached".to_owned(), |took| format!(
                    "{:.1} s",
                    took.as_secs_f64()
                )),
            build.unpack.as_secs_f64(),
            build.headers.as_secs_f64(),
            build.compile.as_secs_f64(),
            build.cleanup.as_secs_f64(),
        );
        println!(
            "|  vermagic: {} |",
            helpers::modinfo(&build.module, "vermagic")
        );
    }
}
