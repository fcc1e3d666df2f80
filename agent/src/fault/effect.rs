//! The effect check: while a network fault is active, measure what it does
//! to the scoped traffic, so the report shows achieved vs requested and a
//! fault that changed nothing is flagged instead of passing silently.
//!
//! The probe is a TCP connect to the scope's destination and port, from this
//! node — i.e. through the fault. A connect costs one round trip, so its time
//! shows added delay, and its failures show loss and partitions. A rate cap
//! is judged from its own htb class's counters instead ([`judge_rate`]):
//! what went through it, and whether it ever held traffic back — a bulk
//! transfer to measure it would compete with the load it shapes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use stampede_common::plan::{Fault, FaultKind};

/// How often the probe connects while the fault is active.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A connect slower than this counts as failed: SYN retransmits start at 1 s.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    pub ok_ms: Vec<f64>,
    pub failed: u32,
}

impl Samples {
    fn failure_ratio(&self) -> f64 {
        let n = self.ok_ms.len() as u32 + self.failed;
        if n == 0 {
            0.0
        } else {
            self.failed as f64 / n as f64
        }
    }

    fn median_ms(&self) -> Option<f64> {
        let mut v = self.ok_ms.clone();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    /// What was measured: `connect_failure_ratio` or `rtt_added_ms`.
    pub measure: &'static str,
    pub requested: f64,
    pub baseline: f64,
    pub during: f64,
    pub effective: bool,
    pub detail: String,
}

/// Where the probe connects, if the fault's scope names a port.
pub fn probe_target(fault: &Fault) -> Option<SocketAddr> {
    let scope = fault.scope.as_ref()?;
    let port = scope.port?;
    let (net, len) = scope.cidr().ok()?;
    // A /32 is the host itself; for a block, its first host address.
    let host = if len == 32 { net } else { Ipv4Addr::from(u32::from(net) + 1) };
    Some(SocketAddr::from((host, port)))
}

/// One probe: connect time in ms, or None on failure.
pub async fn probe_once(addr: SocketAddr) -> Option<f64> {
    let start = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Some(start.elapsed().as_secs_f64() * 1e3),
        _ => None,
    }
}

/// Probes `n` times, `PROBE_EVERY` apart, and never past `until`: the
/// baseline runs just before the fault's scheduled instant, and a slow
/// connect (a busy target) must not make the fault late. A probe cut off by
/// `until` is not counted.
pub async fn sample(addr: SocketAddr, n: usize, until: Option<Instant>) -> Samples {
    let left = || until.map(|u| u.saturating_duration_since(Instant::now()));
    let mut s = Samples::default();
    for _ in 0..n {
        let r = match left() {
            Some(l) if l.is_zero() => break,
            Some(l) => match tokio::time::timeout(l, probe_once(addr)).await {
                Ok(r) => r,
                Err(_) => break,
            },
            None => probe_once(addr).await,
        };
        match r {
            Some(ms) => s.ok_ms.push(ms),
            None => s.failed += 1,
        }
        tokio::time::sleep(left().map_or(PROBE_EVERY, |l| l.min(PROBE_EVERY))).await;
    }
    s
}

/// Judges a fault's effect from probes before and during it. Pure.
pub fn judge(fault: &Fault, baseline: &Samples, during: &Samples) -> Option<Effect> {
    match fault.kind {
        FaultKind::Partition => {
            let got = during.failure_ratio();
            Some(Effect {
                measure: "connect_failure_ratio",
                requested: 1.0,
                baseline: baseline.failure_ratio(),
                during: got,
                effective: got >= 0.9,
                detail: format!("{} of {} connects failed during the partition", during.failed, during.failed as usize + during.ok_ms.len()),
            })
        }
        FaultKind::Loss => {
            let requested = fault.loss.map_or(0.0, |p| p.ratio());
            let got = during.failure_ratio();
            Some(Effect {
                measure: "connect_failure_ratio",
                requested,
                baseline: baseline.failure_ratio(),
                during: got,
                // A connect needs a SYN and a SYN-ACK through, so it fails
                // with probability about 1-(1-p)²; any clear rise is the effect.
                effective: got > baseline.failure_ratio() && during.failed > 0,
                detail: "a connect fails if either handshake packet is dropped: expect about 1-(1-loss)²".into(),
            })
        }
        FaultKind::Netem => {
            let delay = fault.netem.as_ref().and_then(|n| n.delay).map_or(0.0, |d| d.as_duration().as_secs_f64() * 1e3);
            if delay <= 0.0 {
                let got = during.failure_ratio();
                return Some(Effect {
                    measure: "connect_failure_ratio",
                    requested: fault.netem.as_ref().and_then(|n| n.loss).map_or(0.0, |p| p.ratio()),
                    baseline: baseline.failure_ratio(),
                    during: got,
                    effective: got > baseline.failure_ratio(),
                    detail: String::new(),
                });
            }
            let (b, d) = (baseline.median_ms()?, during.median_ms()?);
            Some(Effect {
                measure: "rtt_added_ms",
                requested: delay,
                baseline: b,
                during: d,
                effective: d - b >= delay * 0.5,
                detail: format!("median connect time {b:.2} ms before, {d:.2} ms during"),
            })
        }
        _ => None,
    }
}

/// Judges a rate cap from its class's counters after `held` of being active.
/// Effective when the cap held traffic back (htb overlimits); a cap the
/// scoped traffic never reached changed nothing and is flagged.
pub fn judge_rate(fault: &Fault, stats: &super::net::ClassStats, held: Duration) -> Option<Effect> {
    let cap_kbit = super::net::tc_rate_bits(fault.rate.as_deref()?).ok()? / 1e3;
    let secs = held.as_secs_f64().max(1e-3);
    let achieved_kbit = stats.bytes as f64 * 8.0 / 1e3 / secs;
    let effective = stats.overlimits > 0;
    let verdict = if effective { "the cap held traffic back" } else { "the scoped traffic never reached the cap" };
    Some(Effect {
        measure: "throughput_kbit",
        requested: cap_kbit,
        // Not measured before the window: the cap's class exists only while it is applied.
        baseline: 0.0,
        during: achieved_kbit,
        effective,
        detail: format!(
            "{} bytes in {} packets through the cap in {secs:.1} s ({achieved_kbit:.0} kbit/s), {} times over the limit, {} dropped: {verdict}",
            stats.bytes, stats.packets, stats.overlimits, stats.dropped
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_is_judged_by_its_class_counters() {
        let f = fault("rate", r#","rate":"2mbit""#);
        let shown = "class htb 5ea7:4 root prio 0 rate 2Mbit ceil 2Mbit burst 3200b cburst 3200b \n Sent 750000 bytes 500 pkt (dropped 3, overlimits 420 requeues 0) \n backlog 0b 0p requeues 0\n";
        let stats = super::super::net::parse_class_stats(shown).unwrap();
        assert_eq!(stats, super::super::net::ClassStats { bytes: 750000, packets: 500, dropped: 3, overlimits: 420 });
        let e = judge_rate(&f, &stats, Duration::from_secs(3)).unwrap();
        assert_eq!((e.measure, e.requested, e.during, e.effective), ("throughput_kbit", 2000.0, 2000.0, true));
        let idle = super::super::net::ClassStats { bytes: 3000, packets: 40, dropped: 0, overlimits: 0 };
        let e = judge_rate(&f, &idle, Duration::from_secs(3)).unwrap();
        assert!(!e.effective && e.detail.ends_with("never reached the cap"), "{}", e.detail);
        assert_eq!(super::super::net::parse_class_stats("class htb 5ea7:4 root"), None);
    }

    fn fault(yaml_kind: &str, extra: &str) -> Fault {
        serde_json::from_str(&format!(
            r#"{{"name":"f","kind":"{yaml_kind}","at":"1s","duration":"2s","scope":{{"dst":"198.18.0.2/32","port":8080}}{extra}}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn sampling_never_runs_past_its_deadline() {
        // A loopback listener whose accept queue is full drops new SYNs: a
        // connect to it hangs (for the whole 900 ms probe timeout).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(addr)).await {
                held.push(c);
            }
        }
        let started = Instant::now();
        let s = sample(addr, 5, Some(started + Duration::from_millis(150))).await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(400), "sampled for {took:?}, past its 150 ms deadline");
        assert!(s.ok_ms.is_empty() && s.failed == 0, "a probe cut off by the deadline counts for nothing: {s:?}");
        drop(held);
    }

    #[test]
    fn partitions_must_fail_connects() {
        let f = fault("partition", "");
        let before = Samples { ok_ms: vec![0.1; 5], failed: 0 };
        let blocked = Samples { ok_ms: vec![], failed: 9 };
        assert!(judge(&f, &before, &blocked).unwrap().effective);
        let untouched = Samples { ok_ms: vec![0.1; 9], failed: 0 };
        let e = judge(&f, &before, &untouched).unwrap();
        assert!(!e.effective, "a partition that let every connect through had no effect");
        assert_eq!(probe_target(&f), Some("198.18.0.2:8080".parse().unwrap()));
    }

    #[test]
    fn delay_is_judged_by_added_rtt() {
        let f = fault("netem", r#","netem":{"delay":"100ms"}"#);
        let before = Samples { ok_ms: vec![0.2, 0.3, 0.2], failed: 0 };
        let slow = Samples { ok_ms: vec![100.4, 100.5, 101.0], failed: 0 };
        let e = judge(&f, &before, &slow).unwrap();
        assert_eq!(e.measure, "rtt_added_ms");
        assert!(e.effective);
        assert!(!judge(&f, &before, &before).unwrap().effective);
    }
}
