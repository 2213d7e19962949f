//! The dashboard, alert rules and operations guide against the metrics the code
//! registers: the guide lists exactly those metrics with their types; every one is on a
//! dashboard panel (or in [`NOT_ON_A_PANEL`] with a reason); every query uses only
//! registered metrics, each as its type needs; and promtool (`scripts/install-promtool`)
//! parses every query, accepts the scrape configuration and its rules, and passes the
//! alerts' unit tests (`tests/e2e/alerts_test.yml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Registered metrics that no dashboard panel shows, each with the reason. Empty: every
/// metric the code registers has a panel.
const NOT_ON_A_PANEL: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn read(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A metric's type, as the code registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// `weft_*` identifiers in `text`, with their byte offsets.
fn metric_tokens(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("weft_").map(|i| i + from) {
        let tail = &text[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let starts_word = i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric();
        if starts_word {
            out.push((i, tail[..end].to_owned()));
        }
        from = i + end;
    }
    out
}

/// `weft_*` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    metric_tokens(text).into_iter().map(|(_, n)| n).collect()
}

/// Names registered in code, with their types: string literals passed to
/// `metrics::{counter, histogram, gauge}` in the crates' sources.
fn registered() -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
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
                        let before = text[..i].trim_end();
                        let kind = [
                            ("counter(", Kind::Counter),
                            ("gauge(", Kind::Gauge),
                            ("histogram(", Kind::Histogram),
                        ]
                        .into_iter()
                        .find_map(|(call, kind)| before.ends_with(call).then_some(kind))
                        .unwrap_or_else(|| {
                            panic!(
                                "{}: \"{name}\" is not the first argument of metrics::{{counter, gauge, histogram}}",
                                p.display()
                            )
                        });
                        assert!(
                            out.insert(name.clone(), kind).is_none(),
                            "{name} is registered twice"
                        );
                    }
                }
            }
        }
    }
    out
}

/// The name without a histogram's series suffix.
fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// One query of a dashboard panel.
struct Query {
    /// `panel <id> "<title>" <refId>`, for messages.
    place: String,
    /// The panel's `fieldConfig.defaults.unit`.
    unit: String,
    expr: String,
    legend: String,
}

/// The dashboard, parsed.
fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("dashboards/weft-overview.json")).expect("valid dashboard JSON")
}

/// The panels other than rows.
fn graph_panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// Every query of every panel.
fn queries(d: &serde_json::Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in graph_panels(d) {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            out.push(Query {
                place: format!("panel {} {} {}", p["id"], p["title"], t["refId"]),
                unit: p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                expr: t["expr"].as_str().expect("expr").to_owned(),
                legend: t["legendFormat"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    out
}

/// The `expr`s of the alert rules in `dashboards/alerts.yml` (one-line, or a `|`
/// block), by alert name.
fn alert_exprs() -> Vec<(String, String)> {
    let text = read("dashboards/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = Some(name.trim().to_owned());
        } else if let Some(expr) = line.strip_prefix("expr:") {
            let name = alert.take().expect("an expr belongs to an alert");
            let expr = expr.trim();
            if expr == "|" {
                let indent = |l: &str| l.len() - l.trim_start().len();
                let own = indent(lines[i]);
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > own)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                out.push((name, block.join(" ")));
            } else {
                out.push((name, expr.to_owned()));
            }
        }
        i += 1;
    }
    out
}

/// Ways `expr` misuses a metric for its type: a counter outside `rate()`/`increase()`,
/// a histogram other than its `_bucket` series under `histogram_quantile` by `le` (or
/// its `_sum`/`_count` in a rate), a gauge inside a rate.
fn misuses(expr: &str, kinds: &BTreeMap<String, Kind>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in metric_tokens(expr) {
        let b = base(&name);
        let Some(&kind) = kinds.get(b) else {
            out.push(format!("{name} is not registered"));
            continue;
        };
        let before = expr[..i].trim_end();
        let in_rate = before.ends_with("rate(") || before.ends_with("increase(");
        let ok = match kind {
            Kind::Counter => name == b && in_rate,
            Kind::Gauge => name == b && !in_rate,
            Kind::Histogram => {
                let quantile = before.rfind("histogram_quantile(").is_some_and(|q| {
                    let between = &before[q..];
                    between.contains("by (le,") || between.contains("by (le)")
                });
                in_rate
                    && ((name.ends_with("_bucket") && quantile)
                        || name.ends_with("_sum")
                        || name.ends_with("_count"))
            }
        };
        if !ok {
            out.push(format!(
                "{name} ({}) is used wrongly for its type",
                kind.as_str()
            ));
        }
    }
    out
}

#[test]
fn the_operations_guide_lists_exactly_the_registered_metrics_with_their_types() {
    let code = registered();
    assert!(code.len() >= 20, "found only {code:?}");
    let guide = read("docs/operations.md");
    let mut documented = BTreeMap::new();
    for line in guide.lines().filter(|l| l.starts_with("| `weft_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for name in metric_names(cells[1]) {
            documented.insert(name, cells[2].to_owned());
        }
    }
    let code_types: BTreeMap<String, String> = code
        .iter()
        .map(|(n, k)| (n.clone(), k.as_str().to_owned()))
        .collect();
    assert_eq!(
        documented, code_types,
        "docs/operations.md and the code disagree"
    );
}

#[test]
fn every_registered_metric_is_on_a_dashboard_panel_or_excused() {
    let code = registered();
    let d = dashboard();
    let on_panels: BTreeSet<String> = queries(&d)
        .iter()
        .flat_map(|q| metric_names(&q.expr))
        .map(|n| base(&n).to_owned())
        .collect();
    for (name, reason) in NOT_ON_A_PANEL {
        assert!(code.contains_key(*name), "excused {name} is not registered");
        assert!(!reason.is_empty(), "{name} is excused without a reason");
        assert!(
            !on_panels.contains(*name),
            "{name} is excused but on a panel: drop the exception"
        );
    }
    let missing: Vec<&String> = code
        .keys()
        .filter(|n| !on_panels.contains(*n) && !NOT_ON_A_PANEL.iter().any(|(e, _)| e == n))
        .collect();
    assert!(
        missing.is_empty(),
        "registered metrics on no panel of dashboards/weft-overview.json: {missing:?}"
    );
}

#[test]
fn dashboards_and_alerts_use_only_registered_metrics_each_as_its_type_needs() {
    let code = registered();
    // Anywhere in the files, descriptions included: only registered names.
    for file in ["dashboards/weft-overview.json", "dashboards/alerts.yml"] {
        for name in metric_names(&read(file)) {
            if name == "weft_overview" {
                continue; // the dashboard uid
            }
            assert!(
                code.contains_key(base(&name)),
                "{file} names {name}, which the code does not register"
            );
        }
    }
    let d = dashboard();
    let mut problems = Vec::new();
    for q in queries(&d) {
        problems.extend(
            misuses(&q.expr, &code)
                .into_iter()
                .map(|m| format!("{}: {m}", q.place)),
        );
    }
    let alerts = alert_exprs();
    assert!(alerts.len() >= 6, "found only {alerts:?}");
    for (alert, expr) in &alerts {
        problems.extend(
            misuses(expr, &code)
                .into_iter()
                .map(|m| format!("alert {alert}: {m}")),
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn misused_metrics_are_caught() {
    // The type check above must be able to fail.
    let code = registered();
    for bad in [
        "sum(weft_invokes_total)",
        "rate(weft_consumer_pending[5m])",
        "histogram_quantile(0.9, sum by (target) (rate(weft_invoke_duration_seconds_bucket[5m])))",
        "rate(weft_invoke_duration_seconds[5m])",
        "rate(weft_no_such_metric_total[5m])",
    ] {
        assert!(!misuses(bad, &code).is_empty(), "{bad} passed");
    }
    for good in [
        "sum by (target) (rate(weft_invokes_total[5m]))",
        "max by (consumer) (weft_consumer_pending)",
        "histogram_quantile(0.9, sum by (le, target) (rate(weft_invoke_duration_seconds_bucket[5m])))",
        "rate(weft_invoke_duration_seconds_sum[5m]) / rate(weft_invoke_duration_seconds_count[5m])",
    ] {
        assert_eq!(misuses(good, &code), Vec::<String>::new(), "{good}");
    }
}

#[test]
fn panels_are_in_rows_with_units_legends_and_the_grafana_rate_interval() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert_eq!(panels[0]["type"], "row", "the first panel is a row");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert!(rows.len() >= 6, "rows: {rows:?}");
    // Unique ids, and no two panels overlap on the 24-column grid.
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{} is wider than the grid", p["title"]);
        for cell in (x..x + w).flat_map(|c| (y..y + h).map(move |r| (c, r))) {
            assert!(cells.insert(cell), "{} overlaps another panel", p["title"]);
        }
    }
    for p in graph_panels(&d) {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{} has no description",
            p["title"]
        );
    }
    for q in queries(&d) {
        let place = &q.place;
        // One unit per panel, the one its queries draw.
        let want: &[&str] = if q.expr.contains("histogram_quantile(") {
            &["s"]
        } else if q.expr.contains("rate(") && q.expr.ends_with("* 60") {
            &["opm"]
        } else if q.expr.contains("rate(") {
            &["ops", "reqps"]
        } else {
            &["short"]
        };
        assert!(
            want.contains(&q.unit.as_str()),
            "{place}: unit {:?} for {}, want one of {want:?}",
            q.unit,
            q.expr
        );
        assert!(
            !q.expr.contains(" by (") || q.legend.contains("{{"),
            "{place}: a grouped query needs a legend naming its labels"
        );
        // Range vectors use Grafana's $__rate_interval (at least four scrape intervals).
        let mut rest = q.expr.as_str();
        while let Some(i) = rest.find('[') {
            let end = rest[i..].find(']').expect("closed range") + i;
            assert_eq!(&rest[i..=end], "[$__rate_interval]", "{place}");
            rest = &rest[end..];
        }
    }
}

/// The promtool binary: `$PROMTOOL_BIN`, `promtool` on `PATH`, or where
/// `scripts/install-promtool` puts it. Fails with an install hint when there is none.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL_BIN").map(PathBuf::from) {
        assert!(p.is_file(), "PROMTOOL_BIN={} is not a file", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    let local = root().join(".tools/prometheus/bin/promtool");
    on_path.or_else(|| local.is_file().then_some(local)).expect(
        "promtool not found: install it with `scripts/install-promtool` (the Debian package prometheus, unpacked into .tools/prometheus), or set PROMTOOL_BIN to its path",
    )
}

/// Runs promtool with `args` in `dir`; returns its stdout, failing with its output
/// when it exits non-zero.
fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let d = dashboard();
    let queries = queries(&d);
    // Each query as a recording rule, which `promtool check rules` parses; Grafana's
    // $__rate_interval stands in as 5m. JSON strings are YAML strings.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let expr = q.expr.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("queries.yml"), rules).unwrap();
    let out = run_promtool(dir.path(), &["check", "rules", "queries.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

#[test]
fn promtool_accepts_the_scrape_config_and_its_alert_rules() {
    let alerts = alert_exprs().len();
    let out = run_promtool(
        &root().join("dashboards"),
        &["check", "config", "prometheus.yml"],
    );
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "{out}"
    );
}

#[test]
fn every_alert_fires_on_its_condition_and_only_then() {
    let tests = read("tests/e2e/alerts_test.yml");
    for (alert, _) in alert_exprs() {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "tests/e2e/alerts_test.yml does not test {alert}"
        );
    }
    let out = run_promtool(
        &root().join("tests/e2e"),
        &["test", "rules", "alerts_test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}
