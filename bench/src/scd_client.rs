//! A small blocking scd client (std sockets, one request at a time), for what is not load:
//! readiness probes, statistics, the failover drivers and the read-back after them. The load
//! generator ([`crate::load`]) has its own pipelined event-loop client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, bail};
use scd_wire::frame::Limits;
use scd_wire::local::{ErrorCode, Reply, Request, decode_reply};
use scd_wire::{DecodeError, Frame, SessionId};

use crate::constants::REPLY_BYTES_MAX;
use crate::load::Endpoint;

/// A reply, owned (the wire's borrows the read buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owned {
    HelloOk {
        node: std::net::SocketAddr,
    },
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
    Stats(Vec<(String, u64)>),
    Error {
        code: ErrorCode,
        message: String,
    },
    Other(String),
}

impl Owned {
    fn from(reply: &Reply<'_>) -> Owned {
        match reply {
            Reply::HelloOk(h) => Owned::HelloOk { node: h.node },
            Reply::IdCreated { id } => Owned::IdCreated(*id),
            Reply::Data {
                token,
                version,
                new_id,
                data,
            } => Owned::Data {
                token: *token,
                version: *version,
                new_id: *new_id,
                data: data.to_vec(),
            },
            Reply::NotFound { token, new_id } => Owned::NotFound {
                token: *token,
                new_id: *new_id,
            },
            Reply::Done { version } => Owned::Done { version: *version },
            Reply::Stats(entries) => {
                Owned::Stats(entries.iter().map(|(n, v)| (n.to_string(), v)).collect())
            }
            Reply::Error { code, message } => Owned::Error {
                code: *code,
                message: message.to_string(),
            },
            Reply::Existence { exists } => Owned::Other(format!("Existence({exists})")),
        }
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// One connection to an scd (or the null server), after Hello.
pub struct Client {
    stream: Box<dyn ReadWrite>,
    buf: Vec<u8>,
    next_id: u64,
    limits: Limits,
    /// The relay address the daemon named in HelloOk (where it "is" in the cluster).
    pub node: std::net::SocketAddr,
}

impl Client {
    /// Connects and says Hello. `timeout` bounds the connect and every later read and write.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> anyhow::Result<Client> {
        let stream: Box<dyn ReadWrite> = match endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)
                    .with_context(|| format!("connecting to {}", p.display()))?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Box::new(s)
            }
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout)
                    .with_context(|| format!("connecting to {a}"))?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        };
        let mut c = Client {
            stream,
            buf: Vec::with_capacity(8192),
            next_id: 1,
            limits: Limits::default(),
            node: "0.0.0.0:0".parse().expect("a valid address literal"),
        };
        match c.call(Request::Hello {
            version_min: 1,
            version_max: 1,
            client_name: "scd-bench",
        })? {
            Owned::HelloOk { node } => c.node = node,
            other => bail!("Hello answered {other:?}"),
        }
        Ok(c)
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, request: Request<'_>) -> anyhow::Result<Owned> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        Frame::new(id, request).encode(&mut out);
        self.stream.write_all(&out).context("write")?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match decode_reply(&self.buf, &self.limits) {
                Ok((frame, used)) => {
                    if frame.request_id != id {
                        bail!(
                            "reply to request {} while waiting for {id}",
                            frame.request_id
                        );
                    }
                    let owned = Owned::from(&frame.message);
                    self.buf.drain(..used);
                    return Ok(owned);
                }
                Err(DecodeError::Incomplete { .. }) => {}
                Err(e) => bail!("bad reply: {e}"),
            }
            if self.buf.len() > REPLY_BYTES_MAX {
                bail!("a reply larger than any session");
            }
            let n = loop {
                match self.stream.read(&mut chunk) {
                    // A signal to this process (e.g. a child stopping) is not the server's doing.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other.context("read")?,
                }
            };
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The daemon's statistics as named counters.
    pub fn stats(&mut self) -> anyhow::Result<Vec<(String, u64)>> {
        match self.call(Request::Stats)? {
            Owned::Stats(s) => Ok(s),
            other => bail!("Stats answered {other:?}"),
        }
    }
}

/// The value of one counter in a Stats answer.
pub fn stat(stats: &[(String, u64)], name: &str) -> Option<u64> {
    stats.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}
