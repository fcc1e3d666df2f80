//! JUnit XML: one test case per SLO, so CI systems show which rule failed.
//! An untrustworthy run (invalid, incomplete) adds a failing case of its own.

use std::fmt::Write;

use stampede_common::slo::Status;

use super::{escape_markup, Report};
use crate::verdict::Verdict;

pub fn junit_xml(r: &Report) -> String {
    let untrusted = matches!(r.verdict, Verdict::Invalid | Verdict::Incomplete);
    let failures = r.slos.iter().filter(|s| s.status == Status::Fail).count() + usize::from(untrusted);
    let tests = r.slos.len() + 1;
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<testsuite name="stampede.{}" tests="{tests}" failures="{failures}" time="{:.3}">"#,
        escape_markup(&r.plan.name),
        r.duration_s
    );
    let _ = writeln!(out, r#"  <testcase classname="stampede.run" name="numbers are trustworthy">"#);
    if untrusted {
        let _ = writeln!(out, r#"    <failure message="verdict {}">{}</failure>"#, r.verdict.as_str(), escape_markup(&r.verdict_reasons.join("\n")));
    }
    let _ = writeln!(out, "  </testcase>");
    for s in &r.slos {
        let name = escape_markup(&format!("{} {} ({})", super::markdown::subject(s), s.threshold, s.scope));
        let _ = writeln!(out, r#"  <testcase classname="stampede.slo" name="{name}">"#);
        let observed = escape_markup(&super::markdown::observed(s));
        // Time rules say when they looked and what decided them.
        let when = match super::markdown::when(s) {
            w if w == "-" => String::new(),
            w => format!(" [{}]", escape_markup(&w)),
        };
        match s.status {
            Status::Fail => {
                let _ = writeln!(out, r#"    <failure message="observed {observed}">{name}{when}: observed {observed}</failure>"#);
            }
            Status::Warn => {
                let _ = writeln!(out, "    <system-out>warn: observed {observed}</system-out>");
            }
            Status::NotEvaluated => {
                let _ = writeln!(out, "    <skipped message=\"not evaluated: the run is incomplete, its numbers partial\"/>");
            }
            Status::Pass => {}
        }
        let _ = writeln!(out, "  </testcase>");
    }
    out.push_str("</testsuite>\n");
    out
}
