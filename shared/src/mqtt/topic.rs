//! Topic names and filters: validation, `$share` parsing, matching (spec §4.7, §4.8.2).
//! (CONTRACT — implementation in progress.)

/// True for a valid topic name: non-empty, no `+`/`#`, no NUL, at most `max_levels`
/// levels (0 = unlimited).
pub fn valid_topic_name(name: &str, max_levels: usize) -> bool {
    let _ = (name, max_levels);
    todo!()
}

/// True for a valid topic filter: non-empty, `#` only as the whole last level, `+` only
/// as a whole level, no NUL, valid `$share/<group>/<filter>` form if shared.
pub fn valid_topic_filter(filter: &str, max_levels: usize) -> bool {
    let _ = (filter, max_levels);
    todo!()
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`; `None` for a plain filter.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let _ = filter;
    todo!()
}

/// True if topic name `topic` matches (non-shared) filter `filter`. Leading wildcards
/// do not match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let _ = (filter, topic);
    todo!()
}
