//! Encode and decode cost per frame, and throughput on 4 KiB session blobs.
//!
//! Run: `cargo bench -p scd-wire --bench codec`. Figures are printed by criterion as time per
//! frame and, where a byte throughput is set, GiB/s over the whole frame.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use scd_wire::fuzz_checks::{test_key, test_session};
use scd_wire::{
    Frame, Heartbeat, HeartbeatVerifier, Limits, RelayMessage, Replica, Reply, Request, SessionId,
    decode_reply, decode_request,
};

fn id() -> SessionId {
    SessionId::new(
        SocketAddr::from(([10, 0, 0, 1], 34567)),
        Some(SocketAddr::from(([10, 0, 0, 2], 34567))),
        7,
        [0xab; 16],
    )
}

fn local(c: &mut Criterion) {
    let limits = Limits::default();
    let blob = vec![0x5a_u8; 4096];
    let write = Frame::new(
        1,
        Request::WriteUnlock {
            id: id(),
            token: 42,
            lifetime_s: 1440,
            data: &blob,
        },
    );
    let data = Frame::new(
        1,
        Reply::Data {
            token: 42,
            version: 9,
            new_id: None,
            data: &blob,
        },
    );
    let read_lock = Frame::new(
        1,
        Request::ReadLock {
            id: id(),
            wait_ms: 5000,
            lease_ms: 30000,
        },
    );

    let mut g = c.benchmark_group("local_4KiB");
    g.throughput(Throughput::Bytes(write.encoded_len() as u64));
    let mut out = Vec::with_capacity(8192);
    g.bench_function("encode_write_unlock", |b| {
        b.iter(|| {
            out.clear();
            black_box(&write).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut head = Vec::with_capacity(256);
    g.bench_function("encode_head_write_unlock", |b| {
        b.iter(|| {
            head.clear();
            black_box(&write).encode_head(&mut head);
            black_box(head.len())
        })
    });
    let mut bytes = Vec::new();
    write.encode(&mut bytes);
    g.bench_function("decode_write_unlock", |b| {
        b.iter(|| black_box(decode_request(black_box(&bytes), &limits).is_ok()))
    });
    g.throughput(Throughput::Bytes(data.encoded_len() as u64));
    g.bench_function("encode_data_reply", |b| {
        b.iter(|| {
            out.clear();
            black_box(&data).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut bytes = Vec::new();
    data.encode(&mut bytes);
    g.bench_function("decode_data_reply", |b| {
        b.iter(|| black_box(decode_reply(black_box(&bytes), &limits).is_ok()))
    });
    g.finish();

    let mut g = c.benchmark_group("local_small");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_read_lock", |b| {
        b.iter(|| {
            out.clear();
            black_box(&read_lock).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut bytes = Vec::new();
    read_lock.encode(&mut bytes);
    g.bench_function("decode_read_lock", |b| {
        b.iter(|| black_box(decode_request(black_box(&bytes), &limits).is_ok()))
    });
    let text = id().encode();
    g.bench_function("session_id_parse", |b| {
        b.iter(|| black_box(SessionId::parse(black_box(text.as_bytes())).is_ok()))
    });
    g.bench_function("session_id_encode", |b| {
        b.iter(|| black_box(black_box(id()).encode().len()))
    });
    g.finish();
}

fn relay(c: &mut Criterion) {
    let limits = Limits::default();
    let blob = vec![0x5a_u8; 4096];
    let frame = Frame::new(
        1,
        RelayMessage::Replicate(Replica {
            hash: [1; 16],
            version: 3,
            epoch: 7,
            lifetime_s: 1440,
            data: &blob,
        }),
    );
    let mut g = c.benchmark_group("relay_4KiB");
    g.throughput(Throughput::Bytes(frame.encoded_len() as u64));
    let (mut client, _) = test_session();
    let mut out = Vec::with_capacity(8192);
    g.bench_function("seal_replicate", |b| {
        b.iter(|| {
            out.clear();
            client.sealer.seal(black_box(&frame), &mut out).is_ok()
        })
    });
    // Each open needs the next sequence number: seal a fresh stream of frames per batch.
    g.bench_function("open_replicate", |b| {
        b.iter_batched(
            || {
                let (mut client, server) = test_session();
                let mut wire = Vec::new();
                let _ = client.sealer.seal(&frame, &mut wire);
                (server, wire)
            },
            |(mut server, wire)| black_box(server.opener.open(&wire, &limits).is_ok()),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Reference: the MAC primitive alone over the same bytes, to tell framing cost from MAC cost.
    let mut g = c.benchmark_group("blake3_reference_4KiB");
    let mut sealed = Vec::new();
    frame.encode(&mut sealed);
    g.throughput(Throughput::Bytes(sealed.len() as u64));
    let key32 = [7u8; 32];
    g.bench_function("keyed_hash", |b| {
        b.iter(|| blake3::keyed_hash(&key32, black_box(&sealed)))
    });
    g.finish();

    let key = test_key();
    let heartbeat = Heartbeat {
        flags: 0,
        node_id: 5,
        relay: SocketAddr::from(([10, 0, 0, 1], 34567)),
        epoch: 1,
        seq: 1,
        sessions: 1000,
        sockets: 50,
    };
    let mut g = c.benchmark_group("heartbeat");
    g.bench_function("seal", |b| b.iter(|| black_box(heartbeat).seal(&key)));
    let datagram = heartbeat.seal(&key);
    g.bench_function("open_and_verify", |b| {
        b.iter_batched(
            HeartbeatVerifier::new,
            |mut v| black_box(v.verify(&datagram, &key).is_ok()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, local, relay);
criterion_main!(benches);
