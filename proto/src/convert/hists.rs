//! The histograms of a snapshot's entries, decoded straight into the
//! accumulators they are added to (`histogram::accum`), all or nothing: a
//! histogram refused half-way through a snapshot takes back every one added
//! before it, and counts that would carry past 2^64 are added again
//! saturating, as `Histogram::add` does.

use std::collections::BTreeSet;

use stampede_common::histogram::accum::{apply, Accum, Op};
use stampede_common::histogram::CodecError;
use stampede_common::stats::{AccRecord, AccStats, StepKey};

use super::DecodeError;
use crate::v1::StepStats;

fn bytes(s: &StepStats) -> [&[u8]; 4] {
    [&s.latency_hist, &s.service_hist, &s.dispatch_hist, &s.handshake_hist]
}

fn fields(r: &mut AccRecord) -> [&mut Accum; 4] {
    [&mut r.latency, &mut r.service, &mut r.dispatch, &mut r.handshake]
}

/// Where a walk stopped: (entry, histogram) of the one refused.
type At = (usize, usize);

/// Applies `op` to every histogram before `upto` (entry, then histogram
/// order): whether an add carried past 2^64, or where it was refused (that
/// histogram left as it was).
fn run(
    steps: &[StepStats],
    routed: &[(usize, StepKey)],
    total: &mut Option<&mut AccStats>,
    parts: &mut [&mut AccStats],
    scratch: &mut Vec<u8>,
    op: Op,
    upto: At,
) -> Result<bool, (At, CodecError)> {
    let mut carried = false;
    for (e, (s, (part, key))) in steps.iter().zip(routed).enumerate().take(upto.0 + 1) {
        let mine = parts[*part].steps.entry(*key).or_default();
        let todo = bytes(s).into_iter().zip(fields(mine)).enumerate().take_while(|(h, _)| (e, *h) < upto);
        match total.as_deref_mut() {
            Some(t) => {
                let run_total = t.steps.entry(*key).or_default();
                for ((h, (b, x)), y) in todo.zip(fields(run_total)) {
                    carried |= apply(b, [x, y], scratch, op).map_err(|err| ((e, h), err))?;
                }
            }
            None => {
                for (h, (b, x)) in todo {
                    carried |= apply(b, [x], scratch, op).map_err(|err| ((e, h), err))?;
                }
            }
        }
    }
    Ok(carried)
}

/// Adds every entry's histograms to `total` (when given) and to its part
/// (`routed`: the part and key of each entry); nothing when one is refused.
pub(super) fn add_all(
    steps: &[StepStats],
    routed: &[(usize, StepKey)],
    mut total: Option<&mut AccStats>,
    parts: &mut [&mut AccStats],
    scratch: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    // Records the walk creates, removed again if the snapshot is refused.
    let new_total: BTreeSet<StepKey> = match total.as_deref() {
        Some(t) => routed.iter().map(|(_, k)| *k).filter(|k| !t.steps.contains_key(k)).collect(),
        None => BTreeSet::new(),
    };
    let new_parts: BTreeSet<(usize, StepKey)> = routed.iter().copied().filter(|(p, k)| !parts[*p].steps.contains_key(k)).collect();
    let all = (steps.len(), 0);
    match run(steps, routed, &mut total, parts, scratch, Op::Add, all) {
        Ok(false) => Ok(()),
        Ok(true) => {
            // A count reached 2^64 (forged, or a very long run): take the
            // wrapped adds back, and add saturating. The bytes decoded once:
            // neither walk can be refused.
            let undone = run(steps, routed, &mut total, parts, scratch, Op::Undo, all);
            let saturated = run(steps, routed, &mut total, parts, scratch, Op::Saturate, all);
            debug_assert!(undone.is_ok() && saturated.is_ok(), "bytes accepted once are accepted again");
            Ok(())
        }
        Err((at, e)) => {
            let undone = run(steps, routed, &mut total, parts, scratch, Op::Undo, at);
            debug_assert!(undone.is_ok(), "bytes accepted once are accepted again");
            if let Some(t) = total {
                t.steps.retain(|k, _| !new_total.contains(k));
            }
            for (p, k) in new_parts {
                parts[p].steps.remove(&k);
            }
            Err(e.into())
        }
    }
}
