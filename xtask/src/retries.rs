//! Which tests needed a retry in the last nextest run, read from its JUnit report.
//!
//! A retry turns a failure into a pass, so it must never go unseen: `cargo xtask ci` prints every
//! retried test and fails when one lies outside the VM scenarios — the only tests whose guests can
//! lose a scheduling race under TCG. The scenario set lives here once; `.config/nextest.toml` carries
//! the same filter for its `retries` override, and a unit test keeps the two equal.

use std::path::Path;

use anyhow::{Context, Result};
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// What counts as a VM scenario, by nextest binary id (`package::binary`).
enum Scenario {
    /// Every test binary of a package.
    Package(&'static str),
    /// One test binary.
    Binary(&'static str),
}

const VM_SCENARIOS: &[Scenario] = &[
    Scenario::Package("fleet"),
    Scenario::Binary("driver-loader::vm"),
    Scenario::Binary("driver-loader::host_mode"),
    Scenario::Binary("driver-loader::container_runtime"),
    Scenario::Binary("testkit::boot"),
    Scenario::Binary("testkit::host_root"),
    Scenario::Binary("testkit::secure_boot"),
    Scenario::Binary("driver-builder::end_to_end"),
];

/// The nextest filterset for [`VM_SCENARIOS`], as `.config/nextest.toml` must spell it.
fn vm_scenario_filter() -> String {
    VM_SCENARIOS
        .iter()
        .map(|scenario| match scenario {
            Scenario::Package(name) => format!("package({name})"),
            Scenario::Binary(id) => format!("binary_id({id})"),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn is_vm_scenario(binary_id: &str) -> bool {
    VM_SCENARIOS.iter().any(|scenario| match scenario {
        Scenario::Package(name) => {
            binary_id == *name
                || binary_id
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with("::"))
        }
        Scenario::Binary(id) => binary_id == *id,
    })
}

/// A test that failed at least once and then passed.
#[derive(Debug, PartialEq, Eq)]
pub struct Retried {
    pub binary_id: String,
    pub test: String,
    pub failed_attempts: usize,
}

impl Retried {
    pub fn is_vm_scenario(&self) -> bool {
        is_vm_scenario(&self.binary_id)
    }
}

/// Every retried test in a nextest JUnit report: a `<testcase>` holding `<flakyFailure>` elements,
/// inside the `<testsuite>` named after its binary id.
pub fn retried_tests(junit: &str) -> Result<Vec<Retried>> {
    let mut reader = Reader::from_str(junit);
    let mut suite = String::new();
    let mut current: Option<Retried> = None;
    let mut out = Vec::new();
    loop {
        let event = reader
            .read_event()
            .with_context(|| format!("JUnit report at byte {}", reader.buffer_position()))?;
        match event {
            Event::Start(e) if e.local_name().as_ref() == "testsuite" => {
                suite = attribute(&e, "name")?;
            }
            Event::Start(e) if e.local_name().as_ref() == "testcase" => {
                current = Some(Retried {
                    binary_id: suite.clone(),
                    test: attribute(&e, "name")?,
                    failed_attempts: 0,
                });
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "flakyFailure" => {
                if let Some(case) = current.as_mut() {
                    case.failed_attempts += 1;
                }
            }
            Event::End(e) if e.local_name().as_ref() == "testcase" => {
                if let Some(case) = current.take().filter(|case| case.failed_attempts > 0) {
                    out.push(case);
                }
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

fn attribute(element: &BytesStart<'_>, name: &str) -> Result<String> {
    let value = element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .with_context(|| {
            format!(
                "<{}> without a {name} attribute",
                element.local_name().as_ref()
            )
        })?;
    Ok(quick_xml::escape::unescape(&value.value)?.into_owned())
}

/// Prints the retried tests of the run whose report is at `junit_path`; an error names the tests
/// outside the VM scenarios that needed a retry.
pub fn report(junit_path: &Path) -> Result<()> {
    let junit = std::fs::read_to_string(junit_path)
        .with_context(|| format!("reading the nextest JUnit report {}", junit_path.display()))?;
    let retried = retried_tests(&junit)?;
    if retried.is_empty() {
        println!("retried tests: none");
        return Ok(());
    }
    println!("retried tests ({}):", retried.len());
    for case in &retried {
        println!(
            "  {} {} — failed {} time(s) before passing{}",
            case.binary_id,
            case.test,
            case.failed_attempts,
            if case.is_vm_scenario() {
                " (VM scenario)"
            } else {
                " (NOT a VM scenario)"
            }
        );
    }
    let outside: Vec<String> = retried
        .iter()
        .filter(|case| !case.is_vm_scenario())
        .map(|case| format!("{} {}", case.binary_id, case.test))
        .collect();
    anyhow::ensure!(
        outside.is_empty(),
        "tests outside the VM scenarios ({}) needed a retry (a flaky test is a failing test): {}",
        vm_scenario_filter(),
        outside.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nextest_config_retries_exactly_the_vm_scenarios() {
        let config =
            std::fs::read_to_string(crate::workspace_root().join(".config").join("nextest.toml"))
                .expect("nextest.toml");
        let expected = format!("filter = '{}'\nretries = 1", vm_scenario_filter());
        assert!(
            config.contains(&expected),
            "nextest.toml must retry exactly the VM scenarios with:\n{expected}"
        );
        assert!(
            config.contains("[profile.default]\n")
                && config.contains("\nretries = 0\n")
                && config.contains("[profile.default.junit]\npath = \"junit.xml\""),
            "retries off by default and a JUnit report for `cargo xtask ci` to read"
        );
    }

    #[test]
    fn scenarios_match_by_package_or_exact_binary() {
        assert!(is_vm_scenario("fleet::herd"));
        assert!(is_vm_scenario("fleet"));
        assert!(!is_vm_scenario("fleetwood::herd"));
        assert!(is_vm_scenario("driver-loader::vm"));
        assert!(!is_vm_scenario("driver-loader::faults"));
        assert!(!is_vm_scenario("driver-loader"));
    }

    /// The shape nextest 0.9 writes for a run with one flaky and one clean test (trimmed).
    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="0" errors="0">
    <testsuite name="driver-loader::faults" tests="1" failures="0">
        <testcase name="a_clean_test" classname="driver-loader::faults" time="0.1"/>
        <testcase name="timeouts &amp; retries" classname="driver-loader::faults" time="0.2">
            <flakyFailure message="panicked" type="test failure">first attempt
                <system-out>out</system-out>
            </flakyFailure>
        </testcase>
    </testsuite>
    <testsuite name="fleet::herd" tests="1" failures="0">
        <testcase name="three_nodes" classname="fleet::herd" time="60">
            <flakyFailure message="a" type="test failure"/>
        </testcase>
    </testsuite>
</testsuites>"#;

    #[test]
    fn flaky_failures_are_read_per_test_with_their_binary() {
        let retried = retried_tests(REPORT).expect("report parses");
        assert_eq!(
            retried,
            vec![
                Retried {
                    binary_id: "driver-loader::faults".into(),
                    test: "timeouts & retries".into(),
                    failed_attempts: 1
                },
                Retried {
                    binary_id: "fleet::herd".into(),
                    test: "three_nodes".into(),
                    failed_attempts: 1
                },
            ]
        );
        assert!(!retried[0].is_vm_scenario() && retried[1].is_vm_scenario());
    }

    #[test]
    fn a_retry_outside_the_vm_scenarios_fails_the_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junit.xml");
        std::fs::write(&path, REPORT).expect("write");
        let error = report(&path)
            .expect_err("driver-loader::faults was retried")
            .to_string();
        assert!(
            error.contains("driver-loader::faults timeouts & retries"),
            "{error}"
        );
        assert!(!error.contains("fleet::herd"), "{error}");

        let only_vm = REPORT.replace(
            "<flakyFailure message=\"panicked\" type=\"test failure\">first attempt\n                <system-out>out</system-out>\n            </flakyFailure>",
            "",
        );
        std::fs::write(&path, only_vm).expect("write");
        report(&path).expect("a retried VM scenario is reported, not fatal");
    }
}
