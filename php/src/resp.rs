//! A minimal blocking Redis client (RESP2), for reading phpredis' sessions during the migration
//! window: no PHP extension is needed at run time. One command at a time; every length from the
//! server is checked before anything is allocated from it.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::constants::{RESP_LINE_MAX, SESSION_DATA_MAX};

/// Where Redis listens: phpredis' `tcp://HOST:PORT` (or `HOST:PORT`) or `unix:///path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespAddr {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl fmt::Display for RespAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespAddr::Tcp(h, p) => write!(f, "tcp://{h}:{p}"),
            RespAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl RespAddr {
    pub fn parse(text: &str) -> Result<RespAddr, &'static str> {
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
        {
            if !path.starts_with('/') || path.contains('\0') {
                return Err("the Redis socket path must be absolute");
            }
            return Ok(RespAddr::Unix(PathBuf::from(path)));
        }
        let hp = text.strip_prefix("tcp://").unwrap_or(text);
        let (host, port) = hp
            .rsplit_once(':')
            .ok_or("expected tcp://HOST:PORT for Redis")?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("expected a Redis port from 1 to 65535")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("expected tcp://HOST:PORT for Redis");
        }
        Ok(RespAddr::Tcp(host.to_string(), port))
    }
}

/// A Redis reply.
#[derive(Debug, PartialEq, Eq)]
pub enum RespValue {
    Simple(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    /// Arrays are not needed by the commands sent; their elements are skipped.
    Array(usize),
    Error(String),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Resp {
    r: BufReader<Stream>,
    bulk_max: usize,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Resp {
    pub fn connect(addr: &RespAddr, timeout_ms: u32) -> io::Result<Resp> {
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let t = Some(timeout);
        let stream = match addr {
            RespAddr::Tcp(host, port) => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs()?.collect();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            RespAddr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
                Stream::Unix(s)
            }
        };
        Ok(Resp {
            r: BufReader::new(stream),
            bulk_max: RESP_LINE_MAX,
        })
    }

    #[cfg(test)]
    fn over(stream: UnixStream) -> Resp {
        Resp {
            r: BufReader::new(Stream::Unix(stream)),
            bulk_max: RESP_LINE_MAX,
        }
    }

    /// The largest bulk string accepted in the next replies (session data may be large).
    pub fn set_bulk_max(&mut self, max: usize) {
        self.bulk_max = max.min(SESSION_DATA_MAX as usize);
    }

    /// Sends one command and reads its reply. An error reply comes back as `RespValue::Error`.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<RespValue> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        // A socket write cannot raise SIGPIPE here: PHP ignores SIGPIPE, and Rust's std sets
        // MSG_NOSIGNAL for TCP; a Unix socket's EPIPE comes back as an error.
        self.r.get_mut().write_all(&out)?;
        self.reply()
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.r)
            .take(RESP_LINE_MAX as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(bad("a Redis reply line is too long or not terminated"));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| bad("a Redis reply line is not UTF-8"))
    }

    fn reply(&mut self) -> io::Result<RespValue> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(RespValue::Simple(rest.to_string())),
            "-" => Ok(RespValue::Error(rest.to_string())),
            ":" => rest
                .parse()
                .map(RespValue::Int)
                .map_err(|_| bad("bad Redis integer")),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad("bad Redis bulk length"))?;
                if n < 0 {
                    return Ok(RespValue::Nil);
                }
                let n = usize::try_from(n).map_err(|_| bad("bad Redis bulk length"))?;
                if n > self.bulk_max {
                    return Err(bad("a Redis value is larger than scd accepts"));
                }
                let mut buf = vec![0u8; n + 2];
                self.r.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(bad("a Redis bulk string is not terminated"));
                }
                buf.truncate(n);
                Ok(RespValue::Bulk(buf))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad("bad Redis array length"))?;
                if n < 0 {
                    return Ok(RespValue::Nil);
                }
                let n = usize::try_from(n).map_err(|_| bad("bad Redis array length"))?;
                if n > 1024 {
                    return Err(bad("a Redis array is too long"));
                }
                for _ in 0..n {
                    self.reply()?;
                }
                Ok(RespValue::Array(n))
            }
            _ => Err(bad("not a Redis reply")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one command against a "server" that answers `reply`; returns what the client made of
    /// it and what the server received.
    fn exchange(reply: &'static [u8], bulk_max: usize) -> (io::Result<RespValue>, Vec<u8>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut got = vec![0u8; 64];
            let n = b.read(&mut got).unwrap();
            got.truncate(n);
            b.write_all(reply).unwrap();
            got
        });
        let mut c = Resp::over(a);
        c.set_bulk_max(bulk_max);
        let v = c.call(&[b"GET", b"k"]);
        (v, server.join().unwrap())
    }

    #[test]
    fn replies_are_parsed_and_checked() {
        let (v, sent) = exchange(b"$3\r\nabc\r\n", 10);
        assert_eq!(sent, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(v.unwrap(), RespValue::Bulk(b"abc".to_vec()));
        assert_eq!(exchange(b"$-1\r\n", 10).0.unwrap(), RespValue::Nil);
        assert_eq!(
            exchange(b"+OK\r\n", 10).0.unwrap(),
            RespValue::Simple("OK".into())
        );
        assert_eq!(exchange(b":42\r\n", 10).0.unwrap(), RespValue::Int(42));
        assert_eq!(
            exchange(b"-ERR no\r\n", 10).0.unwrap(),
            RespValue::Error("ERR no".into())
        );
        assert_eq!(
            exchange(b"*2\r\n:1\r\n$1\r\nx\r\n", 10).0.unwrap(),
            RespValue::Array(2)
        );
        // Refused before anything is allocated from the length: larger than allowed, absurd,
        // negative garbage, unterminated, unknown type, closed early.
        for bad in [
            &b"$11\r\nabcdefghijk\r\n"[..],
            b"$99999999999999999999\r\n",
            b"$x\r\n",
            b"$3\r\nabcX\n",
            b"*9999999\r\n",
            b"?what\r\n",
            b":12",
            b"",
        ] {
            let bad: &'static [u8] = bad;
            assert!(exchange(bad, 10).0.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            RespAddr::parse("tcp://127.0.0.1:6379"),
            Ok(RespAddr::Tcp("127.0.0.1".into(), 6379))
        );
        assert_eq!(
            RespAddr::parse("redis.local:6380"),
            Ok(RespAddr::Tcp("redis.local".into(), 6380))
        );
        assert_eq!(
            RespAddr::parse("tcp://[::1]:6379"),
            Ok(RespAddr::Tcp("::1".into(), 6379))
        );
        assert_eq!(
            RespAddr::parse("unix:///run/redis.sock"),
            Ok(RespAddr::Unix("/run/redis.sock".into()))
        );
        assert!(RespAddr::parse("tcp://127.0.0.1").is_err());
        assert!(RespAddr::parse("tcp://127.0.0.1:0").is_err());
        assert!(RespAddr::parse("unix:rel.sock").is_err());
    }
}
