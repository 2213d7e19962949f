//! The dashboards and alert rules query only metrics the code registers, and the
//! operations guide lists exactly those metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// `weft_*` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("weft_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let starts_word = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        if starts_word {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Names registered in code: string literals passed to `metrics::{counter, histogram,
/// gauge}` in the crates' sources.
fn registered() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for krate in ["bus", "agents", "flows", "gateway"] {
        let mut stack = vec![root().join(krate).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, _) in text.match_indices("\"weft_") {
                        let name: String = text[i + 1..]
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        out.insert(name);
                    }
                }
            }
        }
    }
    out
}

fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[test]
fn the_operations_guide_lists_exactly_the_registered_metrics() {
    let code = registered();
    assert!(code.len() >= 15, "found only {code:?}");
    let guide = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let documented: BTreeSet<String> = guide
        .lines()
        .filter(|l| l.starts_with("| `weft_"))
        .flat_map(|l| metric_names(l.split('|').nth(1).unwrap()))
        .collect();
    assert_eq!(documented, code, "docs/operations.md and the code disagree");
}

#[test]
fn dashboards_and_alerts_use_only_registered_metrics() {
    let code = registered();
    let mut used = BTreeSet::new();
    for file in ["dashboards/weft-overview.json", "dashboards/alerts.yml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        if file.ends_with(".json") {
            let _: serde_json::Value = serde_json::from_str(&text).expect("valid dashboard JSON");
        }
        for name in metric_names(&text) {
            if name == "weft_overview" {
                continue; // the dashboard uid
            }
            let b = base(&name).to_owned();
            assert!(
                code.contains(&b),
                "{file} queries {name}, which the code does not register"
            );
            used.insert(b);
        }
    }
    assert!(used.len() >= 10, "dashboards use only {used:?}");
}
