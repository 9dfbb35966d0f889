//! A relay connection made with the right cluster key under a node ID no heartbeat ever named:
//! what a key holder outside the cluster can send a node (tests of the relay's checks).

use std::io::{Read, Write};
use std::net::TcpStream;

use scd_wire::constants::NONCE_LEN;
use scd_wire::local::ErrorCode;
use scd_wire::{
    ClientHandshake, ClusterKey, DecodeError, Frame, Limits, Opener, RelayMessage, Sealer,
};

use super::{Cluster, READY_WAIT};

/// Reads from `s` into `buf` until `decode` gets something out of it; drops the bytes it used.
pub fn read_until<T>(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut decode: impl FnMut(&[u8]) -> Result<(T, usize), DecodeError>,
) -> T {
    loop {
        match decode(buf) {
            Ok((v, used)) => {
                buf.drain(..used);
                return v;
            }
            Err(DecodeError::Incomplete { .. }) => {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "the node closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) => panic!("undecodable answer: {e:?}"),
        }
    }
}

/// An authenticated relay connection to one node of a [`Cluster`], as node `node_id`.
pub struct KeyHolder {
    /// The connection (read timeout: `READY_WAIT`).
    pub s: TcpStream,
    buf: Vec<u8>,
    sealer: Sealer,
    opener: Opener,
    next: u64,
}

impl KeyHolder {
    /// Connects to node `node` with the cluster's key and runs the handshake.
    pub fn connect(c: &Cluster, node: usize, node_id: u64) -> KeyHolder {
        // The key file's bytes are the secret (as the daemon reads it).
        let secret = std::fs::read(c.key_dir.path().join("cluster.key")).unwrap();
        let key = ClusterKey::from_secret(secret.trim_ascii_end()).unwrap();
        let mut s = TcpStream::connect(c.relay(node)).unwrap();
        s.set_read_timeout(Some(READY_WAIT)).unwrap();
        let mut hs = ClientHandshake::new(&key, node_id, [7u8; NONCE_LEN]);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        read_until(&mut s, &mut buf, |b| {
            hs.on_challenge(b, &mut out).map(|used| ((), used))
        });
        s.write_all(&out).unwrap();
        let est = read_until(&mut s, &mut buf, |b| hs.on_accept(b));
        KeyHolder {
            s,
            buf,
            sealer: est.sealer,
            opener: est.opener,
            next: 1,
        }
    }

    /// Seals and sends `message` (request IDs 1, 2, ...).
    pub fn send(&mut self, message: RelayMessage<'_>) {
        let mut wire = Vec::new();
        self.sealer
            .seal(&Frame::new(self.next, message), &mut wire)
            .unwrap();
        self.next += 1;
        self.s.write_all(&wire).unwrap();
    }

    /// The next answer, as `read` makes of it.
    pub fn answer<T>(&mut self, mut read: impl FnMut(RelayMessage<'_>) -> T) -> T {
        let limits = Limits::default();
        let opener = &mut self.opener;
        read_until(&mut self.s, &mut self.buf, |b| {
            opener
                .open(b, &limits)
                .map(|(f, used)| (read(f.message), used))
        })
    }

    /// Sends `message`; the error code of the answer (None: not an error) and its text.
    pub fn ask(&mut self, message: RelayMessage<'_>) -> (Option<ErrorCode>, String) {
        self.send(message);
        self.answer(|m| match m {
            RelayMessage::Error { code, message } => (Some(code), message.to_string()),
            other => (None, format!("{other:?}")),
        })
    }
}
