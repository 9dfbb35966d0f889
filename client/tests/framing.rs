//! The client against a scripted peer on a Unix socket: replies split across reads, several
//! replies in one read, a large reply that grows the buffer, an error reply, a closed connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::thread;

use scd_client::{Client, ClientError, Endpoint, ErrorCode, HelloOk, OwnedReply, Reply};
use scd_wire::frame::Frame;

fn frame(request_id: u64, reply: Reply<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::new(request_id, reply).encode(&mut out);
    out
}

#[test]
fn replies_in_pieces_and_in_bulk_are_decoded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let big = vec![7u8; 200_000];
    let big2 = big.clone();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; 20];
        s.read_exact(&mut hello).unwrap();
        let body_len = u32::from_le_bytes(hello[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; body_len];
        s.read_exact(&mut body).unwrap();
        let ok = HelloOk {
            version: 1,
            node: "127.0.0.1:34567".parse().unwrap(),
            node_id: 9,
            data_max: 1 << 20,
            body_max: (1 << 20) + 1024,
        };
        // HelloOk one byte at a time.
        for b in frame(1, Reply::HelloOk(ok)) {
            s.write_all(&[b]).unwrap();
        }
        // Three replies in one write, the last one large.
        let mut bulk = frame(2, Reply::Done { version: 3 });
        bulk.extend(frame(3, Reply::Existence { exists: true }));
        bulk.extend(frame(
            4,
            Reply::Data {
                token: 5,
                version: 6,
                new_id: None,
                data: &big2,
            },
        ));
        bulk.extend(frame(
            5,
            Reply::Error {
                code: ErrorCode::LockTimeout,
                message: "busy",
            },
        ));
        s.write_all(&bulk).unwrap();
        // Then close.
    });
    let mut c = Client::connect(&Endpoint::Unix(path)).unwrap();
    assert_eq!(c.server().node_id, 9);
    assert_eq!(c.recv().unwrap(), (2, OwnedReply::Done { version: 3 }));
    assert_eq!(c.recv().unwrap(), (3, OwnedReply::Existence(true)));
    assert_eq!(
        c.recv().unwrap(),
        (
            4,
            OwnedReply::Data {
                token: 5,
                version: 6,
                new_id: None,
                data: big
            }
        )
    );
    assert_eq!(
        c.recv().unwrap(),
        (
            5,
            OwnedReply::Error {
                code: ErrorCode::LockTimeout,
                message: "busy".into()
            }
        )
    );
    peer.join().unwrap();
    assert!(matches!(c.recv(), Err(ClientError::Closed)));
}
