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
//! The rows are read where the plan is loaded (`stampede run`, `validate`)
//! and travel beside the plan, never in it: a standing coordinator gets them
//! in `SubmitRunRequest.data_files`, each agent its share in
//! `Assignment.data` (the coordinator's `split.rs` cuts `unique` files into
//! disjoint ranges). The plan itself — in report.json, the run store, a dry
//! run — names the file and its order only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Plan;

/// The most a plan's data files may hold together: they travel to every
/// agent in its assignment (gRPC messages the agents accept up to 64 MiB),
/// and a large one would be a mistake (a log, `/dev/zero`).
pub const MAX_DATA_BYTES: u64 = 32 << 20;

/// `data:` on a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Relative to the plan file.
    pub file: String,
    #[serde(default)]
    pub order: DataOrder,
    /// The rows, once read ([`resolve_data`]) or received (an agent's
    /// share). Never serialized: the plan names the file, the rows travel
    /// beside it.
    #[serde(skip)]
    pub set: Option<Arc<DataSet>>,
}

/// Data sets by the file name a plan gives (`data.file`), as sent to a
/// standing coordinator.
pub type DataSets = BTreeMap<String, Arc<DataSet>>;

/// Where a plan's data files come from when it is loaded.
#[derive(Clone, Copy, Default)]
pub enum DataFiles<'a> {
    /// Not read: `{{data.COL}}` is checked for its shape only (a plan taken
    /// literally, the fuzzer). Nothing runs such a plan.
    #[default]
    Unread,
    /// Read from files relative to `dir`, the plan's folder.
    Local { dir: &'a Path },
    /// Taken from what was sent (a standing coordinator).
    Given(&'a DataSets),
    /// A dry run's: read or taken like the inner source where the file is
    /// there, and left unread where it is not (a laptop without the
    /// production users file can still print the plan's faults).
    IfPresent(&'a DataFiles<'a>),
}

/// Fills every step's `data.set` from `source`; `Err((field path,
/// message))` for a file that cannot be read or was not sent, or when the
/// files together exceed [`MAX_DATA_BYTES`]. A file two steps name is read once.
pub fn resolve_data(plan: &mut Plan, source: &DataFiles<'_>) -> Result<(), (String, String)> {
    let (source, missing_ok) = match *source {
        DataFiles::IfPresent(inner) => (*inner, true),
        other => (other, false),
    };
    let mut read: DataSets = BTreeMap::new();
    let mut total = 0u64;
    for (i, step) in plan.steps.iter_mut().enumerate() {
        let Some(data) = step.data.as_mut() else { continue };
        let at = format!("steps[{i}].data.file");
        let set = match (source, read.get(&data.file)) {
            (DataFiles::Unread | DataFiles::IfPresent(_), _) => continue,
            (_, Some(set)) => set.clone(),
            (DataFiles::Local { dir }, None) if missing_ok && !dir.join(&data.file).exists() => continue,
            (DataFiles::Given(sets), None) if missing_ok && !sets.contains_key(&data.file) => continue,
            (DataFiles::Local { dir }, None) => Arc::new(load(&dir.join(&data.file)).map_err(|m| (at.clone(), m))?),
            (DataFiles::Given(sets), None) => sets.get(&data.file).cloned().ok_or_else(|| (at.clone(), format!("the rows of the data file {} were not sent", data.file)))?,
        };
        // A file counts once towards the bound, however many steps name it.
        if read.insert(data.file.clone(), set.clone()).is_none() {
            total += set.bytes();
        }
        if total > MAX_DATA_BYTES {
            return Err((at, format!("the plan's data files hold more than {MAX_DATA_BYTES} bytes (32 MiB) together: they travel to every agent")));
        }
        data.set = Some(set);
    }
    Ok(())
}

impl Plan {
    /// Every data file's rows by the name the plan gives: what `stampede
    /// run` sends a standing coordinator.
    pub fn data_sets(&self) -> DataSets {
        self.steps.iter().filter_map(|s| s.data.as_ref()).filter_map(|d| Some((d.file.clone(), d.set.clone()?))).collect()
    }
}

/// How a step's executions take rows. Parsed from a string so an unknown
/// order gets our message, not the loader's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataOrder {
    /// Each agent walks every row in order from its own offset, wrapping
    /// (Gatling's `circular`).
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

    /// Its size as text: what the plan's [`MAX_DATA_BYTES`] counts.
    pub fn bytes(&self) -> u64 {
        let cells = |r: &[String]| r.iter().map(|c| c.len() as u64 + 1).sum::<u64>();
        cells(&self.columns) + self.rows.iter().map(|r| cells(r)).sum::<u64>()
    }

    /// Rows `range` of this set, columns kept: one agent's `unique` share.
    pub fn slice(&self, range: std::ops::Range<usize>) -> DataSet {
        DataSet { columns: self.columns.clone(), rows: self.rows[range].to_vec() }
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
    // Read bounded too: a device or a file still growing lies about its size.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?, MAX_DATA_BYTES + 1), &mut bytes)
        .map_err(|e| format!("{shown}: {e}"))?;
    if bytes.len() as u64 > MAX_DATA_BYTES {
        return Err(format!("{shown}: more than a data file may hold ({MAX_DATA_BYTES} bytes)"));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown}: not UTF-8 text"))?;
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
