//! The DNS request handler and the hickory server around it.
//!
//! [`Handler`] answers local names from the current [`Zone`] and forwards
//! everything else through the [`Forwarder`]. It refuses zone transfers
//! (AXFR/IXFR) and anything that is not a standard query, and answers a
//! request with other than exactly one question with FORMERR. Malformed
//! packets never reach it: hickory's server answers FORMERR when the header
//! parses and drops the packet when not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, UdpSocket};

use crate::batch::{RecvBatch, SendBatch};
use crate::fastpath::{self, AnswerCache, Validity};
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::zone::{Answer, Store};

/// The store of local names, shared by the server (readers) and the
/// watchers (writers, who update it in place), with a generation that every
/// update bumps (it tells the UDP answer cache when local answers went
/// stale).
#[derive(Debug, Clone)]
pub struct ZoneHandle {
    store: Arc<RwLock<Store>>,
    generation: Arc<AtomicU64>,
}

impl ZoneHandle {
    /// A handle holding `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store: Arc::new(RwLock::new(store)),
            generation: Arc::default(),
        }
    }

    /// Answer one question from the current zone.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Option<Answer> {
        self.store.read().ok().map(|s| s.zone().lookup(name, qtype))
    }

    /// Change the store; returns `f`'s result.
    pub fn update<T>(&self, f: impl FnOnce(&mut Store) -> T) -> Option<T> {
        let mut store = self.store.write().ok()?;
        let out = f(&mut store);
        // Bumped after the change and before the lock is released: whoever
        // reads the new generation and then takes the read lock sees the
        // change, so an answer is never tagged newer than its data.
        self.generation.fetch_add(1, Ordering::Release);
        Some(out)
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Answers DNS requests.
#[derive(Debug, Clone)]
pub struct Handler {
    zone: ZoneHandle,
    forwarder: Arc<Forwarder>,
    metrics: Arc<Metrics>,
}

impl Handler {
    /// A handler over `zone` forwarding through `forwarder`.
    pub fn new(zone: ZoneHandle, forwarder: Arc<Forwarder>, metrics: Arc<Metrics>) -> Self {
        Self {
            zone,
            forwarder,
            metrics,
        }
    }
}

/// What to send back, decided before any I/O on the client side.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    /// How long these exact records may be replayed.
    valid: Validity,
}

impl Reply {
    fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            valid: Validity::Never,
        }
    }
}

impl Handler {
    async fn decide(&self, request: &Request) -> Reply {
        let meta = &request.metadata;
        if meta.op_code != OpCode::Query {
            self.metrics.refused.inc();
            return Reply::error(ResponseCode::NotImp);
        }
        let queries = request.queries.queries();
        let [query] = queries else {
            return Reply::error(ResponseCode::FormErr);
        };
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            self.metrics.refused.inc();
            return Reply::error(ResponseCode::Refused);
        }
        if query.query_class() != DNSClass::IN {
            self.metrics.refused.inc();
            return Reply::error(ResponseCode::Refused);
        }
        // Read before the lookup: a change in between leaves the answer
        // tagged with an older generation (merely not replayed).
        let generation = self.zone.generation();
        let Some(answer) = self.zone.lookup(query.name(), qtype) else {
            return Reply::error(ResponseCode::ServFail);
        };
        let local = |rcode, answers, authorities| Reply {
            rcode,
            authoritative: true,
            answers,
            authorities,
            valid: Validity::Zone(generation),
        };
        match answer {
            Answer::Records(r) => {
                self.metrics.local_answers.inc();
                local(ResponseCode::NoError, r, Vec::new())
            }
            Answer::NoData(soa) => {
                self.metrics.local_answers.inc();
                local(ResponseCode::NoError, Vec::new(), vec![soa])
            }
            Answer::NxDomain(soa) => {
                self.metrics.local_answers.inc();
                local(
                    ResponseCode::NXDomain,
                    Vec::new(),
                    soa.into_iter().collect(),
                )
            }
            Answer::NotLocal => match self.forwarder.resolve(query.original()).await {
                Ok(c) => {
                    let now = Instant::now();
                    let (answers, authorities) = c.aged(now);
                    Reply {
                        rcode: c.rcode,
                        authoritative: false,
                        answers,
                        authorities,
                        valid: Validity::Aged {
                            stored: c.stored(),
                            age: c.age_at(now),
                            expires: c.expires(),
                        },
                    }
                }
                Err(error) => {
                    tracing::debug!(name = %query.name(), %error, "forwarding failed");
                    Reply::error(ResponseCode::ServFail)
                }
            },
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let received = Instant::now();
        let info = self.respond(request, response_handle).await.0;
        self.metrics.answered(received.elapsed(), 1);
        info
    }
}

impl Handler {
    /// The zone generation now (see [`ZoneHandle::generation`]).
    pub fn zone_generation(&self) -> u64 {
        self.zone.generation()
    }

    /// Count an answer the UDP loop replayed from its cache.
    fn count_replayed(&self, source: fastpath::Source) {
        self.metrics.queries.inc();
        match source {
            fastpath::Source::Local => self.metrics.local_answers.inc(),
            fastpath::Source::Forwarded => self.metrics.cache_hits.inc(),
        }
    }

    /// Answer `request` through `response_handle`, and say how long the
    /// same answer may be replayed.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> (ResponseInfo, Validity) {
        self.metrics.queries.inc();
        // hickory echoes the question section byte for byte; a compression
        // pointer in it would then point into our own answer (its header,
        // say) and the client could not parse the answer. No resolver
        // compresses a question, so such a request is malformed: FORMERR,
        // without echoing the question.
        let compressed = names_a_pointer(request.queries.as_bytes());
        let reply = if compressed {
            Reply::error(ResponseCode::FormErr)
        } else {
            self.decide(request).await
        };
        let mut meta = Metadata::response_from_request(&request.metadata);

        meta.recursion_available = true;
        meta.authoritative = reply.authoritative;
        meta.response_code = reply.rcode;
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e
        });
        let no_questions = Queries::read(
            &mut hickory_proto::serialize::binary::BinDecoder::new(&[]),
            0,
        );
        let mut builder = match (&no_questions, compressed) {
            (Ok(none), true) => MessageResponseBuilder::new(none, None),
            _ => MessageResponseBuilder::from_message_request(request),
        };
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let response = builder.build(
            meta,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => (info, reply.valid),
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "cannot send response");
                meta.response_code = ResponseCode::ServFail;
                let info = ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                });
                (info, Validity::Never)
            }
        }
    }
}

/// Whether any name in a question section (as received) uses a
/// compression pointer.
fn names_a_pointer(questions: &[u8]) -> bool {
    let mut p = 0;
    while p < questions.len() {
        loop {
            match questions.get(p) {
                None => return false,
                Some(0) => {
                    p += 1;
                    break;
                }
                Some(len) if len & 0xc0 != 0 => return true,
                Some(len) => p += 1 + usize::from(*len),
            }
        }
        p += 4; // type and class
    }
    false
}

/// A [`ResponseHandler`] that keeps the encoded response instead of
/// sending it (for [`answer_raw`]).
#[derive(Clone)]
struct Capture {
    out: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    max_size: u16,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.max_size);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        if let Ok(mut slot) = self.out.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}

/// Run one raw UDP request through decoding and the handler and return the
/// encoded response, sized for UDP (512 bytes, or the client's EDNS size;
/// longer answers are truncated with TC set). `None` when the packet is
/// dropped: shorter than a header, or a response. A header followed by an
/// unparsable body gets FORMERR. Used by the UDP server, the fuzz target and
/// the random-packet test.
pub async fn answer_raw(handler: &Handler, bytes: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    answer_raw_valid(handler, bytes, src).await.map(|(r, _)| r)
}

/// [`answer_raw`], also saying how long the answer may be replayed from
/// an [`AnswerCache`] (the UDP loop and the fuzz target use it).
pub async fn answer_raw_valid(
    handler: &Handler,
    bytes: &[u8],
    src: SocketAddr,
) -> Option<(Vec<u8>, Validity)> {
    let request = match Request::from_bytes(
        bytes.to_vec(),
        src,
        hickory_server::net::xfer::Protocol::Udp,
    ) {
        Ok(r) => r,
        Err(_) => return formerr(bytes).map(|r| (r, Validity::Never)),
    };
    if request.metadata.message_type == hickory_proto::op::MessageType::Response {
        return None;
    }
    let capture = Capture {
        out: Arc::default(),
        max_size: request.max_payload(),
    };
    let (_, valid) = handler.respond(&request, capture.clone()).await;
    let response = capture.out.lock().ok()?.take()?;
    Some((response, valid))
}

/// FORMERR for a packet whose header parses but whose body does not.
fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = hickory_proto::serialize::binary::BinDecoder::new(bytes);
    let header =
        <Header as hickory_proto::serialize::binary::BinDecodable>::read(&mut decoder).ok()?;
    if header.metadata.message_type == hickory_proto::op::MessageType::Response {
        return None;
    }
    let mut m = hickory_proto::op::Message::error_msg(
        header.metadata.id,
        header.metadata.op_code,
        ResponseCode::FormErr,
    );
    m.metadata.recursion_desired = header.metadata.recursion_desired;
    m.to_vec().ok()
}

/// Serve DNS over UDP on `socket` until the task is aborted.
///
/// hickory-server's own UDP loop hands every answer through a channel to
/// a separate sender task; this loop runs the same [`Handler`] and sends
/// the answers itself, a batch per `recvmmsg`/`sendmmsg`. Answers that need
/// no waiting (local names, cache hits) are computed inline without
/// spawning a task; only questions that go upstream get a task of their
/// own. A repeated plain question is answered from the loop's
/// [`AnswerCache`] of encoded answers without decoding it at all. See
/// docs/decisions/0033-dns-udp-fast-path.md and
/// 0034-dns-answer-cache-and-batches.md.
pub async fn serve_udp(socket: UdpSocket, handler: Handler) {
    use futures_util::FutureExt;
    // AsyncFd rather than tokio's UdpSocket so that a short batch can mark
    // the socket drained: one `recvmmsg` per wake-up instead of a second
    // one that only says EAGAIN.
    let std_socket = match socket.into_std() {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot take over the UDP socket");
            return;
        }
    };
    // SAFETY: a std UdpSocket owns its descriptor: it stays open and the
    // same until the AsyncFd (which owns the socket) is dropped.
    let socket = match unsafe { AsyncFd::register(std_socket) } {
        Ok(s) => Arc::new(s),
        Err(error) => {
            tracing::error!(error = %error, "cannot register the UDP socket");
            return;
        }
    };
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut key = [0u8; fastpath::KEY_MAX];
    let mut out = Vec::with_capacity(512);
    let mut cache = AnswerCache::new();
    loop {
        let mut ready = match socket.readable().await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(%error, "udp socket not readable");
                continue;
            }
        };
        let n = match rx.recv(socket.get_ref()) {
            // Fewer than a full batch: the queue was empty at that moment.
            // A datagram arriving after it is a new epoll event, which sets
            // readiness again (tokio does not clear past a newer event).
            Ok(n) if n < crate::batch::BATCH => {
                ready.clear_ready();
                n
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready.clear_ready();
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "udp receive failed");
                continue;
            }
        };
        drop(ready);
        // One clock read per batch (vDSO, no system call): every answer of
        // the batch is timed from here.
        let received = Instant::now();
        for i in 0..n {
            let Some((packet, src)) = rx.get(i) else {
                continue;
            };
            if src.port() == 0 || src.ip().is_unspecified() {
                continue;
            }
            let question = fastpath::parse(packet, &mut key);
            if let Some(q) = question
                && let Some(source) =
                    cache.answer(&key, q, packet, handler.zone_generation(), &mut out)
            {
                handler.count_replayed(source);
                tx.push(&out, src);
                continue;
            }
            let packet = packet.to_vec();
            let h = handler.clone();
            let mut fut = Box::pin(async move {
                let answer = answer_raw_valid(&h, &packet, src).await;
                (packet, answer)
            });
            match fut.as_mut().now_or_never() {
                Some((packet, Some((resp, valid)))) => {
                    if let Some(q) = question {
                        cache.insert(&key, q, &packet, &resp, valid);
                    }
                    tx.push(&resp, src);
                }
                Some((_, None)) => {}
                None => {
                    let s = Arc::clone(&socket);
                    let metrics = Arc::clone(&handler.metrics);
                    tokio::spawn(async move {
                        if let (_, Some((resp, _))) = fut.await {
                            let _ = s
                                .async_io(tokio::io::Interest::WRITABLE, |s| s.send_to(&resp, src))
                                .await;
                            metrics.answered(received.elapsed(), 1);
                        }
                    });
                }
            }
        }
        let answers = tx.len();
        flush(&socket, &mut tx).await;
        handler.metrics.answered(received.elapsed(), answers);
    }
}

/// Send every queued answer, waiting for room in the socket buffer when it
/// is full (back-pressure: no more questions are read meanwhile).
async fn flush(socket: &AsyncFd<std::net::UdpSocket>, tx: &mut SendBatch) {
    let mut sent = 0;
    while sent < tx.len() {
        match socket
            .async_io(tokio::io::Interest::WRITABLE, |s| tx.send(s, sent))
            .await
        {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(%error, "udp send failed");
                break;
            }
        }
    }
    tx.clear();
}

/// How long an idle TCP client may keep its connection.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running hickory DNS server on already-bound TCP listeners (UDP is
/// served by [`serve_udp`]).
pub fn serve(handler: Handler, tcp: Vec<TcpListener>) -> Server<Handler> {
    let mut server = Server::new(handler);
    for l in tcp {
        server.register_listener(l, TCP_TIMEOUT, 64 * 1024);
    }
    server
}
