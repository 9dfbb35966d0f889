//! The properties the wire format promises, each shown on real encoders and decoders: rejections
//! name their reason, "need more bytes" is kept apart from "invalid", streams decode frame by
//! frame however they are cut, and the relay and heartbeat authentication refuse what they must.

use std::net::SocketAddr;

use scd_wire::constants::{HEADER_LEN, HEARTBEAT_SENDERS_MAX, RELAY_TAG_LEN};
use scd_wire::frame::kind;
use scd_wire::fuzz_checks::{test_key, test_session};
use scd_wire::heartbeat::{FLAG_DRAINING, FLAG_HA, FLAG_WITNESS_ONLY};
use scd_wire::{
    ClientHandshake, ClusterKey, DecodeError, ErrorCode, Frame, Heartbeat, HeartbeatError,
    HeartbeatVerifier, Limits, Reason, RelayMessage, Reply, Request, Sealer, ServerHandshake,
    SessionId, StatEntries, decode_handshake, decode_reply, decode_request, negotiate,
};

fn id() -> SessionId {
    SessionId::new(SocketAddr::from(([10, 0, 0, 1], 34567)), None, 1, [9; 16])
}

fn encode<M: scd_wire::Body>(frame: &Frame<M>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

fn write_unlock(data: &[u8]) -> Vec<u8> {
    encode(&Frame::new(
        7,
        Request::WriteUnlock {
            id: id(),
            token: 3,
            lifetime_s: 60,
            data,
        },
    ))
}

fn invalid(result: Result<impl Sized, DecodeError>) -> Reason {
    match result {
        Err(DecodeError::Invalid(reason)) => reason,
        Err(DecodeError::Incomplete { needed }) => panic!("Incomplete ({needed}), not Invalid"),
        Ok(_) => panic!("decoded, expected Invalid"),
    }
}

#[test]
fn oversized_length_is_refused_as_soon_as_the_header_is_there() {
    let limits = Limits {
        body_max: 1000,
        data_max: 500,
        batch_body_max: 1000,
    };
    let frame = write_unlock(&[0; 2000]);
    // Only the 20 header bytes have arrived: the length is already refused, nothing waited for.
    assert_eq!(
        invalid(decode_request(&frame[..HEADER_LEN], &limits)),
        Reason::BodyTooLarge {
            len: frame.len() as u32 - HEADER_LEN as u32,
            max: 1000
        }
    );
    // A body within body_max whose data is over data_max is refused by the data limit.
    let frame = write_unlock(&[0; 600]);
    assert_eq!(
        invalid(decode_request(&frame, &limits)),
        Reason::DataTooLarge { len: 600, max: 500 }
    );
    let mut header = frame[..HEADER_LEN].to_vec();
    header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        invalid(decode_request(&header, &Limits::default())),
        Reason::BodyTooLarge { len: u32::MAX, .. }
    ));
}

#[test]
fn garbage_is_refused_at_the_first_byte_that_shows_it() {
    let limits = Limits::default();
    assert_eq!(invalid(decode_request(b"X", &limits)), Reason::BadMagic);
    assert_eq!(
        invalid(decode_request(b"SC\x07", &limits)),
        Reason::UnsupportedVersion(7)
    );
    assert_eq!(
        invalid(decode_request(b"SC\x01\x7e", &limits)),
        Reason::UnknownKind(0x7e)
    );
    assert_eq!(
        invalid(decode_request(b"SC\x01\x85", &limits)),
        Reason::WrongChannel(kind::DONE)
    );
    assert_eq!(
        invalid(decode_reply(b"SC\x01\x4a", &limits)),
        Reason::WrongChannel(kind::REPLICATE)
    );
    assert_eq!(
        invalid(decode_request(b"SC\x01\x03\x00\x80", &limits)),
        Reason::FlagsNotZero(0x8000)
    );
    // A valid prefix is Incomplete, and says how much of the header is missing.
    assert_eq!(
        decode_request(b"SC\x01\x03", &limits).err(),
        Some(DecodeError::Incomplete {
            needed: HEADER_LEN - 4
        })
    );
    assert_eq!(
        decode_request(b"", &limits).err(),
        Some(DecodeError::Incomplete { needed: HEADER_LEN })
    );
}

#[test]
fn body_errors_name_the_field() {
    let limits = Limits::default();
    let mut frame = write_unlock(b"abc");
    frame[20 + 60..20 + 68].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(invalid(decode_request(&frame, &limits)), Reason::ZeroToken);

    let mut frame = write_unlock(b"abc");
    let body_len = frame.len() as u32 - 20 + 1;
    frame[16..20].copy_from_slice(&body_len.to_le_bytes());
    frame.push(0);
    assert_eq!(
        invalid(decode_request(&frame, &limits)),
        Reason::TrailingBytes { count: 1 }
    );

    let mut frame = write_unlock(b"abc");
    frame[20] = 5; // master family
    assert_eq!(
        invalid(decode_request(&frame, &limits)),
        Reason::BadAddressFamily {
            field: "sid.master",
            family: 5
        }
    );

    let hello = encode(&Frame::new(
        1,
        Request::Hello {
            version_min: 2,
            version_max: 1,
            client_name: "x",
        },
    ));
    assert_eq!(
        invalid(decode_request(&hello, &limits)),
        Reason::BadVersionRange { min: 2, max: 1 }
    );

    let mut error = encode(&Frame::new(
        1,
        Reply::Error {
            code: ErrorCode::Storage,
            message: "x",
        },
    ));
    error[20..22].copy_from_slice(&99u16.to_le_bytes());
    assert_eq!(
        invalid(decode_reply(&error, &limits)),
        Reason::BadErrorCode(99)
    );
}

#[test]
fn a_pipelined_stream_decodes_in_order_however_it_is_cut() {
    let limits = Limits::default();
    let frames = [
        Frame::new(
            1,
            Request::Hello {
                version_min: 1,
                version_max: 1,
                client_name: "php-test",
            },
        ),
        Frame::new(
            2,
            Request::ReadLock {
                id: id(),
                wait_ms: 100,
                lease_ms: 1000,
            },
        ),
        Frame::new(
            3,
            Request::WriteUnlock {
                id: id(),
                token: 5,
                lifetime_s: 1440,
                data: &[0xee; 5000],
            },
        ),
        Frame::new(4, Request::Exists { id: id() }),
        Frame::new(5, Request::Stats),
    ];
    let mut stream = Vec::new();
    for frame in &frames {
        frame.encode(&mut stream);
    }
    // Feed the stream in chunks of every size from 1 byte up, as a socket might deliver it.
    for chunk in [1, 2, 3, 7, 19, 20, 21, 64, 1000, 4096, stream.len()] {
        let mut buffer: Vec<u8> = Vec::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        while fed < stream.len() || !buffer.is_empty() {
            match decode_request(&buffer, &limits) {
                Ok((frame, used)) => {
                    decoded.push((frame.request_id, used));
                    buffer.drain(..used);
                }
                Err(DecodeError::Incomplete { needed }) => {
                    assert!(fed < stream.len(), "stream ended inside a frame");
                    assert!(needed > 0);
                    let end = (fed + chunk).min(stream.len());
                    buffer.extend_from_slice(&stream[fed..end]);
                    fed = end;
                }
                Err(DecodeError::Invalid(reason)) => panic!("chunk {chunk}: {reason}"),
            }
        }
        let expected: Vec<_> = frames
            .iter()
            .map(|f| (f.request_id, f.encoded_len()))
            .collect();
        assert_eq!(decoded, expected, "chunk size {chunk}");
    }
    // The decoded frames borrow their data from the buffer, unchanged.
    let (first, used) = decode_request(&stream, &limits).unwrap();
    assert_eq!(first, frames[0]);
    let (second, _) = decode_request(&stream[used..], &limits).unwrap();
    assert_eq!(second, frames[1]);
}

#[test]
fn vectored_encoding_is_head_then_data() {
    let data = [0x42; 4096];
    let frame = Frame::new(
        9,
        Reply::Data {
            token: 1,
            version: 2,
            new_id: Some(id()),
            data: &data,
        },
    );
    let mut head = Vec::new();
    frame.encode_head(&mut head);
    assert_eq!(head.len(), frame.encoded_len() - data.len());
    assert_eq!(frame.data(), &data);
    head.extend_from_slice(frame.data());
    assert_eq!(head, encode(&frame));

    let relay = Frame::new(
        9,
        RelayMessage::Forward {
            origin: 4,
            request: Request::WriteUnlock {
                id: id(),
                token: 1,
                lifetime_s: 5,
                data: &data,
            },
        },
    );
    let (mut a, _) = test_session();
    let (mut b, mut server) = test_session();
    let mut whole = Vec::new();
    a.sealer.seal(&relay, &mut whole).unwrap();
    let mut parts = Vec::new();
    let tag = b.sealer.seal_head(&relay, &mut parts).unwrap();
    parts.extend_from_slice(relay.data());
    parts.extend_from_slice(&tag);
    assert_eq!(parts, whole);
    assert_eq!(whole.len(), Sealer::sealed_len(&relay));
    let (opened, used) = server.opener.open(&whole, &Limits::default()).unwrap();
    assert_eq!((opened, used), (relay, whole.len()));
}

#[test]
fn relay_frames_with_a_wrong_mac_replayed_or_reordered_are_refused() {
    let limits = Limits::default();
    let (mut client, mut server) = test_session();
    let frames: Vec<_> = (0..3u64)
        .map(|i| Frame::new(i, RelayMessage::SyncEnd { count: i }))
        .collect();
    let mut wire = Vec::new();
    for frame in &frames {
        client.sealer.seal(frame, &mut wire).unwrap();
    }
    let len = frames[0].encoded_len() + RELAY_TAG_LEN;

    // In order: accepted.
    let (first, used) = server.opener.open(&wire, &limits).unwrap();
    assert_eq!((first, used), (frames[0], len));
    // The same frame again (a replay): refused, and the opener stays refused.
    assert_eq!(invalid(server.opener.open(&wire, &limits)), Reason::BadMac);
    assert_eq!(
        invalid(server.opener.open(&wire[len..], &limits)),
        Reason::Poisoned
    );

    // Reordered: the third frame where the second was due.
    let (_, mut server) = test_session();
    server.opener.open(&wire, &limits).unwrap();
    assert_eq!(
        invalid(server.opener.open(&wire[2 * len..], &limits)),
        Reason::BadMac
    );

    // Altered body byte, altered MAC byte.
    for at in [HEADER_LEN, len - 1] {
        let (_, mut server) = test_session();
        let mut altered = wire[..len].to_vec();
        altered[at] ^= 0x80;
        assert_eq!(
            invalid(server.opener.open(&altered, &limits)),
            Reason::BadMac
        );
    }

    // An Incomplete frame does not poison: the rest arrives and it opens.
    let (_, mut server) = test_session();
    assert_eq!(
        server.opener.open(&wire[..len - 1], &limits).err(),
        Some(DecodeError::Incomplete { needed: 1 })
    );
    assert!(server.opener.open(&wire[..len], &limits).is_ok());
}

#[test]
fn a_relay_peer_without_the_key_gets_nothing_keyed() {
    let right = test_key();
    let wrong = ClusterKey::from_secret(b"not-the-cluster-secret").unwrap();

    // The challenge does not depend on the key: a keyless client learns nothing from it.
    let mut with_right = Vec::new();
    ServerHandshake::new(&right, 2, [7; 32]).challenge(&mut with_right);
    let mut with_wrong = Vec::new();
    ServerHandshake::new(&wrong, 2, [7; 32]).challenge(&mut with_wrong);
    assert_eq!(with_right, with_wrong);

    // A client with the wrong key: the server refuses its proof and sends nothing.
    let server = ServerHandshake::new(&right, 2, [7; 32]);
    let mut intruder = ClientHandshake::new(&wrong, 1, [8; 32]);
    let mut proof = Vec::new();
    intruder.on_challenge(&with_right, &mut proof).unwrap();
    let mut reply = Vec::new();
    assert_eq!(invalid(server.on_proof(&proof, &mut reply)), Reason::BadMac);
    assert!(
        reply.is_empty(),
        "nothing may be sent to a peer without the key"
    );

    // A server with the wrong key: the client refuses its accept.
    let impostor = ServerHandshake::new(&wrong, 2, [7; 32]);
    let mut client = ClientHandshake::new(&right, 1, [8; 32]);
    let mut challenge = Vec::new();
    impostor.challenge(&mut challenge);
    let mut proof = Vec::new();
    client.on_challenge(&challenge, &mut proof).unwrap();
    // The impostor cannot verify the proof; forging an accept with its own key fails.
    let forged = Frame::new(0, scd_wire::HandshakeMessage::Accept { tag: [0xaa; 32] });
    assert_eq!(invalid(client.on_accept(&encode(&forged))), Reason::BadMac);

    // A recorded proof does not work against a new challenge (fresh server nonce).
    let server = ServerHandshake::new(&right, 2, [7; 32]);
    let mut client = ClientHandshake::new(&right, 1, [8; 32]);
    let mut challenge = Vec::new();
    server.challenge(&mut challenge);
    let mut recorded = Vec::new();
    client.on_challenge(&challenge, &mut recorded).unwrap();
    let fresh = ServerHandshake::new(&right, 2, [9; 32]);
    assert_eq!(
        invalid(fresh.on_proof(&recorded, &mut Vec::new())),
        Reason::BadMac
    );

    // Handshake frames are refused out of order, and carry request ID 0.
    assert!(matches!(
        invalid(server.on_proof(&challenge, &mut Vec::new())),
        Reason::UnexpectedKind {
            expected: kind::AUTH_PROOF,
            got: kind::AUTH_CHALLENGE
        }
    ));
    let mut with_id = challenge.clone();
    with_id[8] = 1;
    assert_eq!(
        invalid(decode_handshake(&with_id)),
        Reason::RequestIdNotZero
    );
}

#[test]
fn both_sides_agree_on_keys_and_peer_ids() {
    let limits = Limits::default();
    let (mut client, mut server) = test_session();
    assert_eq!(client.peer_node_id, 2);
    assert_eq!(server.peer_node_id, 1);
    assert_eq!((client.version, server.version), (1, 1));
    let ping = Frame::new(1, RelayMessage::Ack);
    let mut c2s = Vec::new();
    client.sealer.seal(&ping, &mut c2s).unwrap();
    assert_eq!(server.opener.open(&c2s, &limits).unwrap().0, ping);
    let mut s2c = Vec::new();
    server.sealer.seal(&ping, &mut s2c).unwrap();
    assert_eq!(client.opener.open(&s2c, &limits).unwrap().0, ping);
    // Same message, same sequence number, other direction: other bytes (per-direction keys).
    assert_ne!(c2s, s2c);
}

fn heartbeat(seq: u64, epoch: u64) -> Heartbeat {
    Heartbeat {
        flags: FLAG_DRAINING,
        node_id: 77,
        relay: SocketAddr::from(([192, 0, 2, 1], 34567)),
        epoch,
        seq,
        sessions: 12,
        sockets: 3,
    }
}

#[test]
fn heartbeats_replayed_stale_or_forged_are_refused() {
    let key = test_key();
    let mut verifier = HeartbeatVerifier::new();
    let first = heartbeat(1, 10).seal(&key);
    assert_eq!(verifier.verify(&first, &key), Ok(heartbeat(1, 10)));
    assert!(
        verifier.verify(&first, &key).unwrap_err()
            == HeartbeatError::Replay {
                node_id: 77,
                seq: 1,
                seen: 1
            }
    );
    assert!(verifier.verify(&heartbeat(2, 10).seal(&key), &key).is_ok());
    // A restart: new epoch, sequence from 1 again.
    assert!(verifier.verify(&heartbeat(1, 11).seal(&key), &key).is_ok());
    assert_eq!(
        verifier.verify(&heartbeat(99, 10).seal(&key), &key),
        Err(HeartbeatError::StaleEpoch {
            node_id: 77,
            epoch: 10,
            seen: 11
        })
    );
    assert_eq!(verifier.last_seen(77), Some((11, 1)));

    let other = ClusterKey::from_secret(b"another-cluster-secret").unwrap();
    assert_eq!(
        Heartbeat::open(&heartbeat(5, 11).seal(&other), &key),
        Err(HeartbeatError::BadMac)
    );
    let mut altered = heartbeat(5, 11).seal(&key);
    altered[52] ^= 1; // sessions
    assert_eq!(Heartbeat::open(&altered, &key), Err(HeartbeatError::BadMac));
    assert_eq!(
        Heartbeat::open(&altered[..99], &key),
        Err(HeartbeatError::WrongLength { len: 99 })
    );
    assert!(heartbeat(1, 1).draining() && !heartbeat(1, 1).ha());
    assert!(!heartbeat(1, 1).witness_only());
}

#[test]
fn heartbeat_flags_round_trip_and_undefined_bits_are_refused() {
    let key = test_key();
    let with = |flags| Heartbeat {
        flags,
        ..heartbeat(1, 1)
    };
    let witness = with(FLAG_WITNESS_ONLY | FLAG_HA);
    let opened = Heartbeat::open(&witness.seal(&key), &key).expect("a witness's heartbeat");
    assert_eq!(opened, witness);
    assert!(opened.witness_only() && opened.ha() && !opened.draining());
    for bit in 3..16 {
        assert_eq!(
            Heartbeat::open(&with(1 << bit).seal(&key), &key),
            Err(HeartbeatError::UnknownFlags(1 << bit)),
            "bit {bit} is not defined"
        );
    }
}

#[test]
fn heartbeat_verifier_memory_is_bounded() {
    let key = test_key();
    let mut verifier = HeartbeatVerifier::new();
    for node_id in 0..HEARTBEAT_SENDERS_MAX as u64 {
        let hb = Heartbeat {
            node_id,
            ..heartbeat(1, 1)
        };
        assert!(verifier.accept(&hb).is_ok());
    }
    let one_more = Heartbeat {
        node_id: u64::MAX,
        ..heartbeat(1, 1)
    };
    assert_eq!(
        verifier.verify(&one_more.seal(&key), &key),
        Err(HeartbeatError::TooManySenders)
    );
    verifier.forget(0);
    assert!(verifier.accept(&one_more).is_ok());
    assert_eq!(verifier.senders(), HEARTBEAT_SENDERS_MAX);
}

#[test]
fn forwarding_refuses_the_negotiating_kinds() {
    let limits = Limits::default();
    // Build an unsealed Forward of a Hello by hand and seal it with the real sealer.
    let mut body = Vec::new();
    body.extend_from_slice(&4u64.to_le_bytes());
    body.push(kind::HELLO);
    body.extend_from_slice(&[1, 1, 0]);
    let mut frame = Vec::from(*b"SC");
    frame.extend_from_slice(&[1, kind::FORWARD, 0, 0, 0, 0]);
    frame.extend_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    let (_, mut server) = test_session();
    // Without the key no tag can be made, so check through the unsealed body decoder that the
    // fuzz target uses: the opener refuses it (BadMac here), the body decoder names the reason.
    assert_eq!(
        invalid(
            server
                .opener
                .open(&[frame.as_slice(), &[0; 16]].concat(), &limits)
        ),
        Reason::BadMac
    );
    assert_eq!(
        invalid(scd_wire::fuzz_checks::decode_unsealed_for_tests(
            &frame, &limits
        )),
        Reason::NotForwardable(kind::HELLO)
    );
}

#[test]
fn strings_are_bounded_and_stats_names_checked() {
    let limits = Limits::default();
    // The encoder truncates an over-long message on a character boundary.
    let long = "é".repeat(200); // 400 bytes
    let frame = Frame::new(
        1,
        Reply::Error {
            code: ErrorCode::Internal,
            message: &long,
        },
    );
    let bytes = encode(&frame);
    let (decoded, _) = decode_reply(&bytes, &limits).unwrap();
    let Reply::Error { message, .. } = decoded.message else {
        panic!("not an error reply");
    };
    assert_eq!(message.len(), 256);
    assert!(long.starts_with(message));

    assert!(matches!(
        StatEntries::new(&[("bad name", 1)]),
        Err(Reason::BadByte { byte: b' ', .. })
    ));
    assert!(matches!(
        StatEntries::new(&[("", 1)]),
        Err(Reason::Empty { .. })
    ));
    let name = "n".repeat(65);
    assert!(matches!(
        StatEntries::new(&[(name.as_str(), 1)]),
        Err(Reason::TooLong { len: 65, .. })
    ));
    let entries = [("total.reads", 5u64), ("shard.1.writes", 6)];
    let stats = StatEntries::new(&entries).unwrap();
    let bytes = encode(&Frame::new(2, Reply::Stats(stats)));
    let (decoded, _) = decode_reply(&bytes, &limits).unwrap();
    let Reply::Stats(got) = decoded.message else {
        panic!("not a stats reply");
    };
    assert_eq!(got.iter().collect::<Vec<_>>(), entries.to_vec());
    assert_eq!(got.len(), 2);
}

#[test]
fn version_negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate(1, 3, 2, 5), Some(3));
    assert_eq!(negotiate(1, 1, 1, 1), Some(1));
    assert_eq!(negotiate(4, 5, 1, 3), None);
}

#[test]
fn located_is_checked_field_by_field() {
    let frame = |body: &[u8]| {
        let mut f = Vec::from(*b"SC");
        f.extend_from_slice(&[1, kind::LOCATED, 0, 0, 0, 0]);
        f.extend_from_slice(&3u64.to_le_bytes());
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend_from_slice(body);
        f
    };
    fn decode(f: &[u8]) -> Result<(Frame<RelayMessage<'_>>, usize), DecodeError> {
        scd_wire::fuzz_checks::decode_unsealed_for_tests(f, &Limits::default())
    }
    let mut head = vec![0xab; 16];
    head.extend_from_slice(&3u32.to_le_bytes());
    let v4 = |last: u8| {
        let mut a = vec![4, 0, 0x87, 0x87, 10, 0, 0, last];
        a.extend_from_slice(&[0; 12]);
        a
    };
    // Not found: 21 bytes, nothing may follow.
    let none = [head.as_slice(), &[0]].concat();
    assert!(decode(&frame(&none)).is_ok());
    assert_eq!(
        invalid(decode(&frame(&[none.as_slice(), &[0]].concat()))),
        Reason::TrailingBytes { count: 1 }
    );
    // The found byte is a boolean.
    assert_eq!(
        invalid(decode(&frame(&[head.as_slice(), &[2]].concat()))),
        Reason::BadBool {
            field: "found",
            value: 2
        }
    );
    // Found: a master (never "none"), a backup (may be "none"), epoch, version.
    let tail = [3u32.to_le_bytes().as_slice(), &2u64.to_le_bytes()].concat();
    let found = [head.as_slice(), &[1], &v4(1), &[0; 20], &tail].concat();
    let found = frame(&found);
    let (f, _) = decode(&found).unwrap();
    assert_eq!(
        f.message,
        RelayMessage::Located {
            hash: [0xab; 16],
            live_nodes: 3,
            location: Some(scd_wire::Location {
                master: SocketAddr::from(([10, 0, 0, 1], 0x8787)),
                backup: None,
                epoch: 3,
                version: 2,
            }),
        }
    );
    let no_master = [head.as_slice(), &[1], &[0; 20], &v4(2), &tail].concat();
    assert_eq!(
        invalid(decode(&frame(&no_master))),
        Reason::BadAddressFamily {
            field: "master",
            family: 0
        }
    );
    let short = [head.as_slice(), &[1], &v4(1), &v4(2)].concat();
    assert_eq!(
        invalid(decode(&frame(&short))),
        Reason::Truncated { field: "epoch" }
    );
}

#[test]
fn sync_hash_lists_are_checked_before_use_and_round_trip() {
    fn decode(f: &[u8]) -> Result<(Frame<RelayMessage<'_>>, usize), DecodeError> {
        scd_wire::fuzz_checks::decode_unsealed_for_tests(f, &Limits::default())
    }
    let frame = |k: u8, body: &[u8]| {
        let mut f = Vec::from(*b"SC");
        f.extend_from_slice(&[1, k, 0, 0, 0, 0]);
        f.extend_from_slice(&3u64.to_le_bytes());
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend_from_slice(body);
        f
    };
    let hashes: Vec<u8> = (0..5 * 16).map(|i| i as u8).collect();
    let mut places = Vec::new();
    for i in 0..3u8 {
        scd_wire::PlaceList::push(
            &mut places,
            &[i; 16],
            &scd_wire::Location {
                master: SocketAddr::from(([10, 0, 0, i + 1], 34567)),
                backup: (i != 1).then(|| SocketAddr::from(([10, 0, 0, 9], 34567))),
                epoch: u32::from(i) + 2,
                version: u64::from(i) * 7,
            },
        );
    }
    for (k, entries, entry_len) in [
        (kind::SYNC_HASHES, &hashes, 16),
        (kind::SYNC_PLACES, &places, scd_wire::PlaceList::ENTRY_LEN),
    ] {
        let count = (entries.len() / entry_len) as u32;
        let body = [count.to_le_bytes().as_slice(), entries].concat();
        // The valid body decodes and encodes back to the same bytes.
        let whole = frame(k, &body);
        let (f, used) = decode(&whole).unwrap();
        assert_eq!(used, whole.len());
        assert_eq!(encode(&f), whole);
        // Every shorter body, and every count but the right one (up to the maximum and one past
        // it, and u32::MAX), is refused as invalid, never as "need more bytes".
        for cut in 0..body.len() {
            assert!(
                matches!(
                    decode(&frame(k, &body[..cut])),
                    Err(DecodeError::Invalid(_))
                ),
                "kind {k:#x}, body cut at {cut}"
            );
        }
        for wrong in (0..=count + 2).chain([4096, 4097, u32::MAX]) {
            if wrong == count {
                continue;
            }
            let bad = [wrong.to_le_bytes().as_slice(), entries].concat();
            assert!(
                matches!(decode(&frame(k, &bad)), Err(DecodeError::Invalid(_))),
                "kind {k:#x}, count {wrong} for {count} entries"
            );
        }
    }
    // Arbitrary bodies (a fixed pseudo-random sequence): refused or decoded, never a panic, and
    // whatever decodes encodes back to the same bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2000 {
        let len = (round % 300) as usize;
        let mut body = Vec::with_capacity(len + 4);
        body.extend_from_slice(&((round % 5) as u32).to_le_bytes());
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.push(x as u8);
        }
        for k in [kind::SYNC_HASHES, kind::SYNC_PLACES] {
            let f = frame(k, &body);
            if let Ok((m, used)) = decode(&f) {
                assert_eq!(used, f.len());
                assert_eq!(encode(&m), f);
            }
        }
    }
}
