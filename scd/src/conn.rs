//! Client connections on the local endpoint (Unix socket or loopback TCP).
//!
//! Each connection has one **reader** task and one **writer** task. The reader owns the socket's
//! read half and a buffer; it never drops an in-flight read (the only way a read ends early is the
//! core's shutdown cancel, which hands the buffer back with whatever arrived). It decodes every
//! complete frame in the buffer (pipelining), routes each request to the shard that owns its
//! session (directly when the shard is on this core, over the owner core's bounded channel
//! otherwise), and stops reading while `requests_in_flight_max` requests await their replies.
//!
//! Every request gets exactly one reply through its `ReplyTo` (see `exec`), from whichever core
//! answers it; the writer gathers the replies that are ready and writes them in one go. When the
//! reader ends (EOF, error, bad frame, shutdown), the connection's locks are released on every
//! core at once; the writer ends after the last reply, and the socket closes.
//!
//! Memory per connection is bounded: the read buffer holds at most one frame (the decoder refuses
//! a body over the limit as soon as the header arrives), and at most `requests_in_flight_max`
//! replies wait for the writer.

use std::cell::Cell;
use std::io;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::{debug, warn};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Splitable};
use monoio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use scd_engine::{OwnerId, SessionKey, shard_for};
use scd_wire::constants::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use scd_wire::frame::{DecodeError, Frame, Header, Limits, Reason};
use scd_wire::local::{HelloOk, Reply, Request, decode_reply, decode_request, negotiate};

use scd_wire::session_id::SessionId;

use crate::answer::{Answer, ErrCode};
use crate::cluster::{ClusterMsg, CoreCopy};
use crate::constants;
use crate::core::{Core, CoreMsg, ShardRequest};
use crate::exec::{Op, ReplyTo};
use crate::notify::Notify;
use crate::proto;

/// An accepted connection on its way to the core that will serve it.
pub enum Handoff {
    Unix { fd: OwnedFd, peer: String },
    Tcp { fd: OwnedFd, peer: String },
}

/// Accepts Unix-socket clients until shutdown.
pub async fn accept_unix(core: Rc<Core>, listener: UnixListener) {
    while !core.stopping.get() {
        let accepted = listener.cancelable_accept(core.stop_handle()).await;
        if core.stopping.get() {
            break;
        }
        match accepted {
            Ok((stream, _)) => {
                let peer = match stream.peer_cred() {
                    Ok(c) => format!("unix pid {} uid {}", c.pid().unwrap_or(-1), c.uid()),
                    Err(_) => "unix peer".to_string(),
                };
                if !admit(&core, &peer) {
                    continue;
                }
                match pick_core(&core) {
                    None => {
                        monoio::spawn(serve(core.clone(), stream, peer));
                    }
                    Some(target) => {
                        let fd = crate::sys::owned_fd(stream.into_raw_fd());
                        hand_off(&core, target, Handoff::Unix { fd, peer }).await;
                    }
                }
            }
            Err(e) => accept_failed(&core, e).await,
        }
    }
}

/// Accepts loopback TCP clients until shutdown.
pub async fn accept_tcp(core: Rc<Core>, listener: TcpListener) {
    while !core.stopping.get() {
        let accepted = listener.cancelable_accept(core.stop_handle()).await;
        if core.stopping.get() {
            break;
        }
        match accepted {
            Ok((stream, addr)) => {
                let peer = format!("tcp {addr}");
                if !admit(&core, &peer) {
                    continue;
                }
                match pick_core(&core) {
                    None => {
                        // Replies are small and latency matters more than segment count.
                        let _ = stream.set_nodelay(true);
                        monoio::spawn(serve::<TcpStream>(core.clone(), stream, peer));
                    }
                    Some(target) => {
                        let fd = crate::sys::owned_fd(stream.into_raw_fd());
                        hand_off(&core, target, Handoff::Tcp { fd, peer }).await;
                    }
                }
            }
            Err(e) => accept_failed(&core, e).await,
        }
    }
}

/// The core that serves the next connection: round robin over all cores, whichever core
/// accepted it (the kernel does not spread accepts evenly over event loops waiting on one
/// socket). `None` means this core.
fn pick_core(core: &Core) -> Option<usize> {
    let target = core.node.next_core.fetch_add(1, Ordering::Relaxed) % core.cores();
    (target != core.index).then_some(target)
}

async fn hand_off(core: &Core, target: usize, handoff: Handoff) {
    if core.peers[target]
        .send_async(CoreMsg::Adopt(handoff))
        .await
        .is_err()
    {
        // The target core is gone (shutdown): the descriptor was dropped with the message.
        core.node.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts serving a connection another core accepted for this one.
pub fn adopt(core: &Rc<Core>, handoff: Handoff) {
    let served = match handoff {
        Handoff::Unix { fd, peer } => {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(std))
                .map(|s| {
                    monoio::spawn(serve(core.clone(), s, peer));
                })
        }
        Handoff::Tcp { fd, peer } => {
            let std = std::net::TcpStream::from(fd);
            let _ = std.set_nodelay(true);
            std.set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(std))
                .map(|s| {
                    monoio::spawn(serve::<TcpStream>(core.clone(), s, peer));
                })
        }
    };
    if let Err(e) = served {
        warn!("core {}: cannot take over a connection: {e}", core.index);
        core.node.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts the connection in, or refuses it (the stream is dropped, so closed) over the limit.
fn admit(core: &Core, peer: &str) -> bool {
    let max = core.node.settings.local.connections_max;
    let open = core.node.connections_open.fetch_add(1, Ordering::Relaxed);
    if open >= max {
        core.node.connections_open.fetch_sub(1, Ordering::Relaxed);
        core.counters
            .connections_refused
            .set(core.counters.connections_refused.get() + 1);
        warn!("refused {peer}: {open} connections open, local.connections_max is {max}");
        return false;
    }
    core.counters
        .connections_accepted
        .set(core.counters.connections_accepted.get() + 1);
    true
}

async fn accept_failed(core: &Core, e: io::Error) {
    warn!("core {}: accept failed: {e}", core.index);
    // Out of descriptors or memory: back off briefly instead of spinning on the same error.
    monoio::time::sleep(Duration::from_millis(10)).await;
}

/// Per-connection state shared by its reader and writer (same core, same thread).
struct Conn {
    owner: OwnerId,
    peer: String,
    in_flight: Cell<u32>,
    slot_free: Notify,
}

async fn serve<S>(core: Rc<Core>, stream: S, peer: String)
where
    S: Splitable + 'static,
    S::OwnedRead: CancelableAsyncReadRent + 'static,
    S::OwnedWrite: AsyncWriteRent + 'static,
{
    core.conns_open.set(core.conns_open.get() + 1);
    let conn = Rc::new(Conn {
        owner: core.next_owner(),
        peer,
        in_flight: Cell::new(0),
        slot_free: Notify::default(),
    });
    debug!("connection from {} (owner {:x})", conn.peer, conn.owner.0);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = flume::unbounded::<Vec<u8>>();
    let writer = monoio::spawn(write_loop(conn.clone(), rx, wr));
    read_loop(&core, &conn, rd, tx).await;
    // The connection is gone (or going): its locks go now, not after a lease. Queued lock waits of
    // this owner are answered with an error, so the writer sees its last reply.
    core.release_owner_everywhere(conn.owner).await;
    if let Some(c) = &core.node.cluster {
        // And the locks it took on other nodes through relays (the cluster thread knows them).
        let _ = c.tx.send_async(ClusterMsg::OwnerGone(conn.owner)).await;
    }
    writer.await;
    core.conns_open.set(core.conns_open.get() - 1);
    core.node.connections_open.fetch_sub(1, Ordering::Relaxed);
    core.conns_changed.notify();
    debug!("connection from {} closed", conn.peer);
}

/// Whether the reader goes on after a frame.
enum Next {
    Continue,
    Close,
}

async fn read_loop<R: CancelableAsyncReadRent>(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    mut rd: R,
    tx: flume::Sender<Vec<u8>>,
) {
    let limits = proto::limits(core.node.settings.storage.session_size_max);
    let in_flight_max = core.node.settings.local.requests_in_flight_max;
    let mut hello_done = false;
    let mut buf: Vec<u8> = Vec::with_capacity(constants::CONN_READ_BUFFER_INITIAL_BYTES);
    // Bytes still to discard of a frame refused as too large (its body is never buffered).
    let mut skip: usize = 0;
    'conn: loop {
        let mut needed = 0;
        if skip > 0 {
            let dropped = skip.min(buf.len());
            buf.drain(..dropped);
            skip -= dropped;
        }
        // Decode every complete frame already buffered.
        let mut pos = 0;
        while skip == 0 {
            if conn.in_flight.get() >= in_flight_max {
                conn.slot_free.notified().await;
                continue;
            }
            match decode_request(&buf[pos..], &limits) {
                Ok((frame, used)) => {
                    pos += used;
                    conn.in_flight.set(conn.in_flight.get() + 1);
                    let reply = ReplyTo::new(tx.clone(), frame.request_id);
                    let next = dispatch(core, conn, frame, reply, &mut hello_done).await;
                    if let Next::Close = next {
                        break 'conn;
                    }
                }
                Err(DecodeError::Incomplete { needed: n }) => {
                    needed = n;
                    break;
                }
                Err(DecodeError::Invalid(reason)) => {
                    if let Some(big) = too_large(&buf[pos..], reason) {
                        // A session over the limit: refuse it and skip its bytes; the
                        // connection stays usable and its buffer never holds the body.
                        warn!(
                            "refused a request carrying {} bytes from {}: over \
                             storage.session_size_max ({})",
                            big.size, conn.peer, limits.data_max
                        );
                        conn.in_flight.set(conn.in_flight.get() + 1);
                        ReplyTo::new(tx.clone(), big.request_id).send(Answer::error(
                            ErrCode::TooLarge,
                            format!(
                                "{} bytes is over the limit of {}",
                                big.size, limits.data_max
                            ),
                        ));
                        let here = big.frame_len.min(buf.len() - pos);
                        pos += here;
                        skip = big.frame_len - here;
                        continue;
                    }
                    core.counters
                        .protocol_errors
                        .set(core.counters.protocol_errors.get() + 1);
                    warn!(
                        "client protocol error from {}: {reason}; closing the connection",
                        conn.peer
                    );
                    // Answer under the frame's request ID when its header could be read.
                    let request_id = Header::decode(&buf[pos..], &limits)
                        .map(|h| h.request_id)
                        .unwrap_or(0);
                    conn.in_flight.set(conn.in_flight.get() + 1);
                    ReplyTo::new(tx.clone(), request_id).send(Answer::error(
                        ErrCode::BadRequest,
                        format!("invalid frame: {reason}"),
                    ));
                    break 'conn;
                }
            }
        }
        if pos > 0 {
            buf.drain(..pos);
        }
        if buf.is_empty() && buf.capacity() > constants::CONN_READ_BUFFER_SHRINK_BYTES {
            // A large session passed through; do not keep its buffer for an idle connection.
            buf = Vec::with_capacity(constants::CONN_READ_BUFFER_INITIAL_BYTES);
        }
        if core.stopping.get() {
            break;
        }
        // Room for at least the rest of the current frame (bounded by the decoder's limits).
        let want = needed.max(constants::CONN_READ_BUFFER_INITIAL_BYTES / 2);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = rd
            .cancelable_read(buf.slice_mut(len..cap), core.stop_handle())
            .await;
        buf = slice.into_inner();
        match res {
            Ok(0) => break,
            Ok(_) => {
                core.refresh_now();
            }
            Err(e) => {
                if !core.stopping.get() {
                    debug!("read from {} failed: {e}", conn.peer);
                }
                break;
            }
        }
    }
    drop(tx);
}

/// A request refused for its size rather than its form.
struct TooLarge {
    request_id: u64,
    frame_len: usize,
    size: u64,
}

/// Whether `reason` says only that the frame is too big (its header is otherwise sound): the
/// body length over the frame limit, or the session data over the data limit.
fn too_large(buf: &[u8], reason: Reason) -> Option<TooLarge> {
    let size = match reason {
        Reason::BodyTooLarge { len, .. } | Reason::DataTooLarge { len, .. } => u64::from(len),
        _ => return None,
    };
    // The header passed every check but the length; read it again without the length limit.
    let unlimited = Limits {
        body_max: u32::MAX,
        data_max: u32::MAX,
        batch_body_max: u32::MAX,
    };
    let header = Header::decode(buf, &unlimited).ok()?;
    Some(TooLarge {
        request_id: header.request_id,
        frame_len: header.frame_len(),
        size,
    })
}

/// Handles one request. Every path answers `reply` exactly once (or hands it on to a shard).
async fn dispatch(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    frame: Frame<Request<'_>>,
    reply: ReplyTo,
    hello_done: &mut bool,
) -> Next {
    core.counters.requests.set(core.counters.requests.get() + 1);
    let request = frame.message;
    if let Request::Hello {
        version_min,
        version_max,
        client_name,
    } = request
    {
        if *hello_done {
            reply.send(Answer::error(
                ErrCode::BadRequest,
                "Hello was already sent on this connection",
            ));
            return Next::Continue;
        }
        match negotiate(
            version_min,
            version_max,
            PROTOCOL_VERSION_MIN,
            PROTOCOL_VERSION_MAX,
        ) {
            Some(version) => {
                *hello_done = true;
                debug!(
                    "{} is {client_name:?}, protocol version {version}",
                    conn.peer
                );
                let limits: Limits = proto::limits(core.node.settings.storage.session_size_max);
                reply.send_frame(proto::encode_reply(
                    frame.request_id,
                    Reply::HelloOk(HelloOk {
                        version,
                        node: core.node.relay_addr,
                        node_id: core.node.node_id,
                        data_max: limits.data_max,
                        body_max: limits.body_max,
                    }),
                ));
                return Next::Continue;
            }
            None => {
                core.counters
                    .protocol_errors
                    .set(core.counters.protocol_errors.get() + 1);
                warn!(
                    "client {} ({client_name:?}) speaks protocol {version_min}..={version_max}, \
                     this daemon {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}; closing",
                    conn.peer
                );
                reply.send(Answer::error(
                    ErrCode::UnsupportedVersion,
                    "no protocol version in common",
                ));
                return Next::Close;
            }
        }
    }
    if !*hello_done {
        core.counters
            .protocol_errors
            .set(core.counters.protocol_errors.get() + 1);
        warn!(
            "client protocol error from {}: first frame is not Hello; closing",
            conn.peer
        );
        reply.send(Answer::error(
            ErrCode::BadRequest,
            "the first frame on a connection must be Hello",
        ));
        return Next::Close;
    }
    if core.node.settings.cluster.witness_only
        && !matches!(request, Request::Hello { .. } | Request::Stats)
    {
        // A witness holds no sessions: a PHP pointed at it is misconfigured, and told so.
        reply.send(Answer::error(
            ErrCode::BadRequest,
            crate::cluster::WITNESS_ONLY,
        ));
        return Next::Continue;
    }
    match request {
        Request::Hello { .. } => {}
        Request::CreateId => create_id(core, conn, reply).await,
        Request::Stats => {
            let c = core.clone();
            monoio::spawn(async move {
                let entries = crate::stats::gather(&c).await.wire_entries();
                let pairs: Vec<(&str, u64)> =
                    entries.iter().map(|(n, v)| (n.as_str(), *v)).collect();
                match scd_wire::local::StatEntries::new(&pairs) {
                    Ok(list) => {
                        let frame = proto::encode_reply(reply.request_id(), Reply::Stats(list));
                        reply.send_frame(frame)
                    }
                    Err(reason) => reply.send(Answer::error(
                        ErrCode::Internal,
                        format!("statistics: {reason}"),
                    )),
                }
            });
        }
        _ => {
            let locks = &core.node.settings.locks;
            if let Some((id, op)) = session_op(&request, locks.wait_max_ms, locks.lease_max_ms) {
                // Reads need no replication, nor writes with HA off. (With HA on, a write of a
                // session without a backup goes to the cluster thread too: it adds one.)
                let local_only = !core.node.settings.cluster.ha
                    || matches!(
                        op,
                        Op::ReadLock { .. } | Op::Read | Op::Exists | Op::Unlock { .. }
                    );
                match &core.node.cluster {
                    // A session this node plainly masters: served here.
                    Some(c) if local_only && c.serve_directly(core.node.relay_addr, &id) => {
                        // A ReadLock may wait in the lock queue longer than the lease it was
                        // admitted under: checked again when granted.
                        let reply = match (&op, id.backup) {
                            (Op::ReadLock { .. } | Op::Read | Op::Exists, Some(b)) => {
                                reply.with_grant_check(c.lease_check(b))
                            }
                            _ => reply,
                        };
                        route(core, conn, id.hash, op, reply).await
                    }
                    // With HA, a WriteUnlock of a session this node plainly masters, with a
                    // backup: served here too; only its copy goes to the cluster thread.
                    Some(c)
                        if matches!(op, Op::WriteUnlock { .. })
                            && id.backup.is_some()
                            && c.serve_directly(core.node.relay_addr, &id) =>
                    {
                        write_replicated(core, conn, c.tx.clone(), id, op, reply).await
                    }
                    // Clustering on: the cluster thread decides where the session is served.
                    Some(c) => {
                        let msg = ClusterMsg::Request {
                            id,
                            op: op.to_owned(),
                            owner: conn.owner,
                            reply,
                        };
                        if let Err(flume::SendError(ClusterMsg::Request { reply, .. })) =
                            c.tx.send_async(msg).await
                        {
                            reply.send(Answer::error(
                                ErrCode::Unavailable,
                                "the daemon is stopping",
                            ));
                        }
                    }
                    None => route(core, conn, id.hash, op, reply).await,
                }
            }
        }
    }
    Next::Continue
}

/// A session request as its ID and operation (lock waits and leases capped by the settings).
/// Also used for requests relayed from other nodes (`cluster::route`).
pub(crate) fn session_op<'a>(
    request: &Request<'a>,
    wait_max_ms: u32,
    lease_max_ms: u32,
) -> Option<(SessionId, Op<&'a [u8]>)> {
    Some(match *request {
        Request::ReadLock {
            id,
            wait_ms,
            lease_ms,
        } => (
            id,
            Op::ReadLock {
                wait_ms: wait_ms.min(wait_max_ms),
                // A lease of 0 would make the lock useless; the operator's maximum applies.
                lease_ms: if lease_ms == 0 {
                    lease_max_ms
                } else {
                    lease_ms.min(lease_max_ms)
                },
            },
        ),
        Request::Read { id } => (id, Op::Read),
        Request::WriteUnlock {
            id,
            token,
            lifetime_s,
            data,
        } => (
            id,
            Op::WriteUnlock {
                token,
                lifetime_s,
                data,
            },
        ),
        Request::Touch {
            id,
            token,
            lifetime_s,
        } => (id, Op::Touch { token, lifetime_s }),
        Request::Unlock { id, token } => (id, Op::Unlock { token }),
        Request::Destroy { id, token } => (id, Op::Destroy { token }),
        Request::Exists { id } => (id, Op::Exists),
        Request::Hello { .. } | Request::CreateId | Request::Stats => return None,
    })
}

/// Runs `op` on the shard that owns `hash`: here if this core owns it, else on its core.
async fn route(core: &Rc<Core>, conn: &Conn, hash: [u8; 16], op: Op<&[u8]>, reply: ReplyTo) {
    route_as(core, conn.owner, hash, op, reply).await
}

/// `route` for lock owner `owner` (also used after the request's reader moved on).
async fn route_as(core: &Rc<Core>, owner: OwnerId, hash: [u8; 16], op: Op<&[u8]>, reply: ReplyTo) {
    let key = SessionKey(hash);
    let shard = shard_for(&key, core.shard_count() as usize) as u32;
    let owner_core = core.owner_core(shard);
    if owner_core == core.index {
        core.execute_local(shard, key, owner, op, reply);
        return;
    }
    core.counters
        .cross_core
        .set(core.counters.cross_core.get() + 1);
    let msg = CoreMsg::Request(ShardRequest {
        shard,
        key,
        owner,
        op: op.to_owned(),
        reply,
    });
    // Bounded channel: a busy core pushes back on this reader, which stops reading meanwhile.
    if let Err(flume::SendError(CoreMsg::Request(r))) = core.peers[owner_core].send_async(msg).await
    {
        r.reply.send(Answer::error(
            ErrCode::Unavailable,
            "the daemon is stopping",
        ));
    }
}

/// With HA, a WriteUnlock of a session this node plainly masters and that has a backup: run
/// here like any write, and its copy handed to the cluster thread (`ClusterMsg::Copied`), which
/// sends it to the backup.
///
/// Write-through: the write runs as `Op::WriteHold` (the lock stays held, pinned); the copy
/// leaves once the shard applied the write, while its flush runs; the answer waits for both the
/// flush and the backup's acknowledgement (or the end of its repair), and only after the answer
/// is the lock released (`Op::Release` with the holder's token). So the next holder, and a
/// lockless Read, never read a write the backup does not hold. A write the shard refused leaves
/// the lock as it was (as WriteUnlock does). Until the Release the pin keeps the lock through a
/// closed connection, an ended lease and the holder's own Unlock; every applied write is
/// followed by its Release, whatever the copy's outcome (acknowledged, refused, failed flush,
/// daemon stopping), so no pin outlives its copy.
///
/// Delayed-write: a plain WriteUnlock; the copy is queued before the client is answered.
async fn write_replicated(
    core: &Rc<Core>,
    conn: &Conn,
    cluster: flume::Sender<ClusterMsg>,
    id: SessionId,
    op: Op<&[u8]>,
    reply: ReplyTo,
) {
    let Op::WriteUnlock {
        token,
        lifetime_s,
        data,
    } = op
    else {
        return;
    };
    let write_through = matches!(
        core.node.settings.storage.model,
        crate::settings::StorageModel::WriteThrough
    );
    let op = if write_through {
        Op::WriteHold {
            token,
            lifetime_s,
            data,
        }
    } else {
        op
    };
    let data = data.to_vec();
    let (tx, rx) = flume::bounded(1);
    let (applied_tx, applied_rx) = flume::bounded(1);
    let local = ReplyTo::with_applied(tx, reply.request_id(), applied_tx);
    route(core, conn, id.hash, op, local).await;
    let limits = proto::limits(core.node.settings.storage.session_size_max);
    let node = core.node.clone();
    let max = node.settings.cluster.replication_queue_max as usize;
    let core = core.clone();
    let owner = conn.owner;
    // The pinned lock's release, once the client has its answer (write-through only).
    // `failed`: the copy did not reach the backup, or the write is not durable here.
    let release = move |failed: bool| async move {
        if write_through {
            // Its answer tells nothing the client needs (the pin guarantees the lock is still
            // this write's).
            let (tx, _) = flume::bounded(1);
            route_as(
                &core,
                owner,
                id.hash,
                Op::Release { token, failed },
                ReplyTo::new(tx, 0),
            )
            .await;
        }
    };
    monoio::spawn(async move {
        let copied = |version, data, done| ClusterMsg::Copied {
            id,
            version,
            lifetime_s,
            data,
            done,
        };
        if let Ok(version) = applied_rx.recv_async().await {
            let (done_tx, done_rx) = flume::bounded(1);
            let _ = cluster
                .send_async(copied(version, data, Some(done_tx)))
                .await;
            let Ok(frame) = rx.recv_async().await else {
                return release(true).await;
            };
            let done = done_rx.recv_async().await;
            let flushed = matches!(
                decode_reply(&frame, &limits),
                Ok((
                    Frame {
                        message: Reply::Done { .. },
                        ..
                    },
                    _
                ))
            );
            let failed = !(flushed && matches!(done, Ok(None)));
            match done {
                Ok(Some(why)) if flushed => reply.send(Answer::error(ErrCode::Unavailable, why)),
                Err(_) if flushed => reply.send(Answer::error(
                    ErrCode::Unavailable,
                    "the daemon is stopping",
                )),
                _ => reply.send_frame(frame),
            }
            // Applied: the lock is released whatever the outcome (a failed flush, a refused or
            // unplaced copy), after the answer, as WriteUnlock would have released it.
            return release(failed).await;
        }
        let Ok(frame) = rx.recv_async().await else {
            return;
        };
        if let Ok((
            Frame {
                message: Reply::Done { version },
                ..
            },
            _,
        )) = decode_reply(&frame, &limits)
        {
            if !write_through {
                // Handed over without waking the cluster thread for each write; when `max`
                // copies wait already, sent as a message, and the answer waits for room.
                let copy = CoreCopy {
                    id,
                    version,
                    lifetime_s,
                    data,
                };
                let put = node.cluster.as_ref().map(|c| c.put_dw_copy(copy, max));
                match put {
                    Some(Ok(true)) => {
                        let _ = cluster.send_async(ClusterMsg::CopiesWaiting).await;
                    }
                    Some(Ok(false)) | None => {}
                    Some(Err(copy)) => {
                        let (done_tx, done_rx) = flume::bounded(1);
                        let _ = cluster
                            .send_async(copied(version, copy.data, Some(done_tx)))
                            .await;
                        let _ = done_rx.recv_async().await;
                    }
                }
            } else {
                // Answered without waiting for a flush (not expected under write-through): the
                // answer still waits for the copy, and the held lock is released after it.
                let (done_tx, done_rx) = flume::bounded(1);
                let _ = cluster
                    .send_async(copied(version, data, Some(done_tx)))
                    .await;
                let done = done_rx.recv_async().await;
                let failed = !matches!(done, Ok(None));
                match done {
                    Ok(None) => reply.send_frame(frame),
                    Ok(Some(why)) => reply.send(Answer::error(ErrCode::Unavailable, why)),
                    Err(_) => reply.send(Answer::error(
                        ErrCode::Unavailable,
                        "the daemon is stopping",
                    )),
                }
                return release(failed).await;
            }
        }
        // Refused (wrong token, too large, ...): the lock is as the write found it.
        reply.send_frame(frame);
    });
}

/// A fresh session ID with this node as master. The HASH is drawn from the OS's CSPRNG until it
/// falls on a shard of this core (no cross-core hop in the common case); the shard then checks
/// that no session or lock has that HASH before the ID is handed out.
async fn create_id(core: &Rc<Core>, conn: &Conn, reply: ReplyTo) {
    let shards = core.shard_count() as usize;
    let mut hash = [0u8; 16];
    for _ in 0..constants::CREATE_ID_TRIES_MAX {
        if let Err(e) = getrandom::fill(&mut hash) {
            reply.send(Answer::error(
                ErrCode::Internal,
                format!("no randomness from the OS: {e}"),
            ));
            return;
        }
        let shard = shard_for(&SessionKey(hash), shards) as u32;
        if core.owner_core(shard) == core.index {
            break;
        }
    }
    // With HA, the least-loaded live node is the new session's backup.
    let backup = match &core.node.cluster {
        Some(c) if core.node.settings.cluster.ha => c.choose_backup(core.node.relay_addr),
        _ => None,
    };
    // Either a local shard was found, or (a core without shards) the last draw goes to its owner.
    route(core, conn, hash, Op::Create { backup }, reply).await;
}

async fn write_loop<W: AsyncWriteRent>(conn: Rc<Conn>, rx: flume::Receiver<Vec<u8>>, mut wr: W) {
    let mut batch: Vec<u8> = Vec::new();
    let mut broken = false;
    while let Ok(first) = rx.recv_async().await {
        let mut count = 1u32;
        let out = match rx.try_recv() {
            // The common case, one reply: write its buffer as it is.
            Err(_) => first,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                count += 1;
                while batch.len() < constants::CONN_WRITE_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(more) => {
                            batch.extend_from_slice(&more);
                            count += 1;
                        }
                        Err(_) => break,
                    }
                }
                std::mem::take(&mut batch)
            }
        };
        conn.in_flight
            .set(conn.in_flight.get().saturating_sub(count));
        conn.slot_free.notify();
        if broken {
            continue;
        }
        let (res, buf) = wr.write_all(out).await;
        if let Err(e) = res {
            // Keep draining so the reader's in-flight count stays true; the reader sees the close.
            debug!("write to {} failed: {e}", conn.peer);
            broken = true;
        }
        if buf.capacity() <= constants::CONN_WRITE_BATCH_BYTES * 2 && batch.capacity() == 0 {
            batch = buf;
        }
    }
}
