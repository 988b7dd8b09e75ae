//! The epoll multiplexer: one tokio task serves every listener and
//! connection of a process through an epoll set of its own.

use std::io;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::Notify;

use crate::conn::Conn;
use crate::frame::OUT_HIGH_WATER;
use crate::service::{Handler, StopSignal};

/// Wakes every [`Mux`] when a [`Feed`] changes or a [`StopSignal`] fires;
/// each then looks at all its connections.
pub(crate) static MUX_WAKE: Notify = Notify::const_new();

pub(crate) enum MuxMsg<H: Handler> {
    Listen(MuxListener<H>),
    /// Boxed: the channel's blocks are sized for the largest message.
    Adopt(Box<MuxConn<H>>),
}

pub(crate) struct MuxListener<H> {
    fd: std::os::unix::net::UnixListener,
    /// In the epoll set for EPOLLIN (off for 100 ms after accept failed).
    armed: bool,
    handler: Arc<H>,
    stop: Arc<StopSignal>,
}

pub(crate) struct MuxConn<H: Handler> {
    io: std::os::unix::net::UnixStream,
    conn: Conn<H>,
    stop: Arc<StopSignal>,
    stopping: bool,
    /// The epoll events it is registered for now.
    events: u32,
}

/// Serves many listening sockets and their connections from ONE task,
/// with an epoll set of its own.
///
/// Why: the kubelet keeps a connection open to every resource's socket,
/// and the original's rules make one resource per device node. A task per
/// listener and per connection cost about 0.9 KiB each in task cells, and
/// a tokio registration costs 256 bytes per socket; here a connection
/// costs its [`Conn`] state (a few hundred bytes, no buffers while idle)
/// and a listener its socket. Only the epoll fd is registered with tokio;
/// when it is readable, `epoll_wait` names the sockets to drive (level
/// triggered), so a wake-up costs what the ready sockets need. A [`Feed`]
/// change or a stop signal looks at every connection.
#[derive(Debug)]
pub struct Mux<H: Handler> {
    tx: tokio::sync::mpsc::UnboundedSender<MuxMsg<H>>,
}

impl<H: Handler> std::fmt::Debug for MuxMsg<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MuxMsg::Listen(l) => write!(f, "Listen({:?})", l.fd),
            MuxMsg::Adopt(_) => write!(f, "Adopt"),
        }
    }
}

impl<H: Handler> Mux<H> {
    /// Start the serving task on the current tokio runtime.
    pub fn start() -> io::Result<Self> {
        let poller = Epoll::new()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(mux_task(rx, poller));
        Ok(Self { tx })
    }

    /// Serve `listener` (made non-blocking here) with `handler` until
    /// `stop` fires: then the listener is closed and its connections end.
    /// The listener and each connection hold a clone of `stop` until
    /// closed.
    pub fn listen(
        &self,
        listener: std::os::unix::net::UnixListener,
        handler: Arc<H>,
        stop: Arc<StopSignal>,
    ) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        self.tx
            .send(MuxMsg::Listen(MuxListener {
                fd: listener,
                armed: true,
                handler,
                stop,
            }))
            .map_err(|_| io::Error::other("the connection task has ended"))
    }

    /// Serve one already connected stream (made non-blocking here), as if
    /// accepted on a listener.
    pub fn serve_stream(
        &self,
        io: std::os::unix::net::UnixStream,
        handler: Arc<H>,
        stop: Arc<StopSignal>,
    ) -> io::Result<()> {
        io.set_nonblocking(true)?;
        self.tx
            .send(MuxMsg::Adopt(Box::new(MuxConn::new(io, handler, stop))))
            .map_err(|_| io::Error::other("the connection task has ended"))
    }
}

/// An epoll set, itself watched by tokio.
pub(crate) struct Epoll {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: the OwnedFd owns the epoll fd, and the AsyncFd owns the
        // OwnedFd: the fd is neither replaced nor closed while registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    pub(crate) fn ctl(
        &self,
        op: libc::c_int,
        fd: std::os::fd::RawFd,
        events: u32,
        slot: usize,
    ) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: slot as u64,
        };
        let epfd = std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref());
        // SAFETY: `ev` outlives the call; both fds are open (the caller
        // owns `fd`).
        let rc = unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Slots with events now (none when the set is quiet).
    pub(crate) fn ready(&self, out: &mut Vec<usize>) -> io::Result<usize> {
        const BATCH: usize = 64;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let epfd = std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref());
        // SAFETY: `evs` has room for BATCH events; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(epfd, evs.as_mut_ptr(), BATCH as libc::c_int, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        out.extend(evs[..n].iter().map(|e| e.u64 as usize));
        Ok(n)
    }
}

pub(crate) enum MuxEntry<H: Handler> {
    Listener(MuxListener<H>),
    /// Boxed: a slot is as large as its largest variant, and there are as
    /// many listeners as connections.
    Conn(Box<MuxConn<H>>),
}

/// The mux's sockets: slots reused through a free list; a slot's index is
/// its epoll data.
pub(crate) struct Slab<H: Handler> {
    slots: Vec<Option<MuxEntry<H>>>,
    free: Vec<usize>,
    epoll: Epoll,
}

pub(crate) const CONN_READ: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
pub(crate) const CONN_WRITE: u32 = libc::EPOLLOUT as u32;

impl<H: Handler> Slab<H> {
    pub(crate) fn insert(&mut self, entry: MuxEntry<H>) -> io::Result<usize> {
        let i = self.free.pop().unwrap_or(self.slots.len());
        let (fd, events) = match &entry {
            MuxEntry::Listener(l) => (std::os::fd::AsRawFd::as_raw_fd(&l.fd), libc::EPOLLIN as u32),
            MuxEntry::Conn(c) => (std::os::fd::AsRawFd::as_raw_fd(&c.io), c.events),
        };
        if let Err(e) = self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, events, i) {
            self.free.push(i);
            return Err(e);
        }
        match self.slots.get_mut(i) {
            Some(s) => *s = Some(entry),
            None => self.slots.push(Some(entry)),
        }
        Ok(i)
    }

    pub(crate) fn remove(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i)
            && let Some(entry) = s.take()
        {
            let fd = match &entry {
                MuxEntry::Listener(l) => std::os::fd::AsRawFd::as_raw_fd(&l.fd),
                MuxEntry::Conn(c) => std::os::fd::AsRawFd::as_raw_fd(&c.io),
            };
            // Closing would remove it too; say so before the fd number can
            // be reused.
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0, i);
            drop(entry);
            self.free.push(i);
        }
    }

    /// Make progress on slot `i`; new connections go to `accepted`.
    pub(crate) fn drive(&mut self, i: usize, accepted: &mut Vec<MuxConn<H>>) {
        let Some(Some(entry)) = self.slots.get_mut(i) else {
            return;
        };
        let keep = match entry {
            MuxEntry::Listener(l) => {
                let open = !l.stop.is_stopped();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l.fd);
                if open && !l.armed {
                    l.armed = self
                        .epoll
                        .ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i)
                        .is_ok();
                }
                if open && l.armed && accept_all(l, accepted).is_err() {
                    // Out of fds and the like. The listener would stay
                    // readable and spin the task: take it out of the set
                    // and look again in 100 ms.
                    l.armed = self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, 0, i).is_err();
                    tokio::spawn(async {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        MUX_WAKE.notify_waiters();
                    });
                }
                open
            }
            MuxEntry::Conn(c) => {
                let keep = c.drive();
                let want = c.wanted_events();
                if keep && want != c.events {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&c.io);
                    match self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, want, i) {
                        Ok(()) => {
                            if let Some(Some(MuxEntry::Conn(c))) = self.slots.get_mut(i) {
                                c.events = want;
                            }
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    keep
                }
            }
        };
        if !keep {
            self.remove(i);
        }
    }
}

pub(crate) async fn mux_task<H: Handler>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<MuxMsg<H>>,
    epoll: Epoll,
) {
    let mut slab = Slab {
        slots: Vec::new(),
        free: Vec::new(),
        epoll,
    };
    let mut wake = Box::pin(MUX_WAKE.notified());
    let mut adopted = Vec::new();
    std::future::poll_fn(|cx| {
        let mut todo = Vec::new();
        loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(MuxMsg::Listen(l))) => match slab.insert(MuxEntry::Listener(l)) {
                    Ok(i) => todo.push(i),
                    Err(e) => tracing::warn!(error = %e, "cannot watch a plugin socket"),
                },
                Poll::Ready(Some(MuxMsg::Adopt(c))) => adopted.push(c),
                // Every sender is gone: the service has ended.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        for c in adopted.drain(..) {
            match slab.insert(MuxEntry::Conn(c)) {
                Ok(i) => todo.push(i),
                Err(e) => tracing::warn!(error = %e, "cannot watch a connection"),
            }
        }
        // A Feed changed or a stop fired: look at everything. Registered
        // again before looking, so a change after the look wakes us.
        let mut all = false;
        while wake.as_mut().poll(cx).is_ready() {
            wake.set(MUX_WAKE.notified());
            all = true;
        }
        // Sockets with events. Level-triggered: what is left unread is
        // reported again; once the set is quiet, tokio's readiness is
        // cleared and the next event wakes us. At most 32 rounds per poll,
        // then yield (and come back at once) so other tasks get a turn.
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 32 {
                cx.waker().wake_by_ref();
                break;
            }
            match slab.epoll.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => match slab.epoll.ready(&mut todo) {
                    Ok(0) => {
                        // Poll again so that the next event wakes us.
                        guard.clear_ready();
                        continue;
                    }
                    Ok(_) => {
                        // Drive these first: the set may report them again.
                        drive_all(&mut slab, &mut todo, all);
                        all = false;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "epoll_wait failed");
                        guard.clear_ready();
                        continue;
                    }
                },
                Poll::Ready(Err(e)) => tracing::warn!(error = %e, "epoll readiness failed"),
                Poll::Pending => {}
            }
            break;
        }
        drive_all(&mut slab, &mut todo, all);
        Poll::Pending
    })
    .await;
}

/// Drive the slots in `todo` (every slot when `all`), then the
/// connections they accepted.
pub(crate) fn drive_all<H: Handler>(slab: &mut Slab<H>, todo: &mut Vec<usize>, all: bool) {
    if all {
        *todo = (0..slab.slots.len()).collect();
    } else {
        todo.sort_unstable();
        todo.dedup();
    }
    let mut accepted = Vec::new();
    for i in todo.drain(..) {
        slab.drive(i, &mut accepted);
    }
    // New connections: a first drive sends our SETTINGS.
    while let Some(c) = accepted.pop() {
        match slab.insert(MuxEntry::Conn(Box::new(c))) {
            Ok(i) => slab.drive(i, &mut accepted),
            Err(e) => tracing::warn!(error = %e, "cannot watch a connection"),
        }
    }
}

/// Accept every pending connection on `l`; Err when accepting failed
/// (other than "no more for now").
pub(crate) fn accept_all<H: Handler>(
    l: &MuxListener<H>,
    conns: &mut Vec<MuxConn<H>>,
) -> Result<(), ()> {
    loop {
        match l.fd.accept() {
            Ok((io, _)) => {
                if let Err(e) = io.set_nonblocking(true) {
                    tracing::warn!(error = %e, "cannot serve an accepted connection");
                    continue;
                }
                conns.push(MuxConn::new(
                    io,
                    Arc::clone(&l.handler),
                    Arc::clone(&l.stop),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return Err(());
            }
        }
    }
}

impl<H: Handler> MuxConn<H> {
    pub(crate) fn new(
        io: std::os::unix::net::UnixStream,
        handler: Arc<H>,
        stop: Arc<StopSignal>,
    ) -> Self {
        Self {
            io,
            conn: Conn::new(handler),
            stop,
            stopping: false,
            events: CONN_READ,
        }
    }

    /// Make all the progress possible without blocking; false when the
    /// connection is done.
    pub(crate) fn drive(&mut self) -> bool {
        loop {
            if !self.stopping && self.stop.is_stopped() {
                self.stopping = true;
                self.conn.on_stop();
            }
            if self.conn.watchers()
                && let Some((feed, seen)) = &self.conn.watch
            {
                match feed.version() {
                    (_, true) => self.conn.on_watch(false),
                    (v, false) if v != *seen => self.conn.on_watch(true),
                    _ => {}
                }
            }
            if write_std(&self.io, &mut self.conn).is_err() {
                return false;
            }
            if self.conn.done(self.stopping) {
                return false;
            }
            if !self.wants_read() {
                return true;
            }
            match read_std(&self.io, &mut self.conn) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    pub(crate) fn wants_read(&self) -> bool {
        self.conn.out.len() < OUT_HIGH_WATER && !self.conn.fatal
    }

    /// Read while there is room for output; write while output waits.
    pub(crate) fn wanted_events(&self) -> u32 {
        let mut e = 0;
        if self.wants_read() {
            e |= CONN_READ;
        }
        if !self.conn.out.is_empty() {
            e |= CONN_WRITE;
        }
        e
    }
}

/// Read once into a stack buffer and feed the connection. Ok(0) is EOF.
pub(crate) fn read_std<H: Handler>(
    io: &std::os::unix::net::UnixStream,
    c: &mut Conn<H>,
) -> io::Result<usize> {
    let mut buf = [0u8; 8192];
    let n = std::io::Read::read(&mut &*io, &mut buf)?;
    if n > 0 {
        c.feed(&buf[..n]);
    }
    Ok(n)
}

/// Write what the socket takes; free the buffer once empty.
pub(crate) fn write_std<H: Handler>(
    io: &std::os::unix::net::UnixStream,
    c: &mut Conn<H>,
) -> io::Result<()> {
    while !c.out.is_empty() {
        match std::io::Write::write(&mut &*io, &c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out = Vec::new();
    Ok(())
}
