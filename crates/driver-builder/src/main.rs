//! The `driver-builder` binary; see [`driver_builder::cli`] for the command line.

fn main() -> std::process::ExitCode {
    driver_builder::cli::main()
}
