//! The stream of a session's messages to its agent, polled by tonic.
//!
//! It yields what the session's queue holds until the session is cut; then
//! what is still queued (an Abort, say) and, for a cut with a reason, that
//! reason as the stream's final status. A cut session's stream ends even
//! while a run still holds a sender of its queue.
//!
//! A `Stream` polled in place, not a task forwarding the queue into a
//! second channel: at 1 000 agents that task was one more wake-up and
//! thread hand-off per message to an agent (`benchmarks/README.md`, fleet
//! scale). It also counts what it yields, so the keepalive knows whether
//! the agent heard from us lately ([`Sent`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use stampede_proto::v1::CoordinatorMessage;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;

use crate::fleet::SessionCut;

type Item = Result<CoordinatorMessage, Status>;

/// How many messages went to the agent: any of them tells it the session
/// lives, so a heartbeat is only needed when none went for a beat.
#[derive(Debug, Clone, Default)]
pub struct Sent(Arc<AtomicU64>);

impl Sent {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

enum State {
    Live,
    /// Cut: the queue's remaining messages, then the reason.
    Draining,
    Done,
}

pub struct ToAgent {
    rx: mpsc::Receiver<Item>,
    cut: SessionCut,
    cut_off: Pin<Box<WaitForCancellationFutureOwned>>,
    state: State,
    sent: Sent,
}

impl ToAgent {
    pub fn new(rx: mpsc::Receiver<Item>, cut: SessionCut, sent: Sent) -> Self {
        let cut_off = Box::pin(cut.cut_off_owned());
        ToAgent { rx, cut, cut_off, state: State::Live, sent }
    }

    fn yielded(&self, item: Item) -> Poll<Option<Item>> {
        self.sent.0.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Some(item))
    }
}

impl Stream for ToAgent {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        loop {
            match self.state {
                State::Live => {
                    // The cut first: a cut session sends nothing new.
                    if self.cut_off.as_mut().poll(cx).is_ready() {
                        self.state = State::Draining;
                        continue;
                    }
                    return match self.rx.poll_recv(cx) {
                        Poll::Ready(Some(item)) => self.yielded(item),
                        Poll::Ready(None) => {
                            self.state = State::Done;
                            Poll::Ready(None)
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Draining => match self.rx.try_recv() {
                    Ok(item) => return self.yielded(item),
                    Err(_) => {
                        self.state = State::Done;
                        if let Some(why) = self.cut.reason() {
                            let status = Status::aborted(why.to_string());
                            return self.yielded(Err(status));
                        }
                    }
                },
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use stampede_proto::v1::coordinator_message::Msg as Down;
    use stampede_proto::v1::Heartbeat;

    use super::*;

    fn beat(n: i64) -> Item {
        Ok(CoordinatorMessage { msg: Some(Down::Heartbeat(Heartbeat { clock_unix_nanos: n })) })
    }

    async fn next(s: &mut ToAgent) -> Option<Item> {
        poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }

    #[tokio::test]
    async fn yields_the_queue_then_after_a_cut_what_was_queued_and_why() {
        let (tx, rx) = mpsc::channel(8);
        let cut = SessionCut::default();
        let sent = Sent::default();
        let mut s = ToAgent::new(rx, cut.clone(), sent.clone());
        tx.send(beat(1)).await.unwrap();
        assert!(matches!(next(&mut s).await, Some(Ok(_))));
        tx.send(beat(2)).await.unwrap();
        tx.send(beat(3)).await.unwrap();
        cut.cut(Some("refused".into()));
        assert!(matches!(next(&mut s).await, Some(Ok(_))));
        assert!(matches!(next(&mut s).await, Some(Ok(_))));
        match next(&mut s).await {
            Some(Err(status)) => assert_eq!(status.message(), "refused"),
            other => panic!("expected the reason, got {other:?}"),
        }
        assert!(next(&mut s).await.is_none());
        // A sender still held (a run's) does not keep a cut stream open,
        // and what it sends after the cut is not delivered.
        let _ = tx.try_send(beat(4));
        assert!(next(&mut s).await.is_none());
        assert_eq!(sent.count(), 4);
    }

    #[tokio::test]
    async fn ends_when_the_queue_closes_and_a_cut_without_reason_ends_quietly() {
        let (tx, rx) = mpsc::channel(8);
        let mut s = ToAgent::new(rx, SessionCut::default(), Sent::default());
        drop(tx);
        assert!(next(&mut s).await.is_none());

        let (_tx, rx) = mpsc::channel::<Item>(8);
        let cut = SessionCut::default();
        let mut s = ToAgent::new(rx, cut.clone(), Sent::default());
        cut.cut(None);
        assert!(next(&mut s).await.is_none());
    }
}
