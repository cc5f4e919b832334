//! A run's results: a table for people, one JSON object for scripts and CI.

use std::io::Write as _;

use serde_json::{Map, Value};

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The JSON object printed with `--json`.
    json: Map<String, Value>,
    /// The table: label, value.
    lines: Vec<(String, String)>,
}

impl Report {
    /// An empty report for `scenario`.
    pub(crate) fn new(scenario: &str) -> Self {
        let mut json = Map::new();
        json.insert("scenario".to_owned(), Value::from(scenario));
        json.insert("version".to_owned(), Value::from(env!("CARGO_PKG_VERSION")));
        let mut report = Self {
            json,
            lines: Vec::new(),
        };
        report.line("scenario", scenario);
        if let Some(load) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        {
            report.set("load_before", Value::from(load.clone()));
            report.line("machine load (1/5/15 min)", &load);
        }
        report
    }

    /// Sets a JSON field.
    pub(crate) fn set(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_owned(), value);
    }

    /// Adds a table line.
    pub(crate) fn line(&mut self, label: &str, value: &str) {
        self.lines.push((label.to_owned(), value.to_owned()));
    }

    /// The JSON object.
    #[must_use]
    pub fn json(&self) -> Value {
        Value::Object(self.json.clone())
    }

    /// Whether the run found what it checks for broken: a non-empty
    /// `violations` list (the soak's delivery checker).
    #[must_use]
    pub fn found_violations(&self) -> bool {
        self.json
            .get("violations")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty())
    }

    /// Prints the table, or the JSON object, to stdout.
    pub fn print(&self, json: bool) {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{}", self.json());
            return;
        }
        let width = self.lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.lines {
            let _ = writeln!(out, "{label:<width$}  {value}");
        }
    }
}

/// `12345.6` as `12,346`.
pub(crate) fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
