//! Output helpers shared by the command groups: aligned tables, key/value blocks,
//! times as RFC 3339 UTC, and short summaries of JSON values.

use serde_json::Value;

/// Longest cell shown in a table column before it is cut with `…`.
pub const MAX_CELL: usize = 60;

/// A table with a header row; columns are aligned and separated by two spaces.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    wide_last: bool,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            wide_last: false,
        }
    }

    /// Shows the last column in full (it is not padded, so it never misaligns).
    pub fn wide_last(mut self) -> Self {
        self.wide_last = true;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                (0..cols)
                    .map(|i| {
                        let c = r.get(i).map(String::as_str).unwrap_or("");
                        if self.wide_last && i + 1 == cols {
                            one_line(c)
                        } else {
                            cell(c)
                        }
                    })
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(rows.iter()) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                if i + 1 < cols {
                    line.push_str(&" ".repeat(widths[i] - width(c)));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// One line, at most [`MAX_CELL`] characters.
fn cell(s: &str) -> String {
    let one_line = one_line(s);
    truncate(&one_line, MAX_CELL)
}

/// Newlines and tabs shown as spaces, so a cell stays on its row.
pub fn one_line(s: &str) -> String {
    s.trim_end()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `key  value` lines with the keys aligned; values may span several lines (they are
/// indented under the first).
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let mut lines = v.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(format!("{k:<w$}  {first}").trim_end());
        out.push('\n');
        for l in lines {
            out.push_str(format!("{:w$}  {l}", "").trim_end());
            out.push('\n');
        }
    }
    out
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, with milliseconds.
pub fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A `*_ms` time field, or `-` when it is absent.
pub fn time_field(v: &Value) -> String {
    v.as_i64().map(time_ms).unwrap_or_else(|| "-".into())
}

/// A scalar as text (`-` for null or absent); other values as compact JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// A duration in milliseconds, in the largest unit that keeps it exact enough to read.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A duration in milliseconds, exactly, in the largest unit that divides it.
pub fn exact_duration_ms(ms: u64) -> String {
    match ms {
        0 => "0ms".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A job's schedule in one phrase.
pub fn schedule_summary(s: &Value) -> String {
    match s["type"].as_str() {
        Some("cron") => {
            let tz = s["timezone"].as_str().unwrap_or("UTC");
            let mut out = format!("cron \"{}\" {tz}", text(&s["expr"]));
            if let Some(g) = s["dst_gap"].as_str() {
                if g != "fire_at_transition" {
                    out.push_str(&format!(" (dst gap: {g})"));
                }
            }
            out
        }
        Some("fixed_rate") => match s["every_ms"].as_u64() {
            Some(ms) => format!("every {}", exact_duration_ms(ms)),
            None => "fixed_rate".into(),
        },
        Some("fixed_delay") => match s["delay_ms"].as_u64() {
            Some(ms) => format!("{} after each run", exact_duration_ms(ms)),
            None => "fixed_delay".into(),
        },
        Some("once") => format!("once at {}", text(&s["at"])),
        Some("api") => "api only".into(),
        Some(other) => other.into(),
        None => text(s),
    }
}

/// A job's processor in one phrase.
pub fn processor_summary(p: &Value) -> String {
    match p["type"].as_str() {
        Some("shell") => format!("shell: {}", text(&p["command"])),
        Some("http") => format!(
            "http: {} {}",
            p["method"].as_str().unwrap_or("GET"),
            text(&p["url"])
        ),
        Some("custom") => format!("custom: {}", text(&p["name"])),
        Some(other) => other.into(),
        None => text(p),
    }
}

/// An instance's trigger in one word or two.
pub fn trigger_summary(t: &Value) -> String {
    match t["type"].as_str() {
        Some("retry") => format!("retry of {}", text(&t["of"])),
        Some(kind) => kind.into(),
        None => text(t),
    }
}

/// A JSON value as pretty-printed text (for `--json`).
pub fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_and_cuts_long_cells() {
        let mut t = Table::new(&["ID", "NAME", "RESULT"]);
        t.row(vec!["1".into(), "a".into(), "ok".into()]);
        t.row(vec!["200".into(), "longer".into(), "x\ny".into()]);
        t.row(vec!["3".into(), "b".into(), "z".repeat(100)]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ID   NAME    RESULT");
        assert_eq!(lines[1], "1    a       ok");
        assert_eq!(lines[2], "200  longer  x y");
        assert!(lines[3].ends_with('…'));
        assert_eq!(lines[3].chars().count(), "3    b       ".len() + MAX_CELL);
        let mut t = Table::new(&["A", "B"]).wide_last();
        t.row(vec!["1".into(), "z".repeat(100)]);
        assert_eq!(
            t.render().lines().nth(1).unwrap(),
            format!("1  {}", "z".repeat(100))
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time_ms(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(time_field(&json!(null)), "-");
    }

    #[test]
    fn summaries() {
        assert_eq!(
            schedule_summary(&json!({"type": "cron", "expr": "*/5 * * * *"})),
            "cron \"*/5 * * * *\" UTC"
        );
        assert_eq!(
            schedule_summary(&json!({"type": "fixed_rate", "every_ms": 1500})),
            "every 1500ms"
        );
        assert_eq!(
            schedule_summary(&json!({"type": "fixed_delay", "delay_ms": 120_000})),
            "2m after each run"
        );
        assert_eq!(
            processor_summary(&json!({"type": "http", "url": "http://x/"})),
            "http: GET http://x/"
        );
        assert_eq!(
            trigger_summary(&json!({"type": "retry", "of": 7})),
            "retry of 7"
        );
    }

    #[test]
    fn key_values_align_and_indent() {
        let out = key_values(&[("id", "1".into()), ("result", "a\nb".into())]);
        assert_eq!(out, "id      1\nresult  a\n        b\n");
    }
}
