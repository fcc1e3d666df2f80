//! `--arrivals FILE`: when the first request from each peer address arrived.
//!
//! A fleet's synchronized start is judged where it matters — at the target:
//! every agent should send its first request at the same instant, and only
//! the server sees how close together they really landed (the agents' own
//! clocks and the coordinator's estimate of them are what is being tested).
//! For each new peer IP the target appends one line, `PEER_IP UNIX_NANOS`,
//! the wall-clock time at which hyper handed it the parsed request head.
//! `/health` probes do not count.
//!
//! Cost: one check of a per-connection flag per request; the lock and the
//! write happen once per connection, and the line is written with a single
//! `write` to a file opened for appending (no buffer to flush, so a reader
//! sees it at once and a killed target loses nothing).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The log of first arrivals per peer IP. Create it with [`ArrivalLog::create`]
/// and pass it to [`crate::serve_with`].
#[derive(Debug)]
pub struct ArrivalLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    seen: HashSet<IpAddr>,
    file: File,
    /// A failed write is logged once, not once per new peer.
    warned: bool,
}

impl ArrivalLog {
    /// Opens (creating it if needed) `path` for appending.
    pub fn create(path: &Path) -> io::Result<ArrivalLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(ArrivalLog { path: path.to_path_buf(), inner: Mutex::new(Inner { seen: HashSet::new(), file, warned: false }) })
    }

    /// Records `at` as `peer`'s first request, unless it already has one.
    pub(crate) fn first_request(&self, peer: IpAddr, at: SystemTime) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.seen.insert(peer) {
            return;
        }
        let nanos = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let line = format!("{peer} {nanos}\n");
        if let Err(e) = inner.file.write_all(line.as_bytes()) {
            if !inner.warned {
                inner.warned = true;
                tracing::warn!(message = "Cannot write the arrivals file.", path = %self.path.display(), error = %e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_new_peer() {
        let dir = std::env::temp_dir().join(format!("stampede-arrivals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("arrivals");
        let _ = std::fs::remove_file(&path);
        let log = ArrivalLog::create(&path).unwrap();
        let t = UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789);
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        log.first_request(a, t);
        log.first_request(a, t + std::time::Duration::from_secs(1));
        log.first_request(b, t);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "198.18.0.11 1700000000123456789\n::1 1700000000123456789\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
