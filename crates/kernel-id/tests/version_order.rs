//! kernel-id's version order against the real judges: generated and real versions are compared by
//! `dpkg --compare-versions` and by rpm 4.18 itself (`rpm.vercmp` and `rpm.ver` in rpm's Lua, i.e.
//! `rpmvercmp()` and the EVR comparison), and the order laws (antisymmetry, transitivity) are
//! checked on kernel-id alone. The judges run in batches — one shell loop for dpkg, one Lua chunk
//! for rpm — so the whole file stays within a few seconds.
//!
//! Real strings come from `tests/data/kernel-versions.txt` (provenance in the file). The judged tests
//! skip, saying so, only when dpkg or rpm is not installed.

use std::cmp::Ordering;
use std::io::Write;
use std::process::{Command, Stdio};

use kernel_id::{DebVersion, RpmEvr, dpkg_cmp, kernel_release_cmp, rpmvercmp};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------------
// Judges
// ---------------------------------------------------------------------------------------------

/// Whether `tool` runs; when it doesn't, says which test is skipped and why.
fn judge_available(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED {test}: `{tool}` is not installed, so there is no real judge to compare with"
        );
    }
    ok
}

fn ordering_of(word: &str) -> Ordering {
    match word {
        "lt" | "-1" => Ordering::Less,
        "eq" | "0" => Ordering::Equal,
        "gt" | "1" => Ordering::Greater,
        other => panic!("judge answered {other:?}"),
    }
}

/// `dpkg --compare-versions` on every pair, in one shell loop (dpkg judges one pair per run).
/// Any stderr output fails the test: dpkg warns about versions it considers invalid, and the
/// generators must only produce valid ones.
fn dpkg_judge(pairs: &[(String, String)]) -> Vec<Ordering> {
    const LOOP: &str = r#"while read -r a b; do
  if dpkg --compare-versions "$a" lt "$b"; then echo lt
  elif dpkg --compare-versions "$a" eq "$b"; then echo eq
  else echo gt; fi
done"#;
    let mut child = Command::new("sh")
        .args(["-c", LOOP])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let input: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Written from a thread so a full stdout pipe can't deadlock the two processes.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("dpkg loop finishes");
    writer
        .join()
        .expect("writer thread")
        .expect("stdin written");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "dpkg: {stderr}");
    let answers: Vec<Ordering> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(ordering_of)
        .collect();
    assert_eq!(answers.len(), pairs.len(), "one dpkg answer per pair");
    answers
}

/// A Lua string literal in long brackets: no generated character can end it early. No `%` is
/// ever generated, so rpm's macro expansion leaves the chunk alone.
fn lua_string(s: &str) -> String {
    format!("[==[{s}]==]")
}

/// rpm's answers for `pairs`, compared by rpm 4.18's `rpm.vercmp` in one Lua chunk.
fn rpm_judge(pairs: &[(String, String)]) -> Vec<Ordering> {
    let table: String = pairs
        .iter()
        .map(|(a, b)| format!("{{{},{}}},", lua_string(a), lua_string(b)))
        .collect();
    run_rpm_lua(
        &format!(
            "local pairs_ = {{{table}}} local out = {{}} \
             for _, p in ipairs(pairs_) do out[#out + 1] = tostring(rpm.vercmp(p[1], p[2])) end \
             print(table.concat(out, ' '))"
        ),
        pairs.len(),
    )
}

/// rpm's answers for every ordered pair of `items` (row-major), in one Lua chunk: the list goes in
/// once, so hundreds of items stay within the argument size limit.
fn rpm_judge_all_pairs(items: &[String]) -> Vec<Ordering> {
    let list: String = items
        .iter()
        .map(|s| format!("{},", lua_string(s)))
        .collect();
    run_rpm_lua(
        &format!(
            "local v = {{{list}}} local out = {{}} \
             for i = 1, #v do for j = 1, #v do out[#out + 1] = tostring(rpm.vercmp(v[i], v[j])) end end \
             print(table.concat(out, ' '))"
        ),
        items.len() * items.len(),
    )
}

fn run_rpm_lua(chunk: &str, answers_expected: usize) -> Vec<Ordering> {
    let out = Command::new("rpm")
        .arg("--eval")
        .arg(format!("%{{lua:{chunk}}}"))
        .output()
        .expect("rpm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "rpm: {stderr}");
    let answers: Vec<Ordering> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(ordering_of)
        .collect();
    assert_eq!(answers.len(), answers_expected, "one rpm answer per pair");
    answers
}

/// The first pair where kernel-id and the judge disagree, for the failure message.
fn first_disagreement(
    pairs: &[(String, String)],
    judged: &[Ordering],
    ours: impl Fn(&str, &str) -> Ordering,
) -> Option<String> {
    pairs.iter().zip(judged).find_map(|((a, b), judge)| {
        let mine = ours(a, b);
        (mine != *judge)
            .then(|| format!("{a:?} vs {b:?}: judge says {judge:?}, kernel-id {mine:?}"))
    })
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Pieces of Debian versions: digit runs with and without leading zeros, letters of both cases,
/// the Debian/Ubuntu markers, and every separator dpkg gives a meaning (`~`, `+`, `.`, `-`, `:`).
const DEB_TOKENS: &[&str] = &[
    "0", "00", "1", "01", "2", "9", "10", "010", "99", "100", "a", "b", "z", "A", "Z", "rc", "deb",
    "bpo", "ubuntu", "~", "~", "+", "+", ".", ".", ".", "-", ":",
];

/// Pieces of rpm versions: as for Debian plus rpm's `^` and `_`, and a non-ASCII letter (rpm only
/// knows ASCII letters, so it is a separator there). No `-` or `:`: rpm 4.18's Lua `rpm.vercmp`
/// (the judge) parses its arguments as `[epoch:]version[-release]` and compares them like
/// [`RpmEvr`], so on strings without those it is plain `rpmvercmp()`.
const RPM_TOKENS: &[&str] = &[
    "0", "00", "1", "01", "2", "9", "10", "010", "99", "100", "a", "b", "z", "A", "Z", "rc", "fc",
    "el", "amzn", "git", "~", "~", "^", "^", "+", "_", ".", ".", ".", "é",
];

fn tokens(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    vec(select(alphabet), 0..max).prop_map(|parts| parts.concat())
}

/// A valid Debian version: `[epoch:]upstream[-revision]` built from tokens; invalid combinations
/// (a `:` without an epoch, a trailing `-`) are dropped, since dpkg would only warn about them.
fn deb_version() -> impl Strategy<Value = String> {
    (
        proptest::option::of("0?[0-9]{1,2}"),
        "[0-9]{1,3}",
        tokens(DEB_TOKENS, 6),
        proptest::option::of(("[0-9a-z]{1,2}", tokens(DEB_TOKENS, 4))),
    )
        .prop_filter_map("valid Debian version", |(epoch, lead, rest, revision)| {
            let mut raw = String::new();
            if let Some(epoch) = epoch {
                raw.push_str(&epoch);
                raw.push(':');
            }
            raw.push_str(&lead);
            raw.push_str(&rest);
            if let Some((first, more)) = revision {
                raw.push('-');
                raw.push_str(&first);
                raw.push_str(&more);
            }
            DebVersion::parse(&raw).ok().map(|_| raw)
        })
}

/// Pairs that often share a prefix, so comparisons reach deep into the strings.
fn deb_pair() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (deb_version(), deb_version()),
        (deb_version(), tokens(DEB_TOKENS, 4), tokens(DEB_TOKENS, 4)).prop_filter_map(
            "valid Debian versions",
            |(base, x, y)| {
                let (a, b) = (format!("{base}{x}"), format!("{base}{y}"));
                (DebVersion::parse(&a).is_ok() && DebVersion::parse(&b).is_ok()).then_some((a, b))
            }
        ),
        deb_version().prop_map(|v| (v.clone(), v)),
    ]
}

/// A non-empty rpm version string without `-`/`:` (see [`RPM_TOKENS`]); rpm's Lua refuses the
/// empty string, so the empty case is covered by the unit tests only.
fn rpm_string() -> impl Strategy<Value = String> {
    vec(select(RPM_TOKENS), 1..8).prop_map(|parts| parts.concat())
}

fn rpm_string_pair() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (rpm_string(), rpm_string()),
        (rpm_string(), tokens(RPM_TOKENS, 4), tokens(RPM_TOKENS, 4))
            .prop_map(|(base, x, y)| (format!("{base}{x}"), format!("{base}{y}"))),
    ]
}

/// A valid rpm `[epoch:]version[-release]`.
fn rpm_evr() -> impl Strategy<Value = String> {
    (
        proptest::option::of("0?[0-9]{1,2}"),
        "[0-9]{1,2}",
        tokens(RPM_TOKENS, 5),
        proptest::option::of(("[0-9]{1,3}", tokens(RPM_TOKENS, 4))),
    )
        .prop_filter_map("valid rpm EVR", |(epoch, lead, rest, release)| {
            let mut raw = String::new();
            if let Some(epoch) = epoch {
                raw.push_str(&epoch);
                raw.push(':');
            }
            raw.push_str(&lead);
            raw.push_str(&rest);
            if let Some((first, more)) = release {
                raw.push('-');
                raw.push_str(&first);
                raw.push_str(&more);
            }
            RpmEvr::parse(&raw).ok().map(|_| raw)
        })
}

fn rpm_evr_pair() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (rpm_evr(), rpm_evr()),
        (
            rpm_evr(),
            "[0-9]{1,3}(\\.[a-z0-9]{1,3})?",
            proptest::option::of("[0-9]{1,3}(\\.[a-z0-9]{1,3})?"),
        )
            .prop_filter_map("valid rpm EVRs", |(base, x, y)| {
                // Same epoch and version, releases differing or one missing: what kernels need.
                let version = base.split('-').next().unwrap_or(&base);
                let a = format!("{version}-{x}");
                let b = match y {
                    Some(y) => format!("{version}-{y}"),
                    None => version.to_owned(),
                };
                (RpmEvr::parse(&a).is_ok() && RpmEvr::parse(&b).is_ok()).then_some((a, b))
            }),
    ]
}

/// Debian- and Ubuntu-style kernel releases (`6.1.0-9-amd64`, `6.12.43+deb12-cloud-amd64`,
/// `5.10.0-0.deb10.17-amd64`, `5.15.0-1016-gke`), with the occasional leading zero.
fn kernel_release() -> impl Strategy<Value = String> {
    (
        "[3-7]\\.0?[0-9]{1,2}\\.[0-9]{1,3}",
        prop_oneof![
            "-0?[0-9]{1,4}",
            "\\+deb1[1-3](\\.[0-9])?",
            "-0\\.deb1[0-2]\\.[0-9]{1,2}",
        ],
        select(
            &[
                "amd64",
                "cloud-amd64",
                "rt-amd64",
                "arm64",
                "generic",
                "generic-64k",
                "lowlatency",
                "aws",
                "gcp",
                "azure",
            ][..],
        ),
    )
        .prop_map(|(upstream, abi, flavor)| format!("{upstream}{abi}-{flavor}"))
}

fn kernel_release_pair() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (kernel_release(), kernel_release()),
        kernel_release().prop_map(|r| {
            // The same release with one more ABI step, or spelled with a leading zero.
            let bumped = r.replacen("-1", "-10", 1);
            (r, bumped)
        }),
    ]
}

/// As dpkg orders `a` and `b` as upstream versions: `{a}-0` puts all of `a` before the revision.
fn dpkg_release_pairs(pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (format!("{a}-0"), format!("{b}-0")))
        .collect()
}

/// kernel-id's release order refines dpkg's: the same where dpkg sees a difference, bytes where
/// dpkg sees none.
fn release_order_refining_dpkg(a: &str, b: &str, dpkg: Ordering) -> Ordering {
    match dpkg {
        Ordering::Equal => a.cmp(b),
        other => other,
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Every shrink step reruns a judge; the failure message already names the pair.
        max_shrink_iters: 4,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generated versions against the judges
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn dpkg_cmp_agrees_with_dpkg(pairs in vec(deb_pair(), 250)) {
        if !judge_available("dpkg", "dpkg_cmp_agrees_with_dpkg") {
            return Ok(());
        }
        let judged = dpkg_judge(&pairs);
        prop_assert_eq!(first_disagreement(&pairs, &judged, dpkg_cmp), None);
        let typed = |a: &str, b: &str| {
            DebVersion::parse(a).expect("generated valid").cmp(&DebVersion::parse(b).expect("generated valid"))
        };
        prop_assert_eq!(first_disagreement(&pairs, &judged, typed), None);
    }

    #[test]
    fn rpmvercmp_agrees_with_rpm(pairs in vec(rpm_string_pair(), 400)) {
        if !judge_available("rpm", "rpmvercmp_agrees_with_rpm") {
            return Ok(());
        }
        let judged = rpm_judge(&pairs);
        prop_assert_eq!(first_disagreement(&pairs, &judged, rpmvercmp), None);
    }

    #[test]
    fn rpm_evr_order_agrees_with_rpm(pairs in vec(rpm_evr_pair(), 400)) {
        if !judge_available("rpm", "rpm_evr_order_agrees_with_rpm") {
            return Ok(());
        }
        let judged = rpm_judge(&pairs);
        let typed = |a: &str, b: &str| {
            RpmEvr::parse(a).expect("generated valid").cmp(&RpmEvr::parse(b).expect("generated valid"))
        };
        prop_assert_eq!(first_disagreement(&pairs, &judged, typed), None);
    }

    #[test]
    fn kernel_release_order_agrees_with_dpkg(pairs in vec(kernel_release_pair(), 150)) {
        if !judge_available("dpkg", "kernel_release_order_agrees_with_dpkg") {
            return Ok(());
        }
        let judged = dpkg_judge(&dpkg_release_pairs(&pairs));
        for ((a, b), dpkg) in pairs.iter().zip(judged) {
            prop_assert_eq!(
                kernel_release_cmp(a, b),
                release_order_refining_dpkg(a, b, dpkg),
                "{} vs {}", a, b
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Order laws, kernel-id alone
// ---------------------------------------------------------------------------------------------

/// Antisymmetry on every pair and transitivity on every triple: sorting must leave no pair out of
/// order, and equal elements must be interchangeable.
fn assert_total_order<T: std::fmt::Debug>(items: &mut [T], cmp: impl Fn(&T, &T) -> Ordering) {
    for a in items.iter() {
        assert_eq!(cmp(a, a), Ordering::Equal, "reflexive: {a:?}");
        for b in items.iter() {
            assert_eq!(cmp(a, b), cmp(b, a).reverse(), "antisymmetric: {a:?} {b:?}");
        }
    }
    items.sort_by(&cmp);
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            assert_ne!(
                cmp(a, b),
                Ordering::Greater,
                "transitive: {a:?} before {b:?}"
            );
        }
    }
    for triple in items.windows(3) {
        if cmp(&triple[0], &triple[1]) == Ordering::Equal
            && cmp(&triple[1], &triple[2]) == Ordering::Equal
        {
            assert_eq!(cmp(&triple[0], &triple[2]), Ordering::Equal, "{triple:?}");
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn dpkg_order_is_a_total_order(mut versions in vec(deb_version(), 40)) {
        assert_total_order(&mut versions, |a, b| dpkg_cmp(a, b));
        let mut typed: Vec<DebVersion> =
            versions.iter().map(|v| DebVersion::parse(v).expect("generated valid")).collect();
        assert_total_order(&mut typed, Ord::cmp);
    }

    #[test]
    fn rpm_order_is_a_total_order(
        mut strings in vec(rpm_string(), 40),
        evrs in vec(rpm_evr(), 40),
    ) {
        assert_total_order(&mut strings, |a, b| rpmvercmp(a, b));
        let mut typed: Vec<RpmEvr> =
            evrs.iter().map(|v| RpmEvr::parse(v).expect("generated valid")).collect();
        assert_total_order(&mut typed, Ord::cmp);
    }

    #[test]
    fn kernel_release_order_is_total_and_only_identical_strings_are_equal(
        mut releases in vec(kernel_release(), 40),
    ) {
        assert_total_order(&mut releases, |a, b| kernel_release_cmp(a, b));
        for a in &releases {
            for b in &releases {
                prop_assert_eq!(kernel_release_cmp(a, b) == Ordering::Equal, a == b);
            }
        }
    }

    #[test]
    fn comparisons_never_panic(a in "\\PC{0,12}", b in "\\PC{0,12}") {
        let _ = (dpkg_cmp(&a, &b), rpmvercmp(&a, &b), kernel_release_cmp(&a, &b));
        let _ = (DebVersion::parse(&a), RpmEvr::parse(&a));
    }
}

// ---------------------------------------------------------------------------------------------
// Real version lists
// ---------------------------------------------------------------------------------------------

/// The strings of one `[section]` of the fixture.
fn fixture(section: &str) -> Vec<String> {
    let text = include_str!("data/kernel-versions.txt");
    let header = format!("[{section}]");
    let mut lines = text.lines().skip_while(|line| *line != header).skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        if !line.is_empty() && !line.starts_with('#') {
            out.push(line.to_owned());
        }
    }
    assert!(!out.is_empty(), "fixture section {section} is empty");
    out
}

fn neighbours(sorted: &[String]) -> Vec<(String, String)> {
    sorted
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

#[test]
fn real_debian_versions_sort_as_dpkg_sorts_them() {
    let mut versions = fixture("deb");
    for v in &versions {
        DebVersion::parse(v).unwrap_or_else(|e| panic!("real version rejected: {e}"));
    }
    versions.sort_by(|a, b| dpkg_cmp(a, b));
    assert_total_order(&mut versions.clone(), |a, b| dpkg_cmp(a, b));
    let pos = |v: &str| versions.iter().position(|x| x == v).expect("in fixture");
    assert!(pos("6.1.170-3~bpo11+1") < pos("6.1.170-3"));
    assert!(pos("4.19.316-1") < pos("6.1.158-1"));
    if !judge_available("dpkg", "real_debian_versions_sort_as_dpkg_sorts_them") {
        return;
    }
    let pairs = neighbours(&versions);
    let judged = dpkg_judge(&pairs);
    assert_eq!(first_disagreement(&pairs, &judged, dpkg_cmp), None);
    assert!(
        judged.iter().all(|o| o.is_le()),
        "dpkg agrees the list is sorted"
    );
}

#[test]
fn real_rpm_evrs_sort_as_rpm_sorts_them() {
    let mut evrs = fixture("rpm");
    let typed = |a: &String, b: &String| {
        RpmEvr::parse(a)
            .expect("real EVR")
            .cmp(&RpmEvr::parse(b).expect("real EVR"))
    };
    for v in &evrs {
        RpmEvr::parse(v).unwrap_or_else(|e| panic!("real EVR rejected: {e}"));
    }
    evrs.sort_by(typed);
    assert_total_order(&mut evrs.clone(), typed);
    if !judge_available("rpm", "real_rpm_evrs_sort_as_rpm_sorts_them") {
        return;
    }
    // Every pair: cheap, because one Lua chunk compares them all.
    let all_pairs = |items: &[String]| -> Vec<(String, String)> {
        items
            .iter()
            .flat_map(|a| items.iter().map(move |b| (a.clone(), b.clone())))
            .collect()
    };
    let judged = rpm_judge_all_pairs(&evrs);
    let pairs = all_pairs(&evrs);
    assert_eq!(
        first_disagreement(&pairs, &judged, |a, b| typed(&a.to_owned(), &b.to_owned())),
        None
    );
    // `rpmvercmp` alone on the parts: versions with versions, releases with releases.
    let part_of: [fn(&RpmEvr) -> String; 2] = [
        |e| e.version().to_owned(),
        |e| e.release().unwrap_or("0").to_owned(),
    ];
    for part in part_of {
        let mut parts: Vec<String> = evrs
            .iter()
            .map(|v| part(&RpmEvr::parse(v).expect("real EVR")))
            .collect();
        parts.sort();
        parts.dedup();
        let judged = rpm_judge_all_pairs(&parts);
        assert_eq!(
            first_disagreement(&all_pairs(&parts), &judged, rpmvercmp),
            None
        );
    }
}

#[test]
fn real_kernel_releases_sort_as_dpkg_sorts_their_abi() {
    let mut releases = fixture("release");
    releases.sort_by(|a, b| kernel_release_cmp(a, b));
    assert_total_order(&mut releases.clone(), |a, b| kernel_release_cmp(a, b));
    let pos = |r: &str| releases.iter().position(|x| x == r).expect("in fixture");
    assert!(pos("6.1.0-47-amd64") < pos("6.1.0-48-amd64"));
    assert!(pos("6.12.43+deb12-amd64") < pos("6.12.100+deb12-amd64"));
    if !judge_available("dpkg", "real_kernel_releases_sort_as_dpkg_sorts_their_abi") {
        return;
    }
    let pairs = neighbours(&releases);
    let judged = dpkg_judge(&dpkg_release_pairs(&pairs));
    for ((a, b), dpkg) in pairs.iter().zip(judged) {
        assert_eq!(
            kernel_release_cmp(a, b),
            release_order_refining_dpkg(a, b, dpkg),
            "{a} vs {b}"
        );
    }
}
