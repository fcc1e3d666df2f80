//! The agent's resend buffer. Run messages (snapshots, fault events, the
//! final totals) are numbered and kept here until the coordinator says they
//! arrived, so a session that breaks mid-run loses nothing: the next session
//! sends again, in order, everything not yet acknowledged.
//!
//! Bounded by bytes: when a coordinator stays away long enough to fill it,
//! the oldest messages are dropped and counted. The coordinator then sees
//! the missing intervals as a gap and says the run is incomplete — never a
//! silent pass.

use std::collections::VecDeque;
use std::sync::Mutex;

use prost::Message;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::AgentMessage;
use tokio::sync::watch;

/// Default bound: at one snapshot a second of a few KiB each, hours of
/// intervals; far more than any lease.
pub const DEFAULT_LIMIT_BYTES: usize = 64 << 20;

struct Inner {
    /// The next delivery number; numbers start at 1 (0 means "not a run message").
    next: u64,
    queue: VecDeque<(AgentMessage, usize)>,
    bytes: usize,
    evicted: u64,
}

pub struct Outbox {
    inner: Mutex<Inner>,
    limit_bytes: usize,
    /// The newest delivery number pushed; session pumps wait on it.
    newest: watch::Sender<u64>,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner { next: 1, queue: VecDeque::new(), bytes: 0, evicted: 0 }),
            limit_bytes,
            newest: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers `msg` and keeps it until acknowledged; returns its number.
    pub fn push(&self, msg: Up) -> u64 {
        let mut inner = self.lock();
        let number = inner.next;
        inner.next += 1;
        let message = AgentMessage { msg: Some(msg), delivery: number };
        let size = message.encoded_len();
        inner.bytes += size;
        inner.queue.push_back((message, size));
        // Keep at least the newest message, whatever its size.
        while inner.bytes > self.limit_bytes && inner.queue.len() > 1 {
            if let Some((dropped, size)) = inner.queue.pop_front() {
                inner.bytes -= size;
                inner.evicted += 1;
                tracing::warn!(message = "Resend buffer full: dropped the oldest unacknowledged message.", delivery = dropped.delivery, limit_bytes = self.limit_bytes);
            }
        }
        drop(inner);
        self.newest.send_replace(number);
        number
    }

    /// The coordinator has every message up to `upto`: forget them.
    pub fn ack(&self, upto: u64) {
        let mut inner = self.lock();
        while inner.queue.front().is_some_and(|(m, _)| m.delivery <= upto) {
            if let Some((_, size)) = inner.queue.pop_front() {
                inner.bytes -= size;
            }
        }
    }

    /// Unacknowledged messages numbered after `cursor`, oldest first.
    pub fn after(&self, cursor: u64) -> Vec<AgentMessage> {
        self.lock().queue.iter().filter(|(m, _)| m.delivery > cursor).map(|(m, _)| m.clone()).collect()
    }

    /// Wakes when a message is pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// The newest number pushed so far (0: none).
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// Messages waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    /// Messages dropped unacknowledged because the buffer was full.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_proto::v1::{Heartbeat, Snapshot};

    fn snapshot(seq: u64) -> Up {
        Up::Snapshot(Snapshot { seq, run_id: "r".into(), ..Default::default() })
    }

    fn numbers(v: &[AgentMessage]) -> Vec<u64> {
        v.iter().map(|m| m.delivery).collect()
    }

    #[test]
    fn numbers_from_one_and_resends_everything_unacknowledged_in_order() {
        let outbox = Outbox::new(DEFAULT_LIMIT_BYTES);
        for seq in 0..5 {
            outbox.push(snapshot(seq));
        }
        assert_eq!(numbers(&outbox.after(0)), vec![1, 2, 3, 4, 5]);
        // A session sent up to 3 before it broke; only 2 was acknowledged.
        outbox.ack(2);
        assert_eq!(outbox.pending(), 3);
        // The next session starts over from the oldest unacknowledged.
        assert_eq!(numbers(&outbox.after(0)), vec![3, 4, 5]);
        assert_eq!(numbers(&outbox.after(4)), vec![5]);
        outbox.ack(5);
        assert_eq!(outbox.pending(), 0);
        assert_eq!(outbox.newest(), 5);
        // Acknowledging again, or less, changes nothing.
        outbox.ack(3);
        assert_eq!(outbox.pending(), 0);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        // Seqs 1..=5 and deliveries 1..=5 encode to the same size.
        let one = AgentMessage { msg: Some(snapshot(1)), delivery: 1 }.encoded_len();
        let outbox = Outbox::new(one * 3);
        for seq in 1..=5 {
            outbox.push(snapshot(seq));
        }
        let kept = numbers(&outbox.after(0));
        assert_eq!(kept, vec![3, 4, 5], "the newest three fit");
        assert_eq!(outbox.evicted(), 2);
    }

    #[test]
    fn a_message_larger_than_the_bound_is_still_kept() {
        let outbox = Outbox::new(1);
        outbox.push(Up::Heartbeat(Heartbeat { clock_unix_nanos: 1 }));
        outbox.push(snapshot(1));
        assert_eq!(numbers(&outbox.after(0)), vec![2]);
        assert_eq!(outbox.evicted(), 1);
    }

    #[tokio::test]
    async fn subscribers_wake_on_push() {
        let outbox = Outbox::new(DEFAULT_LIMIT_BYTES);
        let mut rx = outbox.subscribe();
        outbox.push(snapshot(0));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
    }
}
