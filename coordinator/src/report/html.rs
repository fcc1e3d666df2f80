//! `report.html`: the same report as `report.md`, as one self-contained page
//! (no script, no external file: it opens from a CI artifact or a mail) with
//! a chart of the run over time — throughput, errors and p99 per interval,
//! phase boundaries and fault windows — where a ramp's knee and a fault's
//! effect are seen at a glance. The chart is SVG drawn by plotters.

use std::fmt::Write;

use plotters::prelude::*;

use super::markdown::{ms, observed, subject, totals_line, when};
use super::{escape_markup, Percentiles, Report};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}.verdict{display:inline-block;padding:.2em .7em;\
border-radius:.3em;color:#fff;font-weight:bold}.pass{background:#2e7d32}.warn{background:#ef8f00}.fail{background:#c62828}\
.invalid,.incomplete{background:#6a1b9a}.bad{color:#c62828;font-weight:bold}code{background:#f3f3f3;padding:0 .2em}";

pub fn html(r: &Report) -> String {
    let mut out = String::new();
    let verdict = r.verdict.as_str();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{name} — {verdict}</title><style>{STYLE}</style></head><body>\n\
         <h1>{name} <span class=\"verdict {verdict}\">{upper}</span></h1>\n<p>Run <code>{id}</code>, started {started}.</p>\n",
        name = escape_markup(&r.plan.name),
        upper = verdict.to_uppercase(),
        id = escape_markup(&r.run_id),
        started = escape_markup(&r.started_at),
    );
    if !r.verdict_reasons.is_empty() {
        out.push_str("<ul>");
        for reason in &r.verdict_reasons {
            let _ = write!(out, "<li class=\"bad\">{}</li>", escape_markup(reason));
        }
        out.push_str("</ul>\n");
    }
    for w in &r.warnings {
        let _ = writeln!(out, "<p class=\"bad\"><strong>Warning</strong>: {}</p>", escape_markup(w));
    }
    summary(r, &mut out);
    out.push_str("<h2>Over time</h2>\n");
    match chart(r) {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(out, "<p class=\"bad\">The chart could not be drawn: {}</p>", escape_markup(&e));
        }
    }
    slos(r, &mut out);
    phases(r, &mut out);
    probes(r, &mut out);
    agents(r, &mut out);
    faults(r, &mut out);
    out.push_str("\n</body></html>\n");
    out
}

/// One table row; `cells` are already escaped.
fn row(out: &mut String, tag: &str, cells: &[String]) {
    out.push_str("<tr>");
    for c in cells {
        let _ = write!(out, "<{tag}>{c}</{tag}>");
    }
    out.push_str("</tr>\n");
}

fn latency(p: &Percentiles) -> Vec<String> {
    [p.p50, p.p90, p.p95, p.p99, p.p999, p.max].iter().map(|v| ms(*v)).collect()
}

const LATENCY_HEADS: [&str; 6] = ["p50", "p90", "p95", "p99", "p99.9", "max (ms)"];

fn heads(fixed: &[&str], latency: bool) -> Vec<String> {
    let tail: &[&str] = if latency { &LATENCY_HEADS } else { &[] };
    fixed.iter().chain(tail).map(|h| h.to_string()).collect()
}

fn summary(r: &Report, out: &mut String) {
    let t = &r.totals;
    let _ = write!(out, "<p>{}.</p>\n<table>", escape_markup(&totals_line(r)));
    row(out, "th", &heads(&["latency"], true));
    row(out, "td", &[vec!["from the intended start (what users saw)".to_string()], latency(&r.latency_ms)].concat());
    row(out, "td", &[vec!["from the actual send (service time)".to_string()], latency(&r.service_ms)].concat());
    out.push_str("</table>\n");
    if !t.errors_by_kind.is_empty() {
        let kinds: Vec<String> = t.errors_by_kind.iter().map(|(k, n)| format!("{} {n}", escape_markup(k))).collect();
        let _ = writeln!(out, "<p>Errors by kind: {}.</p>", kinds.join(", "));
    }
}

fn slos(r: &Report, out: &mut String) {
    if r.slos.is_empty() {
        return;
    }
    out.push_str("<h2>SLOs</h2>\n<table>");
    row(out, "th", &heads(&["SLO", "scope", "observed", "pass", "warn", "status", "when"], false));
    for s in &r.slos {
        let status = s.status.as_str();
        row(
            out,
            "td",
            &[
                escape_markup(subject(s)),
                escape_markup(&s.scope),
                escape_markup(&observed(s)),
                escape_markup(&s.threshold),
                escape_markup(s.warn_threshold.as_deref().unwrap_or("-")),
                format!("<span class=\"verdict {status}\">{status}</span>"),
                escape_markup(&when(s)),
            ],
        );
    }
    out.push_str("</table>\n");
}

fn phases(r: &Report, out: &mut String) {
    out.push_str("<h2>Phases</h2>\n<table>");
    row(out, "th", &[heads(&["phase", "model", "requests", "errors", "req/s"], true), vec!["schedule".to_string()]].concat());
    for p in &r.phases {
        let schedule = match &p.schedule {
            None => "closed model".to_string(),
            Some(s) if s.saturated => format!("<span class=\"bad\">{} due, {} dropped, {} late: saturated</span>", s.scheduled, s.dropped, s.late),
            Some(s) => format!(
                "{} due, {} dropped, {} late{}",
                s.scheduled,
                s.dropped,
                s.late,
                s.batch_window_ms.map(|w| format!(", started in batches of {w} ms")).unwrap_or_default()
            ),
        };
        let fixed = vec![escape_markup(&p.name), format!("{:?}", p.model).to_lowercase(), p.requests.to_string(), p.errors.to_string(), format!("{:.1}", p.throughput_rps)];
        row(out, "td", &[fixed, latency(&p.latency_ms), vec![schedule]].concat());
    }
    out.push_str("</table>\n");
}

fn probes(r: &Report, out: &mut String) {
    if r.probes.is_empty() {
        return;
    }
    out.push_str("<h2>Probes</h2>\n<table>");
    row(out, "th", &[heads(&["probe", "requests", "errors"], true), vec!["errors by kind".to_string()]].concat());
    for p in &r.probes {
        let kinds: Vec<String> = p.errors_by_kind.iter().map(|(k, n)| format!("{} {n}", escape_markup(k))).collect();
        let cls = if p.errors > 0 { " class=\"bad\"" } else { "" };
        let fixed = vec![escape_markup(&p.name), p.requests.to_string(), format!("<span{cls}>{}</span>", p.errors)];
        row(out, "td", &[fixed, latency(&p.latency_ms), vec![if kinds.is_empty() { "-".into() } else { kinds.join(", ") }]].concat());
    }
    out.push_str("</table>\n");
}

fn agents(r: &Report, out: &mut String) {
    out.push_str("<h2>Agents</h2>\n<table>");
    row(out, "th", &heads(&["agent", "labels", "requests", "errors", "start skew (ms)", "complete"], false));
    for a in &r.agents {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let complete = match (&a.lost, a.missing_intervals.is_empty()) {
            (None, true) if a.complete => "yes".to_string(),
            (lost, _) => format!(
                "<span class=\"bad\">no{}{}</span>",
                lost.as_deref().map(|l| format!(": {}", escape_markup(l))).unwrap_or_default(),
                if a.missing_intervals.is_empty() { String::new() } else { format!(" (intervals missing: {:?})", a.missing_intervals) }
            ),
        };
        row(out, "td", &[escape_markup(&a.id), escape_markup(&labels.join(",")), a.requests.to_string(), a.errors.to_string(), ms(a.start_skew_ms), complete]);
    }
    out.push_str("</table>\n");
}

fn faults(r: &Report, out: &mut String) {
    if r.faults.is_empty() {
        return;
    }
    out.push_str("<h2>Faults</h2>\n<table>");
    row(out, "th", &heads(&["fault", "kind", "agent", "window", "status", "effect"], false));
    for f in &r.faults {
        let bad = matches!(f.status.as_str(), "failed" | "revert_failed") || f.late;
        let mut status = escape_markup(&f.status);
        if f.late {
            status.push_str(" (applied late)");
        }
        if !f.error.is_empty() {
            let _ = write!(status, ": {}", escape_markup(&f.error));
        }
        if bad {
            status = format!("<span class=\"bad\">{status}</span>");
        }
        let effect = match &f.effect {
            None => "-".to_string(),
            Some(e) => format!("{} {:.3} → {:.3}{}", escape_markup(&e.measure), e.baseline, e.during, if e.effective { "" } else { " — no effect" }),
        };
        let window = format!("+{:.1} s – +{:.1} s", f.offset_s, f.offset_s + f.duration_s);
        row(out, "td", &[escape_markup(&f.name), escape_markup(&f.kind), escape_markup(&f.agent), window, status, effect]);
    }
    out.push_str("</table>\n");
}

/// Requests and errors per second (top) and p99 in ms (bottom), one point
/// per interval; fault windows shaded, phase starts as vertical lines.
fn chart(r: &Report) -> Result<String, String> {
    let interval = r.plan.interval.as_duration().as_secs_f64();
    let x_max = (r.plan.duration().as_secs_f64()).max(r.timeline.iter().map(|p| p.t_s + interval).fold(0.0, f64::max)).max(interval);
    let mid = |t: f64| t + interval / 2.0;
    let rps: Vec<(f64, f64)> = r.timeline.iter().map(|p| (mid(p.t_s), p.requests as f64 / interval)).collect();
    let eps: Vec<(f64, f64)> = r.timeline.iter().map(|p| (mid(p.t_s), p.errors as f64 / interval)).collect();
    let p99: Vec<(f64, f64)> = r.timeline.iter().filter_map(|p| p.p99_ms.map(|v| (mid(p.t_s), v))).collect();
    let rps_max = rps.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let p99_max = p99.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let windows: Vec<(f64, f64)> = r.faults.iter().filter(|f| f.applied_at.is_some()).map(|f| (f.offset_s, f.offset_s + f.duration_s)).collect();
    let starts: Vec<(f64, &str)> = r.plan.phase_offsets().iter().zip(&r.plan.phases).map(|(d, p)| (d.as_secs_f64(), p.name.as_str())).collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (upper, lower) = root.split_vertically(280);
        let panels = [
            (&upper, "requests / s", rps_max, vec![("requests/s", BLUE, rps.as_slice()), ("errors/s", RED, eps.as_slice())]),
            (&lower, "p99 latency (ms, from the intended start)", p99_max, vec![("p99 ms", BLACK, p99.as_slice())]),
        ];
        for (area, title, y_max, series) in panels {
            let mut c = ChartBuilder::on(area)
                .margin(12)
                .caption(title, ("sans-serif", 16))
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(|e| e.to_string())?;
            c.configure_mesh().light_line_style(RGBColor(238, 238, 238)).x_desc("seconds since the common start").draw().map_err(|e| e.to_string())?;
            let shade = RGBColor(255, 152, 0).mix(0.18).filled();
            c.draw_series(windows.iter().map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y_max)], shade))).map_err(|e| e.to_string())?;
            let phase_line = RGBColor(110, 110, 110).stroke_width(2);
            c.draw_series(starts.iter().skip(1).map(|&(x, _)| PathElement::new(vec![(x, 0.0), (x, y_max)], phase_line))).map_err(|e| e.to_string())?;
            c.draw_series(starts.iter().map(|&(x, name)| Text::new(format!(" {name}"), (x, y_max * 0.97), ("sans-serif", 13)))).map_err(|e| e.to_string())?;
            for (label, color, points) in series {
                c.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    let legend = if windows.is_empty() { "" } else { " Shaded: fault windows." };
    Ok(format!("{svg}\n<p>One point per {interval} s interval, counting each request in the interval it was due in (intended start; closed model: send); grey lines: phase starts.{legend}</p>\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_plans_is_escaped() {
        assert_eq!(escape_markup("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
