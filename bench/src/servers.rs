//! The servers under test, each started by the harness on loopback (TCP on a free port and a Unix
//! socket in the run's work directory) with stated settings, and stopped when its handle drops:
//! at the end of its target, on an error, or when the harness is interrupted.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use scd_wire::Frame;
use scd_wire::frame::Limits;
use scd_wire::local::{Reply, Request, decode_reply};

use crate::constants::{SERVER_READY_MS, SIZE_MAX};
use crate::load::Endpoint;
use crate::pin::{self, CpuSet};
use crate::sys;

/// Redis persistence, matched to scd's flush policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisPersistence {
    /// No RDB, no AOF: everything in memory (like memcached).
    Off,
    /// AOF with `appendfsync always`: a write is acknowledged after its fsync (≈ write-through).
    Always,
    /// AOF with `appendfsync everysec`: flushed once a second (≈ delayed-write).
    Everysec,
}

/// scd's flush policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScdPolicy {
    WriteThrough,
    DelayedWrite,
}

impl ScdPolicy {
    /// `wt` or `dw`, as target names say it.
    pub fn short(self) -> &'static str {
        match self {
            ScdPolicy::WriteThrough => "wt",
            ScdPolicy::DelayedWrite => "dw",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            ScdPolicy::WriteThrough => "write-through",
            ScdPolicy::DelayedWrite => "delayed-write",
        }
    }
}

/// A running server. Dropping it kills the process (and waits for it).
pub struct Server {
    pub name: String,
    child: Option<Child>,
    pub unix: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    /// The command line it was started with, for the report.
    pub settings: String,
    log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn endpoint(&self, unix: bool) -> Option<Endpoint> {
        if unix {
            self.unix.clone().map(Endpoint::Unix)
        } else {
            self.tcp.map(Endpoint::Tcp)
        }
    }

    /// Whether the process is still running (false once it exited or was stopped).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server now with SIGKILL (`kill -9`; idempotent) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines the server logged, to explain a failure.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    pub(crate) fn spawn(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        unix: Option<PathBuf>,
        tcp: Option<SocketAddr>,
    ) -> anyhow::Result<Server> {
        Server::spawn_on(name, dir, program, args, unix, tcp, None)
    }

    /// `spawn`, the process confined to `cpus` when given (`--pin-nodes`).
    pub(crate) fn spawn_on(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        unix: Option<PathBuf>,
        tcp: Option<SocketAddr>,
        cpus: Option<&CpuSet>,
    ) -> anyhow::Result<Server> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(set) = cpus {
            pin::pin_command(&mut command, set);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        // The report shows the placement as the command that would reproduce it.
        let placement: Vec<String> = cpus
            .map(|set| vec!["taskset".into(), "-c".into(), set.to_string()])
            .unwrap_or_default();
        let settings = placement
            .into_iter()
            .chain(std::iter::once(program.display().to_string()))
            .chain(args.iter().map(|a| {
                if a.is_empty() {
                    "\"\"".to_string()
                } else {
                    a.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Server {
            name: name.to_string(),
            child: Some(child),
            unix,
            tcp,
            settings,
            log,
        })
    }

    /// Waits until the server answers `probe` on each of its endpoints.
    pub(crate) fn wait_ready(&mut self, probe: Probe) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(SERVER_READY_MS);
        let endpoints: Vec<Endpoint> = [self.endpoint(true), self.endpoint(false)]
            .into_iter()
            .flatten()
            .collect();
        for endpoint in endpoints {
            loop {
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!(
                            "{} exited at start ({status}):\n{}",
                            self.name,
                            self.log_tail()
                        );
                    }
                }
                match probe_once(&endpoint, probe) {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        bail!(
                            "{} not ready on {endpoint:?}: {e}\n{}",
                            self.name,
                            self.log_tail()
                        )
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Probe {
    Connect,
    RedisPing,
    ScdHello,
}

fn probe_once(endpoint: &Endpoint, probe: Probe) -> anyhow::Result<()> {
    let timeout = Some(Duration::from_secs(2));
    let mut stream: Box<dyn ReadWrite> = match endpoint {
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
        Endpoint::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, Duration::from_secs(2))?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
    };
    let mut buf = [0u8; 512];
    match probe {
        Probe::Connect => Ok(()),
        Probe::RedisPing => {
            stream.write_all(b"PING\r\n")?;
            let n = stream.read(&mut buf)?;
            if buf[..n].starts_with(b"+PONG") {
                Ok(())
            } else {
                bail!("PING answered {:?}", String::from_utf8_lossy(&buf[..n]))
            }
        }
        Probe::ScdHello => {
            let mut out = Vec::new();
            let hello = Request::Hello {
                version_min: 1,
                version_max: 1,
                client_name: "probe",
            };
            Frame::new(1, hello).encode(&mut out);
            stream.write_all(&out)?;
            let mut got = Vec::new();
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    bail!("closed before HelloOk");
                }
                got.extend_from_slice(&buf[..n]);
                match decode_reply(&got, &Limits::default()) {
                    Ok((frame, _)) if matches!(frame.message, Reply::HelloOk(_)) => return Ok(()),
                    Ok((frame, _)) => bail!("Hello answered {:?}", frame.message),
                    Err(scd_wire::DecodeError::Incomplete { .. }) => continue,
                    Err(e) => bail!("bad reply to Hello: {e}"),
                }
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The version line a program prints (`--version` / `-V`), for the report.
pub fn version(program: &Path, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown version".into())
}

/// Starts Redis on a free loopback port and a Unix socket in `dir`.
pub fn start_redis(
    program: &Path,
    dir: &Path,
    persistence: RedisPersistence,
) -> anyhow::Result<Server> {
    let tcp = sys::free_port()?;
    let unix = dir.join("redis.sock");
    let mut args: Vec<String> = vec![
        "--port".into(),
        tcp.port().to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--unixsocket".into(),
        unix.display().to_string(),
        "--unixsocketperm".into(),
        "700".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--save".into(),
        String::new(),
        "--protected-mode".into(),
        "no".into(),
        "--daemonize".into(),
        "no".into(),
        "--maxclients".into(),
        "10000".into(),
        "--io-threads".into(),
        "1".into(),
        "--logfile".into(),
        String::new(),
    ];
    match persistence {
        RedisPersistence::Off => args.extend(["--appendonly".into(), "no".into()]),
        RedisPersistence::Always | RedisPersistence::Everysec => {
            let every = if persistence == RedisPersistence::Always {
                "always"
            } else {
                "everysec"
            };
            args.extend([
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                every.into(),
            ]);
        }
    }
    let mut server = Server::spawn("redis", dir, program, &args, Some(unix), Some(tcp))?;
    server.wait_ready(Probe::RedisPing)?;
    Ok(server)
}

/// Starts memcached with 2 threads on one transport (memcached listens on TCP or on a Unix socket,
/// not both at once).
pub fn start_memcached(
    program: &Path,
    dir: &Path,
    unix: bool,
    memory_mb: usize,
) -> anyhow::Result<Server> {
    let mut args: Vec<String> = vec![
        "-t".into(),
        "2".into(),
        "-m".into(),
        memory_mb.to_string(),
        "-c".into(),
        "10000".into(),
        "-I".into(),
        format!("{}", (SIZE_MAX * 2).next_power_of_two()),
    ];
    if sys::is_root() {
        // memcached refuses to run as root unless told which user to run as.
        args.extend(["-u".into(), "root".into()]);
    }
    let (sock, tcp) = if unix {
        let sock = dir.join("memcached.sock");
        args.extend([
            "-s".into(),
            sock.display().to_string(),
            "-a".into(),
            "0700".into(),
        ]);
        (Some(sock), None)
    } else {
        let tcp = sys::free_port()?;
        args.extend([
            "-l".into(),
            "127.0.0.1".into(),
            "-p".into(),
            tcp.port().to_string(),
            "-U".into(),
            "0".into(),
        ]);
        (None, Some(tcp))
    };
    let mut server = Server::spawn("memcached", dir, program, &args, sock, tcp)?;
    server.wait_ready(Probe::Connect)?;
    Ok(server)
}

/// Starts scd on one node with its data in `dir`, confined to `cpus` when given (with as many
/// cores and shards as CPUs in it).
pub fn start_scd(
    program: &Path,
    dir: &Path,
    policy: ScdPolicy,
    extra: &[String],
    cpus: Option<&CpuSet>,
) -> anyhow::Result<Server> {
    let tcp = sys::free_port()?;
    let unix = dir.join("scd.sock");
    let data = dir.join("data");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--unix-socket".into(),
        unix.display().to_string(),
        "--tcp-listen".into(),
        tcp.to_string(),
        "--storage-model".into(),
        policy.flag().into(),
        "--connections-max".into(),
        "10000".into(),
        "--metrics-listen".into(),
        String::new(),
        "--log-level".into(),
        "warn".into(),
    ];
    if let Some(set) = cpus {
        args.extend(pin::scd_core_flags(set, extra));
    }
    args.extend(extra.iter().cloned());
    let mut server = Server::spawn_on("scd", dir, program, &args, Some(unix), Some(tcp), cpus)?;
    server.wait_ready(Probe::ScdHello)?;
    Ok(server)
}

/// Starts the null server (this binary, `null-server` subcommand) on both transports.
pub fn start_null(program: &Path, dir: &Path, size_bytes: usize) -> anyhow::Result<Server> {
    let tcp = sys::free_port()?;
    let unix = dir.join("null.sock");
    let args: Vec<String> = vec![
        "null-server".into(),
        "--unix".into(),
        unix.display().to_string(),
        "--tcp".into(),
        tcp.to_string(),
        "--size".into(),
        size_bytes.to_string(),
    ];
    let mut server = Server::spawn("null", dir, program, &args, Some(unix), Some(tcp))?;
    server.wait_ready(Probe::ScdHello)?;
    Ok(server)
}
