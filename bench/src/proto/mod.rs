//! The three wire protocols the generator speaks, each parsed without copying from the
//! connection's read buffer: scd's own frames (through `scd_wire`), RESP2 (Redis) and memcached's
//! binary protocol. Encoders append to the connection's output buffer.

pub mod memcache;
pub mod resp;

use scd_wire::frame::{DecodeError, Limits};
use scd_wire::local::{Reply, decode_reply};

/// The result of parsing one reply from the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// A reply and the bytes it used.
    Done(T, usize),
    /// More bytes are needed; nothing is wrong yet.
    Incomplete,
    /// The bytes can never become a valid reply: the connection is unusable.
    Invalid(String),
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Scd,
    Resp,
    Memcache,
}

/// One reply of any protocol.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// An scd reply and the request ID it answers (replies may come out of order).
    Scd(u64, Reply<'a>),
    /// A Redis reply (in order).
    Resp(resp::Value<'a>),
    /// A memcached response (in order).
    Memcache(memcache::Response<'a>),
}

/// Parses the next reply of `wire` from the start of `buf`.
pub fn parse<'a>(wire: Wire, buf: &'a [u8], limits: &Limits) -> Parse<Answer<'a>> {
    let len_max = limits.body_max as usize;
    match wire {
        Wire::Scd => match decode_reply(buf, limits) {
            Ok((frame, used)) => Parse::Done(Answer::Scd(frame.request_id, frame.message), used),
            Err(DecodeError::Incomplete { .. }) => Parse::Incomplete,
            Err(DecodeError::Invalid(reason)) => Parse::Invalid(format!("scd reply: {reason}")),
        },
        Wire::Resp => match resp::parse(buf, len_max) {
            Parse::Done(v, n) => Parse::Done(Answer::Resp(v), n),
            Parse::Incomplete => Parse::Incomplete,
            Parse::Invalid(e) => Parse::Invalid(e),
        },
        Wire::Memcache => match memcache::parse(buf, len_max) {
            Parse::Done(v, n) => Parse::Done(Answer::Memcache(v), n),
            Parse::Incomplete => Parse::Incomplete,
            Parse::Invalid(e) => Parse::Invalid(e),
        },
    }
}
