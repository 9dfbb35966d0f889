//! Bad input from many connections at once: malformed, truncated and oversized frames and random
//! bytes. The daemon stays up, answers each with an error or a closed connection, logs it once
//! with the peer, keeps its memory bounded, and a well-behaved client at the same time sees no
//! error.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Daemon, blob};
use scd_client::{OwnedReply, Request, SessionId};
use scd_wire::frame::{Frame, Limits};
use scd_wire::local::{ErrorCode, Reply, decode_reply};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn hello() -> Vec<u8> {
    let mut out = Vec::new();
    Frame::new(
        1,
        Request::Hello {
            version_min: 1,
            version_max: 1,
            client_name: "attacker",
        },
    )
    .encode(&mut out);
    out
}

fn some_id(rng: &mut Rng) -> SessionId {
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&rng.bytes(16));
    SessionId::new("127.0.0.1:34567".parse().unwrap(), None, 1, hash)
}

/// One bad conversation of kind `k`; returns what the daemon sent back.
fn attack(d: &Daemon, k: u64, rng: &mut Rng) -> Vec<u8> {
    let mut payload = Vec::new();
    match k % 9 {
        // Random bytes, no Hello.
        0 => {
            let n = 1 + (rng.next() % 4096) as usize;
            payload = rng.bytes(n);
        }
        // Hello, then random bytes.
        1 => {
            payload = hello();
            let n = 1 + (rng.next() % 4096) as usize;
            payload.extend(rng.bytes(n));
        }
        // A header announcing a 4 GiB body, then a little of it.
        2 => {
            payload = hello();
            let mut h = vec![b'S', b'C', 1, 0x05, 0, 0, 0, 0];
            h.extend(7u64.to_le_bytes());
            h.extend(u32::MAX.to_le_bytes());
            payload.extend(h);
            payload.extend(rng.bytes(1000));
        }
        // A truncated frame: half a ReadLock, then the connection closes.
        3 => {
            payload = hello();
            let mut f = Vec::new();
            Frame::new(
                2,
                Request::ReadLock {
                    id: some_id(rng),
                    wait_ms: 10,
                    lease_ms: 10,
                },
            )
            .encode(&mut f);
            let cut = 1 + (rng.next() as usize % (f.len() - 1));
            payload.extend(&f[..cut]);
        }
        // A well-formed header whose body is too short for its kind.
        4 => {
            payload = hello();
            let mut f = Vec::new();
            Frame::new(2, Request::Exists { id: some_id(rng) }).encode(&mut f);
            let body_len = (f.len() - 20 - 7) as u32;
            f[16..20].copy_from_slice(&body_len.to_le_bytes());
            f.truncate(20 + body_len as usize);
            payload.extend(f);
        }
        // An unknown kind and a reply kind sent as a request.
        5 => {
            payload = hello();
            let kind = if rng.next() % 2 == 0 { 0x3F } else { 0x83 };
            let mut h = vec![b'S', b'C', 1, kind, 0, 0, 0, 0];
            h.extend(3u64.to_le_bytes());
            h.extend(0u32.to_le_bytes());
            payload.extend(h);
        }
        // A request before Hello.
        6 => Frame::new(9, Request::Stats).encode(&mut payload),
        // An oversized write streamed in full (refused, skipped, the connection goes on).
        7 => {
            payload = hello();
            let data = rng.bytes(300_000);
            Frame::new(
                4,
                Request::WriteUnlock {
                    id: some_id(rng),
                    token: 1,
                    lifetime_s: 1,
                    data: &data,
                },
            )
            .encode(&mut payload);
            Frame::new(5, Request::Exists { id: some_id(rng) }).encode(&mut payload);
        }
        // Takes a lock and vanishes.
        _ => {
            payload = hello();
            Frame::new(
                2,
                Request::ReadLock {
                    id: some_id(rng),
                    wait_ms: 10,
                    lease_ms: 600_000,
                },
            )
            .encode(&mut payload);
        }
    }
    let mut reply = Vec::new();
    let mut exchange = |s: &mut dyn ReadWrite| {
        // The daemon may close early (that is the point); write errors are expected then.
        let _ = s.write_all(&payload);
        let _ = s.shutdown_write();
        let _ = s.read_to_end(&mut reply);
    };
    if k % 2 == 0 {
        let mut s = d.raw_tcp();
        s.set_read_timeout(Some(common::READY_WAIT)).unwrap();
        exchange(&mut s);
    } else {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(common::READY_WAIT)).unwrap();
        exchange(&mut s);
    }
    reply
}

trait ReadWrite: Read + Write {
    fn shutdown_write(&mut self) -> std::io::Result<()>;
}
impl ReadWrite for std::net::TcpStream {
    fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}
impl ReadWrite for UnixStream {
    fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Every frame in `bytes` (the daemon's replies to one bad conversation).
fn replies(bytes: &[u8]) -> Vec<OwnedReply> {
    let limits = Limits {
        body_max: u32::MAX,
        data_max: u32::MAX,
        batch_body_max: u32::MAX,
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (frame, used) =
            decode_reply(&bytes[pos..], &limits).expect("the daemon sends valid frames");
        out.push(match frame.message {
            Reply::Error { code, message } => OwnedReply::Error {
                code,
                message: message.to_string(),
            },
            Reply::HelloOk(h) => OwnedReply::HelloOk(h),
            Reply::Existence { exists } => OwnedReply::Existence(exists),
            Reply::NotFound { token, new_id } => OwnedReply::NotFound { token, new_id },
            other => panic!("unexpected reply to bad input: {other:?}"),
        });
        pos += used;
    }
    out
}

#[test]
fn bad_input_from_many_connections_leaves_the_daemon_and_other_clients_unharmed() {
    let d = Arc::new(Daemon::start(&["--session-size-max", "65536"]));
    let rss_before = d.rss_kib();
    let done = Arc::new(AtomicBool::new(false));

    // The well-behaved client, working the whole time.
    let good = {
        let d = d.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut c = d.client();
            c.set_timeout(Some(common::READY_WAIT)).unwrap();
            let mut rounds = 0u64;
            while !done.load(Ordering::Relaxed) || rounds < 50 {
                let id = c.create_id().expect("good client: create");
                let r = c.read_lock(&id, 1000, 30_000).expect("good client: lock");
                let data = blob(rounds, 2000);
                c.write_unlock(&id, r.token, 600, &data)
                    .expect("good client: write");
                assert_eq!(c.read(&id).expect("good client: read").data, Some(data));
                rounds += 1;
            }
            rounds
        })
    };

    let attackers: Vec<_> = (0..8u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                let mut kinds = Vec::new();
                for i in 0..45u64 {
                    let k = t + i;
                    let reply = attack(&d, k, &mut rng);
                    kinds.push((k % 9, replies(&reply)));
                }
                kinds
            })
        })
        .collect();
    let mut conversations = 0;
    for a in attackers {
        for (kind, replies) in a.join().expect("attacker thread") {
            conversations += 1;
            let errors: Vec<ErrorCode> = replies
                .iter()
                .filter_map(|r| match r {
                    OwnedReply::Error { code, .. } => Some(*code),
                    _ => None,
                })
                .collect();
            match kind {
                // Malformed after Hello, or no Hello: refused with BadRequest.
                1 | 4 | 5 | 6 => assert!(
                    errors.contains(&ErrorCode::BadRequest),
                    "kind {kind}: {replies:?}"
                ),
                // Oversized: TooLarge, and the connection still answers the next request.
                2 | 7 => {
                    assert!(
                        errors.contains(&ErrorCode::TooLarge),
                        "kind {kind}: {replies:?}"
                    );
                    if kind == 7 {
                        assert!(
                            replies
                                .iter()
                                .any(|r| matches!(r, OwnedReply::Existence(false))),
                            "{replies:?}"
                        );
                    }
                }
                _ => {}
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let rounds = good.join().expect("the good client saw no error");
    assert!(rounds >= 50);

    // Still up and consistent.
    let s = d.stats();
    assert!(s["node.protocol_errors"] > 0, "{s:?}");
    // Each bad connection is logged at most once (logging is asynchronous).
    common::eventually("a protocol error to be logged", || {
        d.log_lines_containing("client protocol error from") > 0
    });
    let logged = d.log_lines_containing("client protocol error from");
    assert!(
        logged > 0 && logged <= conversations,
        "{logged} log lines for {conversations} conversations"
    );
    // Every connection closed and none is left counted (the closes are asynchronous).
    common::eventually("all bad connections to be closed", || {
        d.stats()["node.connections_open"] == 1
    });
    // Memory stays bounded: nothing was allocated from a 4 GiB length.
    let rss_after = d.rss_kib();
    assert!(
        rss_after < rss_before + 128 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn connections_over_the_limit_are_closed_and_counted() {
    let d = Daemon::start(&["--connections-max", "2"]);
    let mut a = d.client();
    let _b = d.client();
    let refused = scd_client::Client::connect(&scd_client::Endpoint::Unix(d.socket.clone()));
    assert!(refused.is_err(), "a third connection must be refused");
    let s: std::collections::BTreeMap<String, u64> = a.stats().unwrap().into_iter().collect();
    assert!(s["node.connections_refused"] >= 1, "{s:?}");
    assert_eq!(s["node.connections_open"], 2);
    // The refusal is logged by the accepting core, asynchronously to the client's view.
    common::eventually("the refusal to be logged", || {
        d.log_lines_containing("local.connections_max is 2") >= 1
    });
}
