//! Labels: `key=value` tags a user puts on workspaces to list and remove
//! them together (`berth ls --label team=search`).
//!
//! Keys are 1 to 63 characters of letters, digits and `._/-`, starting with
//! a letter or digit; values are up to 63 characters of letters, digits and
//! `._-`. Neither holds `=` or `,`, so `k=v,k2=v2` is a selector of several.

use std::collections::BTreeMap;

/// A workspace's labels, or a selector: every pair must match.
pub type Labels = BTreeMap<String, String>;

/// The longest key or value.
pub const MAX_LEN: usize = 63;

/// A label that is malformed, named as it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label `{label}`: {reason}")]
pub struct LabelError {
    pub label: String,
    pub reason: &'static str,
}

/// Parses one `key=value`.
pub fn parse(text: &str) -> Result<(String, String), LabelError> {
    let error = |reason| LabelError {
        label: text.to_owned(),
        reason,
    };
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| error("expected key=value"))?;
    check(key, value).map_err(error)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a selector: `key=value` pairs separated by commas.
pub fn parse_selector(text: &str) -> Result<Labels, LabelError> {
    text.split(',').map(parse).collect()
}

/// Checks labels made elsewhere (a request's map).
pub fn validate(labels: &Labels) -> Result<(), LabelError> {
    for (key, value) in labels {
        check(key, value).map_err(|reason| LabelError {
            label: format!("{key}={value}"),
            reason,
        })?;
    }
    Ok(())
}

/// Whether `labels` has every pair of `selector`.
pub fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

fn check(key: &str, value: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_LEN {
        return Err("the key must be 1 to 63 characters");
    }
    if !key.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("the key must start with a letter or digit");
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
    {
        return Err("the key may hold only letters, digits and `._/-`");
    }
    if value.len() > MAX_LEN {
        return Err("the value must be at most 63 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err("the value may hold only letters, digits and `._-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_labels_parse_and_selectors_match_every_pair() {
        assert_eq!(parse("team=search"), Ok(("team".into(), "search".into())));
        assert_eq!(parse("empty="), Ok(("empty".into(), String::new())));
        let selector = parse_selector("team=search,run=r-1").unwrap();
        let mut labels = selector.clone();
        labels.insert("other".into(), "x".into());
        assert!(matches(&labels, &selector));
        labels.insert("run".into(), "r-2".into());
        assert!(!matches(&labels, &selector));
        assert!(matches(&labels, &Labels::new()));
    }

    #[test]
    fn malformed_labels_are_refused_naming_the_label() {
        for bad in [
            "noequals",
            "=value",
            "-key=v",
            "key with space=v",
            "key=va lue",
            "key=a=b",
            "key=line\nbreak",
            &format!("{}=v", "k".repeat(64)),
            &format!("k={}", "v".repeat(64)),
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.label, bad);
            assert!(err.to_string().starts_with(&format!("label `{bad}`: ")));
        }
    }
}
