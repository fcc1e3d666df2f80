//! Templated request values: `{{seq}}`, `{{uuid}}`, `{{worker}}`,
//! `{{iteration}}`, `{{random_int(LO,HI)}}`, `{{now_ms}}` and a data file's
//! `{{data.COLUMN}}` in a request's path, header values and body
//! (docs/plan.md, "Templates" and "Data files").
//!
//! Parsed here when the plan loads, so an unknown name is a FILE:LINE error
//! before anything runs; the agents parse the same text once per run into
//! the pieces they render per request (`agent/src/template.rs`). A value
//! without `{{` parses to one literal piece, and a request made only of such
//! values keeps its bytes serialized once.
//!
//! `\{{` is a literal `{{`. A secret (`{ secret_env: .. }`) is never parsed:
//! its value is sent as it is.

/// One part of a templated value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(Var),
}

/// What a `{{...}}` stands for (meanings in docs/plan.md, "Templates").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// Unique across the fleet: `agent + agents × n`, n this agent's count of templated requests.
    Seq,
    /// A random (v4) UUID, the same everywhere in one request.
    Uuid,
    /// The virtual user: unique across the fleet.
    Worker,
    /// The virtual user's request count in its phase (0, 1, ...).
    Iteration,
    /// Uniform in `lo..=hi`, drawn anew at each occurrence.
    RandomInt(i64, i64),
    /// Unix time in milliseconds when the request is rendered.
    NowMs,
    /// A value an earlier request of the same flow captured: the index of
    /// its name in the flow's capture names (`flow.rs`).
    Capture(usize),
    /// A column of the step's data row (`data.rs`): its index in the file's
    /// columns ([`Columns::Known`]); `usize::MAX` where they were not read
    /// ([`Columns::Unknown`]: a plan nothing runs).
    Data(usize),
}

/// What `{{data.COL}}` may name: a step's data file's columns.
#[derive(Debug, Clone, Copy, Default)]
pub enum Columns<'a> {
    /// The request has no data file (a step without `data:`, a probe).
    #[default]
    None,
    /// The step has one, not read: any column name is taken.
    Unknown,
    Known(&'a [String]),
}

/// The names a value may use besides the built-in ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    /// A flow's names captured so far: each `{{name}}` of them a
    /// [`Var::Capture`] of its index.
    pub captures: &'a [String],
    pub data: Columns<'a>,
}

const KNOWN: &str = "seq, uuid, worker, iteration, random_int(LO,HI), now_ms";

/// The pieces of `s`, literal text merged; `Err(message)` for an unknown
/// name, bad arguments or an unclosed `{{`.
pub fn parse(s: &str) -> Result<Vec<Piece>, String> {
    parse_with(s, &Names::default())
}

/// [`parse`], also knowing `names` (a flow's captures, a data file's columns).
pub fn parse_with(s: &str, names: &Names<'_>) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        if rest[..i].ends_with('\\') {
            lit.push_str(&rest[..i - 1]);
            lit.push_str("{{");
            rest = &rest[i + 2..];
            continue;
        }
        lit.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find("}}") else {
            return Err("has a `{{` without its `}}` (write `\\{{` for a literal `{{`)".into());
        };
        let name = after[..end].trim();
        let var = match (names.captures.iter().position(|c| c == name), name.strip_prefix("data.")) {
            (Some(i), _) => Var::Capture(i),
            (None, Some(column)) => data_var(column, names.data)?,
            (None, None) => parse_var(name)?,
        };
        if !lit.is_empty() {
            out.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        out.push(Piece::Var(var));
        rest = &after[end + 2..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

/// The names a flow's captures may not take: the built-in templates'.
pub const RESERVED: [&str; 7] = ["seq", "uuid", "worker", "iteration", "random_int", "now_ms", "data"];

/// Whether `pieces` need rendering per request.
pub fn is_templated(pieces: &[Piece]) -> bool {
    pieces.iter().any(|p| matches!(p, Piece::Var(_)))
}

fn data_var(column: &str, columns: Columns<'_>) -> Result<Var, String> {
    match columns {
        Columns::None => Err(format!("`{{{{data.{column}}}}}`: only a step with `data:` (a data file) has data values")),
        Columns::Unknown => Ok(Var::Data(usize::MAX)),
        Columns::Known(all) => all
            .iter()
            .position(|c| c == column)
            .map(Var::Data)
            .ok_or_else(|| format!("`{{{{data.{column}}}}}`: the data file has no column `{column}`; its columns: {}", all.join(", "))),
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "seq" => Var::Seq,
        "uuid" => Var::Uuid,
        "worker" => Var::Worker,
        "iteration" => Var::Iteration,
        "now_ms" => Var::NowMs,
        _ => {
            let args = name.strip_prefix("random_int").map(str::trim_start).and_then(|a| a.strip_prefix('(')).and_then(|a| a.strip_suffix(')'));
            let Some(args) = args else {
                return Err(format!("`{{{{{name}}}}}` is not a known template; known: {KNOWN}"));
            };
            let bad = || format!("`{{{{{name}}}}}`: random_int takes two integers LO,HI with LO <= HI");
            let (lo, hi) = args.split_once(',').ok_or_else(bad)?;
            let lo: i64 = lo.trim().parse().map_err(|_| bad())?;
            let hi: i64 = hi.trim().parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            Var::RandomInt(lo, hi)
        }
    })
}

/// `s` with every template replaced by `0`: what the plan's other checks
/// (a path without spaces, a header without line breaks) look at.
pub fn sample(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Lit(s) => s.as_str(),
            Piece::Var(_) => "0",
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_keeps_literals() {
        let p = parse("/items/{{seq}}?u={{ uuid }}&w={{worker}}&i={{iteration}}&r={{random_int(1, 100)}}&t={{now_ms}}").unwrap();
        let vars: Vec<_> = p.iter().filter_map(|p| if let Piece::Var(v) = p { Some(*v) } else { None }).collect();
        assert_eq!(vars, [Var::Seq, Var::Uuid, Var::Worker, Var::Iteration, Var::RandomInt(1, 100), Var::NowMs]);
        assert_eq!(p[0], Piece::Lit("/items/".into()));
        assert_eq!(sample(&p), "/items/0?u=0&w=0&i=0&r=0&t=0");
        assert!(is_templated(&p));
    }

    #[test]
    fn plain_text_is_one_literal() {
        assert_eq!(parse("/health").unwrap(), [Piece::Lit("/health".into())]);
        assert!(!is_templated(&parse(r#"{"a":{"b":1}}"#).unwrap()));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn backslash_makes_a_literal_brace_pair() {
        let p = parse(r"x \{{seq}} {{seq}}").unwrap();
        assert_eq!(p, [Piece::Lit("x {{seq}} ".into()), Piece::Var(Var::Seq)]);
        assert!(!is_templated(&parse(r"\{{").unwrap()));
    }

    #[test]
    fn refuses_unknown_names_and_bad_arguments() {
        assert!(parse("{{sequence}}").unwrap_err().contains("`{{sequence}}` is not a known template"));
        assert!(parse("{{seq").unwrap_err().contains("without its `}}`"));
        assert!(parse("{{random_int(5,1)}}").unwrap_err().contains("LO <= HI"));
        assert!(parse("{{random_int(1)}}").is_err());
        assert!(parse("{{random_int(a,b)}}").is_err());
        assert_eq!(parse("{{random_int(-3,-3)}}").unwrap(), [Piece::Var(Var::RandomInt(-3, -3))]);
    }

    #[test]
    fn data_columns_are_found_by_name_and_only_where_there_is_a_file() {
        let columns = ["user".to_string(), "password".to_string()];
        let known = Names { data: Columns::Known(&columns), ..Names::default() };
        assert_eq!(parse_with("u={{data.password}}", &known).unwrap(), [Piece::Lit("u=".into()), Piece::Var(Var::Data(1))]);
        let e = parse_with("{{data.pass}}", &known).unwrap_err();
        assert_eq!(e, "`{{data.pass}}`: the data file has no column `pass`; its columns: user, password");
        assert!(parse("{{data.user}}").unwrap_err().contains("only a step with `data:`"));
        let unknown = Names { data: Columns::Unknown, ..Names::default() };
        assert_eq!(parse_with("{{data.anything}}", &unknown).unwrap(), [Piece::Var(Var::Data(usize::MAX))]);
    }
}
