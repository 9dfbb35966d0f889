//! A small blocking client for the SCD daemon's local protocol (docs/wire.md), over std sockets.
//!
//! # Layout
//!
//! - [`Client`]: one connection (Unix socket or loopback TCP), opened with `Hello`. One method per
//!   request that sends it and waits for its reply ([`Client::read_lock`], [`Client::write_unlock`],
//!   …), and [`Client::send`] / [`Client::recv`] to pipeline many requests on the connection.
//! - [`OwnedReply`]: a reply that owns its bytes.
//! - [`ClientError`]: I/O, a frame the client cannot decode, an error reply from the daemon, or a
//!   reply of an unexpected kind.
//!
//! Used by the daemon's tests, `scd stats`, and the benchmarks.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scd_wire::constants::{HEADER_LEN, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
pub use scd_wire::frame::Limits;
use scd_wire::frame::{DecodeError, Frame};
use scd_wire::local::decode_reply;
pub use scd_wire::local::{ErrorCode, HelloOk, Reply, Request};
pub use scd_wire::session_id::SessionId;

/// Size of the receive buffer; a larger reply grows it.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// What went wrong with a request.
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed (or a timeout set with [`Client::set_timeout`] ran out).
    Io(io::Error),
    /// The daemon closed the connection.
    Closed,
    /// The daemon sent bytes this client cannot decode.
    Decode(DecodeError),
    /// The daemon answered with an error.
    Server { code: ErrorCode, message: String },
    /// A reply of a kind that does not answer the request (or for another request ID).
    Unexpected(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::Closed => write!(f, "the daemon closed the connection"),
            ClientError::Decode(e) => write!(f, "cannot decode the reply: {e}"),
            ClientError::Server { code, message } => write!(f, "daemon error {code}: {message}"),
            ClientError::Unexpected(what) => write!(f, "unexpected reply: {what}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The daemon's error code, when the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A reply that owns its bytes (the wire's [`Reply`] borrows from the read buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedReply {
    HelloOk(HelloOk),
    IdCreated(SessionId),
    Data {
        token: u64,
        version: u64,
        new_id: Option<SessionId>,
        data: Vec<u8>,
    },
    NotFound {
        token: u64,
        new_id: Option<SessionId>,
    },
    Done {
        version: u64,
    },
    Existence(bool),
    Stats(Vec<(String, u64)>),
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl OwnedReply {
    /// Copies a borrowed reply.
    pub fn from_wire(r: &Reply<'_>) -> OwnedReply {
        match *r {
            Reply::HelloOk(h) => OwnedReply::HelloOk(h),
            Reply::IdCreated { id } => OwnedReply::IdCreated(id),
            Reply::Data {
                token,
                version,
                new_id,
                data,
            } => OwnedReply::Data {
                token,
                version,
                new_id,
                data: data.to_vec(),
            },
            Reply::NotFound { token, new_id } => OwnedReply::NotFound { token, new_id },
            Reply::Done { version } => OwnedReply::Done { version },
            Reply::Existence { exists } => OwnedReply::Existence(exists),
            Reply::Stats(entries) => {
                OwnedReply::Stats(entries.iter().map(|(n, v)| (n.to_string(), v)).collect())
            }
            Reply::Error { code, message } => OwnedReply::Error {
                code,
                message: message.to_string(),
            },
        }
    }

    fn into_result(self) -> Result<OwnedReply, ClientError> {
        match self {
            OwnedReply::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Ok(other),
        }
    }
}

/// What `read_lock` and `read` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The lock token (0 for `read`, which takes no lock).
    pub token: u64,
    /// The session data, or `None` when the session does not exist.
    pub data: Option<Vec<u8>>,
    /// The data version (0 when not found).
    pub version: u64,
    /// Set when the daemon says the session moved to a new ID.
    pub new_id: Option<SessionId>,
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

/// One connection to the daemon.
pub struct Client {
    stream: Stream,
    /// Received bytes: `inbuf[in_start..in_end]` is not yet decoded (a reply may arrive in
    /// pieces, or several at once). The buffer stays allocated and zeroed between reads.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    outbuf: Vec<u8>,
    next_request_id: u64,
    limits: Limits,
    hello: HelloOk,
}

impl Client {
    /// Connects and says Hello.
    pub fn connect(endpoint: &Endpoint) -> Result<Client, ClientError> {
        Client::connect_named(endpoint, "scd-client")
    }

    /// Connects and says Hello with this client name (for the daemon's logs).
    pub fn connect_named(endpoint: &Endpoint, name: &str) -> Result<Client, ClientError> {
        let stream = match endpoint {
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        Client::handshake(stream, name)
    }

    /// Connects within `timeout`, says Hello, and keeps `timeout` as the bound of every later
    /// read and write (tools that must not hang on a dead or stopped daemon).
    pub fn connect_timeout(
        endpoint: &Endpoint,
        name: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream = match endpoint {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Stream::Unix(s)
            }
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        Client::handshake(stream, name)
    }

    pub fn connect_unix(path: &Path) -> Result<Client, ClientError> {
        Client::connect(&Endpoint::Unix(path.to_path_buf()))
    }

    pub fn connect_tcp(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::connect(&Endpoint::Tcp(addr))
    }

    fn handshake(stream: Stream, name: &str) -> Result<Client, ClientError> {
        let mut c = Client {
            stream,
            inbuf: vec![0; READ_BUFFER_BYTES],
            in_start: 0,
            in_end: 0,
            outbuf: Vec::with_capacity(1024),
            next_request_id: 1,
            // Until the daemon says otherwise, accept replies up to the protocol's defaults.
            limits: Limits::default(),
            hello: HelloOk {
                version: 0,
                node: SocketAddr::from(([0, 0, 0, 0], 0)),
                node_id: 0,
                data_max: 0,
                body_max: 0,
            },
        };
        let reply = c.call(Request::Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            client_name: name,
        })?;
        match reply {
            OwnedReply::HelloOk(h) => {
                // Relay batches never reach a local client: no wider limit for them.
                c.limits = Limits {
                    body_max: h.body_max,
                    data_max: h.data_max,
                    batch_body_max: h.body_max,
                };
                c.hello = h;
                Ok(c)
            }
            other => Err(ClientError::Unexpected(format!("{other:?} to Hello"))),
        }
    }

    /// What the daemon said in its HelloOk: version, node address and ID, limits.
    pub fn server(&self) -> &HelloOk {
        &self.hello
    }

    /// A read/write timeout for every later call (`None`: wait for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.stream {
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    /// Sends a request without waiting for its reply; returns its request ID. Replies come back
    /// through [`Client::recv`], possibly out of order (a read waiting for a lock is answered after
    /// later requests).
    pub fn send(&mut self, request: Request<'_>) -> Result<u64, ClientError> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        self.outbuf.clear();
        Frame::new(id, request).encode(&mut self.outbuf);
        self.stream.write_all(&self.outbuf)?;
        Ok(id)
    }

    /// Sends raw bytes (tests of the daemon's handling of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Waits for the next reply: its request ID and the reply.
    pub fn recv(&mut self) -> Result<(u64, OwnedReply), ClientError> {
        loop {
            let mut needed = HEADER_LEN;
            if self.in_end > self.in_start {
                match decode_reply(&self.inbuf[self.in_start..self.in_end], &self.limits) {
                    Ok((frame, used)) => {
                        let out = (frame.request_id, OwnedReply::from_wire(&frame.message));
                        self.in_start += used;
                        if self.in_start == self.in_end {
                            self.in_start = 0;
                            self.in_end = 0;
                        }
                        return Ok(out);
                    }
                    Err(DecodeError::Incomplete { needed: n }) => needed = n,
                    Err(e @ DecodeError::Invalid(_)) => return Err(ClientError::Decode(e)),
                }
            }
            // Room for at least the rest of the frame: move the partial frame to the front, and
            // grow the (already zeroed) buffer only when a frame is larger than it.
            if self.in_start > 0 {
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            let want = self.in_end + needed;
            if want > self.inbuf.len() {
                self.inbuf.resize(want.max(READ_BUFFER_BYTES), 0);
            }
            let n = loop {
                match self.stream.read(&mut self.inbuf[self.in_end..]) {
                    // A signal to this process (e.g. a child stopping) is not the daemon's doing.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.in_end += n;
        }
    }

    /// Sends a request and waits for its reply (an error reply is returned as it is, not as Err).
    pub fn call(&mut self, request: Request<'_>) -> Result<OwnedReply, ClientError> {
        let id = self.send(request)?;
        let (got, reply) = self.recv()?;
        if got != id {
            return Err(ClientError::Unexpected(format!(
                "reply for request {got}, expected {id}"
            )));
        }
        Ok(reply)
    }

    /// A fresh session ID from the daemon (this node as master).
    pub fn create_id(&mut self) -> Result<SessionId, ClientError> {
        match self.call(Request::CreateId)?.into_result()? {
            OwnedReply::IdCreated(id) => Ok(id),
            other => Err(ClientError::Unexpected(format!("{other:?} to CreateId"))),
        }
    }

    /// Reads the session and takes its lock (also when it does not exist yet).
    pub fn read_lock(
        &mut self,
        id: &SessionId,
        wait_ms: u32,
        lease_ms: u32,
    ) -> Result<ReadResult, ClientError> {
        let reply = self
            .call(Request::ReadLock {
                id: *id,
                wait_ms,
                lease_ms,
            })?
            .into_result()?;
        read_result(reply, "ReadLock")
    }

    /// Reads the session without locking it.
    pub fn read(&mut self, id: &SessionId) -> Result<ReadResult, ClientError> {
        let reply = self.call(Request::Read { id: *id })?.into_result()?;
        read_result(reply, "Read")
    }

    /// Stores the data and releases the lock; returns the new data version.
    pub fn write_unlock(
        &mut self,
        id: &SessionId,
        token: u64,
        lifetime_s: u32,
        data: &[u8],
    ) -> Result<u64, ClientError> {
        let reply = self.call(Request::WriteUnlock {
            id: *id,
            token,
            lifetime_s,
            data,
        })?;
        done(reply, "WriteUnlock")
    }

    /// Renews the lifetime, keeps the data, releases the lock.
    pub fn touch(
        &mut self,
        id: &SessionId,
        token: u64,
        lifetime_s: u32,
    ) -> Result<u64, ClientError> {
        done(
            self.call(Request::Touch {
                id: *id,
                token,
                lifetime_s,
            })?,
            "Touch",
        )
    }

    /// Releases the lock without writing.
    pub fn unlock(&mut self, id: &SessionId, token: u64) -> Result<u64, ClientError> {
        done(self.call(Request::Unlock { id: *id, token })?, "Unlock")
    }

    /// Deletes the session (`token` 0 when no lock is held).
    pub fn destroy(&mut self, id: &SessionId, token: u64) -> Result<(), ClientError> {
        done(self.call(Request::Destroy { id: *id, token })?, "Destroy").map(|_| ())
    }

    /// Whether the session exists (PHP's validate_sid).
    pub fn exists(&mut self, id: &SessionId) -> Result<bool, ClientError> {
        match self.call(Request::Exists { id: *id })?.into_result()? {
            OwnedReply::Existence(e) => Ok(e),
            other => Err(ClientError::Unexpected(format!("{other:?} to Exists"))),
        }
    }

    /// The daemon's statistics as `(name, value)` pairs.
    pub fn stats(&mut self) -> Result<Vec<(String, u64)>, ClientError> {
        match self.call(Request::Stats)?.into_result()? {
            OwnedReply::Stats(entries) => Ok(entries),
            other => Err(ClientError::Unexpected(format!("{other:?} to Stats"))),
        }
    }
}

fn read_result(reply: OwnedReply, what: &str) -> Result<ReadResult, ClientError> {
    match reply {
        OwnedReply::Data {
            token,
            version,
            new_id,
            data,
        } => Ok(ReadResult {
            token,
            data: Some(data),
            version,
            new_id,
        }),
        OwnedReply::NotFound { token, new_id } => Ok(ReadResult {
            token,
            data: None,
            version: 0,
            new_id,
        }),
        other => Err(ClientError::Unexpected(format!("{other:?} to {what}"))),
    }
}

fn done(reply: OwnedReply, what: &str) -> Result<u64, ClientError> {
    match reply.into_result()? {
        OwnedReply::Done { version } => Ok(version),
        other => Err(ClientError::Unexpected(format!("{other:?} to {what}"))),
    }
}
