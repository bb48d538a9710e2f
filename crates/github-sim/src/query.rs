//! Query strings: GitHub's `per_page`/`page` pagination with its `Link` header, and the search-syntax
//! `created` filter of the workflow-run lists (`>=T`, `<=T`, `>T`, `<T`, `A..B`, `*` bounds, dates or
//! date-times).

use time::macros::format_description;
use time::{Date, OffsetDateTime, Time};
use url::form_urlencoded;

/// Decoded query parameters, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Rebuilds the query with `page` (and `per_page`) set, keeping every other parameter.
    fn with_page(&self, per_page: usize, page: usize) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.0 {
            if k != "page" && k != "per_page" {
                out.append_pair(k, v);
            }
        }
        out.append_pair("per_page", &per_page.to_string());
        out.append_pair("page", &page.to_string());
        out.finish()
    }
}

/// One page of a list: which items to show and the `Link` header to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageSlice {
    pub start: usize,
    pub end: usize,
    pub link: Option<String>,
}

/// GitHub's pagination: `per_page` defaults to 30 and is capped at 100; `page` starts at 1. The `Link`
/// header lists `prev`, `next`, `last` and `first` where they apply, and is absent when everything fits
/// on one page.
pub(crate) fn paginate(query: &Query, total: usize, url_without_query: &str) -> PageSlice {
    let per_page = query
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = query
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let last = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = start.saturating_add(per_page).min(total);
    let link = (last > 1).then(|| {
        let url = |p: usize| format!("<{url_without_query}?{}>", query.with_page(per_page, p));
        let mut parts = Vec::new();
        if page > 1 {
            parts.push(format!("{}; rel=\"prev\"", url((page - 1).min(last))));
        }
        if page < last {
            parts.push(format!("{}; rel=\"next\"", url(page + 1)));
            parts.push(format!("{}; rel=\"last\"", url(last)));
        }
        if page > 1 {
            parts.push(format!("{}; rel=\"first\"", url(1)));
        }
        parts.join(", ")
    });
    PageSlice {
        start,
        end,
        link: link.filter(|l| !l.is_empty()),
    }
}

/// A `created` filter: an inclusive range of instants, either end open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CreatedFilter {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

impl CreatedFilter {
    pub fn matches(&self, t: OffsetDateTime) -> bool {
        self.from.is_none_or(|from| t >= from) && self.to.is_none_or(|to| t <= to)
    }
}

/// A bound as written: a date covers its whole (UTC) day, a date-time is one instant.
#[derive(Debug, Clone, Copy)]
struct Bound {
    first: OffsetDateTime,
    last: OffsetDateTime,
}

fn parse_bound(text: &str) -> Option<Bound> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Some(Bound { first: t, last: t });
    }
    let date = Date::parse(text, format_description!("[year]-[month]-[day]")).ok()?;
    let first = date.with_time(Time::MIDNIGHT).assume_utc();
    let last = date.with_hms(23, 59, 59).ok()?.assume_utc();
    Some(Bound { first, last })
}

/// Parses GitHub's search-syntax date qualifier; `None` when it is not one.
pub(crate) fn parse_created(text: &str) -> Option<CreatedFilter> {
    let text = text.trim();
    let open = |s: &str| -> Option<Option<Bound>> {
        if s.trim() == "*" {
            Some(None)
        } else {
            parse_bound(s).map(Some)
        }
    };
    if let Some((a, b)) = text.split_once("..") {
        let (a, b) = (open(a)?, open(b)?);
        return Some(CreatedFilter {
            from: a.map(|a| a.first),
            to: b.map(|b| b.last),
        });
    }
    let one_second = time::Duration::seconds(1);
    if let Some(rest) = text.strip_prefix(">=") {
        return Some(CreatedFilter {
            from: Some(parse_bound(rest)?.first),
            to: None,
        });
    }
    if let Some(rest) = text.strip_prefix("<=") {
        return Some(CreatedFilter {
            from: None,
            to: Some(parse_bound(rest)?.last),
        });
    }
    if let Some(rest) = text.strip_prefix('>') {
        return Some(CreatedFilter {
            from: Some(parse_bound(rest)?.last + one_second),
            to: None,
        });
    }
    if let Some(rest) = text.strip_prefix('<') {
        return Some(CreatedFilter {
            from: None,
            to: Some(parse_bound(rest)?.first - one_second),
        });
    }
    let exact = parse_bound(text)?;
    Some(CreatedFilter {
        from: Some(exact.first),
        to: Some(exact.last),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("test timestamp")
    }

    #[test]
    fn pagination_links_follow_github() {
        let q = Query::parse(Some("per_page=2&status=queued"));
        let first = paginate(&q, 5, "http://h/x");
        assert_eq!((first.start, first.end), (0, 2));
        let link = first.link.expect("more than one page");
        assert!(
            link.contains("<http://h/x?status=queued&per_page=2&page=2>; rel=\"next\""),
            "{link}"
        );
        assert!(link.contains("page=3>; rel=\"last\""), "{link}");
        assert!(!link.contains("prev"));
        let last = paginate(&Query::parse(Some("per_page=2&page=3")), 5, "http://h/x");
        assert_eq!((last.start, last.end), (4, 5));
        let link = last.link.expect("link on last page");
        assert!(
            link.contains("rel=\"prev\"")
                && link.contains("rel=\"first\"")
                && !link.contains("rel=\"next\"")
        );
        assert_eq!(paginate(&Query::default(), 30, "u").link, None);
        let beyond = paginate(&Query::parse(Some("page=9")), 3, "u");
        assert_eq!((beyond.start, beyond.end), (3, 3));
        assert_eq!(
            paginate(&Query::parse(Some("per_page=1000")), 250, "u").end,
            100
        );
    }

    #[test]
    fn created_filters_use_search_syntax() {
        let ge = parse_created(">=2026-11-22T10:00:00Z").expect("ge");
        assert!(ge.matches(at("2026-11-22T10:00:00Z")) && !ge.matches(at("2026-11-22T09:59:59Z")));
        let range = parse_created("2026-11-01..2026-11-22").expect("range");
        assert!(
            range.matches(at("2026-11-22T23:59:59Z")) && !range.matches(at("2026-11-23T00:00:00Z"))
        );
        let open = parse_created("2026-11-22T10:00:00Z..*").expect("open range");
        assert!(open.matches(at("2030-01-01T00:00:00Z")));
        let gt = parse_created(">2026-11-22").expect("gt date");
        assert!(!gt.matches(at("2026-11-22T23:00:00Z")) && gt.matches(at("2026-11-23T00:00:00Z")));
        let le = parse_created("<=2026-11-22T10:00:00+01:00").expect("offset");
        assert!(le.matches(at("2026-11-22T09:00:00Z")) && !le.matches(at("2026-11-22T09:00:01Z")));
        for bad in ["yesterday", ">=", "2026-13-01", "a..b"] {
            assert!(parse_created(bad).is_none(), "{bad}");
        }
    }
}
