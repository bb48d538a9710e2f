//! The `/fleet` page: the fleet view (`build_api::FleetView`) as server-rendered HTML for people —
//! per kernel family a table of its kernels, newest first, with how many nodes run each and have it
//! installed, and per driver version the artifact's status (published, building, failed, missing)
//! and the nodes' outcomes; upcoming kernels are marked, with whether they are already built.
//!
//! No JavaScript and nothing fetched: one document with a small inline stylesheet, served under a
//! Content-Security-Policy that allows exactly that. Every value that came from a report or a build
//! goes through [`escape_html`] on its way into the markup, whatever kernel-id already refused.
//! Tables carry a caption and `th` headers with scopes, so screen readers read each count with its
//! kernel and column.

use std::fmt::Write as _;

use build_api::{ArtifactStatus, DriverView, FamilyView, FleetView, KernelView};

/// What the page may load: its own inline style, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `text` safe inside HTML element content and inside double- or single-quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light;--ink:#1d2433;--muted:#5b6477;--line:#d9dee8;--head:#f3f5f9}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--ink);background:#fff}
header{padding:20px 32px 12px;border-bottom:1px solid var(--line);background:var(--head)}
h1{margin:0 0 4px;font-size:22px}
.generated{margin:0 0 12px;color:var(--muted);font-size:13px}
.summary{display:flex;gap:28px;margin:0;flex-wrap:wrap}
.summary div{display:flex;flex-direction:column-reverse}
.summary dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.summary dd{margin:0;font-size:24px;font-weight:600}
main{padding:8px 32px 32px}
section{margin-top:22px}
h2{margin:0 0 2px;font-size:17px;font-family:ui-monospace,'DejaVu Sans Mono',monospace}
.family-facts{margin:0 0 8px;color:var(--muted);font-size:13px}
table{border-collapse:collapse;width:100%}
caption{text-align:left;color:var(--muted);font-size:12px;padding-bottom:4px}
th,td{border:1px solid var(--line);padding:6px 10px;text-align:left;vertical-align:top}
thead th{background:var(--head);font-size:13px}
tbody th{font-weight:500;font-family:ui-monospace,'DejaVu Sans Mono',monospace;white-space:nowrap}
td.count{text-align:right;font-variant-numeric:tabular-nums;width:7em}
tr.upcoming{background:#f5f8ff}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;font-family:system-ui,sans-serif}
.published{background:#dcf5e3;color:#145c2c}
.building{background:#fff1cc;color:#7a5200}
.failed{background:#fde0e0;color:#8a1c1c}
.missing{background:#eceff3;color:#4b5363}
.upcoming-badge{background:#dbe6ff;color:#1f3f8f}
.nodes{display:block;color:var(--muted);font-size:12px;margin-top:2px}
.none{color:var(--muted)}
";

/// The page for `view` of `driver`'s fleet.
pub fn render(view: &FleetView, driver: &str) -> String {
    let mut page = String::with_capacity(4096);
    let driver = escape_html(driver);
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Fleet: {driver}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<header>\n\
         <h1>Fleet: {driver}</h1>\n\
         <p class=\"generated\">From each node's latest report, generated {}.</p>\n\
         <dl class=\"summary\">\n",
        escape_html(&view.generated_at)
    );
    for (label, value) in [
        ("Nodes", view.nodes),
        ("Without a live driver", view.nodes_without_driver),
        ("First-boot waits", view.first_boot_waits),
        ("Kernel families", view.families.len() as u64),
    ] {
        let _ = writeln!(page, "<div><dt>{label}</dt><dd>{value}</dd></div>");
    }
    page.push_str("</dl>\n</header>\n<main>\n");
    if view.families.is_empty() {
        page.push_str("<p>No node has reported yet.</p>\n");
    }
    for (index, family) in view.families.iter().enumerate() {
        family_section(&mut page, index, family);
    }
    page.push_str("</main>\n</body>\n</html>\n");
    page
}

fn family_section(page: &mut String, index: usize, family: &FamilyView) {
    let key = escape_html(&family.family);
    // Driver versions of the family, in the order its kernels list them (newest first).
    let mut versions: Vec<&str> = Vec::new();
    for kernel in &family.kernels {
        for driver in &kernel.drivers {
            if !versions.contains(&driver.driver_version.as_str()) {
                versions.push(&driver.driver_version);
            }
        }
    }
    versions.sort_by(|a, b| kernel_id::kernel_release_cmp(b, a));
    let _ = write!(
        page,
        "<section aria-labelledby=\"family-{index}\">\n<h2 id=\"family-{index}\">{key}</h2>\n\
         <p class=\"family-facts\">{} {} · {} · series {} · flavor {} · {} {}</p>\n\
         <table>\n<caption>Kernels of {key}, newest first</caption>\n<thead>\n<tr>\
         <th scope=\"col\">Kernel</th><th scope=\"col\">Nodes running</th><th scope=\"col\">Nodes pending</th>",
        escape_html(&family.distribution),
        escape_html(&family.distro_version),
        escape_html(&family.architecture),
        escape_html(&family.series),
        escape_html(&family.flavor),
        family.nodes,
        if family.nodes == 1 { "node" } else { "nodes" },
    );
    for version in &versions {
        let _ = write!(
            page,
            "<th scope=\"col\">Driver {}</th>",
            escape_html(version)
        );
    }
    page.push_str("</tr>\n</thead>\n<tbody>\n");
    for kernel in &family.kernels {
        kernel_row(page, kernel, &versions);
    }
    page.push_str("</tbody>\n</table>\n</section>\n");
}

fn kernel_row(page: &mut String, kernel: &KernelView, versions: &[&str]) {
    let class = if kernel.upcoming {
        " class=\"upcoming\""
    } else {
        ""
    };
    let _ = write!(
        page,
        "<tr{class}><th scope=\"row\">{}",
        escape_html(&kernel.kernel_version)
    );
    if kernel.upcoming {
        // Built: every driver version the family needs on it is published.
        let built = !kernel.drivers.is_empty()
            && kernel
                .drivers
                .iter()
                .all(|driver| driver.artifact == ArtifactStatus::Published);
        let _ = write!(
            page,
            " <span class=\"badge upcoming-badge\">upcoming</span> <span class=\"nodes\">{}</span>",
            if built { "built" } else { "not built yet" }
        );
    }
    let _ = write!(
        page,
        "</th><td class=\"count\">{}</td><td class=\"count\">{}</td>",
        kernel.nodes_running, kernel.nodes_pending
    );
    for version in versions {
        match kernel
            .drivers
            .iter()
            .find(|driver| driver.driver_version == *version)
        {
            Some(driver) => driver_cell(page, driver),
            None => page.push_str("<td><span class=\"none\">not used</span></td>"),
        }
    }
    page.push_str("</tr>\n");
}

/// The status word people read for an artifact status.
pub fn status_word(status: ArtifactStatus) -> &'static str {
    match status {
        ArtifactStatus::Published => "published",
        ArtifactStatus::Building => "building",
        ArtifactStatus::Failed => "failed",
        ArtifactStatus::None => "missing",
    }
}

fn driver_cell(page: &mut String, driver: &DriverView) {
    let word = status_word(driver.artifact);
    let _ = write!(page, "<td><span class=\"badge {word}\">{word}</span>");
    let reported = driver.nodes_loaded + driver.nodes_refused + driver.nodes_failed;
    if reported > 0 {
        let _ = write!(
            page,
            "<span class=\"nodes\">{} loaded · {} refused · {} failed</span>",
            driver.nodes_loaded, driver.nodes_refused, driver.nodes_failed
        );
    }
    if driver.first_boot_waits > 0 {
        let longest = driver
            .first_boot_wait_ms_max
            .map(|ms| format!(", longest {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let _ = write!(
            page,
            "<span class=\"nodes\">{} first-boot {}{longest}</span>",
            driver.first_boot_waits,
            if driver.first_boot_waits == 1 {
                "wait"
            } else {
                "waits"
            }
        );
    }
    page.push_str("</td>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_escaped() {
        let cases = [
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            ("\" onmouseover=\"x", "&quot; onmouseover=&quot;x"),
            ("' onfocus='x", "&#39; onfocus=&#39;x"),
            ("&lt;already&gt;", "&amp;lt;already&amp;gt;"),
            (
                "</title><img src=x onerror=alert(1)>",
                "&lt;/title&gt;&lt;img src=x onerror=alert(1)&gt;",
            ),
            ("ünïcode ✓", "ünïcode ✓"),
            ("", ""),
        ];
        for (hostile, escaped) in cases {
            assert_eq!(escape_html(hostile), escaped);
            let out = escape_html(hostile);
            assert!(!out.contains(['<', '>', '"', '\'']), "{out}");
        }
    }

    fn view(hostile: &str) -> FleetView {
        FleetView {
            families: vec![FamilyView {
                architecture: "x86_64".to_owned(),
                distribution: hostile.to_owned(),
                distro_version: "12".to_owned(),
                family: format!("debian/12/x86_64/6.1/{hostile}"),
                flavor: hostile.to_owned(),
                kernels: vec![
                    KernelView {
                        drivers: vec![DriverView {
                            artifact: ArtifactStatus::Published,
                            build_id: Some(hostile.to_owned()),
                            driver_version: "v0.1.2".to_owned(),
                            first_boot_wait_ms_max: None,
                            first_boot_waits: 0,
                            nodes_failed: 0,
                            nodes_loaded: 0,
                            nodes_refused: 0,
                        }],
                        kernel_version: "6.1.0-48-amd64".to_owned(),
                        nodes_pending: 2,
                        nodes_running: 0,
                        upcoming: true,
                    },
                    KernelView {
                        drivers: vec![DriverView {
                            artifact: ArtifactStatus::Failed,
                            build_id: None,
                            driver_version: hostile.to_owned(),
                            first_boot_wait_ms_max: Some(4_200),
                            first_boot_waits: 1,
                            nodes_failed: 1,
                            nodes_loaded: 2,
                            nodes_refused: 0,
                        }],
                        kernel_version: hostile.to_owned(),
                        nodes_pending: 0,
                        nodes_running: 3,
                        upcoming: false,
                    },
                ],
                nodes: 3,
                series: "6.1".to_owned(),
            }],
            first_boot_waits: 1,
            generated_at: hostile.to_owned(),
            nodes: 3,
            nodes_without_driver: 1,
        }
    }

    #[test]
    fn the_page_escapes_every_value_and_has_no_script() {
        let hostile = "<script>alert('x')</script>\"&";
        let page = render(&view(hostile), "<b>driver</b>");
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<b>driver"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
        assert!(page.contains("<caption>Kernels of debian/12/x86_64/6.1/&lt;script&gt;"));
        // Every table cell row starts with its kernel as a row header.
        assert_eq!(page.matches("<th scope=\"row\">").count(), 2);
    }

    #[test]
    fn the_page_says_what_a_person_needs() {
        let page = render(&view("amd64"), "example-driver");
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<h1>Fleet: example-driver</h1>"));
        assert!(page.contains("<h2 id=\"family-0\">debian/12/x86_64/6.1/amd64</h2>"));
        assert!(page.contains("upcoming</span> <span class=\"nodes\">built</span>"));
        assert!(page.contains("<span class=\"badge failed\">failed</span>"));
        assert!(page.contains("2 loaded · 0 refused · 1 failed"));
        assert!(page.contains("1 first-boot wait, longest 4.2 s"));
        // The upcoming kernel's row does not use the other driver version.
        assert!(page.contains("not used"));
        let empty = render(
            &FleetView {
                families: Vec::new(),
                first_boot_waits: 0,
                generated_at: String::new(),
                nodes: 0,
                nodes_without_driver: 0,
            },
            "d",
        );
        assert!(empty.contains("No node has reported yet."));
    }
}
