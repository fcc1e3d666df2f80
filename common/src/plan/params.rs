//! One plan for every environment: `${NAME}` / `${NAME:-default}` in plan
//! values, and `--set key.path=value` / `--target URL` overrides.
//!
//! Both work on the value tree the loader read, not on the text: a value
//! can never change the plan's shape (an environment variable holding
//! `x: y` or a line break stays one string), comments are left alone, and
//! every line number in an error stays the line the user wrote. Plain YAML
//! scalars are fine in block style (`rate: ${RATE}`); inside `{ … }` YAML
//! ends a plain scalar at `{`, so quote it there (`{ rate: "${RATE}" }`).

use config::{Map, Value, ValueKind};

use super::data::DataFiles;
use super::secret::SecretSource;

/// Looks up a variable: the process environment, or a test's map.
pub type Lookup = dyn Fn(&str) -> Option<String>;

/// What shapes a plan beyond its text.
pub struct Params<'a> {
    /// Values of `${NAME}`; `None` takes the text literally (a standing
    /// coordinator: its client substituted already).
    pub vars: Option<&'a Lookup>,
    /// `--set key.path=value`, in order (a later one wins).
    pub sets: &'a [String],
    /// `--target URL`: sets `target` and drops `builtin_target`.
    pub target: Option<&'a str>,
    pub secrets: SecretSource<'a>,
    /// Where the steps' data files are read (`data.rs`).
    pub data: DataFiles<'a>,
}

impl Default for Params<'_> {
    fn default() -> Self {
        Params { vars: None, sets: &[], target: None, secrets: SecretSource::Unresolved, data: DataFiles::Unread }
    }
}

/// The process environment, for [`Params::vars`] and secrets.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub(super) fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `text` with each `${NAME}` replaced by the variable's value and each
/// `${NAME:-default}` by its value or, when unset or empty, the default
/// (the shell's rule); `$${` is a literal `${`. Any other `$` is itself.
pub fn substitute(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            // `$${`: the escape, written as `${`.
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let inner_and_more = &rest[at + 2..];
        let end = inner_and_more.find('}').ok_or_else(|| "`${` without its closing `}` (write `$${` for a literal `${`)".to_string())?;
        let inner = &inner_and_more[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if !is_var_name(name) {
            return Err(format!("`${{{inner}}}` is not a variable: write `${{NAME}}` or `${{NAME:-default}}`, NAME of letters, digits and `_`"));
        }
        if default.is_some_and(|d| d.contains("${")) {
            return Err(format!("`${{{inner}}}`: a default cannot hold another `${{…}}`"));
        }
        match (vars(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set (write `${{{name}:-default}}` to give a default)")),
        }
        rest = &inner_and_more[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes in every string value of the tree but those `skip` names (a
/// flag replaces them: `--target URL` needs no `${TARGET}`).
/// `Err((field path, message))`.
pub(super) fn substitute_tree(table: &mut Map<String, Value>, vars: &dyn Fn(&str) -> Option<String>, skip: &dyn Fn(&str) -> bool) -> Result<(), (String, String)> {
    let mut stack: Vec<(&mut Value, String)> = table.iter_mut().map(|(k, v)| (v, k.clone())).collect();
    while let Some((value, path)) = stack.pop() {
        if skip(&path) {
            continue;
        }
        match &mut value.kind {
            ValueKind::String(s) => *s = substitute(s, vars).map_err(|m| (path, m))?,
            ValueKind::Table(map) => stack.extend(map.iter_mut().map(|(k, v)| (v, format!("{path}.{k}")))),
            ValueKind::Array(items) => stack.extend(items.iter_mut().enumerate().map(|(i, v)| (v, format!("{path}[{i}]")))),
            _ => {}
        }
    }
    Ok(())
}

/// One step of a `--set` path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A parsed `--set PATH=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Override {
    /// The field path as the loader's errors spell it (`phases[0].duration`).
    pub path: String,
    segs: Vec<Seg>,
    /// `None` for `null`: remove the field (its default applies).
    value: Option<String>,
}

/// Parses `phases[0].load.rate=300/s`. The value is taken as text (the
/// loader converts it where a number or a bool is expected); `null`
/// removes the field, as helm's `--set` does.
pub(super) fn parse_set(flag: &str) -> Result<Override, String> {
    let (path, value) = flag.split_once('=').ok_or_else(|| "write KEY.PATH=VALUE, e.g. `phases[0].duration=30s`".to_string())?;
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, mut indices) = match part.find('[') {
            Some(b) => (&part[..b], &part[b..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return Err(format!("`{path}` is not a field path: write names joined by `.`, with `[N]` for a list item (`steps[0].request.path`)"));
        }
        segs.push(Seg::Key(key.to_string()));
        while !indices.is_empty() {
            let close = indices.find(']').filter(|_| indices.starts_with('[')).ok_or_else(|| format!("`{path}`: a list index is written `[N]`"))?;
            let n = indices[1..close].parse().map_err(|_| format!("`{path}`: `{}` is not a list index", &indices[1..close]))?;
            segs.push(Seg::Index(n));
            indices = &indices[close + 1..];
        }
    }
    Ok(Override { path: path.to_string(), segs, value: (value != "null").then(|| value.to_string()) })
}

/// Applies one override to the tree: creates missing fields on the way
/// (`agents.count=3` without an `agents:`), but a list item must exist.
pub(super) fn apply(table: &mut Map<String, Value>, o: &Override) -> Result<(), String> {
    let mut here = table;
    let last = o.segs.len() - 1;
    let mut at = String::new();
    let mut i = 0;
    loop {
        let Seg::Key(key) = &o.segs[i] else { unreachable!("paths start with a key and indices follow keys") };
        at = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
        if i == last {
            match &o.value {
                Some(v) => {
                    here.insert(key.clone(), Value::new(None, ValueKind::String(v.clone())));
                }
                None => {
                    here.remove(key);
                }
            }
            return Ok(());
        }
        let mut node = match o.segs[i + 1] {
            Seg::Key(_) => here.entry(key.clone()).or_insert_with(|| Value::new(None, ValueKind::Table(Map::new()))),
            Seg::Index(_) => here.get_mut(key).ok_or_else(|| format!("`{at}` is not in the plan, so `{at}[…]` cannot be set"))?,
        };
        i += 1;
        while let Some(Seg::Index(n)) = o.segs.get(i) {
            let ValueKind::Array(items) = &mut node.kind else { return Err(format!("`{at}` is not a list")) };
            let len = items.len();
            node = items.get_mut(*n).ok_or_else(|| format!("`{at}` has {len} item(s), so `{at}[{n}]` does not exist"))?;
            at = format!("{at}[{n}]");
            if i == last {
                match &o.value {
                    Some(v) => *node = Value::new(None, ValueKind::String(v.clone())),
                    None => return Err(format!("`{at}`: a list item cannot be removed with `null`")),
                }
                return Ok(());
            }
            i += 1;
        }
        if matches!(node.kind, ValueKind::Nil) {
            node.kind = ValueKind::Table(Map::new());
        }
        let ValueKind::Table(map) = &mut node.kind else { return Err(format!("`{at}` is a value, not an object with fields")) };
        here = map;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("staging.example".into()),
            "EMPTY" => Some(String::new()),
            "SHAPE" => Some("x: y\nz".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_escapes() {
        let s = |t: &str| substitute(t, &vars);
        assert_eq!(s("http://${HOST}:8080").unwrap(), "http://staging.example:8080");
        assert_eq!(s("${UNSET:-30s}").unwrap(), "30s");
        assert_eq!(s("${EMPTY:-dflt}").unwrap(), "dflt");
        assert_eq!(s("${HOST:-dflt}").unwrap(), "staging.example");
        assert_eq!(s("${EMPTY}").unwrap(), "");
        assert_eq!(s("$${HOST} and $HOST and 5$").unwrap(), "${HOST} and $HOST and 5$");
        assert_eq!(s("${SHAPE}").unwrap(), "x: y\nz");
        assert!(s("${UNSET}").unwrap_err().contains("environment variable UNSET is not set"));
        assert!(s("${HOST").unwrap_err().contains("without its closing"));
        assert!(s("${1X}").unwrap_err().contains("is not a variable"));
        assert!(s("${A:-${B}}").unwrap_err().contains("cannot hold another"));
    }

    #[test]
    fn set_paths_parse() {
        let o = parse_set("phases[0].load.rate=300/s").unwrap();
        assert_eq!(o.segs, [Seg::Key("phases".into()), Seg::Index(0), Seg::Key("load".into()), Seg::Key("rate".into())]);
        assert_eq!(o.value.as_deref(), Some("300/s"));
        assert_eq!(parse_set("slos[1].pass=< 300ms").unwrap().value.as_deref(), Some("< 300ms"));
        assert_eq!(parse_set("builtin_target=null").unwrap().value, None);
        assert_eq!(parse_set("a=b=c").unwrap().value.as_deref(), Some("b=c"));
        for bad in ["phases[0]duration", "novalue", "a..b=1", "a[x]=1", "a[1=2", ".a=1"] {
            assert!(parse_set(bad).is_err(), "{bad}");
        }
    }
}
