//! The configuration tables of `docs/configuration.md`, so a test can hold them to the settings'
//! defaults.

use std::collections::BTreeMap;

use serde_json::Value;

/// The configuration page (`docs/configuration.md`).
pub fn text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md")
}

/// The rows `| `PREFIX__KEY` | `default` | meaning |` of that page, as `key -> default`
/// (`key` in lower case, as in a TOML file; the default as written, `unset` included).
pub fn defaults(readme: &str, prefix: &str) -> BTreeMap<String, String> {
    let start = format!("| `{prefix}__");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix(&start))
        .filter_map(|rest| {
            let (key, rest) = rest.split_once("` | ")?;
            let default = rest.split(" | ").next()?.trim().trim_matches('`');
            Some((key.to_ascii_lowercase(), default.to_string()))
        })
        .collect()
}

/// A default as the page writes it: strings bare, lists comma-separated, `None` and empty
/// lists as `unset`.
pub fn shown(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::Array(items) if items.is_empty() => "unset".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Asserts that the configuration page documents every setting of `defaults` (a settings struct serialized
/// with its defaults) under `prefix`, with the same default, and no setting that does not exist.
pub fn assert_documented(prefix: &str, defaults_json: &Value) {
    let documented = defaults(&text(), prefix);
    let actual: BTreeMap<String, String> = defaults_json
        .as_object()
        .expect("settings serialize to an object")
        .iter()
        .map(|(k, v)| (k.clone(), shown(v)))
        .collect();
    assert_eq!(
        documented, actual,
        "docs/configuration.md's `{prefix}__*` table (left) and the settings' defaults (right) differ"
    );
}
