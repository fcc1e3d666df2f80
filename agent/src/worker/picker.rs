//! A phase's step mix: which step each request runs.

use std::cell::RefCell;

/// Chooses a phase's steps by weight with a per-worker generator (no
/// shared state); gives the plan's index of the step.
pub(super) struct StepPicker {
    /// The plan's step indexes this phase picks from.
    pub(super) steps: Vec<usize>,
    cumulative: Vec<u32>,
    rng: RefCell<fastrand::Rng>,
}

impl StepPicker {
    /// `choices`: (step index, weight), as `Plan::phase_steps` gives them.
    pub(super) fn new(choices: impl Iterator<Item = (usize, u32)>, seed: u64) -> Self {
        let mut total = 0;
        let (steps, cumulative) = choices
            .map(|(step, w)| {
                total += w;
                (step, total)
            })
            .unzip();
        StepPicker { steps, cumulative, rng: RefCell::new(fastrand::Rng::with_seed(0x5eed ^ seed)) }
    }

    #[inline]
    pub(super) fn pick(&self) -> usize {
        if self.cumulative.len() == 1 {
            return self.steps[0];
        }
        let total = *self.cumulative.last().expect("a phase has steps");
        let x = self.rng.borrow_mut().u32(0..total);
        self.steps[self.cumulative.partition_point(|&c| c <= x)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_picked_by_weight() {
        let p = StepPicker::new([(0, 40), (1, 60)].into_iter(), 1);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[p.pick()] += 1;
        }
        let share = counts[0] as f64 / 100_000.0;
        assert!((share - 0.4).abs() < 0.01, "{share}");
    }

    #[test]
    fn a_phase_mix_picks_only_its_steps() {
        // A phase naming steps 2 (weight 3) and 0 (weight 1) of a plan.
        let p = StepPicker::new([(2, 3), (0, 1)].into_iter(), 7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[p.pick()] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.015, "{share}");
        assert_eq!(StepPicker::new([(4, 1)].into_iter(), 1).pick(), 4);
    }
}
