//! One PHP worker's blocking connection to its local scd, on top of `scd_wire`.
//!
//! Why not `scd-client`: a PHP worker needs things a general client does not promise: a connect
//! timeout on Unix sockets too (a full listen backlog must not hang a page), a per-request
//! deadline (the lock wait plus the I/O timeout) that survives PHP's timer signals (EINTR), writes
//! that never raise SIGPIPE inside PHP, a cheap "is this connection still alive?" check before a
//! connection is reused by the next request, and knowing when a failed request may be repeated.
//! This file is that and nothing more: one request in flight, replies matched by request ID.

use std::fmt;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use scd_wire::constants::{BODY_OVERHEAD_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use scd_wire::local::Reply as WireReply;
use scd_wire::{DecodeError, ErrorCode, Frame, HelloOk, Limits, Request, SessionId, decode_reply};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::constants::{READ_CHUNK_MIN, SESSION_DATA_MAX};
use crate::settings::Endpoint;

/// What scd answered, owned (the wire's replies borrow the receive buffer).
pub enum Reply {
    Created(SessionId),
    /// The session's data; `token` is the lock (0 for a read without lock). `new_id`: the session
    /// has a new ID (it moved), which the client must use from now on.
    Data {
        token: u64,
        data: Vec<u8>,
        new_id: Option<SessionId>,
    },
    /// No such session; `token` is the lock taken on it (0 for a read without lock), `new_id`
    /// as in `Data`.
    NotFound {
        token: u64,
        new_id: Option<SessionId>,
    },
    Done,
    Exists(bool),
    /// An `Error` reply: the request was understood and refused.
    Refused(ErrorCode, String),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Created(id) => write!(f, "IdCreated({id})"),
            Reply::Data {
                token,
                data,
                new_id,
            } => write!(
                f,
                "Data(token {token}, {} bytes{})",
                data.len(),
                if new_id.is_some() { ", new ID" } else { "" }
            ),
            Reply::NotFound { token, new_id } => write!(
                f,
                "NotFound(token {token}{})",
                if new_id.is_some() { ", new ID" } else { "" }
            ),
            Reply::Done => write!(f, "Done"),
            Reply::Exists(e) => write!(f, "Existence({e})"),
            Reply::Refused(code, msg) => write!(f, "Error({code:?}, {msg:?})"),
        }
    }
}

/// Why a request got no reply. Every variant but `NotConnected` leaves the stream in an unknown
/// state, so the connection must be dropped.
#[derive(Debug)]
pub enum ConnError {
    NotConnected,
    Connect(io::Error),
    /// Hello was refused or answered with something else.
    Handshake(String),
    /// No (complete) reply within the deadline.
    TimedOut {
        ms: u32,
    },
    /// scd closed the connection.
    Closed,
    Io(io::Error),
    /// scd sent bytes that are not a valid reply to our request.
    Protocol(String),
}

impl ConnError {
    /// The request may never have reached a live daemon: the connection was already dead when
    /// it was reused (scd restarted since the previous request).
    pub fn is_stale_connection(&self) -> bool {
        match self {
            ConnError::Closed => true,
            ConnError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }

    pub fn breaks_connection(&self) -> bool {
        !matches!(self, ConnError::NotConnected)
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::NotConnected => write!(f, "not connected"),
            ConnError::Connect(e) if e.kind() == io::ErrorKind::WouldBlock => {
                write!(f, "its listen queue is full (scd overloaded)")
            }
            ConnError::Connect(e) if e.kind() == io::ErrorKind::TimedOut => {
                write!(f, "connect timed out")
            }
            ConnError::Connect(e) => write!(f, "{e}"),
            ConnError::Handshake(why) => write!(f, "handshake failed: {why}"),
            ConnError::TimedOut { ms } => write!(f, "no reply within {ms} ms"),
            ConnError::Closed => write!(f, "scd closed the connection"),
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

/// The connection of one PHP worker process.
pub struct Conn {
    endpoint: Endpoint,
    /// The process that opened it: after a fork the child must not share it.
    pid: u32,
    socket: Socket,
    hello: HelloOk,
    limits: Limits,
    io_timeout_ms: u32,
    next_request_id: u64,
    /// Received bytes; `rbuf[..filled]` is valid.
    rbuf: Vec<u8>,
    filled: usize,
    wbuf: Vec<u8>,
}

fn ms(d: u32) -> Duration {
    Duration::from_millis(u64::from(d))
}

impl Conn {
    /// Connects (within `connect_timeout_ms`) and says Hello (within `io_timeout_ms`).
    pub fn connect(
        endpoint: &Endpoint,
        connect_timeout_ms: u32,
        io_timeout_ms: u32,
    ) -> Result<Conn, ConnError> {
        let (domain, addr) = match endpoint {
            Endpoint::Unix(path) => (
                Domain::UNIX,
                SockAddr::unix(path).map_err(ConnError::Connect)?,
            ),
            Endpoint::Tcp(sock) => (Domain::for_address(*sock), SockAddr::from(*sock)),
        };
        // socket2 opens sockets close-on-exec: a program PHP runs does not inherit it.
        let socket = Socket::new(domain, Type::STREAM, None).map_err(ConnError::Connect)?;
        // A non-blocking connect bounded by the timeout; on a Unix socket whose backlog is full it
        // fails at once (EAGAIN) rather than blocking.
        socket
            .connect_timeout(&addr, ms(connect_timeout_ms))
            .map_err(ConnError::Connect)?;
        if matches!(endpoint, Endpoint::Tcp(_)) {
            // Requests are written whole; never wait for an ACK to send the next one.
            socket.set_nodelay(true).map_err(ConnError::Connect)?;
        }
        socket
            .set_write_timeout(Some(ms(io_timeout_ms)))
            .map_err(ConnError::Connect)?;
        let mut conn = Conn {
            endpoint: endpoint.clone(),
            pid: std::process::id(),
            socket,
            hello: HelloOk {
                version: 0,
                node: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                node_id: 0,
                data_max: 0,
                body_max: 0,
            },
            limits: Limits::default(),
            io_timeout_ms,
            next_request_id: 1,
            rbuf: Vec::new(),
            filled: 0,
            wbuf: Vec::with_capacity(4096),
        };
        conn.hello()?;
        Ok(conn)
    }

    fn hello(&mut self) -> Result<(), ConnError> {
        let name = format!(
            "cluster.so {} php {}",
            env!("CARGO_PKG_VERSION"),
            crate::build_info::BUILT_FOR_PHP
        );
        let name = &name[..name.len().min(scd_wire::constants::CLIENT_NAME_MAX)];
        let request = Request::Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            client_name: name,
        };
        let id = self.send(&request)?;
        let deadline = Instant::now() + ms(self.io_timeout_ms);
        let (frame, used) = self.receive(deadline, self.io_timeout_ms)?;
        let result = match frame {
            _ if frame.request_id != id => Err(ConnError::Protocol(format!(
                "reply to request {} while waiting for {id}",
                frame.request_id
            ))),
            WireFrame {
                message: WireReply::HelloOk(h),
                ..
            } => Ok(h),
            WireFrame {
                message: WireReply::Error { code, message },
                ..
            } => Err(ConnError::Handshake(format!("{code:?}: {message}"))),
            other => Err(ConnError::Handshake(format!(
                "unexpected reply kind {:?}",
                other.message
            ))),
        };
        self.consume(used);
        let h = result?;
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&h.version) {
            return Err(ConnError::Handshake(format!(
                "scd chose protocol version {}, this module speaks {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}",
                h.version
            )));
        }
        // Accept what this daemon accepts, but never more than the module's own bound: the
        // receive buffer grows up to body_max.
        let data_max = h.data_max.min(SESSION_DATA_MAX);
        let body_max = h.body_max.min(data_max.saturating_add(BODY_OVERHEAD_MAX));
        // Relay batches never reach a local client: no wider limit for them.
        self.limits = Limits {
            data_max,
            body_max,
            batch_body_max: body_max,
        };
        self.hello = h;
        Ok(())
    }

    /// False in a child forked after the connection was made (`pcntl_fork()`): the socket is
    /// shared with the parent, and only the parent may speak on it.
    pub fn owned_by_this_process(&self) -> bool {
        self.pid == std::process::id()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// This daemon's relay address (the node a session created here names as its master).
    pub fn node(&self) -> std::net::SocketAddr {
        self.hello.node
    }

    /// The largest session data this daemon accepts.
    pub fn data_max(&self) -> u32 {
        self.limits.data_max
    }

    /// One line for phpinfo.
    pub fn describe(&self) -> String {
        format!(
            "{} (scd node {}, node id {}, protocol v{}, session data up to {} bytes)",
            self.endpoint,
            self.hello.node,
            self.hello.node_id,
            self.hello.version,
            self.limits.data_max
        )
    }

    /// Whether the next request may use this connection: it belongs to this process, and scd has
    /// not closed it (nor sent anything unasked, which would leave a stale reply in the stream).
    /// One non-blocking peek, no round trip.
    pub fn is_reusable(&self) -> bool {
        if !self.owned_by_this_process() || self.filled != 0 {
            return false;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match self
            .socket
            .recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            // Ok(0): closed by scd; Ok(_): unasked bytes; Err: broken.
            _ => false,
        }
    }

    /// Encodes and sends one request; returns its request ID.
    fn send(&mut self, request: &Request<'_>) -> Result<u64, ConnError> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        self.wbuf.clear();
        Frame::new(id, *request).encode(&mut self.wbuf);
        let mut sent = 0;
        while sent < self.wbuf.len() {
            // MSG_NOSIGNAL: a closed peer must give EPIPE, not a SIGPIPE that kills the worker.
            match self
                .socket
                .send_with_flags(&self.wbuf[sent..], libc::MSG_NOSIGNAL)
            {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ConnError::TimedOut {
                        ms: self.io_timeout_ms,
                    });
                }
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        // A large write leaves a large buffer; do not keep it for every later small request.
        if self.wbuf.capacity() > 256 * 1024 {
            self.wbuf = Vec::with_capacity(4096);
        }
        Ok(id)
    }

    /// Reads until one whole reply frame is buffered, or the deadline passes.
    fn receive(
        &mut self,
        deadline: Instant,
        timeout_ms: u32,
    ) -> Result<(WireFrame<'_>, usize), ConnError> {
        loop {
            let needed = match decode_reply(&self.rbuf[..self.filled], &self.limits) {
                Ok(_) => break,
                Err(DecodeError::Incomplete { needed }) => needed,
                Err(DecodeError::Invalid(reason)) => {
                    return Err(ConnError::Protocol(format!("invalid reply: {reason}")));
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnError::TimedOut { ms: timeout_ms });
            }
            // `needed` is bounded: the decoder has checked the body length against the limits.
            let want = self.filled + needed.max(READ_CHUNK_MIN);
            if self.rbuf.len() < want {
                self.rbuf.resize(want, 0);
            }
            self.socket
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .map_err(ConnError::Io)?;
            match (&self.socket).read(&mut self.rbuf[self.filled..]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => self.filled += n,
                // PHP's timer signals interrupt a socket read that has a timeout (signal(7)).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        decode_reply(&self.rbuf[..self.filled], &self.limits)
            .map_err(|e| ConnError::Protocol(format!("invalid reply: {e}")))
    }

    /// Forgets the first `used` received bytes.
    fn consume(&mut self, used: usize) {
        self.rbuf.copy_within(used..self.filled, 0);
        self.filled -= used;
        if self.filled == 0 && self.rbuf.len() > 256 * 1024 {
            self.rbuf = Vec::new();
        }
    }

    /// Sends a request and waits up to `timeout_ms` for its reply.
    fn call(&mut self, request: Request<'_>, timeout_ms: u32) -> Result<Reply, ConnError> {
        let id = self.send(&request)?;
        let deadline = Instant::now() + ms(timeout_ms);
        let (frame, used) = self.receive(deadline, timeout_ms)?;
        let reply = if frame.request_id != id {
            Err(ConnError::Protocol(format!(
                "reply to request {} while waiting for {id}",
                frame.request_id
            )))
        } else {
            owned(frame.message)
        };
        self.consume(used);
        reply
    }

    pub fn create_id(&mut self, timeout_ms: u32) -> Result<Reply, ConnError> {
        let reply = self.call(Request::CreateId, timeout_ms)?;
        expect(reply, "CreateId", |r| matches!(r, Reply::Created(_)))
    }

    pub fn read_lock(
        &mut self,
        id: &SessionId,
        wait_ms: u32,
        lease_ms: u32,
        timeout_ms: u32,
    ) -> Result<Reply, ConnError> {
        let reply = self.call(
            Request::ReadLock {
                id: *id,
                wait_ms,
                lease_ms,
            },
            timeout_ms,
        )?;
        // A locked read must come back with a real lock.
        expect(
            reply,
            "ReadLock",
            |r| matches!(r, Reply::Data { token, .. } | Reply::NotFound { token, .. } if *token != 0),
        )
    }

    pub fn read(&mut self, id: &SessionId, timeout_ms: u32) -> Result<Reply, ConnError> {
        let reply = self.call(Request::Read { id: *id }, timeout_ms)?;
        expect(reply, "Read", |r| {
            matches!(
                r,
                Reply::Data { token: 0, .. } | Reply::NotFound { token: 0, .. }
            )
        })
    }

    pub fn write_unlock(
        &mut self,
        id: &SessionId,
        token: u64,
        lifetime_s: u32,
        data: &[u8],
        timeout_ms: u32,
    ) -> Result<Reply, ConnError> {
        let request = Request::WriteUnlock {
            id: *id,
            token,
            lifetime_s,
            data,
        };
        let reply = self.call(request, timeout_ms)?;
        expect(reply, "WriteUnlock", |r| matches!(r, Reply::Done))
    }

    pub fn touch(
        &mut self,
        id: &SessionId,
        token: u64,
        lifetime_s: u32,
        timeout_ms: u32,
    ) -> Result<Reply, ConnError> {
        let request = Request::Touch {
            id: *id,
            token,
            lifetime_s,
        };
        let reply = self.call(request, timeout_ms)?;
        expect(reply, "Touch", |r| matches!(r, Reply::Done))
    }

    pub fn unlock(
        &mut self,
        id: &SessionId,
        token: u64,
        timeout_ms: u32,
    ) -> Result<Reply, ConnError> {
        let reply = self.call(Request::Unlock { id: *id, token }, timeout_ms)?;
        expect(reply, "Unlock", |r| matches!(r, Reply::Done))
    }

    pub fn destroy(
        &mut self,
        id: &SessionId,
        token: u64,
        timeout_ms: u32,
    ) -> Result<Reply, ConnError> {
        let reply = self.call(Request::Destroy { id: *id, token }, timeout_ms)?;
        expect(reply, "Destroy", |r| matches!(r, Reply::Done))
    }

    pub fn exists(&mut self, id: &SessionId, timeout_ms: u32) -> Result<Reply, ConnError> {
        let reply = self.call(Request::Exists { id: *id }, timeout_ms)?;
        expect(reply, "Exists", |r| matches!(r, Reply::Exists(_)))
    }
}

type WireFrame<'a> = Frame<WireReply<'a>>;

/// The wire reply as an owned [`Reply`]. A new session ID (`new_id`, the session moved) is passed
/// on: the handler makes PHP use it and sends it to the client.
fn owned(reply: WireReply<'_>) -> Result<Reply, ConnError> {
    Ok(match reply {
        WireReply::IdCreated { id } => Reply::Created(id),
        WireReply::Data {
            token,
            data,
            new_id,
            ..
        } => Reply::Data {
            token,
            data: data.to_vec(),
            new_id,
        },
        WireReply::NotFound { token, new_id } => Reply::NotFound { token, new_id },
        WireReply::Done { .. } => Reply::Done,
        WireReply::Existence { exists } => Reply::Exists(exists),
        WireReply::Error { code, message } => Reply::Refused(code, message.to_string()),
        other => return Err(ConnError::Protocol(format!("unexpected reply {other:?}"))),
    })
}

/// An `Error` reply is always acceptable; anything else must be what the request asks for.
fn expect(reply: Reply, request: &str, ok: impl Fn(&Reply) -> bool) -> Result<Reply, ConnError> {
    if matches!(reply, Reply::Refused(..)) || ok(&reply) {
        Ok(reply)
    } else {
        Err(ConnError::Protocol(format!(
            "{request} answered with {reply:?}"
        )))
    }
}
