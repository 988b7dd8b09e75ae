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
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::zone::{Answer, Zone};

/// The current zone, swapped whole on every change.
#[derive(Debug, Clone)]
pub struct ZoneHandle(Arc<RwLock<Arc<Zone>>>);

impl ZoneHandle {
    /// A handle holding `zone`.
    pub fn new(zone: Zone) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(zone))))
    }

    /// The zone now.
    pub fn get(&self) -> Option<Arc<Zone>> {
        self.0.read().ok().map(|z| Arc::clone(&z))
    }

    /// Replace the zone.
    pub fn set(&self, zone: Zone) {
        if let Ok(mut z) = self.0.write() {
            *z = Arc::new(zone);
        }
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
        let Some(zone) = self.zone.get() else {
            return Reply::error(ResponseCode::ServFail);
        };
        let local = |rcode, answers, authorities| Reply {
            rcode,
            authoritative: true,
            answers,
            authorities,
        };
        match zone.lookup(query.name(), qtype) {
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
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

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
        encoder.set_max_size(u16::MAX);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}

/// Run one raw request through the same decoding and handler as the
/// servers and return the encoded response; `None` when the request is
/// dropped (not a parsable query). Used by the fuzz target and the
/// random-packet test: no sockets involved.
pub async fn answer_raw(handler: &Handler, bytes: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let request = Request::from_bytes(
        bytes.to_vec(),
        src,
        hickory_server::net::xfer::Protocol::Udp,
    )
    .ok()?;
    if request.metadata.message_type == hickory_proto::op::MessageType::Response {
        return None;
    }
    let capture = Capture::default();
    handler
        .handle_request::<_, hickory_server::net::runtime::TokioTime>(&request, capture.clone())
        .await;
    capture.0.lock().ok()?.take()
}

/// How long an idle TCP client may keep its connection.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running DNS server on already-bound sockets.
pub fn serve(handler: Handler, udp: Vec<UdpSocket>, tcp: Vec<TcpListener>) -> Server<Handler> {
    let mut server = Server::new(handler);
    for s in udp {
        server.register_socket(s);
    }
    for l in tcp {
        server.register_listener(l, TCP_TIMEOUT, 64 * 1024);
    }
    server
}

/// Addresses of already-bound sockets, for logs and tests.
pub fn local_addrs(udp: &[UdpSocket], tcp: &[TcpListener]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    (
        udp.iter().filter_map(|s| s.local_addr().ok()).collect(),
        tcp.iter().filter_map(|s| s.local_addr().ok()).collect(),
    )
}
