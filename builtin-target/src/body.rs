//! Response body that never allocates: slices of one static buffer.
//!
//! `http_body_util::Full<Bytes>` would need the whole body in memory, so a
//! `/bytes/100000000` download would allocate 100 MB per request. Instead every
//! body is `remaining` bytes cut from a static fill buffer, emitted in chunks of
//! at most `FILL.len()`; cloning/slicing a static `Bytes` is a pointer copy.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Chunk size for bulk bodies: big enough that hyper writes few frames, small
/// enough to keep the binary's read-only data modest.
const FILL_LEN: usize = 64 * 1024;
static FILL: [u8; FILL_LEN] = [b'x'; FILL_LEN];

/// The body of every response the target sends.
#[derive(Debug)]
pub(crate) struct RepeatBody {
    chunk: Bytes,
    remaining: u64,
}

impl RepeatBody {
    /// A small fixed body such as `"ok"` or `"error"`, sent as one frame.
    pub(crate) fn text(text: &'static [u8]) -> Self {
        Self {
            chunk: Bytes::from_static(text),
            remaining: text.len() as u64,
        }
    }

    /// A body made for this response (`/health`'s JSON).
    pub(crate) fn owned(text: Vec<u8>) -> Self {
        Self {
            remaining: text.len() as u64,
            chunk: Bytes::from(text),
        }
    }

    /// `len` bytes of filler.
    pub(crate) fn filler(len: u64) -> Self {
        Self {
            chunk: Bytes::from_static(&FILL),
            remaining: len,
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        // min() with the chunk length, so the cast back to usize cannot truncate.
        let n = this.remaining.min(this.chunk.len() as u64) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    /// Exact, so hyper writes `content-length` instead of chunked encoding.
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: RepeatBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn bodies_have_exact_lengths() {
        assert_eq!(collect(RepeatBody::text(b"ok")).await, b"ok");
        assert!(collect(RepeatBody::filler(0)).await.is_empty());
        let big = (FILL_LEN * 2 + 7) as u64;
        let body = RepeatBody::filler(big);
        assert_eq!(body.size_hint().exact(), Some(big));
        let bytes = collect(body).await;
        assert_eq!(bytes.len() as u64, big);
        assert!(bytes.iter().all(|&b| b == b'x'));
    }
}
