//! Datagrams in batches: `recvmmsg(2)` and `sendmmsg(2)` on a UDP socket.
//!
//! Under load most of a DNS server's time goes to system calls, two per
//! question with `recvfrom`/`sendto`. Receiving up to [`BATCH`] questions in
//! one call and sending their answers in one call makes that two per batch;
//! when questions trickle in, a batch is one datagram and nothing waits for
//! more (no added latency).
//!
//! The system calls are the `nix` crate's `recvmmsg` and `rustix`'s
//! `sendmmsg` (docs/decisions/0111-dns-batch-io-crates.md says why not
//! `nix` for both). Neither allocates per call: the buffers, the headers and
//! the addresses are made once per batch object, the per-call pieces live on
//! the stack.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, recvmmsg};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Receive buffer per datagram (larger questions are cut and then rejected
/// as malformed, as with one `recvfrom` into a buffer of this size).
pub const DATAGRAM: usize = 4096;

/// The headers `recvmmsg` fills, with room for the sender's address of the
/// socket's family. A fixed-size address type rather than nix's
/// `SockaddrStorage`: nix reads the storage's unix-socket length byte when
/// it reports a message, which the kernel never writes for an IP sender,
/// while a `sockaddr_in`/`sockaddr_in6` is written whole by the kernel.
#[derive(Debug)]
enum Headers {
    V4(MultiHeaders<SockaddrIn>),
    V6(MultiHeaders<SockaddrIn6>),
}

/// Received datagrams: up to [`BATCH`] at a time, from one socket.
pub struct RecvBatch {
    bufs: Vec<u8>,
    /// Made at the first receive, for the socket's address family.
    headers: Option<Headers>,
    /// Length and sender of each datagram of the last batch.
    got: [(usize, Option<SocketAddr>); BATCH],
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("len", &self.len).finish()
    }
}

// SAFETY: nix's headers are not `Send` because they hold raw pointers: to
// their own heap-allocated address slots (which do not move with the
// struct) and to the iovecs of the last call (stale after it, and rewritten
// by `recvmmsg` before every system call). Nothing is tied to a thread, and
// the batch is used by one task at a time (`&mut self`).
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Buffers for one batch.
    pub fn new() -> Self {
        Self {
            bufs: vec![0; BATCH * DATAGRAM],
            headers: None,
            got: [(0, None); BATCH],
            len: 0,
        }
    }

    /// Receive what is queued on `socket` (non-blocking), at least one
    /// datagram or `WouldBlock`. Returns the number received. A batch
    /// serves one socket: its address family is learnt on the first call.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.len = 0;
        let Self {
            bufs, headers, got, ..
        } = self;
        let headers = match headers {
            Some(h) => h,
            None => headers.insert(if socket.local_addr()?.is_ipv4() {
                Headers::V4(MultiHeaders::preallocate(BATCH, None))
            } else {
                Headers::V6(MultiHeaders::preallocate(BATCH, None))
            }),
        };
        let mut chunks = bufs.chunks_exact_mut(DATAGRAM);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
        let flags = MsgFlags::MSG_DONTWAIT;
        let mut n = 0;
        // Copy length and sender out, so nothing borrows the headers after.
        match headers {
            Headers::V4(h) => {
                for (slot, m) in got
                    .iter_mut()
                    .zip(recvmmsg(fd, h, iovs.iter_mut(), flags, None)?)
                {
                    *slot = (m.bytes, m.address.map(|a| SocketAddr::V4(a.into())));
                    n += 1;
                }
            }
            Headers::V6(h) => {
                for (slot, m) in got
                    .iter_mut()
                    .zip(recvmmsg(fd, h, iovs.iter_mut(), flags, None)?)
                {
                    *slot = (m.bytes, m.address.map(|a| SocketAddr::V6(a.into())));
                    n += 1;
                }
            }
        }
        self.len = n;
        Ok(n)
    }

    /// Datagram `i` of the last batch and its sender (`None` when the
    /// kernel gave no address).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.len {
            return None;
        }
        let (n, from) = self.got[i];
        let data = self
            .bufs
            .get(i * DATAGRAM..i * DATAGRAM + n.min(DATAGRAM))?;
        Some((data, from?))
    }
}

/// Answers waiting to go out in one `sendmmsg`.
pub struct SendBatch {
    data: Vec<u8>,
    /// (offset, len) into `data`, destination.
    msgs: Vec<(usize, usize, SocketAddrAny)>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("len", &self.msgs.len())
            .finish()
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            data: Vec::with_capacity(BATCH * 512),
            msgs: Vec::with_capacity(BATCH),
        }
    }

    /// Number of answers queued.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Queue `payload` for `to`.
    pub fn push(&mut self, payload: &[u8], to: SocketAddr) {
        let off = self.data.len();
        self.data.extend_from_slice(payload);
        self.msgs
            .push((off, payload.len(), SocketAddrAny::from(to)));
    }

    /// Send the queued answers from the first not yet sent (non-blocking),
    /// up to [`BATCH`] per call. Returns how many went out; a datagram the
    /// kernel refuses for its destination alone is dropped (and counted as
    /// sent) so one bad address cannot hold up the rest. `WouldBlock` when
    /// the socket buffer is full: call again when writable.
    pub fn send(&mut self, socket: &UdpSocket, start: usize) -> io::Result<usize> {
        let pending = self.msgs.get(start..).unwrap_or_default();
        // The headers of one call live in arrays on the stack, built anew
        // for every call; their width is chosen from what is pending so
        // that a batch of one answer (a lone question, the usual case below
        // saturation) does not build 32 of them. Building all 32 cost about
        // 2,500 instructions per call, more than the rest of answering a
        // cached question (docs/decisions/0137-dns-send-headers-per-batch.md).
        match pending.len() {
            0 => Ok(0),
            1 => send_headers::<1>(socket, &self.data, pending),
            2..=4 => send_headers::<4>(socket, &self.data, pending),
            5..=8 => send_headers::<8>(socket, &self.data, pending),
            _ => send_headers::<BATCH>(socket, &self.data, pending),
        }
    }

    /// Forget everything queued.
    pub fn clear(&mut self) {
        self.data.clear();
        self.msgs.clear();
    }
}

/// One `sendmmsg` of up to `N` of `pending` (non-empty), with headers on
/// the stack: [`SendBatch::send`] says what the result means.
fn send_headers<const N: usize>(
    socket: &UdpSocket,
    data: &[u8],
    pending: &[(usize, usize, SocketAddrAny)],
) -> io::Result<usize> {
    let pending = &pending[..pending.len().min(N)];
    let iovs: [[IoSlice<'_>; 1]; N] = std::array::from_fn(|i| {
        [IoSlice::new(
            pending
                .get(i)
                .and_then(|(off, len, _)| data.get(*off..off + len))
                .unwrap_or_default(),
        )]
    });
    // One (empty) control buffer per header: each borrows its own.
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; N] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut i = 0;
    let mut hdrs: [MMsgHdr<'_>; N] = controls.each_mut().map(|control| {
        let h = match pending.get(i) {
            Some((_, _, to)) => MMsgHdr::new_with_addr(to, &iovs[i], control),
            None => MMsgHdr::new(&[], control),
        };
        i += 1;
        h
    });
    let e = match sendmmsg(socket, &mut hdrs[..pending.len()], SendFlags::DONTWAIT) {
        Ok(n) => return Ok(n),
        Err(e) => io::Error::from(e),
    };
    if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
        return Err(e);
    }
    // The first datagram failed for its own reason (unreachable
    // destination, ...): drop it and let the caller go on.
    tracing::debug!(error = %e, "udp send failed; datagram dropped");
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_senders_come_back_whole() {
        let Ok(server) = std::net::UdpSocket::bind("[::1]:0") else {
            smarter_test_support::skip("no IPv6 loopback");
            return;
        };
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("[::1]:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..3u8 {
            client
                .send_to(&[i; 5], server.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(&server).unwrap(), 3);
        let mut out = SendBatch::new();
        for i in 0..3 {
            let (data, from) = batch.get(i).unwrap();
            assert_eq!(data, &[i as u8; 5]);
            assert_eq!(from, client.local_addr().unwrap());
            out.push(&data[..1], from);
        }
        assert_eq!(out.send(&server, 0).unwrap(), 3);
        let mut buf = [0u8; 8];
        for i in 0..3u8 {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&[i][..], server.local_addr().unwrap()));
        }
    }

    #[test]
    fn many_datagrams_in_one_call_each_way() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(
            batch.recv(&server).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let n = batch.recv(&server).unwrap();
        assert_eq!(n, BATCH);
        let mut out = SendBatch::new();
        for i in 0..n {
            let (data, from) = batch.get(i).unwrap();
            assert_eq!(data, &[i as u8; 3]);
            assert_eq!(from, client.local_addr().unwrap());
            out.push(&[data[0], 0xff], from);
        }
        assert!(batch.get(n).is_none());
        assert_eq!(batch.recv(&server).unwrap(), 8);
        assert_eq!(out.send(&server, 0).unwrap(), BATCH);
        let mut buf = [0u8; 16];
        for i in 0..BATCH {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8, 0xff]);
        }
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn a_bad_destination_does_not_stop_the_batch() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut out = SendBatch::new();
        // An IPv6 destination on an IPv4 socket fails on its own.
        out.push(b"bad", "[::1]:53".parse().unwrap());
        out.push(b"good", client.local_addr().unwrap());
        let mut sent = 0;
        while sent < out.len() {
            sent += out.send(&server, sent).unwrap();
        }
        let mut buf = [0u8; 8];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"good");
    }

    #[test]
    fn more_than_a_batch_goes_out_a_batch_per_call() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = SendBatch::new();
        for i in 0..BATCH + 8 {
            out.push(&[i as u8], client.local_addr().unwrap());
        }
        assert_eq!(out.send(&server, 0).unwrap(), BATCH);
        assert_eq!(out.send(&server, BATCH).unwrap(), 8);
        assert_eq!(out.send(&server, BATCH + 8).unwrap(), 0);
        client.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4];
        for i in 0..BATCH + 8 {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8]);
        }
    }

    #[test]
    fn every_batch_size_goes_out_whole_and_in_order() {
        // The headers are built at a width chosen from the number pending
        // (1, 4, 8 or BATCH): every count on either side of those widths
        // must send each datagram once, in order, to its own destination.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for c in [&a, &b] {
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
        }
        let mut out = SendBatch::new();
        for count in 1..=BATCH + 1 {
            out.clear();
            for i in 0..count {
                let to = if i % 2 == 0 { &a } else { &b };
                out.push(&[count as u8, i as u8], to.local_addr().unwrap());
            }
            let mut sent = 0;
            while sent < out.len() {
                let k = out.send(&server, sent).unwrap();
                assert!(k > 0 && k <= BATCH, "count {count}: sent {k}");
                sent += k;
            }
            assert_eq!(sent, count);
            let mut buf = [0u8; 4];
            for i in 0..count {
                let from = if i % 2 == 0 { &a } else { &b };
                let n = from.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[count as u8, i as u8], "count {count}");
            }
        }
    }
}
