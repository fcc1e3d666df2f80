//! Data files for templated requests (issue 10, "data files"): a step's
//! `data: { file: users.csv, order: sequential | random | unique }`, whose
//! rows its requests use as `{{data.COLUMN}}`.
//!
//! This module reads a file into a [`DataSet`]: CSV with a header row (the
//! `csv` crate) or JSON lines (`.jsonl` / `.ndjson`, one flat object per
//! line, values rendered as text). A bad file is an error naming its path
//! and line; a value never appears in an error, since a data file may hold
//! credentials (a login flow's users and passwords).
//!
//! Not wired into the plan yet: the step field, the `{{data.COL}}` variable,
//! the split across agents and the agent's rendering are the rest of the
//! work (see docs/plan.md once they land).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The most a data file may hold: it travels to every agent in its
/// assignment, and a large one would be a mistake (a log, `/dev/zero`).
pub const MAX_DATA_BYTES: u64 = 64 << 20;

/// `data:` on a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Relative to the plan file.
    pub file: String,
    #[serde(default)]
    pub order: DataOrder,
}

/// How a step's executions take rows. Parsed from a string so an unknown
/// order gets our message, not the loader's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataOrder {
    /// Each agent walks its own rows in order, wrapping (Gatling's `circular`).
    #[default]
    Sequential,
    /// A uniform draw per execution (Gatling's `random`).
    Random,
    /// Every row at most once across the fleet: agents get disjoint ranges
    /// (Gatling's `queue`, k6's per-iteration unique data).
    Unique,
}

impl TryFrom<String> for DataOrder {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "sequential" => Ok(DataOrder::Sequential),
            "random" => Ok(DataOrder::Random),
            "unique" => Ok(DataOrder::Unique),
            _ => Err(format!("unknown order `{s}`, expected `sequential`, `random` or `unique`")),
        }
    }
}

impl From<DataOrder> for String {
    fn from(o: DataOrder) -> String {
        match o {
            DataOrder::Sequential => "sequential",
            DataOrder::Random => "random",
            DataOrder::Unique => "unique",
        }
        .to_string()
    }
}

/// A data file's rows, every row as long as `columns`. `Debug` prints the
/// shape only: the values may be credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct DataSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl std::fmt::Debug for DataSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataSet {{ columns: {:?}, rows: {} }}", self.columns, self.rows.len())
    }
}

impl DataSet {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// Reads `path`: JSON lines for `.jsonl` / `.ndjson`, CSV otherwise.
/// Errors read `PATH:LINE: what` (no value quoted).
pub fn load(path: &Path) -> Result<DataSet, String> {
    let shown = path.display();
    let size = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?.len();
    if size > MAX_DATA_BYTES {
        return Err(format!("{shown}: {size} bytes, more than a data file may hold ({MAX_DATA_BYTES})"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "ndjson"));
    let set = if jsonl { parse_jsonl(&text) } else { parse_csv(&text) }.map_err(|m| format!("{shown}:{m}"))?;
    if set.rows.is_empty() {
        return Err(format!("{shown}: no rows"));
    }
    Ok(set)
}

/// `LINE: what` on error.
fn parse_csv(text: &str) -> Result<DataSet, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let columns: Vec<String> = reader.headers().map_err(|e| format!("1: {}", csv_error(&e)))?.iter().map(|h| h.trim().to_string()).collect();
    check_columns(&columns).map_err(|m| format!("1: {m}"))?;
    let mut rows = Vec::new();
    for record in reader.records() {
        // The csv crate checks that every record has the header's length.
        let record = record.map_err(|e| format!("{}: {}", e.position().map_or(0, |p| p.line()), csv_error(&e)))?;
        rows.push(record.iter().map(str::to_string).collect());
    }
    Ok(DataSet { columns, rows })
}

/// The csv crate's message without the record it quotes.
fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".to_string(),
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => "not CSV".to_string(),
    }
}

/// `LINE: what` on error. The columns are the first object's keys (in
/// sorted order: templates look columns up by name, so order is moot);
/// every later object must have the same keys.
fn parse_jsonl(text: &str) -> Result<DataSet, String> {
    let mut columns: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).map_err(|_| format!("{n}: not a JSON object"))?;
        let cols = columns.get_or_insert_with(|| object.keys().cloned().collect());
        if object.len() != cols.len() || cols.iter().any(|c| !object.contains_key(c)) {
            return Err(format!("{n}: keys differ from the first line's ({})", cols.join(", ")));
        }
        let row = cols.iter().map(|c| text_of(&object[c]).ok_or_else(|| format!("{n}: `{c}` is an object or a list, not a value"))).collect::<Result<_, _>>()?;
        rows.push(row);
    }
    let columns = columns.unwrap_or_default();
    check_columns(&columns).map_err(|m| format!("1: {m}"))?;
    Ok(DataSet { columns, rows })
}

fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => Some(String::new()),
        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => Some(v.to_string()),
        _ => None,
    }
}

/// Names usable as `{{data.NAME}}`: non-empty, unique, no `}` or space.
fn check_columns(columns: &[String]) -> Result<(), String> {
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() || c.contains(['}', '{']) || c.contains(char::is_whitespace) {
            return Err(format!("column {} has no usable name (`{{{{data.NAME}}}}` needs a name without spaces or braces)", i + 1));
        }
        if columns[..i].contains(c) {
            return Err(format!("column `{c}` appears twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn csv_and_json_lines_give_the_same_rows() {
        let (_d, csv) = file("users.csv", "user,password\nalice,\"s,1\"\nbob,s2\n");
        let (_e, jsonl) = file("users.jsonl", "{\"user\":\"alice\",\"password\":\"s,1\"}\n\n{\"user\":\"bob\",\"password\":\"s2\"}\n");
        let a = load(&csv).unwrap();
        assert_eq!(a.columns, ["user", "password"]);
        assert_eq!(a.rows, [["alice", "s,1"], ["bob", "s2"]]);
        let b = load(&jsonl).unwrap();
        assert_eq!(b.columns, ["password", "user"], "sorted");
        for (i, row) in a.rows.iter().enumerate() {
            assert_eq!(row[a.column("user").unwrap()], b.rows[i][b.column("user").unwrap()]);
            assert_eq!(row[a.column("password").unwrap()], b.rows[i][b.column("password").unwrap()]);
        }
        assert_eq!(a.column("password"), Some(1));
        assert_eq!(format!("{a:?}"), "DataSet { columns: [\"user\", \"password\"], rows: 2 }", "Debug shows no value");
    }

    #[test]
    fn a_bad_file_names_its_line_and_never_a_value() {
        let (_d, ragged) = file("u.csv", "user,password\nalice,topsecret\nbob\n");
        let e = load(&ragged).unwrap_err();
        assert!(e.ends_with("u.csv:3: 1 fields where the header has 2"), "{e}");
        let (_e, bad) = file("u.jsonl", "{\"user\":\"alice\"}\n{\"user\":\"topsecret\",\"x\":1}\n");
        let e = load(&bad).unwrap_err();
        assert!(e.ends_with("u.jsonl:2: keys differ from the first line's (user)"), "{e}");
        let (_f, nested) = file("u.ndjson", "{\"user\":{\"name\":\"topsecret\"}}\n");
        assert!(load(&nested).unwrap_err().ends_with("u.ndjson:1: `user` is an object or a list, not a value"));
        let (_g, empty) = file("u.csv", "user\n");
        assert!(load(&empty).unwrap_err().ends_with("u.csv: no rows"));
        let (_h, twice) = file("u.csv", "user,user\na,b\n");
        assert!(load(&twice).unwrap_err().ends_with("u.csv:1: column `user` appears twice"));
        for e in [load(&ragged), load(&bad), load(&nested)] {
            assert!(!e.unwrap_err().contains("topsecret"));
        }
    }

    #[test]
    fn orders_parse_and_an_unknown_one_is_named() {
        let s: DataSource = serde_json::from_str(r#"{"file":"u.csv","order":"unique"}"#).unwrap();
        assert_eq!(s.order, DataOrder::Unique);
        let s: DataSource = serde_json::from_str(r#"{"file":"u.csv"}"#).unwrap();
        assert_eq!(s.order, DataOrder::Sequential);
        let e = serde_json::from_str::<DataSource>(r#"{"file":"u.csv","order":"shuffle"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown order `shuffle`"), "{e}");
    }
}
