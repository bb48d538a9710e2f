//! What a run skipped and why: entries that are malformed (invalid) and entries that are well-formed
//! but can't become an identity a node would compute (unsupported or underivable). Nothing is dropped
//! silently: the CLI prints counts and examples on stderr.

use std::fmt::Write as _;

use std::collections::BTreeMap;

/// How many examples of each reason are printed.
const EXAMPLES: usize = 2;

/// Skipped entries, by kind.
#[derive(Debug, Default)]
pub struct Report {
    /// Malformed entries: wrong types, injection characters, contradictions. Fatal without
    /// `--skip-invalid`.
    pub invalid: Vec<(String, String)>,
    /// Well-formed entries no supported node would boot, or whose distro version can't be derived.
    pub unsupported: Vec<(String, String)>,
}

impl Report {
    /// Records a malformed entry.
    pub fn invalid(&mut self, location: &str, why: impl std::fmt::Display) {
        self.invalid.push((location.to_owned(), why.to_string()));
    }

    /// Records an entry that is skipped by design.
    pub fn unsupported(&mut self, location: &str, why: impl std::fmt::Display) {
        self.unsupported
            .push((location.to_owned(), why.to_string()));
    }

    /// Counts per kind, then per reason with the first few examples.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (label, items) in [
            ("invalid", &self.invalid),
            ("skipped (unsupported or underivable)", &self.unsupported),
        ] {
            if items.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{} {label} entries", items.len());
            let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (location, why) in items.iter() {
                by_reason.entry(why).or_default().push(location);
            }
            for (why, locations) in by_reason {
                let examples: Vec<&str> = locations.iter().take(EXAMPLES).copied().collect();
                let more = locations.len().saturating_sub(EXAMPLES);
                let tail = if more > 0 {
                    format!(", and {more} more")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "  {} x {why}: {}{tail}",
                    locations.len(),
                    examples.join(", ")
                );
            }
        }
        out
    }
}
