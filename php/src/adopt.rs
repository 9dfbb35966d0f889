//! The migration window: adopting sessions from the store PHP used before `cluster`.
//!
//! This file holds the `cluster.adopt_*` settings (parsed values), the check of an old-format
//! session ID, the derived keys under which scd keeps what the adoption needs (which cluster ID an
//! old ID became; when the window opened), and the two old stores: PHP's `files` handler
//! (`sess_<id>` files, locked with `flock` as PHP locks them) and phpredis (RESP over a socket,
//! locked with phpredis's `<key>_LOCK` key). How the pieces fit is in `handler` (`adopt_read`)
//! and docs/operations.md (*Migration window*).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::constants::{ADOPT_LOCK_POLL_MS, OLD_ID_MAX, SAVE_PATH_MAX};
use crate::resp::{Resp, RespAddr, RespValue};

/// Where the old sessions are (`cluster.adopt_from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// PHP's `files` handler: `sess_<id>` in `dir`, or `depth` levels of one-character folders
    /// below it (`session.save_path = "N;/dir"`).
    Files { dir: PathBuf, depth: u32 },
    /// phpredis: keys `<prefix><id>` on one Redis server.
    Redis(RedisSource),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSource {
    pub addr: RespAddr,
    pub prefix: String,
    pub database: u32,
    pub auth: Option<String>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Files { dir, depth: 0 } => write!(f, "files:{}", dir.display()),
            Source::Files { dir, depth } => write!(f, "files:{depth};{}", dir.display()),
            Source::Redis(r) => write!(
                f,
                "redis:{} (prefix {:?}, database {})",
                r.addr, r.prefix, r.database
            ),
        }
    }
}

/// When the window closes (`cluster.adopt_until`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// At this time (milliseconds since the Unix epoch, UTC).
    At(u64),
    /// This many milliseconds after the window opened on this node.
    After(u64),
    /// `session.gc_maxlifetime` after the window opened on this node: by then every session of
    /// the old store has expired (empty setting, the default).
    MaxLifetime,
}

/// The `cluster.adopt_*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptSettings {
    /// `None`: no migration window (the default).
    pub from: Option<Source>,
    pub from_text: String,
    pub until: Until,
    pub until_text: String,
    /// Remove the old copy once adopted (default on).
    pub remove: bool,
    /// `cluster.mirror_to`: every session written or touched is also written here under its
    /// cluster ID (the way back to the old handler).
    pub mirror: Option<Source>,
}

impl AdoptSettings {
    pub const DEFAULT: AdoptSettings = AdoptSettings {
        from: None,
        from_text: String::new(),
        until: Until::MaxLifetime,
        until_text: String::new(),
        remove: true,
        mirror: None,
    };
}

/// Parses `cluster.adopt_from`: empty (no window), `files:/dir`, `files:N;/dir`,
/// `files:N;MODE;/dir` (the `files` handler's own save_path after `files:`), or `redis:` followed by
/// a phpredis save_path: `redis:tcp://HOST:PORT?prefix=P&database=N&auth=SECRET` or
/// `redis:unix:///path/redis.sock?...`.
pub fn parse_source(raw: &[u8]) -> Result<Option<Source>, &'static str> {
    if raw.len() > SAVE_PATH_MAX {
        return Err("too long");
    }
    let text = std::str::from_utf8(raw.trim_ascii()).map_err(|_| "not UTF-8")?;
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(rest) = text.strip_prefix("files:") {
        let parts: Vec<&str> = rest.split(';').collect();
        let (depth, dir) = match parts.as_slice() {
            [dir] => (0, *dir),
            [n, dir] | [n, _, dir] => (
                n.parse::<u32>()
                    .ok()
                    .filter(|d| *d <= 8)
                    .ok_or("files:N;/dir needs N from 0 to 8")?,
                *dir,
            ),
            _ => return Err("expected files:/dir, files:N;/dir or files:N;MODE;/dir"),
        };
        if !dir.starts_with('/') {
            return Err("the folder after files: must be absolute (start with /)");
        }
        if dir.contains('\0') {
            return Err("the folder contains a NUL byte");
        }
        return Ok(Some(Source::Files {
            dir: PathBuf::from(dir),
            depth,
        }));
    }
    if let Some(rest) = text.strip_prefix("redis:") {
        // phpredis accepts a comma-separated list of servers; adoption reads the one server.
        if rest.contains(',') {
            return Err("one Redis server only (phpredis' comma-separated lists are not read)");
        }
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let addr = RespAddr::parse(addr)?;
        let mut source = RedisSource {
            addr,
            prefix: "PHPREDIS_SESSION:".to_string(),
            database: 0,
            auth: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or("bad %-escape in the Redis parameters")?;
            match k {
                "prefix" => source.prefix = v,
                "database" => {
                    source.database = v.parse().map_err(|_| "database=N needs a number")?;
                }
                "auth" => source.auth = Some(v).filter(|a| !a.is_empty()),
                // phpredis' connection tuning; harmless to ignore for a reader.
                "timeout" | "read_timeout" | "persistent" | "weight" | "retry_interval" => {}
                _ => return Err("unknown Redis parameter (known: prefix, database, auth)"),
            }
        }
        return Ok(Some(Source::Redis(source)));
    }
    Err("expected empty, files:/dir or redis:tcp://HOST:PORT?prefix=...")
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `cluster.adopt_until`: empty (gc_maxlifetime after the window opened), `+N` with a unit
/// `s`, `m`, `h` or `d` (after the window opened on this node), a date `YYYY-MM-DD` (00:00 UTC) or
/// a UTC time `YYYY-MM-DDTHH:MM[:SS]Z`.
pub fn parse_until(raw: &[u8]) -> Result<Until, &'static str> {
    let text = std::str::from_utf8(raw.trim_ascii()).map_err(|_| "not UTF-8")?;
    if text.is_empty() {
        return Ok(Until::MaxLifetime);
    }
    if let Some(rest) = text.strip_prefix('+') {
        let (digits, unit) = rest.split_at(
            rest.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len()),
        );
        let n: u64 = digits
            .parse()
            .map_err(|_| "+N needs a number, e.g. +7d or +36h")?;
        let ms = match unit {
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err("the unit after +N is s, m, h or d"),
        };
        let total = n
            .checked_mul(ms)
            .filter(|t| *t > 0 && *t <= 10 * 366 * 86_400_000);
        return total
            .map(Until::After)
            .ok_or("the window must last from 1 second to 10 years");
    }
    parse_utc(text)
        .map(Until::At)
        .ok_or("expected +N[smhd], YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (UTC)")
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]Z` as milliseconds since the epoch.
fn parse_utc(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let num = |s: &str, len: usize| -> Option<u64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    if day < 1 || day > days_in_month(y, m) {
        return None;
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut p = t.split(':');
            let h = num(p.next()?, 2)?;
            let min = num(p.next()?, 2)?;
            let s = match p.next() {
                Some(s) => num(s, 2)?,
                None => 0,
            };
            if p.next().is_some() || h > 23 || min > 59 || s > 59 {
                return None;
            }
            h * 3600 + min * 60 + s
        }
    };
    let days = days_from_civil(y, m, day);
    Some((days * 86_400 + secs_of_day) * 1000)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (Howard Hinnant's algorithm; years ≥ 1970 only).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as UTC text (`2026-12-01T23:40:00Z`), for the log.
pub fn utc_text(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `id` can be an ID of PHP's own handlers: PHP's rule (`[A-Za-z0-9,-]`, 1 to 256
/// characters). Nothing else is looked up in an old store, so an ID never escapes its folder or
/// Redis key.
pub fn valid_old_id(id: &[u8]) -> bool {
    (1..=OLD_ID_MAX).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b',' || *b == b'-')
}

/// The 16-byte key under which scd keeps the cluster ID an old ID became: keyed BLAKE3 of the old
/// ID, so the old ID itself is never stored in scd.
pub fn mapping_key(old_id: &[u8]) -> [u8; 16] {
    derived(b"adopted session", old_id)
}

/// The 16-byte key of this window's record in scd (when it opened on this node, whether it has
/// closed, how many sessions it adopted). A different source or end is a different window.
pub fn window_key(s: &AdoptSettings) -> [u8; 16] {
    let mut text = Vec::new();
    text.extend_from_slice(s.from_text.as_bytes());
    text.push(0);
    text.extend_from_slice(s.until_text.as_bytes());
    derived(b"migration window", &text)
}

fn derived(what: &[u8], input: &[u8]) -> [u8; 16] {
    let key = blake3::derive_key("SCD 2026-12 php adoption v1", what);
    let hash = blake3::keyed_hash(&key, input);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

/// What the window record in scd holds: `opened=MS;closed=MS;adopted=N` (closed 0 = still open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowRecord {
    pub opened_ms: u64,
    pub closed_ms: u64,
    pub adopted: u64,
}

impl WindowRecord {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "opened={};closed={};adopted={}",
            self.opened_ms, self.closed_ms, self.adopted
        )
        .into_bytes()
    }

    pub fn decode(data: &[u8]) -> Option<WindowRecord> {
        let text = std::str::from_utf8(data).ok()?;
        let mut r = WindowRecord::default();
        let mut seen = 0;
        for part in text.split(';') {
            let (k, v) = part.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "opened" => r.opened_ms = v,
                "closed" => r.closed_ms = v,
                "adopted" => r.adopted = v,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 3).then_some(r)
    }

    /// When the window closes, for settings `until` and PHP's `gc_maxlifetime` (seconds).
    pub fn closes_at(&self, until: Until, maxlifetime_s: i64) -> u64 {
        match until {
            Until::At(ms) => ms,
            Until::After(ms) => self.opened_ms.saturating_add(ms),
            Until::MaxLifetime => self
                .opened_ms
                .saturating_add(u64::try_from(maxlifetime_s.max(1)).unwrap_or(0) * 1000),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The old stores.

/// An old session, read under the old store's lock.
pub enum Found {
    /// The session's data.
    Data(Vec<u8>),
    /// Another node already adopted it (a marker in the shared old store): its cluster ID text.
    AdoptedAs(String),
    /// Not there, or expired.
    Nothing,
}

/// A held lock of the old store on one old ID, as PHP's own handler takes it, so that adoption
/// and an old-handler request never run on one session at once. Dropping it releases the lock.
pub enum OldLock {
    Files {
        file: File,
        path: PathBuf,
    },
    Redis {
        conn: Resp,
        key: String,
        lock_key: String,
        secret: String,
    },
    /// No old copy exists (files): nothing to lock.
    Absent,
}

fn files_path(dir: &std::path::Path, depth: u32, id: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    for c in id.chars().take(depth as usize) {
        p.push(c.to_string());
    }
    p.push(format!("sess_{id}"));
    p
}

/// Whether the old store holds a live (not expired) session under `id` (strict mode's check; no
/// lock, a hint only: adoption checks again under the lock).
pub fn exists(
    source: &Source,
    id: &str,
    maxlifetime_s: i64,
    timeout_ms: u32,
) -> Result<bool, String> {
    match source {
        Source::Files { dir, depth } => {
            let path = files_path(dir, *depth, id);
            match std::fs::symlink_metadata(&path) {
                Ok(m) => Ok(m.is_file() && !expired(&m, maxlifetime_s)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        }
        Source::Redis(r) => {
            let mut conn = redis_connect(r, timeout_ms)?;
            let key = format!("{}{id}", r.prefix);
            let n = conn
                .call(&[
                    b"EXISTS",
                    key.as_bytes(),
                    format!("{key}_ADOPTED").as_bytes(),
                ])
                .map_err(|e| e.to_string())?;
            match n {
                RespValue::Int(n) => Ok(n > 0),
                other => Err(format!("EXISTS answered {other:?}")),
            }
        }
    }
}

fn expired(m: &std::fs::Metadata, maxlifetime_s: i64) -> bool {
    // PHP's files handler treats a file as garbage once its mtime is gc_maxlifetime old.
    let Ok(mtime) = m.modified() else {
        return false;
    };
    let age = SystemTime::now()
        .duration_since(mtime)
        .unwrap_or(Duration::ZERO);
    age.as_secs() >= u64::try_from(maxlifetime_s.max(1)).unwrap_or(u64::MAX)
}

fn redis_connect(r: &RedisSource, timeout_ms: u32) -> Result<Resp, String> {
    let mut conn = Resp::connect(&r.addr, timeout_ms).map_err(|e| format!("{}: {e}", r.addr))?;
    if let Some(auth) = &r.auth {
        expect_ok(conn.call(&[b"AUTH", auth.as_bytes()]), "AUTH")?;
    }
    if r.database != 0 {
        expect_ok(
            conn.call(&[b"SELECT", r.database.to_string().as_bytes()]),
            "SELECT",
        )?;
    }
    Ok(conn)
}

fn expect_ok(v: io::Result<RespValue>, what: &str) -> Result<(), String> {
    match v {
        Ok(RespValue::Simple(s)) if s == "OK" => Ok(()),
        Ok(other) => Err(format!("{what} answered {other:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Takes the old store's lock on `id`, waiting up to `wait_ms`. `lease_ms` bounds a Redis lock
/// whose holder dies (a file lock dies with its holder).
pub fn lock(
    source: &Source,
    id: &str,
    wait_ms: u32,
    lease_ms: u32,
    io_timeout_ms: u32,
) -> Result<OldLock, String> {
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms));
    match source {
        Source::Files { dir, depth } => {
            let path = files_path(dir, *depth, id);
            let file = match open_nofollow(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OldLock::Absent),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            loop {
                match crate::ffi::flock_exclusive_nonblocking(&file) {
                    Ok(true) => break,
                    Ok(false) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(ADOPT_LOCK_POLL_MS));
                    }
                    Ok(false) => {
                        return Err(format!(
                            "{}: still locked by another request after {wait_ms} ms",
                            path.display()
                        ));
                    }
                    Err(e) => return Err(format!("flock {}: {e}", path.display())),
                }
            }
            Ok(OldLock::Files { file, path })
        }
        Source::Redis(r) => {
            let mut conn = redis_connect(r, io_timeout_ms)?;
            let key = format!("{}{id}", r.prefix);
            // phpredis' lock key and the shape of its secret (host|pid); ours adds a marker.
            let lock_key = format!("{key}_LOCK");
            let secret = format!("scd-adopt|{}|{}", std::process::id(), now_ms());
            loop {
                let v = conn
                    .call(&[
                        b"SET",
                        lock_key.as_bytes(),
                        secret.as_bytes(),
                        b"NX",
                        b"PX",
                        lease_ms.max(1).to_string().as_bytes(),
                    ])
                    .map_err(|e| format!("SET {lock_key}: {e}"))?;
                match v {
                    RespValue::Simple(s) if s == "OK" => break,
                    RespValue::Nil if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(ADOPT_LOCK_POLL_MS));
                    }
                    RespValue::Nil => {
                        return Err(format!(
                            "{lock_key}: still locked by another request after {wait_ms} ms"
                        ));
                    }
                    other => return Err(format!("SET {lock_key} answered {other:?}")),
                }
            }
            Ok(OldLock::Redis {
                conn,
                key,
                lock_key,
                secret,
            })
        }
    }
}

fn open_nofollow(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl OldLock {
    /// Reads the old session under the lock; `data_max` bounds what is read.
    pub fn read(&mut self, maxlifetime_s: i64, data_max: u32) -> Result<Found, String> {
        match self {
            OldLock::Absent => Ok(Found::Nothing),
            OldLock::Files { file, path } => {
                let m = file
                    .metadata()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                // Unlinked by an earlier adoption while we waited for its lock.
                if std::os::unix::fs::MetadataExt::nlink(&m) == 0
                    || !m.is_file()
                    || expired(&m, maxlifetime_s)
                {
                    return Ok(Found::Nothing);
                }
                if m.len() > u64::from(data_max) {
                    return Err(format!(
                        "{}: {} bytes, more than scd accepts ({data_max})",
                        path.display(),
                        m.len()
                    ));
                }
                let mut data = Vec::with_capacity(m.len() as usize);
                file.take(u64::from(data_max) + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if data.len() > data_max as usize {
                    return Err(format!("{}: larger than scd accepts", path.display()));
                }
                // PHP's files handler treats an empty file as "no session".
                Ok(if data.is_empty() {
                    Found::Nothing
                } else {
                    Found::Data(data)
                })
            }
            OldLock::Redis { conn, key, .. } => {
                let marker = format!("{key}_ADOPTED");
                match conn
                    .call(&[b"GET", marker.as_bytes()])
                    .map_err(|e| format!("GET {marker}: {e}"))?
                {
                    RespValue::Bulk(b) => {
                        return Ok(Found::AdoptedAs(String::from_utf8_lossy(&b).into_owned()));
                    }
                    RespValue::Nil => {}
                    other => return Err(format!("GET {marker} answered {other:?}")),
                }
                conn.set_bulk_max(data_max as usize);
                // Redis expires phpredis' keys itself (SETEX gc_maxlifetime).
                match conn
                    .call(&[b"GET", key.as_bytes()])
                    .map_err(|e| format!("GET {key}: {e}"))?
                {
                    RespValue::Bulk(b) if b.is_empty() => Ok(Found::Nothing),
                    RespValue::Bulk(b) => Ok(Found::Data(b)),
                    RespValue::Nil => Ok(Found::Nothing),
                    other => Err(format!("GET {key} answered {other:?}")),
                }
            }
        }
    }

    /// After a successful adoption: leave a marker (Redis, shared by every node: a request on
    /// another node finds the cluster ID) for `marker_ms`, and remove the old copy if `remove`.
    pub fn finish(&mut self, cluster_id: &str, marker_ms: u64, remove: bool) -> Result<(), String> {
        match self {
            OldLock::Absent => Ok(()),
            OldLock::Files { path, .. } => {
                if remove {
                    match std::fs::remove_file(&*path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("{}: {e}", path.display())),
                    }
                }
                Ok(())
            }
            OldLock::Redis { conn, key, .. } => {
                let marker = format!("{key}_ADOPTED");
                expect_ok(
                    conn.call(&[
                        b"SET",
                        marker.as_bytes(),
                        cluster_id.as_bytes(),
                        b"PX",
                        marker_ms.max(1000).to_string().as_bytes(),
                    ]),
                    "SET marker",
                )?;
                if remove {
                    conn.call(&[b"DEL", key.as_bytes()])
                        .map_err(|e| format!("DEL {key}: {e}"))?;
                }
                Ok(())
            }
        }
    }
}

impl Drop for OldLock {
    fn drop(&mut self) {
        // A file lock goes with the file descriptor. A Redis lock is deleted only if it is still
        // ours (phpredis' own release script).
        if let OldLock::Redis {
            conn,
            lock_key,
            secret,
            ..
        } = self
        {
            let _ = conn.call(&[
                b"EVAL",
                b"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
                b"1",
                lock_key.as_bytes(),
                secret.as_bytes(),
            ]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mirroring (`cluster.mirror_to`): the way back.

/// Writes a session into the old store under its cluster ID, as the old handler would have
/// written it (the `files` handler: `sess_<id>` under `flock`, truncated and rewritten; phpredis:
/// `SETEX <prefix><id> gc_maxlifetime data`), so that switching back to that handler finds it.
pub fn mirror_write(
    source: &Source,
    id: &str,
    data: &[u8],
    maxlifetime_s: i64,
    wait_ms: u32,
    timeout_ms: u32,
) -> Result<(), String> {
    match source {
        Source::Files { dir, depth } => {
            use std::io::{Seek, Write};
            use std::os::unix::fs::OpenOptionsExt;
            let path = files_path(dir, *depth, id);
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms));
            loop {
                match crate::ffi::flock_exclusive_nonblocking(&file) {
                    Ok(true) => break,
                    Ok(false) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(ADOPT_LOCK_POLL_MS));
                    }
                    Ok(false) => return Err(format!("{}: still locked", path.display())),
                    Err(e) => return Err(format!("flock {}: {e}", path.display())),
                }
            }
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(data))
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        Source::Redis(r) => {
            let mut conn = redis_connect(r, timeout_ms)?;
            let key = format!("{}{id}", r.prefix);
            let ttl = maxlifetime_s.max(1).to_string();
            expect_ok(
                conn.call(&[b"SETEX", key.as_bytes(), ttl.as_bytes(), data]),
                "SETEX",
            )
        }
    }
}

/// Removes a session's mirror (after `session_destroy()`).
pub fn mirror_delete(source: &Source, id: &str, timeout_ms: u32) -> Result<(), String> {
    match source {
        Source::Files { dir, depth } => {
            let path = files_path(dir, *depth, id);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        }
        Source::Redis(r) => {
            let mut conn = redis_connect(r, timeout_ms)?;
            let key = format!("{}{id}", r.prefix);
            match conn.call(&[b"DEL", key.as_bytes()]) {
                Ok(RespValue::Int(_)) => Ok(()),
                Ok(other) => Err(format!("DEL answered {other:?}")),
                Err(e) => Err(format!("DEL {key}: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(parse_source(b""), Ok(None));
        assert_eq!(
            parse_source(b"files:/var/lib/php/sessions"),
            Ok(Some(Source::Files {
                dir: "/var/lib/php/sessions".into(),
                depth: 0
            }))
        );
        assert_eq!(
            parse_source(b"files:2;/s"),
            Ok(Some(Source::Files {
                dir: "/s".into(),
                depth: 2
            }))
        );
        assert_eq!(
            parse_source(b"files:1;600;/s"),
            Ok(Some(Source::Files {
                dir: "/s".into(),
                depth: 1
            }))
        );
        let Ok(Some(Source::Redis(r))) =
            parse_source(b"redis:tcp://127.0.0.1:6379?prefix=APP%3A&database=2&auth=pw")
        else {
            panic!()
        };
        assert_eq!(r.prefix, "APP:");
        assert_eq!(r.database, 2);
        assert_eq!(r.auth.as_deref(), Some("pw"));
        let Ok(Some(Source::Redis(r))) = parse_source(b"redis:unix:///run/redis.sock") else {
            panic!()
        };
        assert_eq!(r.prefix, "PHPREDIS_SESSION:");
        for bad in [
            &b"files:relative"[..],
            b"files:x;/s",
            b"memcached:127.0.0.1",
            b"redis:tcp://a:1,tcp://b:2",
            b"redis:tcp://127.0.0.1:6379?bogus=1",
            b"redis:tcp://127.0.0.1",
        ] {
            assert!(parse_source(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ends_of_the_window() {
        assert_eq!(parse_until(b""), Ok(Until::MaxLifetime));
        assert_eq!(parse_until(b"+7d"), Ok(Until::After(7 * 86_400_000)));
        assert_eq!(parse_until(b"+90"), Ok(Until::After(90_000)));
        assert_eq!(parse_until(b"+36h"), Ok(Until::After(36 * 3_600_000)));
        assert_eq!(parse_until(b"1970-01-02"), Ok(Until::At(86_400_000)));
        assert_eq!(
            parse_until(b"2026-12-08T12:30Z"),
            Ok(Until::At(1_796_733_000_000))
        );
        assert_eq!(utc_text(1_796_733_000_000), "2026-12-08T12:30:00Z");
        assert_eq!(utc_text(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(parse_until(b"2000-02-29"), Ok(Until::At(951_782_400_000)));
        for bad in [
            &b"+0d"[..],
            b"+5w",
            b"tomorrow",
            b"2026-13-01",
            b"2026-02-30",
            b"2026-12-08T25:00Z",
            b"2026-12-08T12:00",
        ] {
            assert!(parse_until(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn old_ids_and_keys() {
        assert!(valid_old_id(b"abcdef0123456789abcdef0123456789"));
        assert!(valid_old_id(b"a,b-C"));
        for bad in [&b""[..], b"../x", b"a b", b"a/b", b"a.b", &[b'a'; 257]] {
            assert!(!valid_old_id(bad), "{bad:?}");
        }
        assert_ne!(mapping_key(b"a"), mapping_key(b"b"));
        assert_eq!(mapping_key(b"a"), mapping_key(b"a"));
    }

    #[test]
    fn files_paths_follow_the_files_handler() {
        assert_eq!(
            files_path(std::path::Path::new("/s"), 0, "abc"),
            PathBuf::from("/s/sess_abc")
        );
        assert_eq!(
            files_path(std::path::Path::new("/s"), 2, "abc"),
            PathBuf::from("/s/a/b/sess_abc")
        );
    }

    #[test]
    fn window_records() {
        let r = WindowRecord {
            opened_ms: 5,
            closed_ms: 0,
            adopted: 7,
        };
        assert_eq!(WindowRecord::decode(&r.encode()), Some(r));
        assert_eq!(WindowRecord::decode(b"opened=1"), None);
        assert_eq!(WindowRecord::decode(b"n|i:1;"), None);
        assert_eq!(r.closes_at(Until::After(10), 1440), 15);
        assert_eq!(r.closes_at(Until::MaxLifetime, 2), 2005);
        assert_eq!(r.closes_at(Until::At(3), 2), 3);
    }
}
