//! The null server: the ceiling this machine allows for scd's protocol.
//!
//! It runs like scd (one monoio event loop per core, io_uring where available, one Unix socket and
//! one loopback TCP listener shared by the cores), decodes every request with `scd_wire` like
//! scd, and answers each with the reply scd would send, of the same size: Data with `size` bytes
//! for reads, Done for writes. It keeps no sessions and touches no store, so the gap between it
//! and scd is what scd's own work costs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, UnixListener};
use scd_wire::frame::{DecodeError, Limits};
use scd_wire::local::{ErrorCode, HelloOk, Reply, Request, decode_request};
use scd_wire::{Frame, SessionId};

use crate::constants::{READ_BUFFER_BYTES, SIZE_MAX};
use crate::workload::synthetic_id;

/// Settings of the null server.
#[derive(Clone, Debug, clap::Args)]
pub struct NullArgs {
    /// Unix socket to listen on.
    #[arg(long)]
    pub unix: Option<PathBuf>,
    /// Loopback TCP address to listen on.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Bytes of session data in every Data reply.
    #[arg(long, default_value_t = crate::constants::SIZE_DEFAULT)]
    pub size: usize,
    /// Event loops (0 = one per core, as scd).
    #[arg(long, default_value_t = 0)]
    pub cores: usize,
}

/// Runs until killed.
pub fn run(args: NullArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size <= SIZE_MAX,
        "--size {} is over {SIZE_MAX}",
        args.size
    );
    anyhow::ensure!(
        args.unix.is_some() || args.tcp.is_some(),
        "give --unix and/or --tcp"
    );
    let unix = match &args.unix {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            Some(
                std::os::unix::net::UnixListener::bind(path)
                    .with_context(|| format!("binding {}", path.display()))?,
            )
        }
        None => None,
    };
    let tcp = match args.tcp {
        Some(addr) => {
            anyhow::ensure!(addr.ip().is_loopback(), "--tcp must be a loopback address");
            Some(std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?)
        }
        None => None,
    };
    let cores = if args.cores == 0 {
        crate::sys::cpus()
    } else {
        args.cores
    };
    let mut threads = Vec::new();
    for core in 0..cores {
        let unix = unix.as_ref().map(|l| l.try_clone()).transpose()?;
        let tcp = tcp.as_ref().map(|l| l.try_clone()).transpose()?;
        let size = args.size;
        threads.push(
            std::thread::Builder::new()
                .name(format!("null-core-{core}"))
                .spawn(move || core_main(unix, tcp, size))?,
        );
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a null-server core panicked"))??;
    }
    Ok(())
}

fn core_main(
    unix: Option<std::os::unix::net::UnixListener>,
    tcp: Option<std::net::TcpListener>,
    size: usize,
) -> anyhow::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("building the event loop")?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        if let Some(l) = unix {
            let l = UnixListener::from_std(l)?;
            tasks.push(monoio::spawn(async move {
                while let Ok((stream, _)) = l.accept().await {
                    monoio::spawn(serve(stream, size));
                }
            }));
        }
        if let Some(l) = tcp {
            let l = TcpListener::from_std(l)?;
            tasks.push(monoio::spawn(async move {
                while let Ok((stream, _)) = l.accept().await {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve(stream, size));
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        Ok(())
    })
}

async fn serve<S: AsyncReadRent + AsyncWriteRent>(mut stream: S, size: usize) {
    let limits = Limits::default();
    let data = vec![0x5Au8; size];
    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut created = 0u64;
    loop {
        let mut pos = 0;
        loop {
            match decode_request(&inbuf[pos..], &limits) {
                Ok((frame, used)) => {
                    pos += used;
                    answer(frame, &data, &mut created, &mut out);
                }
                Err(DecodeError::Incomplete { .. }) => break,
                // Like scd: a frame that can never be valid ends the connection.
                Err(DecodeError::Invalid(_)) => return,
            }
        }
        inbuf.drain(..pos);
        if !out.is_empty() {
            let (res, buf) = stream.write_all(out).await;
            out = buf;
            out.clear();
            if res.is_err() {
                return;
            }
        }
        if inbuf.capacity() - inbuf.len() < READ_BUFFER_BYTES / 2 {
            inbuf.reserve(READ_BUFFER_BYTES / 2);
        }
        let (len, cap) = (inbuf.len(), inbuf.capacity());
        let (res, slice) = stream.read(inbuf.slice_mut(len..cap)).await;
        inbuf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn answer(frame: Frame<Request<'_>>, data: &[u8], created: &mut u64, out: &mut Vec<u8>) {
    let rid = frame.request_id;
    let reply = match frame.message {
        Request::Hello { .. } => Reply::HelloOk(HelloOk {
            version: 1,
            node: SocketAddr::from(([127, 0, 0, 1], 34567)),
            node_id: 1,
            data_max: Limits::default().data_max,
            body_max: Limits::default().body_max,
        }),
        Request::CreateId => {
            *created += 1;
            let id: SessionId = synthetic_id(0x4E55_4C4C, *created);
            Reply::IdCreated { id }
        }
        Request::ReadLock { .. } => Reply::Data {
            token: 1,
            version: 1,
            new_id: None,
            data,
        },
        Request::Read { .. } => Reply::Data {
            token: 0,
            version: 1,
            new_id: None,
            data,
        },
        Request::WriteUnlock { .. }
        | Request::Touch { .. }
        | Request::Unlock { .. }
        | Request::Destroy { .. } => Reply::Done { version: 1 },
        Request::Exists { .. } => Reply::Existence { exists: true },
        Request::Stats => Reply::Error {
            code: ErrorCode::BadRequest,
            message: "the null server keeps no statistics",
        },
    };
    Frame::new(rid, reply).encode(out);
}
