//! The DNS request handler and the hickory server around it.
//!
//! [`Handler`] answers local names from the current [`Zone`] and forwards
//! everything else through the [`Forwarder`]. It refuses zone transfers
//! (AXFR/IXFR) and anything that is not a standard query, and answers a
//! request with other than exactly one question with FORMERR. Malformed
//! packets never reach it: hickory's server answers FORMERR when the header
//! parses and drops the packet when not.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::zone::{Answer, Store};

/// The store of local names, shared by the server (readers) and the
/// watchers (writers, who update it in place).
#[derive(Debug, Clone)]
pub struct ZoneHandle(Arc<RwLock<Store>>);

impl ZoneHandle {
    /// A handle holding `store`.
    pub fn new(store: Store) -> Self {
        Self(Arc::new(RwLock::new(store)))
    }

    /// Answer one question from the current zone.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Option<Answer> {
        self.0.read().ok().map(|s| s.zone().lookup(name, qtype))
    }

    /// Change the store; returns `f`'s result.
    pub fn update<T>(&self, f: impl FnOnce(&mut Store) -> T) -> Option<T> {
        self.0.write().ok().map(|mut s| f(&mut s))
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
}

impl Reply {
    fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
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
        let Some(answer) = self.zone.lookup(query.name(), qtype) else {
            return Reply::error(ResponseCode::ServFail);
        };
        let local = |rcode, answers, authorities| Reply {
            rcode,
            authoritative: true,
            answers,
            authorities,
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
                    let (answers, authorities) = c.aged(Instant::now());
                    Reply {
                        rcode: c.rcode,
                        authoritative: false,
                        answers,
                        authorities,
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
        mut response_handle: R,
    ) -> ResponseInfo {
        self.metrics.queries.inc();
        let reply = self.decide(request).await;
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        meta.authoritative = reply.authoritative;
        meta.response_code = reply.rcode;
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
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
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "cannot send response");
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
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
    let request = match Request::from_bytes(
        bytes.to_vec(),
        src,
        hickory_server::net::xfer::Protocol::Udp,
    ) {
        Ok(r) => r,
        Err(_) => return formerr(bytes),
    };
    if request.metadata.message_type == hickory_proto::op::MessageType::Response {
        return None;
    }
    let capture = Capture {
        out: Arc::default(),
        max_size: request.max_payload(),
    };
    handler
        .handle_request::<_, hickory_server::net::runtime::TokioTime>(&request, capture.clone())
        .await;
    capture.out.lock().ok()?.take()
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
/// the answer itself. Answers that need no waiting (local names, cache
/// hits) are computed and sent inline without spawning a task; only
/// questions that go upstream get a task of their own. See
/// docs/decisions/0033-dns-udp-fast-path.md.
pub async fn serve_udp(socket: UdpSocket, handler: Handler) {
    use futures_util::FutureExt;
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(%error, "udp receive failed");
                continue;
            }
        };
        if src.port() == 0 || src.ip().is_unspecified() {
            continue;
        }
        let packet = buf[..n].to_vec();
        let h = handler.clone();
        let mut fut = Box::pin(async move { answer_raw(&h, &packet, src).await });
        match fut.as_mut().now_or_never() {
            Some(Some(resp)) => match socket.try_send_to(&resp, src) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let s = Arc::clone(&socket);
                    tokio::spawn(async move {
                        let _ = s.send_to(&resp, src).await;
                    });
                }
                Err(error) => tracing::debug!(%src, %error, "udp send failed"),
            },
            Some(None) => {}
            None => {
                let s = Arc::clone(&socket);
                tokio::spawn(async move {
                    if let Some(resp) = fut.await {
                        let _ = s.send_to(&resp, src).await;
                    }
                });
            }
        }
    }
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
