//! A small deterministic mutator for the stable harness: the same `--seed`
//! gives the same inputs, run after run. It knows nothing of coverage; it
//! makes up for that with a dictionary of tokens the parsers care about.

/// xorshift64* — tiny, fast, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so 0 and small seeds work too.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Tokens spliced into inputs: plan keys and values at their edges, units,
/// YAML/TOML/JSON syntax, and protobuf / HdrHistogram framing bytes.
pub const DICTIONARY: &[&[u8]] = &[
    b"name: ", b"target: ", b"phases:", b"steps:", b"slos:", b"faults:", b"agents:", b"builtin_target:",
    b"interval: ", b"timeout: ", b"duration: ", b"load: ", b"model: open", b"model: closed", b"rate: ",
    b"to: ", b"concurrency: ", b"weight: ", b"request: ", b"method: ", b"path: ", b"body: ", b"headers: ",
    b"expect: ", b"status: ", b"metric: ", b"scope: ", b"pass: ", b"warn: ", b"kind: ", b"at: ",
    b"scope: { dst: ", b"port: ", b"instance: ", b"driver: ", b"force: true", b"latency: ", b"jitter: ",
    b"loss: ", b"count: ", b"labels: ", b"p99", b"p50", b"error_rate", b"throughput", b"phase:", b"step:",
    b"run", b"fault:", b"after:", b"during:", b"partition", b"netem", b"stop", b"pause", b"restart",
    b"cpu", b"memory", b"process", b"systemd", b"docker", b"incus", b"/s", b"/m", b"/ms", b"/h", b"ms", b"us",
    b"s", b"m", b"h", b"%", b"< ", b"> ", b"<= ", b">= ", b"200-299", b"0", b"1", b"-1", b"0.0", b"1e309",
    b"-0", b"NaN", b"inf", b"-inf", b"18446744073709551615", b"18446744073709551616", b"4294967296",
    b"9223372036854775807", b"-9223372036854775808", b"0x10", b"1_000", b"1.5", b".5", b"1e-9", b"999999999999h",
    b"http://", b"https://", b"127.0.0.1", b"[::1]", b":0", b":65536", b"198.18.0.2/32", b"/33", b"0.0.0.0/0",
    b"GiB", b"MB", b"\n", b"\n  - ", b"  ", b"- ", b"{ ", b" }", b"[", b"]", b", ", b": ", b"\"", b"'", b"#",
    b"&a ", b"*a", b"<<: ", b"!!str ", b"!!binary ", b"---\n", b"...\n", b"|\n", b">\n", b"~", b"null", b"true",
    b"= ", b"[[phases]]\n", b"[[steps]]\n", b"[phases.load]\n", b"{}", b"[]", b"\\u0000", b"\\ud800", b"\t",
    b"\xc3\xa9", b"\xef\xbb\xbf", b"\x00", b"\xff",
    // Drill and real-service keys (issues 9 and 10).
    b"model: iterations", b"per_worker: ", b"max_duration: ", b"probes:", b"every: ", b"steady_state:",
    b"within: ", b"abort_when:", b"threshold: ", b"for: ", b"checks:", b"json: ", b"$.ok == true", b"$.a[0]",
    b"body_contains: ", b"body_matches: ", b"body_size: ", b"max_streak(", b"recovery_time", b"outside:faults",
    b"before:", b"probe:", b" in ", b"status:5xx", b"check:", b"unless_unhealthy: ", b"windows:",
    b"after_pause: ", b"tls: ", b"ca: ", b"insecure_skip_verify: true", b"secret_env: ", b"secret_file: ",
    b"prefix: ", b"${", b"${X:-", b"$${", b"}",
    // protobuf: field keys (varint, length-delimited), long varints.
    b"\x08", b"\x10", b"\x18", b"\x22", b"\x32", b"\x3a", b"\x40", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x10",
    // HdrHistogram V2 and V2+DEFLATE cookies, a zlib header, an empty header.
    b"\x1c\x84\x93\x13", b"\x1c\x84\x93\x14", b"\x78\x9c", b"\x78\x01",
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03",
];

/// Bytes that often sit at edges of integer fields.
const INTERESTING: &[u8] = &[0, 1, 2, 0x7f, 0x80, 0xff, b'0', b'9', b'-', b'.', b' ', b'\n', b':', b'"'];

/// Applies 1 to 8 random mutations to `input` (a copy of a corpus entry);
/// `other` is another corpus entry to splice from. The result is at most
/// `max_len` bytes.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        match rng.below(13) {
            // Flip one bit.
            0 | 1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            // Set a byte to an interesting or random value.
            2 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = if rng.chance(2) { *rng.pick(INTERESTING) } else { rng.next_u64() as u8 };
            }
            // Insert random bytes.
            3 => {
                let at = rng.below(input.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
            // Delete a range.
            4 | 5 if !input.is_empty() => {
                let at = rng.below(input.len());
                let n = 1 + rng.below((input.len() - at).min(64));
                input.drain(at..at + n);
            }
            // Duplicate a range in place (repeats keys, list items, fields).
            6 if !input.is_empty() => {
                let at = rng.below(input.len());
                let n = 1 + rng.below((input.len() - at).min(128));
                let chunk = input[at..at + n].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, chunk);
            }
            // Insert or overwrite with a dictionary token.
            7 | 8 => {
                let token = *rng.pick(DICTIONARY);
                let at = rng.below(input.len() + 1);
                if rng.chance(2) || at + token.len() > input.len() {
                    input.splice(at..at, token.iter().copied());
                } else {
                    input[at..at + token.len()].copy_from_slice(token);
                }
            }
            // Splice: a range of another entry replaces a range of this one.
            9 | 10 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                let at = rng.below(input.len() + 1);
                let cut = rng.below((input.len() - at).min(256) + 1);
                input.splice(at..at + cut, other[from..from + n].iter().copied());
            }
            // Replace a run of ASCII digits with an edge-case number.
            11 => {
                if let Some(start) = find_digit(rng, input) {
                    let end = input[start..].iter().position(|b| !b.is_ascii_digit()).map_or(input.len(), |n| start + n);
                    let numbers: &[&[u8]] = &[b"0", b"-1", b"18446744073709551616", b"4294967295", b"1e308", b"00", b"9999999999999"];
                    input.splice(start..end, rng.pick(numbers).iter().copied());
                }
            }
            // Add or subtract a small amount from a byte (varints, lengths).
            _ if !input.is_empty() => {
                let i = rng.below(input.len());
                let delta = 1 + rng.below(16) as u8;
                input[i] = if rng.chance(2) { input[i].wrapping_add(delta) } else { input[i].wrapping_sub(delta) };
            }
            _ => input.push(rng.next_u64() as u8),
        }
    }
    input.truncate(max_len);
}

fn find_digit(rng: &mut Rng, input: &[u8]) -> Option<usize> {
    if input.is_empty() {
        return None;
    }
    let start = rng.below(input.len());
    let rel = input[start..].iter().position(u8::is_ascii_digit)?;
    Some(start + rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutations() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut v = b"name: x\nphases: []\n".to_vec();
            for _ in 0..100 {
                mutate(&mut rng, &mut v, b"steps: [1, 2]", 4096);
            }
            v
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn respects_max_len_and_survives_empty_inputs() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let mut v = Vec::new();
            mutate(&mut rng, &mut v, &[], 16);
            assert!(v.len() <= 16);
        }
    }
}
