//! A TCP stream that can tell when its last bytes reached this host: the
//! kernel's receive timestamp (`SO_TIMESTAMPNS`, read with `recvmsg`).
//!
//! Why: the open-model pacer does not wake the worker for every response
//! (`worker/open.rs`): a response that arrives while the worker sleeps until
//! its next arrival is read when it wakes. Latency must still end when the
//! response *arrived*, not when we got round to reading it, so a connection
//! used by that pacer reads with `recvmsg` and keeps the timestamp the
//! kernel put on the data (taken when the packet was received, before any
//! queueing in the socket). Until [`StampedTcp::enable`] is called it reads
//! like any `TcpStream` (the closed model, and TLS, never pay for it).
//!
//! `SO_TIMESTAMPNS` stamps with `CLOCK_REALTIME`; the stamp is turned into
//! an `Instant` (`CLOCK_MONOTONIC`) by the two clocks' difference read at the
//! same moment (two vDSO reads, ~40 ns).

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes one stamped read asks for. `ReadBuf` hands out uninitialized
/// memory, and safe code must zero it before the kernel may write to it;
/// an HTTP response head is far smaller, and a larger body takes a few
/// more reads (its last read's stamp is the one that counts).
const STAMPED_READ: usize = 4096;

pub struct StampedTcp {
    tcp: TcpStream,
    on: bool,
    last_rx: Option<Instant>,
}

impl StampedTcp {
    pub fn new(tcp: TcpStream) -> StampedTcp {
        StampedTcp { tcp, on: false, last_rx: None }
    }

    /// From now on, reads keep the kernel's receive timestamp. Data already
    /// queued is stamped too (the kernel stamps every packet once any socket
    /// asked for it, which this call does). `false` if the option is refused.
    pub fn enable(&mut self) -> bool {
        if !self.on {
            self.on = setsockopt(&self.tcp, sockopt::ReceiveTimestampns, &true).is_ok();
        }
        self.on
    }

    /// When the data of the last read arrived (the newest packet it took),
    /// if reads are stamped and one has happened.
    pub fn last_rx(&self) -> Option<Instant> {
        self.last_rx
    }
}

/// Turns the kernel's receive timestamps on for this process's lifetime,
/// ahead of the first stamped read. The kernel stamps packets only while
/// some socket asks for stamps, and the first socket to ask turns that on
/// in a deferred work item: a connection whose stamps were enabled just
/// before its first response came back unstamped in testing. A UDP socket
/// that asks, kept open, keeps it on. Cheap and idempotent.
pub fn keep_timestamping_on() {
    static HOLDER: std::sync::OnceLock<Option<std::net::UdpSocket>> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
        setsockopt(&s, sockopt::ReceiveTimestampns, &true).ok()?;
        Some(s)
    });
}

/// `at`, a `CLOCK_REALTIME` instant, on the monotonic clock (never after now).
fn to_instant(at: SystemTime) -> Instant {
    let (mono, real) = (Instant::now(), SystemTime::now());
    match real.duration_since(at) {
        Ok(ago) => mono.checked_sub(ago).unwrap_or(mono),
        // A stamp "in the future": the wall clock stepped back. Now is the
        // best we know.
        Err(_) => mono,
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.on {
            return Pin::new(&mut me.tcp).poll_read(cx, buf);
        }
        loop {
            ready!(me.tcp.poll_read_ready(cx))?;
            let want = buf.remaining().min(STAMPED_READ);
            let dst = buf.initialize_unfilled_to(want);
            // `try_io` clears the readiness on WouldBlock, so the next
            // `poll_read_ready` waits for new data.
            match me.tcp.try_io(Interest::READABLE, || recv_stamped(&me.tcp, dst)) {
                Ok((n, stamp)) => {
                    buf.advance(n);
                    if n > 0 {
                        me.last_rx = stamp.map(to_instant);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One `recvmsg` into `dst`: bytes read, and the receive timestamp.
fn recv_stamped(tcp: &TcpStream, dst: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut iov = [IoSliceMut::new(dst)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<()>(tcp.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).map_err(io::Error::from)?;
    let mut stamp = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            stamp = Some(UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32));
        }
    }
    Ok((msg.bytes, stamp))
}

impl AsyncWrite for StampedTcp {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The stamp is when the data arrived, not when it was read: data
    /// left unread for 30 ms is stamped ~30 ms before the read.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_is_stamped_with_the_arrival_not_the_read() {
        keep_timestamping_on();
        // The kernel turns stamping on in a deferred work item.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            s.read_exact(&mut b).await.ok();
        });
        let mut c = StampedTcp::new(TcpStream::connect(addr).await.unwrap());
        assert!(c.enable(), "SO_TIMESTAMPNS on this kernel");
        c.write_all(b"ping").await.unwrap();
        // Wait until the answer is surely here, then some, before reading.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        let read_at = Instant::now();
        assert_eq!(&b, b"pong");
        let rx = c.last_rx().expect("a stamped read");
        let early = read_at - rx;
        assert!(early >= Duration::from_millis(20), "stamped {early:?} before the read: not the arrival time");
        assert!(early < Duration::from_secs(5), "{early:?}");
        c.write_all(b"done").await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unstamped_reads_have_no_stamp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let mut c = StampedTcp::new(TcpStream::connect(addr).await.unwrap());
        let mut b = [0u8; 2];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(c.last_rx(), None);
        server.await.unwrap();
    }
}
