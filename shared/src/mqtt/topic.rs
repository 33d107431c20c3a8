//! Topic names and filters: validation, `$share` parsing, matching (spec §4.7, §4.8.2).
//!
//! Every function here works on `&str`, so UTF-8 well-formedness (and the absence of
//! surrogates) is already guaranteed by the codec; what remains are the MQTT rules.

/// Longest topic name or filter in bytes: the length prefix of an MQTT string is a `u16`.
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Prefix that turns a filter into a shared subscription (MQTT 5 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// True for a valid topic name: non-empty, no `+`/`#`, no NUL, at most `max_levels`
/// levels (0 = unlimited).
pub fn valid_topic_name(name: &str, max_levels: usize) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && !name.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
        && within_level_limit(name, max_levels)
}

/// True for a valid topic filter: non-empty, `#` only as the whole last level, `+` only
/// as a whole level, no NUL, valid `$share/<group>/<filter>` form if shared.
pub fn valid_topic_filter(filter: &str, max_levels: usize) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    match parse_shared(filter) {
        Some((group, inner)) => {
            !group.is_empty()
                && !group.contains(['+', '#'])
                && valid_plain_filter(inner, max_levels)
        }
        // `$share` alone is a shared filter missing its group and filter, not a plain
        // one: the first level `$share` is reserved for shared subscriptions.
        None => filter != "$share" && valid_plain_filter(filter, max_levels),
    }
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`; `None` for a plain filter.
///
/// Anything starting with `$share/` is reported as shared, even when malformed
/// (`$share/g` gives `("g", "")`), so that a malformed shared filter is never mistaken
/// for a plain one; [`valid_topic_filter`] rejects those.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// True if topic name `topic` matches (non-shared) filter `filter`. Leading wildcards
/// do not match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` also matches the parent level itself, hence any topic state here.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when the first level of `filter` is `+` or `#` (the `$`-topic rule, §4.7.2).
pub(crate) fn starts_with_wildcard(filter: &str) -> bool {
    matches!(filter.split('/').next(), Some("+" | "#"))
}

/// Splits off the first level: `("a", Some("b/c"))` for `a/b/c`, `("c", None)` for `c`.
pub(crate) fn split_level(levels: &str) -> (&str, Option<&str>) {
    match levels.split_once('/') {
        Some((head, tail)) => (head, Some(tail)),
        None => (levels, None),
    }
}

/// Checks the wildcard placement rules of a non-shared filter (NUL already excluded).
fn valid_plain_filter(filter: &str, max_levels: usize) -> bool {
    if filter.is_empty() || !within_level_limit(filter, max_levels) {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let ok = match level {
            "#" => is_last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Counts separators rather than splitting so that no level string is materialized.
fn within_level_limit(s: &str, max_levels: usize) -> bool {
    max_levels == 0 || s.bytes().filter(|&b| b == b'/').count() < max_levels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        let valid = [
            "a",
            "a/b/c",
            "/",
            "//",
            "/a",
            "a/",
            "a//b",
            "$SYS/broker/uptime",
            "$share/g/a",
            "sport/tennis/player1",
            " ",
            "ünïcödé/トピック",
        ];
        for name in valid {
            assert!(valid_topic_name(name, 0), "{name:?} should be valid");
        }
        let invalid = ["", "+", "#", "a/+", "a/#", "a/b+", "a#", "a\0b", "\0"];
        for name in invalid {
            assert!(!valid_topic_name(name, 0), "{name:?} should be invalid");
        }
    }

    #[test]
    fn topic_name_limits() {
        assert!(valid_topic_name("a/b/c", 3));
        assert!(!valid_topic_name("a/b/c/d", 3));
        assert!(valid_topic_name("a/b/c/d", 0));
        // Empty levels count as levels.
        assert!(!valid_topic_name("a//", 2));
        assert!(valid_topic_name("a/", 2));
        assert!(valid_topic_name("a", 1));
        assert!(!valid_topic_name("/", 1));

        let longest = "a".repeat(MAX_TOPIC_LEN);
        assert!(valid_topic_name(&longest, 0));
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(!valid_topic_name(&too_long, 0));
    }

    #[test]
    fn topic_filters() {
        let valid = [
            "a",
            "#",
            "+",
            "+/+",
            "/+",
            "+/",
            "a/#",
            "a/+/b",
            "a/+/#",
            "/#",
            "+/#",
            "a//b",
            "//",
            "$SYS/#",
            "$SYS/+/x",
            "sport/tennis/player1/#",
            "$share/g/a",
            "$share/g/#",
            "$share/g/+/b/#",
            "$share/group-1/a//b",
            "$share/g//",
            "$share/g/$share/x",
            "$sharefoo/a",
            "a/$share/g",
        ];
        for filter in valid {
            assert!(valid_topic_filter(filter, 0), "{filter:?} should be valid");
        }
        let invalid = [
            "",
            "a#",
            "#a",
            "a/#/b",
            "#/",
            "#/#",
            "a/b#",
            "a+",
            "+a",
            "a/+b/c",
            "a/b+/c",
            "++",
            "##",
            "a\0",
            "\0",
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/+/a",
            "$share/#/a",
            "$share/g+/a",
            "$share/g#/a",
            "$share/g/a#",
            "$share/g/#/a",
            "$share/g/a\0",
        ];
        for filter in invalid {
            assert!(
                !valid_topic_filter(filter, 0),
                "{filter:?} should be invalid"
            );
        }
    }

    #[test]
    fn topic_filter_limits() {
        assert!(valid_topic_filter("a/+/#", 3));
        assert!(!valid_topic_filter("a/+/b/#", 3));
        assert!(valid_topic_filter("a/+/b/#", 0));
        // The limit applies to the filter part of a shared subscription only.
        assert!(valid_topic_filter("$share/g/a/b", 2));
        assert!(!valid_topic_filter("$share/g/a/b/c", 2));
        assert!(valid_topic_filter("$share/g/#", 1));

        let longest = "a".repeat(MAX_TOPIC_LEN);
        assert!(valid_topic_filter(&longest, 0));
        let too_long = format!("{}/#", "a".repeat(MAX_TOPIC_LEN - 1));
        assert!(!valid_topic_filter(&too_long, 0));
    }

    #[test]
    fn shared_parsing() {
        assert_eq!(parse_shared("$share/g/a/+"), Some(("g", "a/+")));
        assert_eq!(parse_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(parse_shared("$share/g//"), Some(("g", "/")));
        assert_eq!(parse_shared("$share/g"), Some(("g", "")));
        assert_eq!(parse_shared("$share/g/"), Some(("g", "")));
        assert_eq!(parse_shared("$share/"), Some(("", "")));
        assert_eq!(parse_shared("$share"), None);
        assert_eq!(parse_shared("$sharex/g/a"), None);
        assert_eq!(parse_shared("a/$share/g/b"), None);
        assert_eq!(parse_shared("#"), None);
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            // Spec §4.7.1 examples.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("sport/+", "sport/tennis/player1", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/tennis/#", "sport/tennis", true),
            // Exact.
            ("a", "a", true),
            ("a", "b", false),
            ("a", "a/b", false),
            ("a/b", "a", false),
            ("a/b", "a/b", true),
            ("A", "a", false),
            // Empty levels.
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("/", "/", true),
            ("+", "", true),
            ("+/+", "/", true),
            ("+", "/", false),
            ("a/", "a", false),
            ("a", "a/", false),
            // `#` matches zero or more levels.
            ("#", "a", true),
            ("#", "/", true),
            ("#", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/#", "b/a", false),
            ("a/+/#", "a", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a/b/c/d", true),
            ("+/#", "a", true),
            ("/#", "/", true),
            ("/#", "a", false),
            // `$` topics are hidden from leading wildcards only.
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("+", "$SYS", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/+", "$SYS/x", true),
            ("$SYS/x", "$SYS/x", true),
            ("a/#", "a/$x", true),
            ("a/+", "a/$x", true),
            ("#", "a$", true),
            ("+", "x$", true),
        ];
        for &(filter, topic, expected) in table {
            assert_eq!(
                matches(filter, topic),
                expected,
                "matches({filter:?}, {topic:?})"
            );
        }
    }

    #[test]
    fn level_splitting() {
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("a"), ("a", None));
        assert_eq!(split_level("/"), ("", Some("")));
        assert_eq!(split_level(""), ("", None));
        assert!(starts_with_wildcard("#"));
        assert!(starts_with_wildcard("+/a"));
        assert!(!starts_with_wildcard("a/+"));
        assert!(!starts_with_wildcard("+a"));
    }
}
