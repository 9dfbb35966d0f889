//! Property checks shared by the fuzz targets (`fuzz/`) and the corpus replay test
//! (`wire/tests/corpus.rs`): one source of truth for what "correct" means on arbitrary input.
//!
//! Each function takes arbitrary bytes and panics only if a property of the crate is broken
//! (never because the input is bad): that panic is what the fuzzer reports as a crash.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::constants::{HEADER_LEN, HEARTBEAT_LEN, RELAY_TAG_LEN, STAT_NAME_MAX};
use crate::frame::{DecodeError, Frame, Limits, Reason};
use crate::heartbeat::{FLAG_DRAINING, FLAG_HA, Heartbeat, HeartbeatError, HeartbeatVerifier};
use crate::local::{ErrorCode, HelloOk, Reply, Request, StatEntries, decode_reply, decode_request};
use crate::mac::ClusterKey;
use crate::relay::{
    BatchOutcome, ClientHandshake, Established, HandshakeMessage, HashList, Location, OutcomeList,
    PlaceList, RelayMessage, Replica, ReplicaList, Sealer, ServerHandshake, SyncRole,
    WitnessChange, decode_handshake, decode_unsealed,
};
use crate::session_id::{SessionId, php_valid_key};

/// The cluster secret the checks (and the golden examples in docs/wire.md) use.
pub const TEST_SECRET: &[u8; 32] = b"scd-test-cluster-secret-32-bytes";

/// The cluster key from [`TEST_SECRET`].
pub fn test_key() -> ClusterKey {
    // TEST_SECRET is within the allowed length, so this cannot fail; fall back to a fixed key
    // of the minimum length to keep the function total.
    ClusterKey::from_secret(TEST_SECRET)
        .or_else(|_| ClusterKey::from_secret(&[0x5c; 16]))
        .unwrap_or_else(|_| unreachable!("a 16-byte secret is always accepted"))
}

/// Runs the handshake between a fixed client (node 1) and server (node 2) with fixed nonces and
/// returns (client side, server side).
pub fn test_session() -> (Established, Established) {
    let key = test_key();
    let server = ServerHandshake::new(&key, 2, [0x22; 32]);
    let mut client = ClientHandshake::new(&key, 1, [0x11; 32]);
    let mut wire = Vec::new();
    server.challenge(&mut wire);
    let mut proof = Vec::new();
    let used = client.on_challenge(&wire, &mut proof);
    assert_eq!(used, Ok(wire.len()), "challenge must be accepted");
    let mut accept = Vec::new();
    let (server_side, used) = server
        .on_proof(&proof, &mut accept)
        .unwrap_or_else(|e| panic!("proof refused: {e}"));
    assert_eq!(used, proof.len());
    let (client_side, used) = client
        .on_accept(&accept)
        .unwrap_or_else(|e| panic!("accept refused: {e}"));
    assert_eq!(used, accept.len());
    (client_side, server_side)
}

/// A limit small enough that the fuzzer reaches it, and the default.
fn limit_sets() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            body_max: 200,
            data_max: 64,
            batch_body_max: 400,
        },
    ]
}

fn check_incomplete(result: &DecodeError, have: usize, limits: &Limits, trailer: usize) {
    if let DecodeError::Incomplete { needed } = *result {
        assert!(needed >= 1, "Incomplete must ask for at least one byte");
        assert!(
            have + needed
                <= HEADER_LEN + limits.body_max.max(limits.batch_body_max) as usize + trailer,
            "Incomplete must never ask beyond the limit (have {have}, needed {needed})"
        );
    }
}

/// Checks a decoder (a function `(buf, &Limits) -> Result<(Frame, usize), DecodeError>`) against
/// one input: a success re-encodes to exactly the bytes used, and every strict prefix of those
/// bytes is `Incomplete`, never `Invalid` (a stream can be cut anywhere). A macro because the
/// decoded type borrows from each input slice, which a closure bound cannot express.
macro_rules! check_decoder {
    ($data:expr, $limits:expr, $decode:path) => {{
        let data: &[u8] = $data;
        let limits: &Limits = $limits;
        match $decode(data, limits) {
            Ok((frame, used)) => {
                assert!(
                    used >= HEADER_LEN && used <= data.len(),
                    "bad consumed count"
                );
                assert_eq!(
                    encode_frame(&frame),
                    &data[..used],
                    "decode → encode must be identical"
                );
                for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used / 2, used - 1] {
                    if cut < used {
                        let prefix = $decode(&data[..cut], limits);
                        assert!(
                            matches!(prefix, Err(DecodeError::Incomplete { .. })),
                            "prefix of {cut} of a valid {used}-byte frame must be Incomplete"
                        );
                        if let Err(e) = prefix {
                            check_incomplete(&e, cut, limits, 0);
                        }
                    }
                }
            }
            Err(e) => check_incomplete(&e, data.len(), limits, 0),
        }
    }};
}

/// [`decode_handshake`] in the shape of the other decoders.
fn decode_handshake_frame(
    buf: &[u8],
    _limits: &Limits,
) -> Result<(Frame<HandshakeMessage>, usize), DecodeError> {
    decode_handshake(buf).map(|(message, used)| (Frame::new(0, message), used))
}

fn encode_frame<M: crate::frame::Body + Copy>(frame: &Frame<M>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    assert_eq!(out.len(), frame.encoded_len(), "encoded_len must be exact");
    let mut head = Vec::new();
    frame.encode_head(&mut head);
    head.extend_from_slice(frame.data());
    assert_eq!(head, out, "head ‖ data must be the whole frame");
    out
}

/// Fuzz target `frame_decoder`: arbitrary bytes through every stream decoder.
pub fn frame_decoder(data: &[u8]) {
    for limits in limit_sets() {
        check_decoder!(data, &limits, decode_request);
        check_decoder!(data, &limits, decode_reply);
        check_decoder!(data, &limits, decode_unsealed);
        check_decoder!(data, &limits, decode_handshake_frame);

        // Pipelining: consume frame after frame; every success makes progress.
        let mut rest = data;
        while let Ok((_, used)) = decode_request(rest, &limits) {
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
        }

        // Only a frame sealed with the session's key passes the opener (the seeds hold frames
        // sealed by the test session; random bytes never match), and then it is exactly the
        // frame its unsealed bytes decode to.
        let (mut client, mut server) = test_session();
        match server.opener.open(data, &limits) {
            Ok((frame, used)) => assert!(
                matches!(decode_unsealed(data, &limits), Ok((f, n)) if f == frame && n + RELAY_TAG_LEN == used),
                "an opened frame must be its unsealed decoding"
            ),
            Err(e) => check_incomplete(&e, data.len(), &limits, RELAY_TAG_LEN),
        }

        // A frame that decodes unsealed is sealed by the real sealer, opened by the real
        // opener, and any single altered byte is refused.
        if let Ok((frame, used)) = decode_unsealed(data, &limits) {
            let mut sealed = Vec::new();
            assert!(client.sealer.seal(&frame, &mut sealed).is_ok());
            assert_eq!(sealed.len(), used + RELAY_TAG_LEN);
            assert_eq!(&sealed[..used], &data[..used]);
            let mut tampered = sealed.clone();
            let at = usize::from(data[used - 1]) * 131 % tampered.len();
            tampered[at] ^= 0x01;
            // (A flipped length bit may also read as "more bytes to come": never as a frame.)
            let (_, mut fresh_server) = test_session();
            assert!(fresh_server.opener.open(&tampered, &limits).is_err());
            let (_, mut fresh_server) = test_session();
            let opened = fresh_server.opener.open(&sealed, &limits);
            assert!(matches!(&opened, Ok((f, n)) if *f == frame && *n == sealed.len()));
        }
    }
}

/// A cursor that turns fuzz bytes into field values (zeros once the input runs out).
struct Gen<'a> {
    data: &'a [u8],
}

impl<'a> Gen<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self.bytes(N);
        out[..src.len()].copy_from_slice(src);
        out
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    fn nonzero_u64(&mut self) -> u64 {
        self.u64().max(1)
    }

    /// Up to `max` bytes, length chosen by the input.
    fn blob(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()) % (max + 1);
        self.bytes(len)
    }

    /// A string of at most `max` bytes (the longest valid UTF-8 prefix of the chosen bytes).
    fn text(&mut self, max: usize) -> &'a str {
        let bytes = self.blob(max);
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    fn addr(&mut self) -> SocketAddr {
        if self.u8() & 1 == 0 {
            SocketAddr::from((Ipv4Addr::from(self.array::<4>()), self.u16()))
        } else {
            SocketAddr::from((Ipv6Addr::from(self.array::<16>()), self.u16()))
        }
    }

    fn session_id(&mut self) -> SessionId {
        let master = self.addr();
        let backup = if self.u8() & 1 == 0 {
            None
        } else {
            Some(self.addr())
        };
        SessionId::new(master, backup, self.u32(), self.array())
    }

    fn opt_session_id(&mut self) -> Option<SessionId> {
        (self.u8() & 1 == 1).then(|| self.session_id())
    }

    fn error_code(&mut self) -> ErrorCode {
        ErrorCode::from_u16(u16::from(self.u8()) % 14 + 1).unwrap_or(ErrorCode::Internal)
    }

    fn role(&mut self) -> SyncRole {
        if self.u8() & 1 == 0 {
            SyncRole::Replicas
        } else {
            SyncRole::Masters
        }
    }

    fn request(&mut self, data_max: usize) -> Request<'a> {
        match self.u8() % 10 {
            0 => {
                let version_min = self.u8().max(1);
                Request::Hello {
                    version_min,
                    version_max: version_min.saturating_add(self.u8()),
                    client_name: self.text(64),
                }
            }
            1 => Request::CreateId,
            2 => Request::ReadLock {
                id: self.session_id(),
                wait_ms: self.u32(),
                lease_ms: self.u32(),
            },
            3 => Request::Read {
                id: self.session_id(),
            },
            4 => Request::WriteUnlock {
                id: self.session_id(),
                token: self.nonzero_u64(),
                lifetime_s: self.u32(),
                data: self.blob(data_max),
            },
            5 => Request::Touch {
                id: self.session_id(),
                token: self.nonzero_u64(),
                lifetime_s: self.u32(),
            },
            6 => Request::Unlock {
                id: self.session_id(),
                token: self.nonzero_u64(),
            },
            7 => Request::Destroy {
                id: self.session_id(),
                token: self.u64(),
            },
            8 => Request::Exists {
                id: self.session_id(),
            },
            _ => Request::Stats,
        }
    }

    fn reply(&mut self, data_max: usize, stats: &'a [(&'a str, u64)]) -> Reply<'a> {
        match self.u8() % 8 {
            0 => Reply::HelloOk(HelloOk {
                version: 1,
                node: self.addr(),
                node_id: self.u64(),
                data_max: self.u32(),
                body_max: self.u32(),
            }),
            1 => Reply::IdCreated {
                id: self.session_id(),
            },
            2 => Reply::Data {
                token: self.u64(),
                version: self.u64(),
                new_id: self.opt_session_id(),
                data: self.blob(data_max),
            },
            3 => Reply::NotFound {
                token: self.u64(),
                new_id: self.opt_session_id(),
            },
            4 => Reply::Done {
                version: self.u64(),
            },
            5 => Reply::Existence {
                exists: self.u8() & 1 == 1,
            },
            6 => match StatEntries::new(stats) {
                Ok(entries) => Reply::Stats(entries),
                Err(reason) => panic!("generated stats refused: {reason}"),
            },
            _ => Reply::Error {
                code: self.error_code(),
                message: self.text(256),
            },
        }
    }

    fn location(&mut self) -> Location {
        let master = self.addr();
        let backup = (self.u8() & 1 == 1).then(|| self.addr());
        Location {
            master,
            backup,
            epoch: self.u32(),
            version: self.u64(),
        }
    }

    fn replica(&mut self, data_max: usize) -> Replica<'a> {
        Replica {
            hash: self.array(),
            version: self.u64(),
            epoch: self.u32(),
            lifetime_s: self.u32(),
            data: self.blob(data_max),
        }
    }
}

const STAT_NAMES: [&str; 5] = [
    "total.reads",
    "shard.0.reads",
    "a",
    "x-y_z.9",
    "sixty-four-bytes-name.sixty-four-bytes-name.sixty-four-bytes-nam",
];

/// Encodes `frame`, decodes it with `$decode` and checks that the same message comes back, that
/// it also comes back when pipelined behind itself, and that one byte short is `Incomplete`.
macro_rules! check_round_trip {
    ($frame:expr, $limits:expr, $decode:path) => {{
        let frame = $frame;
        let limits: &Limits = $limits;
        let bytes = encode_frame(&frame);
        let decoded = $decode(&bytes, limits);
        assert!(
            matches!(&decoded, Ok((f, n)) if *f == frame && *n == bytes.len()),
            "encode → decode must give the same message: {frame:?} → {decoded:?}"
        );
        assert_eq!(encode_frame(&frame), bytes, "encoding must be deterministic");
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        assert!(matches!($decode(&twice, limits), Ok((f, n)) if f == frame && n == bytes.len()));
        if let Some(last) = bytes.len().checked_sub(1) {
            assert!(matches!(
                $decode(&bytes[..last], limits),
                Err(DecodeError::Incomplete { needed: 1 })
            ));
        }
    }};
}

/// Fuzz target `round_trip`: builds a message of every family from the input, encodes it and
/// checks that decoding gives the same message back (and sealing/opening for relays).
pub fn round_trip(data: &[u8]) {
    let limits = Limits::default();
    let data_max = 4096;
    let mut g = Gen { data };
    let request_id = g.u64();
    let stats_len = usize::from(g.u8() % 6);
    let stats: Vec<(&str, u64)> = (0..stats_len)
        .map(|i| (STAT_NAMES[i % STAT_NAMES.len()], g.u64()))
        .collect();
    assert!(STAT_NAMES.iter().all(|n| n.len() <= STAT_NAME_MAX));
    let mut g = Gen { data: g.data };
    match g.u8() % 4 {
        0 => {
            let request = g.request(data_max);
            let frame = Frame::new(request_id, request);
            check_round_trip!(frame, &limits, decode_request);
        }
        1 => {
            let reply = g.reply(data_max, &stats);
            check_round_trip!(Frame::new(request_id, reply), &limits, decode_reply);
        }
        2 => {
            // Lists for SyncHashes / SyncPlaces (built before the message that borrows them).
            let hash_count = usize::from(g.u8() % 8);
            let hash_bytes = g.bytes(16 * hash_count).to_vec();
            let hash_bytes = &hash_bytes[..hash_bytes.len() / 16 * 16];
            let mut place_bytes = Vec::new();
            for _ in 0..g.u8() % 4 {
                let hash: [u8; 16] = g.array();
                PlaceList::push(&mut place_bytes, &hash, &g.location());
            }
            // A ReplicateBatch of 1 to 4 copies, and a ReplicateBatchAck of 0 to 3 outcomes.
            let copy_count = usize::from(g.u8() % 4) + 1;
            let mut copy_bytes = Vec::new();
            for _ in 0..copy_count {
                ReplicaList::push(&mut copy_bytes, &g.replica(data_max / 4));
            }
            let mut outcome_bytes = Vec::new();
            for _ in 0..g.u8() % 4 {
                let hash: [u8; 16] = g.array();
                let outcome = if g.u8() & 1 == 0 {
                    BatchOutcome::Held { version: g.u64() }
                } else {
                    BatchOutcome::Refused(g.error_code())
                };
                OutcomeList::push(&mut outcome_bytes, &hash, outcome);
            }
            let message = match g.u8() % 23 {
                0 => RelayMessage::Forward {
                    origin: g.u64(),
                    request: match g.request(data_max) {
                        Request::Hello { .. } => Request::Stats,
                        other => other,
                    },
                },
                1 => RelayMessage::ForwardReply {
                    reply: match g.reply(data_max, &stats) {
                        Reply::HelloOk(_) => Reply::Done { version: 7 },
                        other => other,
                    },
                },
                2 => RelayMessage::Replicate(g.replica(data_max)),
                3 => RelayMessage::ReplicateAck {
                    hash: g.array(),
                    version: g.u64(),
                },
                4 => RelayMessage::DropReplica { hash: g.array() },
                5 => RelayMessage::Promote {
                    hash: g.array(),
                    epoch: g.u32(),
                },
                6 => RelayMessage::Ack,
                7 => RelayMessage::SyncRequest { role: g.role() },
                8 => RelayMessage::SyncBegin {
                    role: g.role(),
                    count_hint: g.u64(),
                },
                9 => RelayMessage::SyncItem(g.replica(data_max)),
                10 => RelayMessage::SyncEnd { count: g.u64() },
                12 => RelayMessage::Locate { hash: g.array() },
                13 => RelayMessage::Located {
                    hash: g.array(),
                    live_nodes: g.u32(),
                    location: (g.u8() & 1 == 1).then(|| g.location()),
                },
                14 => RelayMessage::RejoinNeeded,
                15 => RelayMessage::SyncHashes {
                    hashes: HashList::new(hash_bytes).expect("whole hashes, under the maximum"),
                },
                16 => RelayMessage::SyncPlaces {
                    places: PlaceList::new(&place_bytes).expect("entries written by push"),
                },
                17 => RelayMessage::LeaseRequest { sent_ms: g.u64() },
                18 => RelayMessage::LeaseGrant { sent_ms: g.u64() },
                19 => RelayMessage::LeaseDenied {
                    sent_ms: g.u64(),
                    reason: g.text(crate::constants::LEASE_REASON_MAX),
                },
                20 => RelayMessage::ReplicateBatch {
                    copies: ReplicaList::new(&copy_bytes, copy_count, &limits)
                        .expect("entries written by push, within the limits"),
                },
                21 => RelayMessage::ReplicateBatchAck {
                    outcomes: OutcomeList::new(&outcome_bytes).expect("entries written by push"),
                },
                22 => RelayMessage::WitnessRequest {
                    suspect: g.addr(),
                    change: if g.u8() & 1 == 0 {
                        WitnessChange::Promote
                    } else {
                        WitnessChange::DropBackup
                    },
                    epoch: g.u32(),
                },
                _ => RelayMessage::Error {
                    code: g.error_code(),
                    message: g.text(256),
                },
            };
            let frame = Frame::new(request_id, message);
            check_round_trip!(frame, &limits, decode_unsealed);
            // Sealed: three frames in a row open in order; the second alone (a replay or a
            // dropped first frame) does not.
            let (mut client, mut server) = test_session();
            let mut wire = Vec::new();
            for _ in 0..3 {
                assert!(client.sealer.seal(&frame, &mut wire).is_ok());
            }
            let len = Sealer::sealed_len(&frame);
            assert_eq!(wire.len(), 3 * len);
            let mut at = 0;
            for _ in 0..3 {
                let opened = server.opener.open(&wire[at..], &limits);
                assert!(matches!(&opened, Ok((f, n)) if *f == frame && *n == len));
                at += len;
            }
            let (_, mut fresh) = test_session();
            assert!(matches!(
                fresh.opener.open(&wire[len..], &limits),
                Err(DecodeError::Invalid(Reason::BadMac))
            ));
            // The other direction uses another key: a frame reflected back is refused.
            let mut reflected = Vec::new();
            let (mut client, _) = test_session();
            assert!(client.sealer.seal(&frame, &mut reflected).is_ok());
            let (mut fresh_client, _) = test_session();
            assert!(matches!(
                fresh_client.opener.open(&reflected, &limits),
                Err(DecodeError::Invalid(Reason::BadMac))
            ));
        }
        _ => {
            let message = match g.u8() % 3 {
                0 => {
                    let version_min = g.u8().max(1);
                    HandshakeMessage::Challenge {
                        version_min,
                        version_max: version_min.saturating_add(g.u8()),
                        node_id: g.u64(),
                        nonce: g.array(),
                    }
                }
                1 => HandshakeMessage::Proof {
                    version: g.u8(),
                    node_id: g.u64(),
                    nonce: g.array(),
                    tag: g.array(),
                },
                _ => HandshakeMessage::Accept { tag: g.array() },
            };
            check_round_trip!(Frame::new(0, message), &limits, decode_handshake_frame);
        }
    }
}

/// Fuzz target `session_id`: the text parser on arbitrary bytes, and generated IDs through
/// text and binary form.
pub fn session_id(data: &[u8]) {
    if let Ok(id) = SessionId::parse(data) {
        assert_eq!(
            id.encode().as_bytes(),
            data,
            "parse → encode must be identical"
        );
        assert!(php_valid_key(data), "every valid ID passes PHP's rule");
        let frame = Frame::new(0, Request::Exists { id });
        let bytes = encode_frame(&frame);
        let limits = Limits::default();
        assert!(matches!(decode_request(&bytes, &limits), Ok((f, _)) if f == frame));
    }
    let id = Gen { data }.session_id();
    let text = id.encode();
    assert!(php_valid_key(text.as_bytes()));
    assert_eq!(SessionId::parse(text.as_bytes()), Ok(id));
    assert_eq!(text.len(), id.to_string().len());
}

/// Fuzz target `heartbeat`: arbitrary datagrams through the opener and verifier, and generated
/// heartbeats through seal → open → verify.
pub fn heartbeat(data: &[u8]) {
    let key = test_key();
    let mut verifier = HeartbeatVerifier::new();
    match verifier.verify(data, &key) {
        Ok(heartbeat) => {
            assert_eq!(heartbeat.seal(&key).as_slice(), data);
            assert!(matches!(
                verifier.verify(data, &key),
                Err(HeartbeatError::Replay { .. })
            ));
        }
        Err(e) => assert!(
            !matches!(
                e,
                HeartbeatError::Replay { .. } | HeartbeatError::StaleEpoch { .. }
            ),
            "a fresh verifier cannot see a replay"
        ),
    }

    let mut g = Gen { data };
    let heartbeat = Heartbeat {
        flags: g.u16() & (FLAG_DRAINING | FLAG_HA),
        node_id: g.u64(),
        relay: g.addr(),
        epoch: g.u64() | 1,
        seq: g.u64() | 1,
        sessions: g.u64(),
        sockets: g.u32(),
    };
    let datagram = heartbeat.seal(&key);
    assert_eq!(datagram.len(), HEARTBEAT_LEN);
    let mut verifier = HeartbeatVerifier::new();
    assert_eq!(verifier.verify(&datagram, &key), Ok(heartbeat));
    assert!(matches!(
        verifier.verify(&datagram, &key),
        Err(HeartbeatError::Replay { .. })
    ));
    let older = Heartbeat {
        seq: heartbeat.seq - 1,
        ..heartbeat
    };
    assert!(matches!(
        verifier.verify(&older.seal(&key), &key),
        Err(HeartbeatError::Replay { .. })
    ));
    let stale = Heartbeat {
        epoch: heartbeat.epoch - 1,
        seq: u64::MAX,
        ..heartbeat
    };
    assert!(matches!(
        verifier.verify(&stale.seal(&key), &key),
        Err(HeartbeatError::StaleEpoch { .. })
    ));
    let mut tampered = datagram;
    let at = usize::from(g.u8()) % HEARTBEAT_LEN;
    tampered[at] ^= 1 << (g.u8() % 8);
    assert!(Heartbeat::open(&tampered, &key).is_err());
    let Ok(other_key) = ClusterKey::from_secret(b"another-cluster-secret") else {
        panic!("a 22-byte secret is valid");
    };
    assert!(matches!(
        Heartbeat::open(&datagram, &other_key),
        Err(HeartbeatError::BadMac)
    ));
}

/// Decodes an unsealed relay frame (tests only: on a connection relay frames are sealed).
pub fn decode_unsealed_for_tests<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<(Frame<RelayMessage<'a>>, usize), DecodeError> {
    decode_unsealed(buf, limits)
}
