//! A tiny static program run inside test guests to prove that `musl_binary` output runs on the
//! guest's architecture and that extra initramfs files arrive intact: it prints its architecture
//! and the first line of each file named on its command line.

fn main() {
    println!("TESTKIT-PROBE arch={}", std::env::consts::ARCH);
    for path in std::env::args().skip(1) {
        match std::fs::read_to_string(&path) {
            Ok(text) => println!(
                "TESTKIT-PROBE file={path} first-line={}",
                text.lines().next().unwrap_or_default()
            ),
            Err(error) => {
                println!("TESTKIT-PROBE file={path} error={error}");
                std::process::exit(1);
            }
        }
    }
}
