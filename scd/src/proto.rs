//! The daemon's side of the local protocol (`scd_wire::local`): limits, and encoding answers into
//! reply frames. Decoding is `scd_wire::local::decode_request`, called by `conn`.

use std::net::SocketAddr;

use scd_wire::constants::{BODY_OVERHEAD_MAX, REPLICATE_BATCH_BYTES};
use scd_wire::frame::{Frame, Limits};
use scd_wire::local::{ErrorCode, Reply};
use scd_wire::session_id::SessionId;

use crate::answer::{Answer, ErrCode};

/// The frame limits for a daemon that accepts sessions of up to `session_size_max` bytes. A
/// ReplicateBatch (relays only) may hold `REPLICATE_BATCH_BYTES` of copies plus one largest body,
/// so the copy that crosses a sender's byte budget still fits.
pub fn limits(session_size_max: u32) -> Limits {
    let body_max = session_size_max.saturating_add(BODY_OVERHEAD_MAX);
    Limits {
        body_max,
        data_max: session_size_max,
        batch_body_max: body_max.saturating_add(REPLICATE_BATCH_BYTES),
    }
}

pub fn wire_code(code: ErrCode) -> ErrorCode {
    match code {
        ErrCode::BadRequest => ErrorCode::BadRequest,
        ErrCode::NotLocked => ErrorCode::NotLocked,
        ErrCode::TooLarge => ErrorCode::TooLarge,
        ErrCode::LockTimeout => ErrorCode::LockTimeout,
        ErrCode::Storage => ErrorCode::Storage,
        ErrCode::Unavailable => ErrorCode::Unavailable,
        ErrCode::UnsupportedVersion => ErrorCode::UnsupportedVersion,
        ErrCode::NotFound => ErrorCode::NotFound,
        ErrCode::Internal => ErrorCode::Internal,
        ErrCode::Overloaded => ErrorCode::Overloaded,
    }
}

/// Appends the reply frame for `answer` to `out`.
pub fn encode_answer(request_id: u64, answer: &Answer<'_>, out: &mut Vec<u8>) {
    let reply = match answer {
        Answer::Data {
            token,
            version,
            data,
        } => Reply::Data {
            token: *token,
            version: *version,
            new_id: None,
            data,
        },
        Answer::NotFound { token } => Reply::NotFound {
            token: *token,
            new_id: None,
        },
        Answer::Done { version } => Reply::Done { version: *version },
        Answer::Existence(exists) => Reply::Existence { exists: *exists },
        Answer::Error { code, message } => Reply::Error {
            code: wire_code(*code),
            message,
        },
        Answer::IdCreated {
            master,
            backup,
            hash,
        } => {
            // Placement epoch 1 for a session's first home.
            Reply::IdCreated {
                id: SessionId::new(*master, *backup, 1, *hash),
            }
        }
    };
    Frame::new(request_id, reply).encode(out);
}

/// A reply frame as its own buffer.
pub fn encode_reply(request_id: u64, reply: Reply<'_>) -> Vec<u8> {
    let frame = Frame::new(request_id, reply);
    let mut out = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut out);
    out
}

/// The ID of a session created on this node: this node as master, no backup yet, version 1.
pub fn new_session_id(master: SocketAddr, hash: [u8; 16]) -> SessionId {
    SessionId::new(master, None, 1, hash)
}
