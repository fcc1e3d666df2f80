//! The coordinator's histogram accumulator (issue 11, item 3): a plain
//! counts array in hdrhistogram's index layout for stampede's shape, and a
//! V2 decoder that adds straight into it.
//!
//! The stock path (`decode`, then `Histogram::add`) allocates and zero-fills
//! the full 23 552-slot array for every histogram that arrives, and every add
//! scans all of it: 25–54 µs for a typical 1-s snapshot. Here the V2 payload
//! (ZigZag LEB128 numbers: a positive one a count at the current index, a
//! negative one a run of zero counts) is walked once, each count added at its
//! index into one or more accumulators: no intermediate list, no allocation
//! per snapshot. An [`Accum`] becomes a `Histogram` only when read
//! ([`Accum::to_hist`]: percentiles, reports, the timeline, SLO judging), and
//! the result is exactly the stock path's (property tests in
//! `common/tests/merge.rs`; the fuzz target `snapshot_decoder` compares the
//! two on every input).
//!
//! Refusing a forged payload without a trace: the walk adds with wrapping
//! arithmetic, which a second walk of the same bytes subtracts exactly, so a
//! payload found bad half-way (a count past the array, a varint cut short, a
//! zero run of i64::MIN) is undone, and so is a whole snapshot whose last
//! histogram is bad ([`Op`]). Where hdrhistogram saturates a count at 2^64 the
//! wrapping walk notices the carry; the caller then undoes and adds again
//! saturating ([`Op::Saturate`]), as `Histogram::add` would.
//!
//! Written by hand, because hdrhistogram decodes only into a new full
//! `Histogram` (its varint reader is in a private module) and adds only whole
//! histograms; measured in `benchmarks/merge.rs` (benchmarks/README.md).

use std::hint::select_unpredictable;

use super::{plain_v2, CodecError, Hist, HIGHEST_US, SIGNIFICANT_DIGITS, V2_COOKIE, V2_HEADER};

/// Slots in stampede's counts array (1 µs to 1 h, 3 digits): 22 buckets of
/// 1 024 plus the bottom half of the first (checked against hdrhistogram in
/// the tests).
pub const SLOTS: usize = 23 * 1024;

/// stampede's shape, in hdrhistogram's terms: 2 048 sub-buckets
/// (`2^11 ≥ 2·10^3`), half of them 2^10, unit magnitude 0 (lowest value 1).
const HALF_MAGNITUDE: u32 = 10;
const HALF: u64 = 1 << HALF_MAGNITUDE;

/// The counts, then spare slots: the walk sends a count whose index is past
/// the array to the first (and refuses the payload, undoing it), so that
/// the hot loop needs no branch to stay in bounds, and adds each zero run's
/// 0 to one of the others ([`SINKS`]).
type Counts = [u64; SLOTS + 1 + SINKS];

/// Spare slots a zero run adds its 0 to, by byte offset. Measured: adding
/// the 0 at the run's own index, where the next count is added, chains
/// each count's load to the store before it (store-to-load forwarding,
/// ~5 cycles): typical snapshots, which alternate run and count, decoded
/// at half the speed.
const SINKS: usize = 16;

/// The lowest value counted at `index` (hdrhistogram's private `value_for`
/// for stampede's shape).
#[inline]
pub fn value_at(index: usize) -> u64 {
    let bucket = (index >> HALF_MAGNITUDE) as i64 - 1;
    let sub = (index as u64 & (HALF - 1)) + HALF;
    if bucket < 0 {
        sub - HALF
    } else {
        sub << bucket
    }
}

/// The index a value is counted at (hdrhistogram's private `index_for`
/// for stampede's shape); may be past [`SLOTS`] for a value beyond 1 h.
#[inline]
pub fn index_of(value: u64) -> usize {
    // 64 - unit magnitude (0) - sub-bucket magnitude (11); mask 2^11 - 1.
    let bucket = 53 - (value | 2047).leading_zeros();
    let sub = value >> bucket;
    (((bucket + 1) << HALF_MAGNITUDE) as u64 + sub - HALF) as usize
}

/// A histogram of stampede's shape as the coordinator accumulates it: the
/// counts by index (allocated on the first count: a step without TLS never
/// holds a handshake array) and their total, saturating at 2^64 like
/// hdrhistogram's. Min and max are read off the array when converted.
#[derive(Debug, Clone, Default)]
pub struct Accum {
    counts: Option<Box<Counts>>,
    total: u64,
}

/// How [`apply`] adds a payload's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Wrapping adds; `Ok(true)` when one carried past 2^64 (the caller
    /// then undoes and saturates).
    Add,
    /// Subtracts exactly what an `Add` of the same bytes added.
    Undo,
    /// Saturating adds, as `Histogram::add`: for bytes an `Add` accepted.
    Saturate,
}

const ADD: u8 = 0;
const UNDO: u8 = 1;
const SATURATE: u8 = 2;

impl Accum {
    /// No count at all (the total is the sum of the counts).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// How many values it counts (saturating at 2^64).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Zero again, keeping the array.
    pub fn reset(&mut self) {
        if let Some(c) = self.counts.as_mut() {
            c.fill(0);
        }
        self.total = 0;
    }

    fn counts_mut(&mut self) -> &mut Counts {
        self.counts.get_or_insert_with(|| vec![0u64; SLOTS + 1 + SINKS].into_boxed_slice().try_into().expect("as long as Counts"))
    }

    /// The histogram these counts make: equal (counts, total, min, max) to
    /// what the stock path would have accumulated. Costs a scan of the array:
    /// for reads, never per snapshot.
    pub fn to_hist(&self) -> Hist {
        let mut h = super::new_hist();
        if let Some(c) = &self.counts {
            // Recording each count at its slot's lowest value sets the same
            // counts, min and max; the total, a saturating sum either way,
            // is the same whatever the grouping of the adds.
            for (i, &n) in c[..SLOTS].iter().enumerate().filter(|(_, n)| **n > 0) {
                h.saturating_record_n(value_at(i), n);
            }
        }
        debug_assert_eq!(h.len(), self.total);
        h
    }

    /// The counts of a histogram of stampede's shape (tests, the timeline).
    pub fn from_hist(h: &Hist) -> Accum {
        let mut a = Accum::default();
        for v in h.iter_recorded() {
            let index = index_of(h.lowest_equivalent(v.value_iterated_to())).min(SLOTS - 1);
            let c = &mut a.counts_mut()[index];
            *c = c.saturating_add(v.count_at_value());
            a.total = a.total.saturating_add(v.count_at_value());
        }
        a
    }

    /// Adds V2 (+DEFLATE) bytes, as `histogram::add(self, &decode(bytes)?)`
    /// would; nothing is added when they are refused.
    pub fn add_encoded(&mut self, bytes: &[u8], scratch: &mut Vec<u8>) -> Result<(), CodecError> {
        if apply(bytes, [&mut *self], scratch, Op::Add)? {
            apply(bytes, [&mut *self], scratch, Op::Undo)?;
            apply(bytes, [&mut *self], scratch, Op::Saturate)?;
        }
        Ok(())
    }
}

/// Adds (or undoes, see [`Op`]) V2 (+DEFLATE) bytes in each of `targets`:
/// what [`super::decode`] followed by [`super::add`] into a histogram of
/// stampede's shape accepts, this accepts, with the same counts; what they
/// refuse, this refuses, leaving the targets as they were. `scratch` holds
/// an inflated payload. `Ok(true)`: an `Add` carried past 2^64.
pub fn apply<const N: usize>(bytes: &[u8], mut targets: [&mut Accum; N], scratch: &mut Vec<u8>, op: Op) -> Result<bool, CodecError> {
    if bytes.is_empty() {
        return Ok(false);
    }
    let plain = plain_v2(bytes, scratch)?;
    let Some(payload) = own_shape_payload(plain) else {
        // Another shape (no stampede agent sends one): the stock decode,
        // then the stock add's bounds and values, by index of ours.
        let h = super::decode_plain(plain)?;
        let mut ours = super::new_hist();
        super::add(&mut ours, &h)?;
        return Ok(add_pairs(&ours, &mut targets, op));
    };
    let mut arrays = targets.each_mut().map(|t| t.counts_mut());
    let walked = match op {
        Op::Add => walk::<ADD, N>(payload, &mut arrays),
        Op::Undo => walk::<UNDO, N>(payload, &mut arrays),
        Op::Saturate => walk::<SATURATE, N>(payload, &mut arrays),
    };
    let sum = match walked {
        Ok(sum) => sum,
        Err(e) => {
            // What the walk added up to the error, subtracted again.
            if op == Op::Add {
                let _ = walk::<UNDO, N>(payload, &mut arrays);
            }
            return Err(e);
        }
    };
    let carried = sum > u128::from(u64::MAX);
    Ok(add_total(&mut targets, sum.min(u128::from(u64::MAX)) as u64, carried, op))
}

/// Adds a payload's sum to each total: whether one may have carried (see
/// [`walk`]: no count carries unless its total does).
fn add_total<const N: usize>(targets: &mut [&mut Accum; N], sum: u64, carried: bool, op: Op) -> bool {
    let mut carried = carried;
    for t in targets.iter_mut() {
        match op {
            Op::Add => {
                let (total, over) = t.total.overflowing_add(sum);
                t.total = total;
                carried |= over;
            }
            Op::Undo => t.total = t.total.wrapping_sub(sum),
            Op::Saturate => t.total = t.total.saturating_add(sum),
        }
    }
    carried
}

/// [`apply`] for a histogram already in stampede's shape (the fallback).
fn add_pairs<const N: usize>(h: &Hist, targets: &mut [&mut Accum; N], op: Op) -> bool {
    let mut carried = false;
    let mut sum = 0u64;
    for v in h.iter_recorded() {
        // The add into our shape checked the bounds.
        let index = index_of(h.lowest_equivalent(v.value_iterated_to())).min(SLOTS - 1);
        let n = v.count_at_value();
        for t in targets.iter_mut() {
            let c = &mut t.counts_mut()[index];
            match op {
                Op::Add => {
                    let (x, over) = c.overflowing_add(n);
                    *c = x;
                    carried |= over;
                }
                Op::Undo => *c = c.wrapping_sub(n),
                Op::Saturate => *c = c.saturating_add(n),
            }
        }
        let (s, over) = sum.overflowing_add(n);
        carried |= over;
        sum = if op == Op::Saturate { sum.saturating_add(n) } else { s };
    }
    add_total(targets, sum, carried, op)
}

/// The payload of a V2 histogram of exactly stampede's shape, or None for
/// anything else (which the stock decoder then judges).
fn own_shape_payload(plain: &[u8]) -> Option<&[u8]> {
    let header = plain.get(..V2_HEADER)?;
    let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let ours = u32_at(0) == V2_COOKIE
        && u32_at(8) == 0
        && u32_at(12) == u32::from(SIGNIFICANT_DIGITS)
        && u64_at(16) == 1
        && u64_at(24) == HIGHEST_US
        && f64::from_bits(u64_at(32)) == 1.0;
    let claimed = u32_at(4) as usize;
    // `plain_v2` checked that the claimed payload is present.
    if ours {
        plain.get(V2_HEADER..V2_HEADER + claimed)
    } else {
        None
    }
}

fn out_of_range() -> CodecError {
    CodecError::Decode("a count is out of range".into())
}

/// A varint of 3 or more bytes (or one cut short: None): up to 8 bytes of 7
/// bits, then a full 9th byte, as hdrhistogram reads them.
/// Returns the value and the offset after it (by value, not through a
/// reference: measured, `at` then lives in memory in the hot loop).
#[cold]
fn long_varint(payload: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..=56).step_by(7) {
        let b = *payload.get(at)?;
        at += 1;
        if shift == 56 {
            return Some((value | u64::from(b) << 56, at));
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value, at));
        }
    }
    unreachable!("the 9th byte returns")
}

/// Adds (per `MODE`) `count` at `slot` of every target.
#[inline(always)]
fn add<const MODE: u8, const N: usize>(targets: &mut [&mut Counts; N], slot: usize, count: u64) {
    for t in targets.iter_mut() {
        let c = &mut t[slot];
        *c = match MODE {
            ADD => c.wrapping_add(count),
            UNDO => c.wrapping_sub(count),
            _ => c.saturating_add(count),
        };
    }
}

/// Walks a V2 payload, adding (per `MODE`) each count at its index in every
/// target array: the sum of the counts, and whether an add may have carried
/// past 2^64. Errors where hdrhistogram's decoder errors: a varint cut
/// short, a count past the array, an index past 2^64, a zero run of
/// i64::MIN — after adding everything before (a count past the array to
/// the spare slot), so that a walk with `UNDO` takes it all back.
///
/// No add is checked for a carry: a count is at most the total of its
/// accumulator (a saturating sum of the counts), so none carries unless
/// the total plus the payload's sum does, which the caller checks.
/// Measured: every operation per number counts here (~1.5 ns a number).
fn walk<const MODE: u8, const N: usize>(payload: &[u8], targets: &mut [&mut Counts; N]) -> Result<u128, CodecError> {
    let mut index: u64 = 0;
    let mut at = 0;
    let mut sum: u128 = 0;
    // The index of the last count: the highest, unless the index wrapped.
    let mut last: u64 = 0;
    let mut wrapped = false;
    // A zero run of i64::MIN (only a 9-byte number can say it).
    let mut unnegatable = false;
    let mut cut = false;
    loop {
        // Eight 1-byte numbers at once while the index is far enough from
        // the array's end that none can pass it (each moves it by 64 at
        // most): measured, typical snapshots are all 1-byte numbers, and
        // this drops the per-byte end and length checks. 1-byte numbers
        // need no check for an index past 2^64 or a run of i64::MIN.
        while let Some(chunk) = payload.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if word & 0x8080_8080_8080_8080 != 0 || index > (SLOTS - 8 * 64) as u64 {
                break;
            }
            let mut block_sum = 0u64;
            for k in 0..8 {
                let zz = (word >> (8 * k)) & 0x7f;
                // ZigZag: even, a count of zz/2; odd, a run of (zz+1)/2.
                let half = (zz + 1) >> 1;
                let run = zz & 1 == 1;
                let count = select_unpredictable(run, 0, half);
                let slot = select_unpredictable(run, SLOTS + 1 + k, index as usize);
                add::<MODE, N>(targets, slot, count);
                block_sum += count;
                index += select_unpredictable(run, half, 1);
            }
            sum += u128::from(block_sum);
            at += 8;
        }
        let Some(&first) = payload.get(at) else { break };
        // Measured on typical snapshots: 1-byte numbers (a count below 64,
        // a run below 65) are nearly all; 2-byte ones most of the rest.
        let zz = if first < 0x80 {
            at += 1;
            u64::from(first)
        } else {
            match payload.get(at + 1) {
                Some(&second) if second < 0x80 => {
                    at += 2;
                    u64::from(first & 0x7f) | u64::from(second) << 7
                }
                _ => match long_varint(payload, at) {
                    Some((v, next)) => {
                        at = next;
                        unnegatable |= v == u64::MAX;
                        v
                    }
                    None => {
                        cut = true;
                        break;
                    }
                },
            }
        };
        let n = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        // No branch on count-or-run, which a histogram's interleaving makes
        // unpredictable (measured: LLVM made one of plain `if`s, at half
        // the speed): a run adds 0 to a spare slot.
        let is_count = n > 0;
        let count = select_unpredictable(is_count, n as u64, 0);
        let slot = select_unpredictable(is_count, index.min(SLOTS as u64) as usize, SLOTS + 1 + (at & (SINKS - 1)));
        last = select_unpredictable(is_count, index, last);
        add::<MODE, N>(targets, slot, count);
        sum += u128::from(count);
        let (next, over) = index.overflowing_add(select_unpredictable(n < 0, n.wrapping_neg() as u64, 1));
        wrapped |= over;
        index = next;
    }
    if cut {
        return Err(CodecError::Decode("a count is cut short".into()));
    }
    if last >= SLOTS as u64 {
        return Err(CodecError::Decode("EncodedArrayTooLong".into()));
    }
    if wrapped || unnegatable {
        return Err(out_of_range());
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::super::{encode, new_hist, record_us};
    use super::*;

    #[test]
    fn the_shape_is_hdrhistograms() {
        let h = new_hist();
        assert_eq!(h.distinct_values(), SLOTS);
        for i in 0..SLOTS {
            let v = value_at(i);
            assert_eq!(index_of(v), i, "index {i}");
            if i > 0 {
                assert_eq!(h.lowest_equivalent(v), v, "index {i} starts a slot");
                assert_eq!(index_of(h.highest_equivalent(v)), i);
                assert_eq!(h.lowest_equivalent(v - 1), value_at(i - 1), "index {i}: the slot before ends just below");
            }
        }
        assert!(h.highest_equivalent(value_at(SLOTS - 1)) >= HIGHEST_US);
        assert_eq!(index_of(h.highest_equivalent(value_at(SLOTS - 1)) + 1), SLOTS);
    }

    #[test]
    fn decodes_to_the_same_histogram_as_the_stock_path() {
        let mut h = new_hist();
        for v in [1, 2, 999, 1_000, 2_047, 2_048, 12_345, 3_000_000, HIGHEST_US] {
            record_us(&mut h, v);
        }
        h.saturating_record_n(77, u64::MAX / 2);
        let mut scratch = Vec::new();
        let mut acc = Accum::default();
        acc.add_encoded(&encode(&h), &mut scratch).unwrap();
        assert_eq!(acc.to_hist(), h);
        // Twice: the count of 2^63 - 1 saturates, as hdrhistogram's add does.
        acc.add_encoded(&encode(&h), &mut scratch).unwrap();
        acc.add_encoded(&encode(&h), &mut scratch).unwrap();
        let mut stock = h.clone();
        super::super::add(&mut stock, &h).unwrap();
        super::super::add(&mut stock, &h).unwrap();
        assert_eq!(acc.to_hist(), stock);
        assert_eq!(acc.len(), u64::MAX);
        assert_eq!(Accum::from_hist(&h).to_hist(), h);
        let mut empty = Accum::default();
        empty.add_encoded(&[], &mut scratch).unwrap();
        assert!(empty.is_empty() && empty.counts.is_none());
        assert!(empty.add_encoded(b"garbage", &mut scratch).is_err());
    }

    fn header(payload: &[u8]) -> Vec<u8> {
        let mut b = V2_COOKIE.to_be_bytes().to_vec();
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&HIGHEST_US.to_be_bytes());
        b.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn forged_payloads_are_refused_and_leave_nothing_behind() {
        let mut h = new_hist();
        record_us(&mut h, 1_000);
        record_us(&mut h, 7);
        let mut acc = Accum::from_hist(&h);
        let mut scratch = Vec::new();
        let refused = |acc: &mut Accum, bytes: &[u8], stock_too: bool| {
            assert!(acc.add_encoded(bytes, &mut Vec::new()).is_err());
            assert_eq!(super::super::decode(bytes).is_err(), stock_too);
            assert_eq!(acc.to_hist(), h, "nothing of it stays");
            assert_eq!(acc.counts.as_ref().unwrap()[SLOTS], 0, "the spare slot is empty again");
        };
        // A count of 5 at index 3, then: zigzag(-23552) = 47103 = 0xff 0xef
        // 0x02 as LEB128, then a count of 1: one past the array.
        refused(&mut acc, &header(&[0x05, 0x0a, 0xff, 0xef, 0x02, 0x02]), true);
        // A count, then a varint cut short.
        refused(&mut acc, &header(&[0x0a, 0x02, 0x80]), true);
        // A zero run of i64::MIN after a count.
        refused(&mut acc, &header(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), true);
        // One slot earlier fits.
        acc.add_encoded(&header(&[0xfd, 0xef, 0x02, 0x02]), &mut scratch).unwrap();
        assert_eq!(acc.counts.as_ref().unwrap()[SLOTS - 1], 1);
        assert_eq!(acc.len(), 3);
    }
}
