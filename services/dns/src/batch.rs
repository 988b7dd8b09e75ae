//! Datagrams in batches: `recvmmsg(2)` and `sendmmsg(2)` on a UDP socket.
//!
//! Under load most of a DNS server's time goes to system calls, two per
//! question with `recvfrom`/`sendto`. Receiving up to [`BATCH`] questions in
//! one call and sending their answers in one call makes that two per batch;
//! when questions trickle in, a batch is one datagram and nothing waits for
//! more (no added latency).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Receive buffer per datagram (larger questions are cut and then rejected
/// as malformed, as with one `recvfrom` into a buffer of this size).
pub const DATAGRAM: usize = 4096;

/// Received datagrams: up to [`BATCH`] at a time.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("len", &self.len).finish()
    }
}

// SAFETY: the raw pointers inside the C headers only ever point into this
// struct's own heap buffers (which do not move when the struct does), are
// rewritten before every system call, and are never dereferenced by Rust
// code; the struct is used by one task at a time.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Buffers for one batch.
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
        // which all-zero bytes are a valid value.
        let (addr, iov, hdr) = unsafe { (mem::zeroed(), mem::zeroed(), mem::zeroed()) };
        Self {
            bufs: vec![0; BATCH * DATAGRAM],
            addrs: vec![addr; BATCH],
            iovs: vec![iov; BATCH],
            hdrs: vec![hdr; BATCH],
            len: 0,
        }
    }

    /// Receive what is queued on `fd` (non-blocking), at least one datagram
    /// or `WouldBlock`. Returns the number received.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.len = 0;
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * DATAGRAM..].as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = socklen_of::<libc::sockaddr_storage>();
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that live
        // across the call and whose lengths are the ones given; the kernel
        // writes at most that much. BATCH fits in c_uint.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.len = usize::try_from(n).unwrap_or(0).min(BATCH);
        Ok(self.len)
    }

    /// Datagram `i` of the last batch and its sender (`None` for an
    /// address family other than IPv4/IPv6).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.len {
            return None;
        }
        let h = &self.hdrs[i];
        let n = usize::try_from(h.msg_len).ok()?.min(DATAGRAM);
        let data = &self.bufs[i * DATAGRAM..i * DATAGRAM + n];
        Some((data, from_storage(&self.addrs[i])?))
    }
}

/// Answers waiting to go out in one `sendmmsg`.
pub struct SendBatch {
    data: Vec<u8>,
    /// (offset, len) into `data`, destination.
    msgs: Vec<(usize, usize, libc::sockaddr_storage, libc::socklen_t)>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("len", &self.msgs.len())
            .finish()
    }
}

// SAFETY: as for RecvBatch: the pointers refer to the struct's own heap
// buffers and are rebuilt before every system call.
unsafe impl Send for SendBatch {}

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
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
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
        let (addr, len) = to_storage(to);
        self.msgs.push((off, payload.len(), addr, len));
    }

    /// Send the queued answers from the first not yet sent (non-blocking).
    /// Returns how many went out; a datagram the kernel refuses for its
    /// destination alone is dropped (and counted as sent) so one bad
    /// address cannot hold up the rest. `WouldBlock` when the socket buffer
    /// is full: call again when writable.
    pub fn send(&mut self, fd: RawFd, start: usize) -> io::Result<usize> {
        let pending = self.msgs.get(start..).unwrap_or_default();
        if pending.is_empty() {
            return Ok(0);
        }
        self.iovs.clear();
        self.hdrs.clear();
        for (off, len, _, _) in pending {
            self.iovs.push(libc::iovec {
                iov_base: self.data[*off..].as_mut_ptr().cast(),
                iov_len: *len,
            });
        }
        for (i, (_, _, addr, alen)) in self.msgs[start..].iter_mut().enumerate() {
            // SAFETY: mmsghdr is a plain C struct; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = *alen;
            h.msg_hdr.msg_iov = &raw mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let count = libc::c_uint::try_from(self.hdrs.len()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: the headers point at iovecs, payloads and addresses owned
        // by `self`, alive and unchanged for the duration of the call.
        let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), count, libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(usize::try_from(n).unwrap_or(0));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return Err(e);
        }
        // The first datagram failed for its own reason (unreachable
        // destination, ...): drop it and let the caller go on.
        tracing::debug!(error = %e, "udp send failed; datagram dropped");
        Ok(1)
    }

    /// Forget everything queued.
    pub fn clear(&mut self) {
        self.data.clear();
        self.msgs.clear();
    }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(0)
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&raw mut s).cast(), sin) };
            (s, socklen_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut s).cast(), sin6) };
            (s, socklen_of::<libc::sockaddr_in6>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_round_trip() {
        for a in [
            "127.0.0.1:53",
            "169.254.0.2:5353",
            "[::1]:53",
            "[fe80::1%2]:1053",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let (s, _) = to_storage(a);
            assert_eq!(from_storage(&s), Some(a));
        }
    }

    #[test]
    fn many_datagrams_in_one_call_each_way() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(
            batch.recv(server.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let n = batch.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        let mut out = SendBatch::new();
        for i in 0..n {
            let (data, from) = batch.get(i).unwrap();
            assert_eq!(data, &[i as u8; 3]);
            assert_eq!(from, client.local_addr().unwrap());
            out.push(&[data[0], 0xff], from);
        }
        assert!(batch.get(n).is_none());
        assert_eq!(batch.recv(server.as_raw_fd()).unwrap(), 8);
        assert_eq!(out.send(server.as_raw_fd(), 0).unwrap(), BATCH);
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
        let fd = server.as_raw_fd();
        let mut sent = 0;
        while sent < out.len() {
            sent += out.send(fd, sent).unwrap();
        }
        let mut buf = [0u8; 8];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"good");
    }
}
