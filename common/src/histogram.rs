//! The one histogram shape stampede uses everywhere, and its wire encoding.
//!
//! Every histogram is microseconds, 1 µs to 1 h, 3 significant digits, so any
//! two can be added exactly: a fleet percentile computed from merged agent
//! histograms equals the percentile of one histogram that saw every sample.
//! On the wire: HdrHistogram V2, deflated when large ([`encode_wire`]),
//! the formats other HdrHistogram tools read too. The coordinator decodes
//! snapshots straight into plain counts arrays ([`accum`]).

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

pub mod accum;

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

/// A snapshot histogram whose plain V2 encoding is at most this long goes
/// on the wire as it is; a longer one is deflated. Measured (benchmarks/
/// README.md, "Coordinator merge"): inflating costs the coordinator more
/// than the rest of the sparse decode and add, while the bytes it saves on
/// a small histogram (a few hundred to 2 000) cost microseconds of a LAN
/// or nothing on loopback; on a large, dense histogram deflate halves what
/// a fleet sends, for 1.2–1.7× the CPU.
pub const PLAIN_UP_TO: usize = 4096;

/// A snapshot histogram for the wire: plain V2 up to [`PLAIN_UP_TO`]
/// bytes, V2+DEFLATE above. Both carry their cookie, so any stampede
/// coordinator (and other HdrHistogram tools) decodes either: no field of
/// the protocol says which.
pub fn encode_wire(h: &Hist) -> Vec<u8> {
    let mut plain = Vec::with_capacity(256);
    hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut plain).expect("writing to a Vec cannot fail");
    if plain.len() <= PLAIN_UP_TO {
        plain
    } else {
        encode(h)
    }
}

/// V2+DEFLATE: the smallest form (what the coordinator keeps of a final interval).
pub fn encode(h: &Hist) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    V2DeflateSerializer::new().serialize(h, &mut out).expect("writing to a Vec cannot fail");
    out
}

// hdrhistogram's cookies: a base ORed with 0x10 (8-byte words).
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;
/// V2 header: cookie, payload length, normalizing offset, digits (4 bytes
/// each), lowest, highest (8 each), integer-to-double ratio (8).
const V2_HEADER: usize = 40;
/// The most a V2+DEFLATE histogram may inflate to. stampede's shape encodes
/// in at most ~210 KiB; this leaves room for any other shape a peer might
/// send while refusing a deflate bomb.
pub const MAX_INFLATED: usize = 16 << 20;

/// Decodes V2 (+DEFLATE) bytes. An empty slice is an empty histogram, so
/// senders may omit histograms that recorded nothing.
///
/// The bytes come from the network: hdrhistogram sizes (and zero-fills) its
/// buffer from the payload length the V2 header *claims*, before reading it,
/// so a corrupt header could cost 4 GiB. The DEFLATE layer is inflated here,
/// bounded by [`MAX_INFLATED`], and the claim is checked against the bytes
/// actually present before hdrhistogram sees them.
pub fn decode(bytes: &[u8]) -> Result<Hist, CodecError> {
    if bytes.is_empty() {
        return Ok(new_hist());
    }
    let mut scratch = Vec::new();
    decode_plain(plain_v2(bytes, &mut scratch)?)
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// The plain V2 bytes of V2 (+DEFLATE) `bytes`: as they are, or inflated
/// into `scratch` (bounded by [`MAX_INFLATED`]). A V2 header's payload
/// length is checked against the bytes present.
fn plain_v2<'a>(bytes: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<&'a [u8], CodecError> {
    use std::io::Read;

    let plain = if be_u32(bytes, 0) == Some(V2_DEFLATE_COOKIE) {
        let compressed_len = be_u32(bytes, 4).ok_or_else(|| CodecError::Decode("truncated V2+DEFLATE header".into()))? as usize;
        let body = &bytes[8..];
        let body = &body[..compressed_len.min(body.len())];
        scratch.clear();
        flate2::read::ZlibDecoder::new(body)
            .take(MAX_INFLATED as u64 + 1)
            .read_to_end(scratch)
            .map_err(|e| CodecError::Decode(format!("DEFLATE: {e}")))?;
        if scratch.len() > MAX_INFLATED {
            return Err(CodecError::Decode(format!("inflates to more than {MAX_INFLATED} bytes")));
        }
        if be_u32(scratch, 0) != Some(V2_COOKIE) {
            return Err(CodecError::Decode("the DEFLATE layer does not hold a V2 histogram".into()));
        }
        &scratch[..]
    } else {
        bytes
    };
    if be_u32(plain, 0) == Some(V2_COOKIE) {
        let claimed = be_u32(plain, 4).unwrap_or(0) as usize;
        let present = plain.len().saturating_sub(V2_HEADER);
        if claimed > present {
            return Err(CodecError::Decode(format!("the header claims {claimed} payload bytes, {present} follow")));
        }
    }
    Ok(plain)
}

/// hdrhistogram's decoder on plain V2 bytes whose claimed length was checked.
fn decode_plain(plain: &[u8]) -> Result<Hist, CodecError> {
    if be_u32(plain, 0) == Some(V2_COOKIE) {
        let claimed = be_u32(plain, 4).unwrap_or(0) as usize;
        if plain.get(V2_HEADER..V2_HEADER + claimed).is_some_and(has_unnegatable_zero_run) {
            return Err(CodecError::Decode("a count is out of range".into()));
        }
    }
    Deserializer::new()
        .deserialize(&mut &plain[..])
        .map_err(|e| CodecError::Decode(format!("{e:?}")))
}

/// Whether a V2 payload holds the one count hdrhistogram cannot take: it
/// reads each number as a zig-zag LEB128 (8 × 7 bits, then a full 9th byte)
/// and negates the negative ones (runs of zeros); the varint u64::MAX is
/// i64::MIN, whose negation overflows — a panic in builds with overflow
/// checks (found by fuzzing).
fn has_unnegatable_zero_run(payload: &[u8]) -> bool {
    let mut bytes = payload.iter();
    loop {
        let mut value = 0u64;
        for shift in (0..=56).step_by(7) {
            let Some(&b) = bytes.next() else { return false };
            if shift == 56 {
                value |= u64::from(b) << 56;
                break;
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        if value == u64::MAX {
            return true;
        }
    }
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

    #[test]
    fn plain_v2_round_trips_too() {
        use hdrhistogram::serialization::V2Serializer;
        let mut h = new_hist();
        record_us(&mut h, 4_321);
        let mut plain = Vec::new();
        V2Serializer::new().serialize(&h, &mut plain).unwrap();
        assert_eq!(decode(&plain).unwrap(), h);
    }

    /// Found by fuzzing (fuzz/, `snapshot_decoder`): a V2 header whose
    /// payload length claims ~4 GiB made hdrhistogram allocate and zero that
    /// much before noticing the bytes were not there — from a few hundred
    /// bytes of a snapshot. Now refused at once, compressed or not.
    #[test]
    fn a_header_that_claims_gigabytes_is_refused_without_allocating_them() {
        use std::io::Write;

        let mut h = new_hist();
        record_us(&mut h, 1_000);
        let mut plain = Vec::new();
        hdrhistogram::serialization::V2Serializer::new().serialize(&h, &mut plain).unwrap();
        plain[4..8].copy_from_slice(&0xf500_000f_u32.to_be_bytes());
        let err = decode(&plain).unwrap_err().to_string();
        assert!(err.contains("claims 4110417935 payload bytes"), "{err}");

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&plain).unwrap();
        let deflated = z.finish().unwrap();
        let mut framed = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        framed.extend_from_slice(&(deflated.len() as u32).to_be_bytes());
        framed.extend_from_slice(&deflated);
        let err = decode(&framed).unwrap_err().to_string();
        assert!(err.contains("claims 4110417935 payload bytes"), "{err}");

        // The exact input the fuzzer saved: a snapshot's histogram field.
        let found = [
            0x1c, 0x84, 0x93, 0x14, 0x00, 0x00, 0x00, 0x36, 0x78, 0x9c, 0x01, 0x37, 0x00, 0xc8, 0xff, 0x1c, 0x84, 0x93, 0x13, 0xf5, 0x00,
            0x00, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x00, 0xd6, 0x93, 0xa4, 0x00, 0x3f, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xab, 0x02, 0x02, 0xd9, 0x0b, 0x02, 0xd5, 0x04,
            0x02, 0x99, 0x53, 0x02, 0xf1, 0x60, 0x02, 0xbd, 0x04, 0x09, 0x47,
        ];
        assert!(decode(&found).is_err());
    }

    /// Found by fuzzing: a zero run of i64::MIN (the varint of u64::MAX)
    /// made hdrhistogram's decoder panic on `-i64::MIN` in builds with
    /// overflow checks (the tests', the dev profile's).
    #[test]
    fn a_zero_run_of_i64_min_is_an_error_not_a_panic() {
        let found = [
            0x1c, 0x84, 0x93, 0x13, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x01, 0x00, 0xf1, 0x00, 0x00, 0xd6, 0x93, 0xa4, 0x00, 0x3f, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xab, 0x02,
            0x02, 0xd9, 0x0b, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0xd5, 0x04, 0x02, 0x99, 0x53, 0xfa, 0xf1,
            0x60, 0x02,
        ];
        assert!(decode(&found).unwrap_err().to_string().contains("out of range"));
        // A header cut short that claims no payload is an error, not a
        // panic of the check above (found by fuzzing it).
        let short = [0x1c, 0x84, 0x93, 0x13, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xab, 0x02, 0x02, 0xd9, 0x0b, 0x02, 0xd5, 0x04, 0x02, 0x00, 0x00, 0xa9, 0x53, 0x02];
        assert!(decode(&short).is_err());
        assert!(has_unnegatable_zero_run(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        assert!(!has_unnegatable_zero_run(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]));
        // Every real histogram decodes as before.
        let mut h = new_hist();
        for v in (1..HIGHEST_US).step_by(7_777_777) {
            record_us(&mut h, v);
        }
        assert_eq!(decode(&encode(&h)).unwrap(), h);
    }

    #[test]
    fn a_deflate_bomb_is_refused() {
        use std::io::Write;

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let mut header = V2_COOKIE.to_be_bytes().to_vec();
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        z.write_all(&header).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_INFLATED >> 20) + 1 {
            z.write_all(&zeros).unwrap();
        }
        let deflated = z.finish().unwrap();
        assert!(deflated.len() < 64 * 1024, "{} bytes", deflated.len());
        let mut framed = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        framed.extend_from_slice(&(deflated.len() as u32).to_be_bytes());
        framed.extend_from_slice(&deflated);
        let err = decode(&framed).unwrap_err().to_string();
        assert!(err.contains("inflates to more than"), "{err}");
    }
}
