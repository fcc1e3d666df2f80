//! A step's data rows on this agent (docs/plan.md, "Data files"): filled
//! into the plan from the assignment, and drawn one per execution of the
//! step (a request, or a whole flow) by every worker of the agent.
//!
//! The coordinator already cut the file for this agent (`split.rs`):
//! `unique` rows arrive as this agent's own range, so taking each at most
//! once here makes each used at most once in the fleet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use stampede_common::plan::data::{DataOrder, DataSet};
use stampede_common::plan::Plan;
use stampede_proto::v1::DataFile;

/// Puts the assignment's data `files` into the plan's steps, before the
/// plan is validated (its `{{data.COL}}` are checked against the columns).
pub fn fill(plan: &mut Plan, files: &[DataFile]) -> Result<(), String> {
    for f in files {
        let data = plan.steps.get_mut(f.step as usize).and_then(|s| s.data.as_mut());
        let data = data.ok_or_else(|| format!("the assignment has data for step #{}, which has no `data:`", f.step))?;
        data.set = Some(Arc::new(stampede_proto::data_from_wire(f)?));
    }
    Ok(())
}

/// One step's rows and where this agent's workers are in them.
#[derive(Debug)]
pub struct StepRows {
    set: Arc<DataSet>,
    order: DataOrder,
    /// Draws so far, across the agent's workers (one atomic per execution:
    /// nothing against a round trip).
    taken: AtomicU64,
    /// `sequential`: where this agent starts, so a fleet's agents begin
    /// spread over the file as one reader would walk it.
    offset: u64,
}

impl StepRows {
    /// Every step's rows (`None` for a step without data) for the agent
    /// `agent` of `agents`.
    pub fn for_plan(plan: &Plan, agent: u32, agents: u32) -> Vec<Option<StepRows>> {
        plan.steps
            .iter()
            .map(|s| {
                let data = s.data.as_ref()?;
                let set = data.set.clone().unwrap_or_else(|| Arc::new(DataSet { columns: Vec::new(), rows: Vec::new() }));
                let offset = set.rows.len() as u64 * u64::from(agent) / u64::from(agents.max(1));
                Some(StepRows { set, order: data.order, taken: AtomicU64::new(0), offset })
            })
            .collect()
    }

    /// The next execution's row; `None` when there is none: this agent's
    /// `unique` rows are used up (or it was given no rows).
    pub fn take(&self) -> Option<&[String]> {
        let rows = &self.set.rows;
        if rows.is_empty() {
            return None;
        }
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        let i = match self.order {
            DataOrder::Sequential => (self.offset.wrapping_add(n) % rows.len() as u64) as usize,
            DataOrder::Random => fastrand::usize(..rows.len()),
            DataOrder::Unique => usize::try_from(n).ok().filter(|&i| i < rows.len())?,
        };
        Some(&rows[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(order: DataOrder, n: usize, agent: u32, agents: u32) -> StepRows {
        let set = Arc::new(DataSet { columns: vec!["id".into()], rows: (0..n).map(|i| vec![i.to_string()]).collect() });
        let offset = n as u64 * u64::from(agent) / u64::from(agents);
        StepRows { set, order, taken: AtomicU64::new(0), offset }
    }

    fn ids(r: &StepRows, draws: usize) -> Vec<Option<String>> {
        (0..draws).map(|_| r.take().map(|row| row[0].clone())).collect()
    }

    #[test]
    fn sequential_wraps_from_the_agents_offset() {
        let got = ids(&rows(DataOrder::Sequential, 4, 1, 2), 6);
        let want: Vec<Option<String>> = ["2", "3", "0", "1", "2", "3"].iter().map(|s| Some(s.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unique_gives_each_row_once_then_none() {
        let got = ids(&rows(DataOrder::Unique, 3, 0, 1), 5);
        assert_eq!(got, [Some("0".into()), Some("1".into()), Some("2".into()), None, None]);
        assert_eq!(ids(&rows(DataOrder::Unique, 0, 0, 1), 1), [None]);
    }

    #[test]
    fn random_stays_in_the_file_and_reaches_every_row() {
        let r = rows(DataOrder::Random, 5, 0, 1);
        let seen: std::collections::BTreeSet<String> = ids(&r, 500).into_iter().map(Option::unwrap).collect();
        assert_eq!(seen.len(), 5);
    }
}
