//! How answers are printed: kubectl-like aligned tables (colour only on a terminal), JSON, or
//! YAML.

use std::fmt::Write as _;

use serde_json::Value;

/// A column's cell colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// Default.
    Plain,
    /// Errors (5xx, high error rate).
    Red,
    /// Warnings (4xx).
    Yellow,
}

/// A table: headers, then rows of (text, colour).
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<(String, Colour)>>,
    /// Columns at least this wide (lines printed one at a time line up).
    min_widths: Vec<usize>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            min_widths: Vec::new(),
        }
    }

    /// Columns at least `widths` wide.
    pub fn with_widths(mut self, widths: &[usize]) -> Self {
        self.min_widths = widths.to_vec();
        self
    }

    /// The rows without the header line.
    pub fn render_rows(&self, colour: bool) -> String {
        self.render_lines(colour, false)
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<(String, Colour)>) {
        self.rows.push(cells);
    }

    /// The table, columns three spaces apart like kubectl's, coloured when `colour`.
    pub fn render(&self, colour: bool) -> String {
        self.render_lines(colour, true)
    }

    fn render_lines(&self, colour: bool, header: bool) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|(t, _)| t.chars().count())
                .chain(self.headers.get(i).map(|h| h.chars().count()))
                .chain(self.min_widths.get(i).copied())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = (&str, Colour)>| {
            let mut text = String::new();
            for (i, (cell, c)) in cells.enumerate() {
                let pad = widths.get(i).copied().unwrap_or(0);
                let last = i + 1 == widths.len();
                let cell = if last {
                    cell.to_owned()
                } else {
                    format!("{cell:<pad$}   ")
                };
                match (colour, c) {
                    (true, Colour::Red) => {
                        let _ = write!(text, "\x1b[31m{cell}\x1b[0m");
                    }
                    (true, Colour::Yellow) => {
                        let _ = write!(text, "\x1b[33m{cell}\x1b[0m");
                    }
                    _ => text.push_str(&cell),
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        if header {
            line(
                &mut out,
                &mut self.headers.iter().map(|h| (h.as_str(), Colour::Plain)),
            );
        }
        for r in &self.rows {
            line(&mut out, &mut r.iter().map(|(t, c)| (t.as_str(), *c)));
        }
        out
    }
}

/// `v` as YAML (block style; strings double-quoted, which YAML reads as JSON strings).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(&mut out, v, 0, false);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn emit(out: &mut String, v: &Value, indent: usize, in_list: bool) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (i, (k, val)) in map.iter().enumerate() {
                // The first key of a list item follows its "- ".
                if !(in_list && i == 0) {
                    out.push_str(&pad);
                }
                let key = Value::String(k.clone()).to_string();
                match val {
                    Value::Object(m) if !m.is_empty() => {
                        let _ = writeln!(out, "{key}:");
                        emit(out, val, indent + 2, false);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{key}:");
                        emit(out, val, indent, false);
                    }
                    _ => {
                        let _ = writeln!(out, "{key}: {}", empty_or_scalar(val));
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                match item {
                    Value::Object(m) if !m.is_empty() => emit(out, item, indent + 2, true),
                    Value::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        emit(out, item, indent + 2, false);
                    }
                    _ => {
                        let _ = writeln!(out, "{}", empty_or_scalar(item));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", empty_or_scalar(other));
        }
    }
}

fn empty_or_scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let mut t = Table::new(["NAME", "REQUESTS"]);
        t.row(vec![
            ("frontend".into(), Colour::Plain),
            ("3".into(), Colour::Plain),
        ]);
        t.row(vec![
            ("db".into(), Colour::Red),
            ("12".into(), Colour::Plain),
        ]);
        assert_eq!(
            t.render(false),
            "NAME       REQUESTS\nfrontend   3\ndb         12\n"
        );
        assert!(t.render(true).contains("\x1b[31mdb         \x1b[0m"));
    }

    #[test]
    fn yaml_of_nested_values() {
        let v = serde_json::json!({
            "services": [{"name": "api", "callers": [], "latency": {"p50": 1.5}}],
            "empty": {},
            "note": "a: \"b\""
        });
        assert_eq!(
            yaml(&v),
            // serde_json sorts keys.
            "\"empty\": {}\n\"note\": \"a: \\\"b\\\"\"\n\"services\":\n- \"callers\": []\n  \"latency\":\n    \"p50\": 1.5\n  \"name\": \"api\"\n"
        );
    }
}
