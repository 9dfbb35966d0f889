//! Golden bytes: the encoder must produce exactly the hex examples in docs/wire.md, and decoding
//! those bytes must give back the message they were made from.
//!
//! Each example in the document is a fenced block whose info string is `golden NAME`; `#` starts
//! a comment. `SCD_PRINT_GOLDEN=1` prints the blocks (for writing the document after a deliberate
//! format change); `SCD_WRITE_CORPUS=1` writes them into the fuzz seed corpora.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use scd_wire::constants::HEADER_LEN;
use scd_wire::fuzz_checks::{TEST_SECRET, test_key, test_session};
use scd_wire::{
    BatchOutcome, ClientHandshake, ErrorCode, Frame, HandshakeMessage, HashList, Heartbeat,
    HelloOk, Limits, Location, OutcomeList, PlaceList, RelayMessage, Replica, ReplicaList, Reply,
    Request, ServerHandshake, SessionId, StatEntries, SyncRole, WitnessChange, decode_handshake,
    decode_reply, decode_request,
};

const HASH: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];
const DATA: &[u8] = b"n|i:1;";
/// HASH, then HASH reversed.
const HASHES: [u8; 32] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00,
];
const STATS: &[(&str, u64)] = &[("total.reads", 10), ("shard.0.reads", 7)];

const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "hello",
        "Hello, request 1: versions 1..=1, client name \"php\"",
    ),
    ("create_id", "CreateId, request 1 (empty body)"),
    (
        "read_lock",
        "ReadLock, request 1: SID 0a000001-8707-0a000002-8707-1-00112233445566778899aabbccddeeff, wait 5000 ms, lease 30000 ms",
    ),
    (
        "read",
        "Read, request 1: SID fd000000000000000000000000000001-8707-0-0-2-00112233445566778899aabbccddeeff (IPv6 master, no backup)",
    ),
    (
        "write_unlock",
        "WriteUnlock, request 1: SID as in read_lock, token 7, lifetime 1440 s, data \"n|i:1;\"",
    ),
    (
        "touch",
        "Touch, request 1: SID as in read_lock, token 7, lifetime 1440 s",
    ),
    ("unlock", "Unlock, request 1: SID as in read_lock, token 7"),
    (
        "destroy",
        "Destroy, request 1: SID as in read_lock, token 0 (no lock held)",
    ),
    ("exists", "Exists, request 1: SID as in read_lock"),
    ("stats", "Stats, request 1 (empty body)"),
    (
        "hello_ok",
        "HelloOk, request 1: version 1, node 10.0.0.1:34567, node ID 1, data_max 1 MiB, body_max 1 MiB + 1024",
    ),
    ("id_created", "IdCreated, request 1: SID as in read_lock"),
    (
        "data",
        "Data, request 1: token 7, version 2, no new SID, data \"n|i:1;\"",
    ),
    (
        "data_moved",
        "Data, request 1: token 0 (Read), version 2, new SID as in read, data \"n|i:1;\"",
    ),
    (
        "not_found",
        "NotFound, request 1: token 8 (lock taken on the new ID), no new SID",
    ),
    ("done", "Done, request 1: version 3"),
    ("existence", "Existence, request 1: exists"),
    (
        "stats_reply",
        "StatsReply, request 1: total.reads = 10, shard.0.reads = 7",
    ),
    (
        "error",
        "Error, request 1: LockTimeout (4), message \"lock wait\"",
    ),
    (
        "auth_challenge",
        "AuthChallenge: versions 1..=1, server node 2, nonce 22 × 32",
    ),
    (
        "auth_proof",
        "AuthProof: version 1, client node 1, nonce 11 × 32, tag for TEST_SECRET",
    ),
    ("auth_accept", "AuthAccept: server tag for TEST_SECRET"),
    (
        "forward",
        "Forward, request 3, sealed (seq 0, c2s): origin client 2, inner Read of the read_lock SID; last 16 bytes: MAC",
    ),
    (
        "forward_reply",
        "ForwardReply, request 3, sealed (seq 0, c2s): inner Done version 3; last 16 bytes: MAC",
    ),
    (
        "replicate",
        "Replicate, request 3, sealed (seq 0, c2s): hash 0011…ff, version 2, epoch 1, lifetime 1440 s, data \"n|i:1;\"; last 16 bytes: MAC",
    ),
    (
        "replicate_ack",
        "ReplicateAck, request 3, sealed (seq 0, c2s): hash 0011…ff, version 2; last 16 bytes: MAC",
    ),
    (
        "drop_replica",
        "DropReplica, request 3, sealed (seq 0, c2s): hash 0011…ff; last 16 bytes: MAC",
    ),
    (
        "promote",
        "Promote, request 3, sealed (seq 0, c2s): hash 0011…ff, epoch 2; last 16 bytes: MAC",
    ),
    (
        "ack",
        "Ack, request 3, sealed (seq 0, c2s): empty body; last 16 bytes: MAC",
    ),
    (
        "sync_request",
        "SyncRequest, request 3, sealed (seq 0, c2s): role 1 (replicas); last 16 bytes: MAC",
    ),
    (
        "sync_begin",
        "SyncBegin, request 3, sealed (seq 0, c2s): role 1, count hint 1; last 16 bytes: MAC",
    ),
    (
        "sync_item",
        "SyncItem, request 3, sealed (seq 0, c2s): as replicate; last 16 bytes: MAC",
    ),
    (
        "sync_end",
        "SyncEnd, request 3, sealed (seq 0, c2s): count 1; last 16 bytes: MAC",
    ),
    (
        "locate",
        "Locate, request 3, sealed (seq 0, c2s): hash 0011…ff; last 16 bytes: MAC",
    ),
    (
        "located",
        "Located, request 3, sealed (seq 0, c2s): hash 0011…ff, 3 live nodes, found: master 10.0.0.1:34567, backup 10.0.0.2:34567, epoch 3, version 2; last 16 bytes: MAC",
    ),
    (
        "located_none",
        "Located, request 3, sealed (seq 0, c2s): hash 0011…ff, 3 live nodes, not found; last 16 bytes: MAC",
    ),
    (
        "rejoin_needed",
        "RejoinNeeded, request 3, sealed (seq 0, c2s): empty body; last 16 bytes: MAC",
    ),
    (
        "sync_hashes",
        "SyncHashes, request 3, sealed (seq 0, c2s): 2 hashes, 0011…ff and ffee…00; last 16 bytes: MAC",
    ),
    (
        "sync_places",
        "SyncPlaces, request 3, sealed (seq 0, c2s): 1 entry: hash 0011…ff, master 10.0.0.1:34567, backup 10.0.0.2:34567, epoch 3, version 2; last 16 bytes: MAC",
    ),
    (
        "lease_request",
        "LeaseRequest, request 3, sealed (seq 0, c2s): sent at 1000 ms; last 16 bytes: MAC",
    ),
    (
        "lease_grant",
        "LeaseGrant, request 3, sealed (seq 0, c2s): for the request sent at 1000 ms; last 16 bytes: MAC",
    ),
    (
        "lease_denied",
        "LeaseDenied, request 3, sealed (seq 0, c2s): for the request sent at 1000 ms, reason \"took over\"; last 16 bytes: MAC",
    ),
    (
        "replicate_batch",
        "ReplicateBatch, request 3, sealed (seq 0, c2s): 2 copies: hash 0011…ff, version 2, epoch 1, lifetime 1440 s, data \"n|i:1;\"; hash ffee…00, version 5, epoch 1, lifetime 1440 s, empty data; last 16 bytes: MAC",
    ),
    (
        "replicate_batch_ack",
        "ReplicateBatchAck, request 3, sealed (seq 0, c2s): 2 outcomes: hash 0011…ff held at version 2; hash ffee…00 refused StaleEpoch (12); last 16 bytes: MAC",
    ),
    (
        "witness_request",
        "WitnessRequest, request 3, sealed (seq 0, c2s): suspect 10.0.0.2:34567, change 1 (promote), epoch 4; last 16 bytes: MAC",
    ),
    (
        "relay_error",
        "RelayError, request 3, sealed (seq 0, c2s): StaleEpoch (12), empty message; last 16 bytes: MAC",
    ),
    (
        "relay_error_not_agreed",
        "RelayError, request 3, sealed (seq 0, c2s): NotAgreed (14), empty message; last 16 bytes: MAC",
    ),
    (
        "heartbeat",
        "Heartbeat: flags HA, node 1, relay 10.0.0.1:34567, epoch 1, seq 5, 1000 sessions, 50 sockets; last 32 bytes: MAC",
    ),
];

fn master() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 34567))
}

/// The one entry of the SyncPlaces example (made once, kept for the test's lifetime).
fn places_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let mut out = Vec::new();
        PlaceList::push(
            &mut out,
            &HASH,
            &Location {
                master: master(),
                backup: Some(SocketAddr::from(([10, 0, 0, 2], 34567))),
                epoch: 3,
                version: 2,
            },
        );
        out
    })
}

/// The second hash of the examples (HASH reversed).
fn hash_reversed() -> [u8; 16] {
    let mut h = [0u8; 16];
    h.copy_from_slice(&HASHES[16..]);
    h
}

/// The two copies of the ReplicateBatch example (made once, kept for the test's lifetime).
fn batch_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let mut out = Vec::new();
        ReplicaList::push(
            &mut out,
            &Replica {
                hash: HASH,
                version: 2,
                epoch: 1,
                lifetime_s: 1440,
                data: DATA,
            },
        );
        ReplicaList::push(
            &mut out,
            &Replica {
                hash: hash_reversed(),
                version: 5,
                epoch: 1,
                lifetime_s: 1440,
                data: b"",
            },
        );
        out
    })
}

/// The two outcomes of the ReplicateBatchAck example.
fn outcome_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let mut out = Vec::new();
        OutcomeList::push(&mut out, &HASH, BatchOutcome::Held { version: 2 });
        OutcomeList::push(
            &mut out,
            &hash_reversed(),
            BatchOutcome::Refused(ErrorCode::StaleEpoch),
        );
        out
    })
}

fn id() -> SessionId {
    SessionId::new(
        master(),
        Some(SocketAddr::from(([10, 0, 0, 2], 34567))),
        1,
        HASH,
    )
}

fn id_v6() -> SessionId {
    let ip: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
    SessionId::new(SocketAddr::from((ip, 34567)), None, 2, HASH)
}

/// Which fuzz corpus an example also seeds, and how to check that it decodes back.
enum Check {
    Request(Frame<Request<'static>>),
    Reply(Frame<Reply<'static>>),
    Handshake(HandshakeMessage),
    /// Sealed as the first frame (sequence 0) client → server of the example handshake.
    Relay(Frame<RelayMessage<'static>>),
    Heartbeat(Heartbeat),
}

fn encode<M: scd_wire::Body>(frame: &Frame<M>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

fn examples() -> Vec<(&'static str, Check)> {
    use Check as C;
    let stats = StatEntries::new(STATS).unwrap();
    let req = |r: Request<'static>| C::Request(Frame::new(1, r));
    let rep = |r: Reply<'static>| C::Reply(Frame::new(1, r));
    let rel = |m: RelayMessage<'static>| C::Relay(Frame::new(3, m));
    let replica = Replica {
        hash: HASH,
        version: 2,
        epoch: 1,
        lifetime_s: 1440,
        data: DATA,
    };
    let (challenge, proof, accept) = handshake_frames();
    vec![
        (
            "hello",
            req(Request::Hello {
                version_min: 1,
                version_max: 1,
                client_name: "php",
            }),
        ),
        ("create_id", req(Request::CreateId)),
        (
            "read_lock",
            req(Request::ReadLock {
                id: id(),
                wait_ms: 5000,
                lease_ms: 30000,
            }),
        ),
        ("read", req(Request::Read { id: id_v6() })),
        (
            "write_unlock",
            req(Request::WriteUnlock {
                id: id(),
                token: 7,
                lifetime_s: 1440,
                data: DATA,
            }),
        ),
        (
            "touch",
            req(Request::Touch {
                id: id(),
                token: 7,
                lifetime_s: 1440,
            }),
        ),
        ("unlock", req(Request::Unlock { id: id(), token: 7 })),
        ("destroy", req(Request::Destroy { id: id(), token: 0 })),
        ("exists", req(Request::Exists { id: id() })),
        ("stats", req(Request::Stats)),
        (
            "hello_ok",
            rep(Reply::HelloOk(HelloOk {
                version: 1,
                node: master(),
                node_id: 1,
                data_max: 1 << 20,
                body_max: (1 << 20) + 1024,
            })),
        ),
        ("id_created", rep(Reply::IdCreated { id: id() })),
        (
            "data",
            rep(Reply::Data {
                token: 7,
                version: 2,
                new_id: None,
                data: DATA,
            }),
        ),
        (
            "data_moved",
            rep(Reply::Data {
                token: 0,
                version: 2,
                new_id: Some(id_v6()),
                data: DATA,
            }),
        ),
        (
            "not_found",
            rep(Reply::NotFound {
                token: 8,
                new_id: None,
            }),
        ),
        ("done", rep(Reply::Done { version: 3 })),
        ("existence", rep(Reply::Existence { exists: true })),
        ("stats_reply", rep(Reply::Stats(stats))),
        (
            "error",
            rep(Reply::Error {
                code: ErrorCode::LockTimeout,
                message: "lock wait",
            }),
        ),
        ("auth_challenge", C::Handshake(challenge)),
        ("auth_proof", C::Handshake(proof)),
        ("auth_accept", C::Handshake(accept)),
        (
            "forward",
            rel(RelayMessage::Forward {
                origin: 2,
                request: Request::Read { id: id() },
            }),
        ),
        (
            "forward_reply",
            rel(RelayMessage::ForwardReply {
                reply: Reply::Done { version: 3 },
            }),
        ),
        ("replicate", rel(RelayMessage::Replicate(replica))),
        (
            "replicate_ack",
            rel(RelayMessage::ReplicateAck {
                hash: HASH,
                version: 2,
            }),
        ),
        (
            "drop_replica",
            rel(RelayMessage::DropReplica { hash: HASH }),
        ),
        (
            "promote",
            rel(RelayMessage::Promote {
                hash: HASH,
                epoch: 2,
            }),
        ),
        ("ack", rel(RelayMessage::Ack)),
        (
            "sync_request",
            rel(RelayMessage::SyncRequest {
                role: SyncRole::Replicas,
            }),
        ),
        (
            "sync_begin",
            rel(RelayMessage::SyncBegin {
                role: SyncRole::Replicas,
                count_hint: 1,
            }),
        ),
        ("sync_item", rel(RelayMessage::SyncItem(replica))),
        ("sync_end", rel(RelayMessage::SyncEnd { count: 1 })),
        ("locate", rel(RelayMessage::Locate { hash: HASH })),
        (
            "located",
            rel(RelayMessage::Located {
                hash: HASH,
                live_nodes: 3,
                location: Some(Location {
                    master: master(),
                    backup: Some(SocketAddr::from(([10, 0, 0, 2], 34567))),
                    epoch: 3,
                    version: 2,
                }),
            }),
        ),
        (
            "located_none",
            rel(RelayMessage::Located {
                hash: HASH,
                live_nodes: 3,
                location: None,
            }),
        ),
        ("rejoin_needed", rel(RelayMessage::RejoinNeeded)),
        (
            "sync_hashes",
            rel(RelayMessage::SyncHashes {
                hashes: HashList::new(&HASHES).unwrap(),
            }),
        ),
        (
            "sync_places",
            rel(RelayMessage::SyncPlaces {
                places: PlaceList::new(places_bytes()).unwrap(),
            }),
        ),
        (
            "lease_request",
            rel(RelayMessage::LeaseRequest { sent_ms: 1000 }),
        ),
        (
            "lease_grant",
            rel(RelayMessage::LeaseGrant { sent_ms: 1000 }),
        ),
        (
            "lease_denied",
            rel(RelayMessage::LeaseDenied {
                sent_ms: 1000,
                reason: "took over",
            }),
        ),
        (
            "replicate_batch",
            rel(RelayMessage::ReplicateBatch {
                copies: ReplicaList::new(batch_bytes(), 2, &Limits::default()).unwrap(),
            }),
        ),
        (
            "replicate_batch_ack",
            rel(RelayMessage::ReplicateBatchAck {
                outcomes: OutcomeList::new(outcome_bytes()).unwrap(),
            }),
        ),
        (
            "witness_request",
            rel(RelayMessage::WitnessRequest {
                suspect: SocketAddr::from(([10, 0, 0, 2], 34567)),
                change: WitnessChange::Promote,
                epoch: 4,
            }),
        ),
        (
            "relay_error",
            rel(RelayMessage::Error {
                code: ErrorCode::StaleEpoch,
                message: "",
            }),
        ),
        (
            "relay_error_not_agreed",
            rel(RelayMessage::Error {
                code: ErrorCode::NotAgreed,
                message: "",
            }),
        ),
        (
            "heartbeat",
            C::Heartbeat(Heartbeat {
                flags: scd_wire::heartbeat::FLAG_HA,
                node_id: 1,
                relay: master(),
                epoch: 1,
                seq: 5,
                sessions: 1000,
                sockets: 50,
            }),
        ),
    ]
}

/// The example handshake: server node 2 with nonce 22…22, client node 1 with nonce 11…11,
/// cluster secret `TEST_SECRET`.
fn handshake_frames() -> (HandshakeMessage, HandshakeMessage, HandshakeMessage) {
    let key = test_key();
    let server = ServerHandshake::new(&key, 2, [0x22; 32]);
    let mut client = ClientHandshake::new(&key, 1, [0x11; 32]);
    let mut challenge = Vec::new();
    server.challenge(&mut challenge);
    let mut proof = Vec::new();
    client.on_challenge(&challenge, &mut proof).unwrap();
    let mut accept = Vec::new();
    server.on_proof(&proof, &mut accept).unwrap();
    client.on_accept(&accept).unwrap();
    (
        decode_handshake(&challenge).unwrap().0,
        decode_handshake(&proof).unwrap().0,
        decode_handshake(&accept).unwrap().0,
    )
}

fn bytes_of(check: &Check) -> Vec<u8> {
    match check {
        Check::Request(f) => encode(f),
        Check::Reply(f) => encode(f),
        Check::Handshake(m) => encode(&Frame::new(0, *m)),
        Check::Relay(f) => {
            let (mut client, _) = test_session();
            let mut out = Vec::new();
            client.sealer.seal(f, &mut out).unwrap();
            out
        }
        Check::Heartbeat(h) => h.seal(&test_key()).to_vec(),
    }
}

fn decodes_back(check: &Check, bytes: &[u8]) -> bool {
    let limits = Limits::default();
    match check {
        Check::Request(f) => {
            matches!(decode_request(bytes, &limits), Ok((d, n)) if d == *f && n == bytes.len())
        }
        Check::Reply(f) => {
            matches!(decode_reply(bytes, &limits), Ok((d, n)) if d == *f && n == bytes.len())
        }
        Check::Handshake(m) => {
            matches!(decode_handshake(bytes), Ok((d, n)) if d == *m && n == bytes.len())
        }
        Check::Relay(f) => {
            let (_, mut server) = test_session();
            matches!(server.opener.open(bytes, &limits), Ok((d, n)) if d == *f && n == bytes.len())
        }
        Check::Heartbeat(h) => Heartbeat::open(bytes, &test_key()) == Ok(*h),
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `golden NAME` blocks of docs/wire.md, decoded from hex.
fn doc_examples() -> BTreeMap<String, Vec<u8>> {
    let doc = std::fs::read_to_string(repo_root().join("docs/wire.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in doc.lines() {
        match &mut current {
            None => {
                if let Some(name) = line.trim().strip_prefix("```golden ") {
                    current = Some((name.trim().to_string(), String::new()));
                }
            }
            Some((name, hex)) => {
                if line.trim() == "```" {
                    let bytes = decode_hex(hex).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(
                        out.insert(name.clone(), bytes).is_none(),
                        "example {name} appears twice"
                    );
                    current = None;
                } else {
                    hex.push_str(line.split('#').next().unwrap_or(""));
                    hex.push(' ');
                }
            }
        }
    }
    assert!(current.is_none(), "unterminated golden block");
    out
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))
        })
        .collect()
}

fn hex_rows(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|row| {
            row.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn corpus_of(check: &Check) -> &'static str {
    match check {
        Check::Heartbeat(_) => "heartbeat",
        _ => "frame_decoder",
    }
}

#[test]
fn encoder_matches_every_example_in_the_document() {
    let doc = doc_examples();
    let examples = examples();
    if std::env::var_os("SCD_PRINT_GOLDEN").is_some() {
        for (name, check) in &examples {
            let bytes = bytes_of(check);
            let is_frame = !matches!(check, Check::Heartbeat(_));
            let description = DESCRIPTIONS
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, d)| d);
            println!("```golden {name}\n# {description}");
            if is_frame {
                let h = &bytes[..HEADER_LEN];
                let group = |r: std::ops::Range<usize>| {
                    h[r].iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!(
                    "{}  {}  {}  {}  {}  {}  # header",
                    group(0..2),
                    group(2..3),
                    group(3..4),
                    group(4..8),
                    group(8..16),
                    group(16..20)
                );
                if bytes.len() > HEADER_LEN {
                    println!("{}", hex_rows(&bytes[HEADER_LEN..]));
                }
            } else {
                println!("{}", hex_rows(&bytes));
            }
            println!("```\n");
        }
    }
    for (name, check) in &examples {
        let bytes = bytes_of(check);
        let Some(expected) = doc.get(*name) else {
            panic!("docs/wire.md has no `golden {name}` example");
        };
        assert_eq!(
            hex_rows(&bytes),
            hex_rows(expected),
            "example {name}: encoder and document differ"
        );
        assert!(
            decodes_back(check, expected),
            "example {name} does not decode back"
        );
    }
    for (name, _) in &examples {
        assert!(
            DESCRIPTIONS.iter().any(|(n, _)| n == name),
            "example {name} has no description"
        );
    }
    for name in doc.keys() {
        assert!(
            examples.iter().any(|(n, _)| n == name),
            "docs/wire.md example {name} is not checked by this test"
        );
    }
    assert_eq!(TEST_SECRET.len(), 32);
}

#[test]
fn every_example_seeds_its_fuzz_corpus() {
    let write = std::env::var_os("SCD_WRITE_CORPUS").is_some();
    for (name, check) in examples() {
        let path = repo_root()
            .join("fuzz/corpus")
            .join(corpus_of(&check))
            .join(format!("golden-{name}"));
        let bytes = bytes_of(&check);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let seeded = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (SCD_WRITE_CORPUS=1 writes it)", path.display()));
        assert_eq!(seeded, bytes, "{} is stale", path.display());
    }
}

#[test]
fn session_id_examples_in_the_document_parse_and_encode_back() {
    let doc = std::fs::read_to_string(repo_root().join("docs/wire.md")).unwrap();
    let example = "0a000001-8707-0-0-1-00112233445566778899aabbccddeeff";
    assert!(doc.contains(example));
    let parsed = SessionId::parse(example.as_bytes()).unwrap();
    assert_eq!(parsed, SessionId::new(master(), None, 1, HASH));
    assert_eq!(parsed.encode().as_str(), example);
    for text in [id().encode(), id_v6().encode()] {
        assert!(
            doc.contains(text.as_str()),
            "docs/wire.md should show {text:?}"
        );
    }
}
