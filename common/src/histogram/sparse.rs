//! A snapshot histogram as the coordinator adds it: only its non-zero
//! counts, by index of stampede's counts array (issue 11, item 3).
//!
//! The stock path (`decode`, then `Histogram::add`) allocates and zero-fills
//! the full 23 552-slot array for every histogram that arrives, and every add
//! scans all of it: 25–54 µs for a typical 1-s snapshot. Here the V2 payload
//! (a ZigZag LEB128 run-length encoding of the counts) is walked once into a
//! short list of (index, count) pairs, which is added to each accumulator by
//! index. The result is exactly the stock path's (property test
//! `common/tests/merge.rs`, and the fuzz target `snapshot_decoder` compares
//! the two on every input).
//!
//! Written by hand, because hdrhistogram decodes only into a new full
//! `Histogram` (its varint reader is in a private module) and has no add by
//! index; measured in `benchmarks/merge` (see benchmarks/README.md).

use super::{plain_v2, CodecError, Hist, HIGHEST_US, SIGNIFICANT_DIGITS, V2_COOKIE, V2_HEADER};

/// Slots in stampede's counts array (1 µs to 1 h, 3 digits): 22 buckets of
/// 1 024 plus the bottom half of the first (checked against hdrhistogram in
/// the tests).
pub const SLOTS: usize = 23 * 1024;

/// stampede's shape, in hdrhistogram's terms: 2 048 sub-buckets
/// (`2^11 ≥ 2·10^3`), half of them 2^10, unit magnitude 0 (lowest value 1).
const HALF_MAGNITUDE: u32 = 10;
const HALF: u64 = 1 << HALF_MAGNITUDE;

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

/// The non-zero counts of one histogram, by index; an index may repeat
/// (parts of one snapshot put together), which adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sparse {
    counts: Vec<(u32, u64)>,
}

impl Sparse {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// How many (index, count) pairs it holds.
    pub fn pairs(&self) -> usize {
        self.counts.len()
    }

    /// Adds these counts to `into` (stampede's shape), as `into.add(&h)`
    /// would add the histogram they came from: saturating counts and total,
    /// min and max to match. Indices were checked when decoded.
    pub fn add_to(&self, into: &mut Hist) {
        for &(i, n) in &self.counts {
            into.saturating_record_n(value_at(i as usize), n);
        }
    }

    /// Puts `other`'s counts after these: adding the result adds both.
    pub fn extend(&mut self, other: &Sparse) {
        self.counts.extend_from_slice(&other.counts);
    }

    /// The counts of a histogram in stampede's shape (tests, the fallback).
    pub fn from_hist(h: &Hist) -> Result<Sparse, CodecError> {
        let mut counts = Vec::new();
        for v in h.iter_recorded() {
            let index = index_of(h.lowest_equivalent(v.value_iterated_to()));
            if index >= SLOTS {
                return Err(CodecError::Bounds(format!("a value of {} µs, beyond the highest of {HIGHEST_US}", v.value_iterated_to())));
            }
            counts.push((index as u32, v.count_at_value()));
        }
        Ok(Sparse { counts })
    }
}

/// Decodes V2 (+DEFLATE) bytes into their non-zero counts: what
/// [`super::decode`] followed by [`super::add`] into a histogram of
/// stampede's shape accepts, this accepts, with the same counts; what they
/// refuse, this refuses. `scratch` holds an inflated payload between calls.
pub fn decode(bytes: &[u8], scratch: &mut Vec<u8>) -> Result<Sparse, CodecError> {
    if bytes.is_empty() {
        return Ok(Sparse::default());
    }
    let plain = plain_v2(bytes, scratch)?;
    match own_shape_payload(plain) {
        Some(payload) => walk(payload),
        // Another shape (no stampede agent sends one): the stock decode,
        // then the stock add's bounds and values, converted.
        None => {
            let h = super::decode_plain(plain)?;
            let mut ours = super::new_hist();
            super::add(&mut ours, &h)?;
            Sparse::from_hist(&ours)
        }
    }
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

fn too_long() -> CodecError {
    CodecError::Decode("EncodedArrayTooLong".into())
}

/// Walks a V2 payload: each number a ZigZag LEB128 varint (up to 8 bytes of
/// 7 bits, then a full 9th byte), a positive one a count at the current
/// index, a negative one a run of that many zero counts. Errors where
/// hdrhistogram's decoder errors: a varint cut short, a count past the
/// array, an index past 2^64, a zero run of i64::MIN.
fn walk(payload: &[u8]) -> Result<Sparse, CodecError> {
    // Every number takes a byte at least: one slot per byte is enough.
    // Each number is written to the next slot and the slot kept only when
    // it is a count: no branch on count-or-run, which a histogram's
    // interleaving makes unpredictable (measured: half the decode time).
    let mut counts = vec![(0u32, 0u64); payload.len().min(2 * SLOTS)];
    let mut kept = 0;
    let mut index: u64 = 0;
    let mut at = 0;
    // Errors are noted as they happen and reported at the end: a varint
    // past the end, a zero run of i64::MIN, an index past 2^64.
    let mut bad = false;
    while let Some(&first) = payload.get(at) {
        // The common case by far: a count below 64 or a run below 65 zeros.
        let zz = if first < 0x80 {
            at += 1;
            u64::from(first)
        } else {
            let mut value = 0u64;
            let mut shift = 0;
            loop {
                let Some(&b) = payload.get(at) else {
                    return Err(CodecError::Decode("a count is cut short".into()));
                };
                at += 1;
                if shift == 56 {
                    value |= u64::from(b) << 56;
                    break;
                }
                value |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            value
        };
        let n = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        let Some(slot) = counts.get_mut(kept) else {
            return Err(too_long());
        };
        *slot = (index.min(u64::from(u32::MAX)) as u32, n as u64);
        kept += usize::from(n > 0);
        bad |= n == i64::MIN;
        let (next, over) = index.overflowing_add(if n < 0 { n.wrapping_neg() as u64 } else { 1 });
        bad |= over;
        index = next;
    }
    if bad {
        return Err(CodecError::Decode("a count is out of range".into()));
    }
    counts.truncate(kept);
    // The index only grows: the last count's is the highest.
    if counts.last().is_some_and(|&(i, _)| i as usize >= SLOTS) {
        return Err(too_long());
    }
    Ok(Sparse { counts })
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
        let sparse = decode(&encode(&h), &mut scratch).unwrap();
        assert_eq!(sparse.pairs(), 10);
        let mut into = new_hist();
        sparse.add_to(&mut into);
        assert_eq!(into, h);
        assert!(decode(&[], &mut scratch).unwrap().is_empty());
        assert!(decode(b"garbage", &mut scratch).is_err());
    }

    #[test]
    fn forged_payloads_are_refused() {
        // A count at the index one past the array; a varint cut short.
        let header = |payload: &[u8]| {
            let mut b = V2_COOKIE.to_be_bytes().to_vec();
            b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&3u32.to_be_bytes());
            b.extend_from_slice(&1u64.to_be_bytes());
            b.extend_from_slice(&HIGHEST_US.to_be_bytes());
            b.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
            b.extend_from_slice(payload);
            b
        };
        let mut scratch = Vec::new();
        // zigzag(-23552) = 47103 = 0xff 0xef 0x02 as LEB128, then a count of 1.
        let past = header(&[0xff, 0xef, 0x02, 0x02]);
        assert!(decode(&past, &mut scratch).is_err());
        assert!(super::super::decode(&past).is_err(), "the stock path refuses it too");
        // One slot earlier fits.
        let last = header(&[0xfd, 0xef, 0x02, 0x02]);
        let s = decode(&last, &mut scratch).unwrap();
        assert_eq!(s.counts, [(SLOTS as u32 - 1, 1)]);
        assert!(decode(&header(&[0x02, 0x80]), &mut scratch).is_err(), "cut short");
        assert!(super::super::decode(&header(&[0x02, 0x80])).is_err());
        let min = header(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&min, &mut scratch).is_err(), "a zero run of i64::MIN");
    }
}
