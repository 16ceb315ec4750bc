//! The documentation against what it documents: the configuration
//! reference names every key of `config/default.toml` with its default,
//! and `.ci/run` runs the README's test command.

use std::collections::BTreeMap;
use std::path::Path;

use config::{File, FileFormat, Map, Source, Value, ValueKind};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Every key of a TOML table as `section.key`, with its value as written
/// in the docs (strings without quotes, an empty string as `(empty)`).
fn flatten(prefix: &str, table: &Map<String, Value>, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match &value.kind {
            ValueKind::Table(inner) => flatten(&name, inner, out),
            ValueKind::String(s) if s.is_empty() => {
                out.insert(name, "(empty)".to_string());
            }
            other => {
                out.insert(name, format!("`{other}`"));
            }
        }
    }
}

/// The rows `| `key` | default | meaning |` of the reference's tables.
fn documented(reference: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in reference.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 4
            && let Some(key) = cells[1].strip_prefix('`').and_then(|k| k.strip_suffix('`'))
            && key.contains('.')
        {
            rows.insert(key.to_string(), cells[2].to_string());
        }
    }
    rows
}

#[test]
fn configuration_reference_lists_every_key() {
    let defaults = File::from_str(&read("config/default.toml"), FileFormat::Toml)
        .collect()
        .unwrap();
    let mut keys = BTreeMap::new();
    flatten("", &defaults, &mut keys);
    let documented = documented(&read("docs/configuration.md"));
    let missing: Vec<&String> = keys
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of config/default.toml missing from docs/configuration.md: {missing:?}"
    );
    let unknown: Vec<&String> = documented
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents keys config/default.toml does not have: {unknown:?}"
    );
    for (key, default) in &keys {
        assert_eq!(
            &documented[key], default,
            "docs/configuration.md gives {key} another default than config/default.toml"
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = read("README.md");
    assert!(
        readme.contains("\ncargo test "),
        "the README's quick start gives `cargo test`"
    );
    let ci = read(".ci/run");
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(last.trim(), "cargo test", "the last command of .ci/run");
}
