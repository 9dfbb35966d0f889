//! Relay connections (TCP, `advertise_address:relay_port`).
//!
//! Inbound: a peer outside `allowed_hosts` is closed before a byte is sent; then the server
//! handshake (the key proven over fresh nonces, bounded by `relay_timeout_ms`); a peer without
//! the key gets a closed connection and nothing else. After it every frame is sealed; any frame
//! that fails its MAC, sequence or decoding closes the connection. Each request is handled in its
//! own task, so a lock wait does not hold up the others; replies are sealed by the one writer task
//! in the order they are sent, every answer ready at that moment in one write.
//!
//! Outbound: one pooled connection per peer address, opened on first use, multiplexed by request
//! ID; a broken connection fails its pending calls (the caller decides: retry, fail over, error)
//! and is replaced on the next call.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, info, warn};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use scd_client::OwnedReply;
use scd_engine::OwnerId;
use scd_wire::constants::NONCE_LEN;
use scd_wire::frame::{DecodeError, Frame, Limits};
use scd_wire::local::{ErrorCode, decode_reply};
use scd_wire::relay::{
    BatchOutcome, ClientHandshake, Location, Opener, OutcomeList, PlaceList, RelayMessage, Replica,
    Sealer, ServerHandshake, SyncRole,
};

use super::Counters;
use super::route::State;
use crate::constants::RELAY_CLIENT_OWNERS_MAX;
use crate::notify::Notify;
use crate::settings::Settings;

/// A copy of one session that owns its bytes.
#[derive(Clone, Debug)]
pub struct OwnedReplica {
    pub hash: [u8; 16],
    pub version: u64,
    pub epoch: u32,
    pub lifetime_s: u32,
    pub data: Vec<u8>,
}

impl OwnedReplica {
    pub fn from_wire(r: &Replica<'_>) -> Self {
        OwnedReplica {
            hash: r.hash,
            version: r.version,
            epoch: r.epoch,
            lifetime_s: r.lifetime_s,
            data: r.data.to_vec(),
        }
    }

    pub fn as_wire(&self) -> Replica<'_> {
        Replica {
            hash: self.hash,
            version: self.version,
            epoch: self.epoch,
            lifetime_s: self.lifetime_s,
            data: &self.data,
        }
    }
}

/// What came back on an outbound connection for one call.
#[derive(Debug)]
pub enum Incoming {
    Reply(OwnedReply),
    ReplicateAck,
    Ack,
    Error {
        code: ErrorCode,
        message: String,
    },
    SyncBegin(SyncRole),
    SyncItem(OwnedReplica),
    SyncEnd,
    Located(Option<Location>),
    SyncPlaces(Vec<([u8; 16], Location)>),
    /// A read lease granted, for the request sent at this time.
    LeaseGrant(u64),
    /// A read lease refused (for the request sent at this time), and why.
    LeaseDenied(u64, String),
    /// A ReplicateBatch's answer: each copy's outcome, in the batch's order.
    ReplicateBatchAck(Vec<([u8; 16], BatchOutcome)>),
}

/// Why a call to a peer did not get an answer.
#[derive(Debug)]
pub enum CallError {
    /// Could not connect, the handshake failed, the connection broke, or no answer in time.
    Unreachable(String),
    /// The connection attempt was refused: nothing listens on the peer's relay address (its
    /// process is gone, or a firewall rejects rather than drops: `cluster.failover_on_refused`).
    Refused(String),
}

impl CallError {
    pub fn refused(&self) -> bool {
        matches!(self, CallError::Refused(_))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) | CallError::Refused(why) => f.write_str(why),
        }
    }
}

/// An outbound, established relay connection.
pub struct PeerConn {
    pub addr: SocketAddr,
    sealer: RefCell<Sealer>,
    out: RefCell<Vec<u8>>,
    wake: Notify,
    pending: RefCell<HashMap<u64, flume::Sender<Incoming>>>,
    next_id: Cell<u64>,
    broken: Cell<bool>,
}

impl PeerConn {
    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    /// Seals `message` under a fresh request ID and queues it; answers arrive on the receiver.
    pub fn send(
        &self,
        message: RelayMessage<'_>,
    ) -> Result<(u64, flume::Receiver<Incoming>), CallError> {
        if self.broken.get() {
            return Err(CallError::Unreachable(format!(
                "connection to {} is broken",
                self.addr
            )));
        }
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let (tx, rx) = flume::unbounded();
        self.pending.borrow_mut().insert(id, tx);
        let sealed = self
            .sealer
            .borrow_mut()
            .seal(&Frame::new(id, message), &mut self.out.borrow_mut());
        if let Err(reason) = sealed {
            self.pending.borrow_mut().remove(&id);
            return Err(CallError::Unreachable(format!("cannot seal: {reason}")));
        }
        self.wake.notify();
        Ok((id, rx))
    }

    pub fn forget(&self, id: u64) {
        self.pending.borrow_mut().remove(&id);
    }

    /// Fails every call waiting on this connection (their receivers see the connection lost),
    /// and leaves the socket open: closing it would make the peer, if alive, release every lock
    /// this node's clients hold there through it. The caller drops it from the pool; the
    /// socket closes when either side's reader ends.
    pub fn fail_pending(&self) {
        self.pending.borrow_mut().clear();
    }

    /// Marks the connection broken and fails every call waiting on it (their receivers see the
    /// connection lost); the writer task stops.
    fn fail_all(&self) {
        self.broken.set(true);
        self.pending.borrow_mut().clear();
        self.wake.notify();
    }
}

/// Reads more bytes into `buf` (growing it); Ok(0) at end of stream.
pub async fn read_more<R: AsyncReadRent>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let taken = std::mem::take(buf);
    let (res, slice) = rd.read(taken.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// Reads into `buf` until `decode` finds a whole message at its start, then drops the bytes it
/// used. `closed` says what an end of stream meant (`what` names the message in errors).
async fn read_decoded<R: AsyncReadRent, T>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    what: &str,
    closed: &str,
    mut decode: impl FnMut(&[u8]) -> Result<(T, usize), DecodeError>,
) -> io::Result<T> {
    loop {
        match decode(buf) {
            Ok((t, used)) => {
                buf.drain(..used);
                return Ok(t);
            }
            Err(DecodeError::Incomplete { .. }) => {
                if read_more(rd, buf, 512).await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, closed));
                }
            }
            Err(DecodeError::Invalid(r)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad {what}: {r}"),
                ));
            }
        }
    }
}

async fn with_timeout<T>(
    ms: u64,
    what: &str,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match monoio::time::timeout(Duration::from_millis(ms), f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no answer within {ms} ms"),
        )),
    }
}

/// Connects to `to` from this node's own address (not whichever address the kernel would pick),
/// so that the peer's `allowed_hosts` check sees the address the node is known by.
async fn connect_from(ip: std::net::IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    match socket.connect(&SockAddr::from(to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std: std::net::TcpStream = socket.into();
    let stream = TcpStream::from_std(std)?;
    stream.writable(false).await?;
    // A refused or failed connect shows as "not connected"; the socket's pending error says
    // which (a refusal is told apart: `cluster.failover_on_refused`).
    if let Err(e) = stream.peer_addr() {
        return Err(socket_error(&stream).unwrap_or(e));
    }
    Ok(stream)
}

/// The pending error of a socket (SO_ERROR), if it has one.
fn socket_error(stream: &TcpStream) -> Option<io::Error> {
    use std::os::fd::AsRawFd;
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is the stream's own, open for the call; `err` and `len` are valid
    // for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && err != 0).then(|| io::Error::from_raw_os_error(err))
}

/// Opens and authenticates a connection to `addr` (client side of the handshake).
pub async fn connect(state: &Rc<State>, addr: SocketAddr) -> Result<Rc<PeerConn>, CallError> {
    let ms = state.timeout_ms;
    let unreachable = |e: io::Error| CallError::Unreachable(format!("{addr}: {e}"));
    let stream = with_timeout(ms, "connect", connect_from(state.me.ip(), addr))
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => {
                CallError::Refused(format!("{addr}: connection refused"))
            }
            _ => unreachable(e),
        })?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| CallError::Unreachable(format!("no randomness: {e}")))?;
    let mut hs = ClientHandshake::new(&state.key, state.node_id, nonce);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let handshake = async {
        let mut out = Vec::new();
        read_decoded(
            &mut rd,
            &mut buf,
            "challenge",
            "closed during the handshake",
            |b| hs.on_challenge(b, &mut out).map(|used| ((), used)),
        )
        .await?;
        let (res, _) = wr.write_all(out).await;
        res?;
        read_decoded(
            &mut rd,
            &mut buf,
            "accept",
            "closed during the handshake (wrong cluster key?)",
            |b| hs.on_accept(b),
        )
        .await
    };
    let est = with_timeout(ms, "handshake", handshake)
        .await
        .map_err(unreachable)?;
    debug!(
        "relay connection to {addr} (node {:016x}) established",
        est.peer_node_id
    );
    let conn = Rc::new(PeerConn {
        addr,
        sealer: RefCell::new(est.sealer),
        out: RefCell::new(Vec::new()),
        wake: Notify::default(),
        pending: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        broken: Cell::new(false),
    });
    let limits = state.limits;
    {
        let conn = conn.clone();
        let mut opener = est.opener;
        monoio::spawn(async move {
            client_reader(&conn, &mut rd, &mut opener, buf, &limits).await;
            conn.fail_all();
        });
    }
    {
        let conn = conn.clone();
        monoio::spawn(async move {
            loop {
                conn.wake.notified().await;
                if conn.broken.get() {
                    break;
                }
                let data = std::mem::take(&mut *conn.out.borrow_mut());
                if data.is_empty() {
                    continue;
                }
                let (res, _) = wr.write_all(data).await;
                if let Err(e) = res {
                    debug!("relay write to {} failed: {e}", conn.addr);
                    conn.fail_all();
                    break;
                }
            }
        });
    }
    Ok(conn)
}

async fn client_reader<R: AsyncReadRent>(
    conn: &PeerConn,
    rd: &mut R,
    opener: &mut Opener,
    mut buf: Vec<u8>,
    limits: &Limits,
) {
    loop {
        let mut used_total = 0;
        loop {
            match opener.open(&buf[used_total..], limits) {
                Ok((frame, used)) => {
                    used_total += used;
                    let incoming = match frame.message {
                        RelayMessage::ForwardReply { reply } => {
                            Incoming::Reply(OwnedReply::from_wire(&reply))
                        }
                        RelayMessage::ReplicateAck { .. } => Incoming::ReplicateAck,
                        RelayMessage::Ack => Incoming::Ack,
                        RelayMessage::Error { code, message } => Incoming::Error {
                            code,
                            message: message.to_string(),
                        },
                        RelayMessage::SyncBegin { role, .. } => Incoming::SyncBegin(role),
                        RelayMessage::SyncItem(r) => {
                            Incoming::SyncItem(OwnedReplica::from_wire(&r))
                        }
                        RelayMessage::SyncEnd { .. } => Incoming::SyncEnd,
                        RelayMessage::Located { location, .. } => Incoming::Located(location),
                        RelayMessage::SyncPlaces { places } => {
                            Incoming::SyncPlaces(places.iter().collect())
                        }
                        RelayMessage::LeaseGrant { sent_ms } => Incoming::LeaseGrant(sent_ms),
                        RelayMessage::LeaseDenied { sent_ms, reason } => {
                            Incoming::LeaseDenied(sent_ms, reason.to_string())
                        }
                        RelayMessage::ReplicateBatchAck { outcomes } => {
                            Incoming::ReplicateBatchAck(outcomes.iter().collect())
                        }
                        other => {
                            warn!(
                                "relay peer {} sent {:?} as an answer; closing",
                                conn.addr,
                                kind_name(&other)
                            );
                            return;
                        }
                    };
                    let tx = conn.pending.borrow().get(&frame.request_id).cloned();
                    if let Some(tx) = tx {
                        let _ = tx.send(incoming);
                    }
                }
                Err(DecodeError::Incomplete { .. }) => break,
                Err(DecodeError::Invalid(r)) => {
                    warn!("relay peer {} sent a bad frame ({r}); closing", conn.addr);
                    return;
                }
            }
        }
        buf.drain(..used_total);
        match read_more(rd, &mut buf, 16 * 1024).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn kind_name(m: &RelayMessage<'_>) -> &'static str {
    match m {
        RelayMessage::Forward { .. } => "Forward",
        RelayMessage::ForwardReply { .. } => "ForwardReply",
        RelayMessage::Replicate(_) => "Replicate",
        RelayMessage::ReplicateAck { .. } => "ReplicateAck",
        RelayMessage::DropReplica { .. } => "DropReplica",
        RelayMessage::Promote { .. } => "Promote",
        RelayMessage::Ack => "Ack",
        RelayMessage::SyncRequest { .. } => "SyncRequest",
        RelayMessage::SyncBegin { .. } => "SyncBegin",
        RelayMessage::SyncItem(_) => "SyncItem",
        RelayMessage::SyncEnd { .. } => "SyncEnd",
        RelayMessage::Locate { .. } => "Locate",
        RelayMessage::Located { .. } => "Located",
        RelayMessage::RejoinNeeded => "RejoinNeeded",
        RelayMessage::SyncHashes { .. } => "SyncHashes",
        RelayMessage::SyncPlaces { .. } => "SyncPlaces",
        RelayMessage::LeaseRequest { .. } => "LeaseRequest",
        RelayMessage::LeaseGrant { .. } => "LeaseGrant",
        RelayMessage::LeaseDenied { .. } => "LeaseDenied",
        RelayMessage::ReplicateBatch { .. } => "ReplicateBatch",
        RelayMessage::ReplicateBatchAck { .. } => "ReplicateBatchAck",
        RelayMessage::WitnessRequest { .. } => "WitnessRequest",
        RelayMessage::Error { .. } => "Error",
    }
}

/// What a served relay connection sends back (sealed by its writer, in this order).
pub enum Out {
    ReplicateAck {
        hash: [u8; 16],
        version: u64,
    },
    Ack,
    Error {
        code: ErrorCode,
        message: String,
    },
    SyncBegin {
        role: SyncRole,
        count: u64,
    },
    SyncItem(OwnedReplica),
    SyncEnd {
        count: u64,
    },
    Located(Located),
    SyncPlaces(Vec<u8>),
    LeaseGrant(u64),
    LeaseDenied(u64, String),
    /// A ReplicateBatch's answer: entries written by `OutcomeList::push`.
    ReplicateBatchAck(Vec<u8>),
}

/// A Locate's answer (`RelayMessage::Located`): the session, the nodes this one sees up
/// (itself included), and where it knows the session to live.
pub struct Located {
    pub hash: [u8; 16],
    pub live_nodes: u32,
    pub location: Option<Location>,
}

/// A served (inbound) relay connection: where its handlers send their answers.
pub struct ServedConn {
    pub peer_node_id: u64,
    /// Encoded local reply frames (from `ReplyTo`), sent back as ForwardReply.
    pub local: flume::Sender<Vec<u8>>,
    /// Relay answers.
    pub relay: flume::Sender<(u64, Out)>,
    /// The lock owner given to each client of the peer (Forward's `origin`): one pooled
    /// connection carries many PHP clients, and each must be its own owner here.
    pub owners: RefCell<HashMap<u64, OwnerId>>,
}

impl ServedConn {
    /// This node's lock owner for the peer's client `origin` (made on first use).
    pub fn owner_for(&self, origin: u64, new: impl FnOnce() -> OwnerId) -> OwnerId {
        let mut owners = self.owners.borrow_mut();
        if let Some(&o) = owners.get(&origin) {
            return o;
        }
        if owners.len() >= RELAY_CLIENT_OWNERS_MAX {
            // Bounded: the oldest clients' locks still end with their writes (tokens) or
            // their leases; only the release when this connection closes no longer covers
            // them.
            debug!(
                "relay peer {:016x}: more than {RELAY_CLIENT_OWNERS_MAX} clients; forgetting their owners",
                self.peer_node_id
            );
            owners.clear();
        }
        let o = new();
        owners.insert(origin, o);
        o
    }
}

/// Accepts relay connections until the cluster thread stops.
pub async fn accept(state: Rc<State>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if !Settings::host_allowed(&state.node.resolved, addr.ip()) {
                    Counters::bump(&state.shared().counters.relay_connections_refused);
                    warn!("relay connection from {addr} refused: not in cluster.allowed_hosts");
                    drop(stream);
                    continue;
                }
                monoio::spawn(serve(state.clone(), stream, addr));
            }
            Err(e) => {
                warn!("relay accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A served connection's writer gathers ready answers into one write up to about this many bytes.
const SERVED_WRITE_MAX: usize = 256 * 1024;

/// Seals an encoded local reply frame as a ForwardReply. Err: the connection must close (a reply
/// that does not decode is logged and skipped).
fn seal_local(
    sealer: &mut Sealer,
    frame: &[u8],
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    match decode_reply(frame, limits) {
        Ok((f, _)) => {
            let msg = RelayMessage::ForwardReply { reply: f.message };
            sealer
                .seal(&Frame::new(f.request_id, msg), out)
                .map_err(|_| ())
        }
        Err(e) => {
            warn!("cannot relay a reply back: {e:?}");
            Ok(())
        }
    }
}

/// Seals a relay answer. Err: the connection must close.
fn seal_out(sealer: &mut Sealer, id: u64, o: &Out, out: &mut Vec<u8>) -> Result<(), ()> {
    let msg = match o {
        Out::ReplicateAck { hash, version } => RelayMessage::ReplicateAck {
            hash: *hash,
            version: *version,
        },
        Out::Ack => RelayMessage::Ack,
        Out::Error { code, message } => RelayMessage::Error {
            code: *code,
            message,
        },
        Out::SyncBegin { role, count } => RelayMessage::SyncBegin {
            role: *role,
            count_hint: *count,
        },
        Out::SyncItem(r) => RelayMessage::SyncItem(r.as_wire()),
        Out::SyncEnd { count } => RelayMessage::SyncEnd { count: *count },
        Out::Located(l) => RelayMessage::Located {
            hash: l.hash,
            live_nodes: l.live_nodes,
            location: l.location,
        },
        Out::LeaseGrant(sent_ms) => RelayMessage::LeaseGrant { sent_ms: *sent_ms },
        Out::LeaseDenied(sent_ms, reason) => RelayMessage::LeaseDenied {
            sent_ms: *sent_ms,
            reason,
        },
        // Entries written by `PlaceList::push`.
        Out::SyncPlaces(b) => match PlaceList::new(b) {
            Ok(places) => RelayMessage::SyncPlaces { places },
            Err(_) => RelayMessage::Error {
                code: ErrorCode::Internal,
                message: "bad SyncPlaces entries",
            },
        },
        // Entries written by `OutcomeList::push`.
        Out::ReplicateBatchAck(b) => match OutcomeList::new(b) {
            Ok(outcomes) => RelayMessage::ReplicateBatchAck { outcomes },
            Err(_) => RelayMessage::Error {
                code: ErrorCode::Internal,
                message: "bad ReplicateBatchAck entries",
            },
        },
    };
    sealer.seal(&Frame::new(id, msg), out).map_err(|_| ())
}

async fn serve(state: Rc<State>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut nonce = [0u8; NONCE_LEN];
    if getrandom::fill(&mut nonce).is_err() {
        return;
    }
    let hs = ServerHandshake::new(&state.key, state.node_id, nonce);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let handshake = async {
        let mut out = Vec::new();
        hs.challenge(&mut out);
        let (res, _) = wr.write_all(out).await;
        res?;
        let mut out = Vec::new();
        let est = read_decoded(
            &mut rd,
            &mut buf,
            "proof",
            "closed during the handshake",
            |b| hs.on_proof(b, &mut out),
        )
        .await?;
        let (res, _) = wr.write_all(out).await;
        res?;
        Ok(est)
    };
    let est = match with_timeout(state.timeout_ms, "handshake", handshake).await {
        Ok(est) => est,
        Err(e) => {
            // Nothing more is sent: a peer without the key learns nothing.
            Counters::bump(&state.shared().counters.relay_connections_refused);
            warn!("relay connection from {addr} closed: handshake failed ({e})");
            return;
        }
    };
    debug!(
        "relay connection from {addr} (node {:016x})",
        est.peer_node_id
    );
    let (local_tx, local_rx) = flume::unbounded::<Vec<u8>>();
    let (relay_tx, relay_rx) = flume::unbounded::<(u64, Out)>();
    let served = Rc::new(ServedConn {
        peer_node_id: est.peer_node_id,
        local: local_tx,
        relay: relay_tx,
        owners: RefCell::new(HashMap::new()),
    });
    let mut sealer = est.sealer;
    let limits = state.limits;
    let writer = monoio::spawn(async move {
        let mut out = Vec::new();
        loop {
            out.clear();
            monoio::select! {
                m = local_rx.recv_async() => {
                    let Ok(frame) = m else { break };
                    if seal_local(&mut sealer, &frame, &limits, &mut out).is_err() {
                        break;
                    }
                }
                m = relay_rx.recv_async() => {
                    let Ok((id, o)) = m else { break };
                    if seal_out(&mut sealer, id, &o, &mut out).is_err() {
                        break;
                    }
                }
            }
            // Whatever else is ready goes in the same write (answers of a batch of copies: one
            // syscall, not one each).
            let mut sealed = Ok(());
            while sealed.is_ok() && out.len() < SERVED_WRITE_MAX {
                if let Ok(frame) = local_rx.try_recv() {
                    sealed = seal_local(&mut sealer, &frame, &limits, &mut out);
                } else if let Ok((id, o)) = relay_rx.try_recv() {
                    sealed = seal_out(&mut sealer, id, &o, &mut out);
                } else {
                    break;
                }
            }
            if sealed.is_err() {
                break;
            }
            let (res, back) = wr.write_all(std::mem::take(&mut out)).await;
            out = back;
            if res.is_err() {
                break;
            }
        }
    });
    let mut opener = est.opener;
    'conn: loop {
        let mut used_total = 0;
        loop {
            match opener.open(&buf[used_total..], &limits) {
                Ok((frame, used)) => {
                    used_total += used;
                    if !state.clone().on_relay_frame(&served, frame) {
                        warn!("relay peer {addr} sent a message that is not a request; closing");
                        break 'conn;
                    }
                }
                Err(DecodeError::Incomplete { .. }) => break,
                Err(DecodeError::Invalid(r)) => {
                    warn!("relay peer {addr} sent a bad frame ({r}); closing");
                    break 'conn;
                }
            }
        }
        buf.drain(..used_total);
        match read_more(&mut rd, &mut buf, 16 * 1024).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    info!("relay connection from {addr} closed");
    let clients: Vec<OwnerId> = served.owners.borrow_mut().drain().map(|(_, o)| o).collect();
    for o in clients {
        state.release_owner(o).await;
    }
    drop(served);
    // The writer ends once every handler of this connection has answered (or its write fails).
    drop(writer);
}
