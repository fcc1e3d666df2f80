//! How long a phase, and the run, lasted for rate figures (throughput):
//! the timeline's length, except for an iterations phase whose count was
//! done before its `max_duration`, which lasted from its start (when its
//! first iteration was due) to its last completion (the latest any agent
//! reported, `ScheduleStats::last_done_us`). The timeline itself is not
//! changed: the next phase still starts at `max_duration`.

use std::time::Duration;

use stampede_common::plan::Plan;
use stampede_common::stats::RunStats;

/// Phase `i`'s actual length, when it is shorter than its length on the
/// timeline: an iterations phase whose count was done early. `None`
/// otherwise (other models; a count cut short; agents too old to report
/// their last completion).
pub fn early_end(plan: &Plan, stats: &RunStats, i: usize) -> Option<Duration> {
    let phase = plan.phases.get(i)?;
    let planned = phase.load.iterations()?;
    if stats.summarize(|k| k.phase == i as u32).requests < planned {
        return None; // cut short by max_duration: it lasted all of it
    }
    let last = stats.schedule.get(&(i as u32)).map(|s| s.last_done_us).filter(|&us| us > 0)?;
    let start = plan.phase_offsets()[i];
    let took = Duration::from_micros(last).checked_sub(start)?;
    (!took.is_zero() && took < phase.length()).then_some(took)
}

/// Phase `i`'s length for rates: [`early_end`], else its timeline length.
pub fn phase_seconds(plan: &Plan, stats: &RunStats, i: usize) -> f64 {
    early_end(plan, stats, i).unwrap_or_else(|| plan.phases[i].length()).as_secs_f64()
}

/// The run's length for rates: the plan's duration, less what the last
/// phase did not use when it is an iterations phase done early (the run
/// ends then; an earlier phase's unused time still passed on the timeline).
pub fn run_seconds(plan: &Plan, stats: &RunStats) -> f64 {
    let planned = plan.duration();
    let Some(last) = plan.phases.len().checked_sub(1) else { return planned.as_secs_f64() };
    let unused = early_end(plan, stats, last).map_or(Duration::ZERO, |took| plan.phases[last].length() - took);
    (planned - unused).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_common::plan::{load_str, Format};
    use stampede_common::stats::{ScheduleStats, StepKey, StepRecord};

    fn plan() -> Plan {
        let text = "name: t\ntarget: http://127.0.0.1:1\nphases:\n  - { name: warm, duration: 2s, load: { model: closed, concurrency: 1 } }\n  - { name: count, load: { model: iterations, count: 100, concurrency: 4, max_duration: 30s } }\nsteps:\n  - { name: s, request: { path: / } }\n";
        load_str(text, Format::Yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    fn done_at(phase: u32, us: u64) -> RunStats {
        let mut stats = RunStats::default();
        let key = StepKey { phase, step: 0, ok: true };
        stats.steps.insert(key, StepRecord { requests: 100, ..StepRecord::default() });
        stats.schedule.insert(phase, ScheduleStats { last_done_us: us, ..ScheduleStats::default() });
        stats
    }

    #[test]
    fn an_iterations_phase_done_early_lasted_until_its_last_completion() {
        let plan = plan();
        // Done 0.5 s into the phase, which started at 2 s.
        let stats = done_at(1, 2_500_000);
        assert_eq!(early_end(&plan, &stats, 1), Some(Duration::from_millis(500)));
        assert_eq!(phase_seconds(&plan, &stats, 1), 0.5);
        assert_eq!(run_seconds(&plan, &stats), 2.5);
        // A closed phase keeps its duration whatever its last completion.
        assert_eq!(phase_seconds(&plan, &done_at(0, 1_000_000), 0), 2.0);
    }

    #[test]
    fn otherwise_the_timeline_length() {
        let plan = plan();
        // Nothing reported (an older agent); a request finishing after
        // max_duration (it does not lengthen the phase); a count cut short.
        let mut cut_short = done_at(1, 29_000_000);
        cut_short.steps.values_mut().for_each(|r| r.requests = 60);
        for stats in [RunStats::default(), done_at(1, 40_000_000), cut_short] {
            assert_eq!(phase_seconds(&plan, &stats, 1), 30.0);
            assert_eq!(run_seconds(&plan, &stats), 32.0);
        }
    }
}
