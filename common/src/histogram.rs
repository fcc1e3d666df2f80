//! The one histogram shape stampede uses everywhere, and its wire encoding.
//!
//! Every histogram is microseconds, 1 µs to 1 h, 3 significant digits, so any
//! two can be added exactly: a fleet percentile computed from merged agent
//! histograms equals the percentile of one histogram that saw every sample.
//! On the wire: HdrHistogram V2 + DEFLATE, the format other HdrHistogram
//! tools read too.

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

pub type Hist = Histogram<u64>;

pub const SIGNIFICANT_DIGITS: u8 = 3;
/// One hour in microseconds: longer than any request timeout we allow.
pub const HIGHEST_US: u64 = 3_600_000_000;

pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS).expect("static bounds are valid")
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("histogram does not decode: {0}")]
    Decode(String),
    #[error("histogram does not fit stampede's bounds: {0}")]
    Bounds(String),
}

pub fn encode(h: &Hist) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    V2DeflateSerializer::new().serialize(h, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes V2 (+DEFLATE) bytes. An empty slice is an empty histogram, so
/// senders may omit histograms that recorded nothing.
pub fn decode(bytes: &[u8]) -> Result<Hist, CodecError> {
    if bytes.is_empty() {
        return Ok(new_hist());
    }
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| CodecError::Decode(format!("{e:?}")))
}

/// Adds `other` into `into`; fails only when `other` has values beyond our bounds.
pub fn add(into: &mut Hist, other: &Hist) -> Result<(), CodecError> {
    into.add(other).map_err(|e| CodecError::Bounds(format!("{e:?}")))
}

/// Records a value in microseconds, clamping to the histogram's range instead
/// of dropping it: a 2-hour stall still counts as the slowest possible sample.
#[inline]
pub fn record_us(h: &mut Hist, us: u64) {
    h.saturating_record(us.clamp(1, HIGHEST_US));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_count() {
        let mut h = new_hist();
        for v in [1, 10, 999, 1_000, 12_345, 3_000_000] {
            record_us(&mut h, v);
        }
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode(&[]).unwrap().is_empty());
        assert!(decode(b"garbage").is_err());
    }
}
