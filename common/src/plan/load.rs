//! Loading a plan file: `config` reads YAML, TOML or JSON into one value tree,
//! serde (through `serde_path_to_error`, which remembers where it was) turns
//! it into a [`Plan`], and [`validate`] checks what types cannot. Every error
//! becomes one [`PlanError`] with the file, line and field path.

use std::path::Path;

use super::error::printable;
use super::limits::{self, Breach};
use super::lines::LineMap;
use super::params::{self, Params};
use super::secret;
use super::{validate, Plan, PlanError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
    Json,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Json => "json",
        }
    }

    fn config_format(self) -> config::FileFormat {
        match self {
            Format::Yaml => config::FileFormat::Yaml,
            Format::Toml => config::FileFormat::Toml,
            Format::Json => config::FileFormat::Json,
        }
    }
}

/// Reads and validates the plan at `path`; the format follows the extension.
/// Taken literally: no `${NAME}`, no overrides, secrets left unresolved.
pub fn load_file(path: &Path) -> Result<Plan, PlanError> {
    load_file_with(path, &Params::default())
}

/// [`load_file`] with `${NAME}` substitution, `--set`/`--target` overrides
/// and secrets as `params` say.
pub fn load_file_with(path: &Path, params: &Params<'_>) -> Result<Plan, PlanError> {
    let error = |message: String| PlanError { file: path.to_path_buf(), line: None, path: String::new(), message };
    let format = Format::from_path(path)
        .ok_or_else(|| error("unknown plan format: the file name must end in .yaml, .yml, .toml or .json".into()))?;
    let text = read_bounded(path).map_err(|e| error(format!("cannot read the plan: {e}")))?;
    load_str_with(&text, format, path, params)
}

/// Reads at most one byte past the size limit, so a huge file (or
/// `/dev/zero`) is refused by `load_str` without being read whole.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limits::MAX_PLAN_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Parses and validates plan `text`; `file` only names the source in errors.
pub fn load_str(text: &str, format: Format, file: &Path) -> Result<Plan, PlanError> {
    load_str_with(text, format, file, &Params::default())
}

/// [`load_str`] shaped by `params` (see [`load_file_with`]).
pub fn load_str_with(text: &str, format: Format, file: &Path, params: &Params<'_>) -> Result<Plan, PlanError> {
    // Bounds first: nothing below may build a tree the text cannot afford.
    let refuse = |breach: Breach| {
        let path = match breach.line {
            Some(l) if !breach.too_deep => LineMap::from_yaml(text).path_at(l),
            _ => None,
        };
        PlanError { file: file.to_path_buf(), line: breach.line, path: printable(&path.unwrap_or_default()), message: breach.message }
    };
    limits::check_text_size(text.len()).map_err(refuse)?;
    let lines = match format {
        Format::Yaml => {
            limits::check_yaml(text).map_err(refuse)?;
            LineMap::from_yaml(text)
        }
        _ => LineMap::default(),
    };
    let overrides = params
        .sets
        .iter()
        .map(|flag| params::parse_set(flag).map(|o| (flag, o)).map_err(|m| flag_error(file, &format!("--set {flag}: {m}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let set_by = |path: &str| {
        let from = |p: &str| path == p || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}["));
        match (params.target, overrides.iter().rev().find(|(_, o)| from(&o.path))) {
            (_, Some((flag, _))) => Some(format!("--set {flag}")),
            (Some(t), None) if from("target") => Some(format!("--target {t}")),
            _ => None,
        }
    };
    // User text (keys, header names, values) is quoted in messages: never
    // echo a raw control character (issue 8, item 13). A field a flag set
    // is named by the flag, not by a line of the file.
    let error_at = |path: String, message: String| match set_by(&path) {
        Some(flag) => PlanError { file: file.to_path_buf(), line: None, path: printable(&path), message: printable(&format!("{message} (set by `{flag}`)")) },
        None => PlanError { file: file.to_path_buf(), line: lines.line_of(&path), path: printable(&path), message: printable(&message) },
    };

    let table = parse_tree(text, format, file, &lines)?;
    check_top_level_keys(&table, &lines, file)?;
    limits::check_tree(&table).map_err(|(path, message)| error_at(path, message))?;
    let mut table = table;
    if let Some(vars) = params.vars {
        params::substitute_tree(&mut table, vars, &|path| set_by(path).is_some()).map_err(|(path, message)| error_at(path, message))?;
    }
    // Flags after the file's own values: what the command line says wins.
    if let Some(t) = params.target {
        table.insert("target".into(), config::Value::new(None, config::ValueKind::String(t.to_string())));
        // The built-in target stands in for a real one; pointed elsewhere, it has no job.
        table.remove("builtin_target");
    }
    for (flag, o) in &overrides {
        params::apply(&mut table, o).map_err(|m| flag_error(file, &format!("--set {flag}: {m}")))?;
    }
    let tree = config::Value::new(None, table);

    let plan = deserialize_plan(tree, &error_at)?;

    let mut plan = plan;
    // Before `validate`: `{{data.COL}}` is checked against the file's columns.
    super::data::resolve_data(&mut plan, &params.data).map_err(|(path, message)| error_at(path, message))?;
    validate(&plan).map_err(|(path, message)| error_at(path, message))?;
    secret::resolve_secrets(&mut plan, &params.secrets).map_err(|(path, message)| error_at(path, message))?;
    Ok(plan)
}

/// The text as `config`'s value tree, or a syntax error on its line.
///
/// `config` reads the text into one value tree per format. Its
/// `ConfigBuilder` would then read every top-level key as a path (see
/// `check_top_level_keys`); a plan is one file with no overrides, so the
/// tree is taken as it is, once the keys are checked.
fn parse_tree(text: &str, format: Format, file: &Path, lines: &LineMap) -> Result<config::Map<String, config::Value>, PlanError> {
    config::Source::collect(&config::File::from_str(text, format.config_format())).map_err(|e| {
        let line = lines.syntax_error_line();
        // YAML ends a plain scalar at `{` inside `{ … }`: say how to write it.
        let on_line = line.and_then(|l| text.lines().nth(l.saturating_sub(1)));
        let hint = if format == Format::Yaml && on_line.is_some_and(|l| l.contains("${")) {
            "; inside `{ … }` or `[ … ]` quote a value with `${NAME}`: `rate: \"${RATE}\"`"
        } else {
            ""
        };
        PlanError { file: file.to_path_buf(), line, path: String::new(), message: printable(&format!("not valid {}: {e}{hint}", format.name())) }
    })
}

/// The tree as a [`Plan`]; a field of the wrong shape or a missing one is
/// named by its path (`error_at` finds its line).
fn deserialize_plan(tree: config::Value, error_at: &dyn Fn(String, String) -> PlanError) -> Result<Plan, PlanError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        match e.into_inner() {
            // serde reports a missing field at the struct that lacks it, and
            // config's own key for it is garbled (`phases[1]duration`): name
            // the field itself, on its parent's line.
            config::ConfigError::NotFound(key) => {
                let field = key.rsplit(['.', ']']).next().unwrap_or(&key);
                let path = if path.is_empty() { field.to_string() } else { format!("{path}.{field}") };
                error_at(path, "is required but missing".to_string())
            }
            other => error_at(path, clean_message(&other.to_string())),
        }
    })
}

/// A bad `--set`: names the flag; the file has no line for it.
fn flag_error(file: &Path, message: &str) -> PlanError {
    PlanError { file: file.to_path_buf(), line: None, path: String::new(), message: printable(message) }
}

/// `config`'s builder reads every top-level key as a path expression
/// (`a.b`, `a[3]`) and fills a list up to the index it names: the key
/// `x[99999999999]` asked it for terabytes and aborted the process (found by
/// the fuzzer). No plan field has a dot or a bracket in its name, so such a
/// key is refused, whatever reads the tree next.
fn check_top_level_keys(table: &config::Map<String, config::Value>, lines: &LineMap, file: &Path) -> Result<(), PlanError> {
    match table.keys().find(|key| key.contains(['.', '['])) {
        None => Ok(()),
        Some(key) => Err(PlanError {
            file: file.to_path_buf(),
            line: lines.line_of(key),
            path: String::new(),
            message: printable(&format!("unknown field `{key}`: plan field names have no `.` or `[`")),
        }),
    }
}

/// config's errors end with " in <key>" or similar location hints that repeat
/// what our path already says more precisely; keep the first sentence.
fn clean_message(msg: &str) -> String {
    msg.split(" for key `").next().unwrap_or(msg).to_string()
}
