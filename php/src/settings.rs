//! The module's `cluster.*` ini settings and `session.save_path`: their names, defaults, and the
//! parsers that turn PHP's strings into checked values. Nothing here touches PHP; `ffi` feeds
//! these parsers from PHP's ini callbacks.

use std::ffi::CStr;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::adopt::AdoptSettings;
use crate::constants::{
    CONNECT_TIMEOUT_MS_DEFAULT, CONNECT_TIMEOUT_MS_MAX, IO_TIMEOUT_MS_DEFAULT, IO_TIMEOUT_MS_MAX,
    LOCK_LEASE_FALLBACK_MS, LOCK_LEASE_GRACE_MS, LOCK_LEASE_MS_MAX, LOCK_LEASE_MS_MIN,
    LOCK_WAIT_FALLBACK_MS, LOCK_WAIT_MS_MAX, SAVE_PATH_MAX, UNIX_PATH_MAX,
};

/// What `read` does when the lock cannot be had before the lock wait runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockFailure {
    /// `session_start()` fails with a warning (the default).
    Error,
    /// The session is read without the lock and never written in this request.
    Readonly,
}

/// The current values of every `cluster.*` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// 0 = derive from `max_execution_time`.
    pub lock_wait_ms: u32,
    /// 0 = derive from `max_execution_time`.
    pub lock_lease_ms: u32,
    pub lock_failure: LockFailure,
    pub connect_timeout_ms: u32,
    pub io_timeout_ms: u32,
}

impl Settings {
    /// The built-in defaults (the same values as the ini defaults in [`INI`]).
    pub const DEFAULT: Settings = Settings {
        lock_wait_ms: 0,
        lock_lease_ms: 0,
        lock_failure: LockFailure::Error,
        connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
        io_timeout_ms: IO_TIMEOUT_MS_DEFAULT,
    };

    /// Parses `value` for `key` and stores it; on error nothing changes.
    pub fn apply(&mut self, key: Key, value: &[u8]) -> Result<(), SettingError> {
        let fail = |reason: &'static str| SettingError {
            name: key.name(),
            value: String::from_utf8_lossy(&value[..value.len().min(64)]).into_owned(),
            reason,
        };
        match key {
            Key::LockWaitMs => {
                self.lock_wait_ms = parse_ms(value, 0, LOCK_WAIT_MS_MAX).map_err(fail)?;
            }
            Key::LockLeaseMs => {
                let v = parse_ms(value, 0, LOCK_LEASE_MS_MAX).map_err(fail)?;
                if v != 0 && v < LOCK_LEASE_MS_MIN {
                    return Err(fail(
                        "a lease shorter than 100 ms would expire during every request",
                    ));
                }
                self.lock_lease_ms = v;
            }
            Key::LockFailure => {
                self.lock_failure = match trim(value) {
                    b"error" => LockFailure::Error,
                    b"readonly" => LockFailure::Readonly,
                    _ => return Err(fail("must be `error` or `readonly`")),
                };
            }
            Key::ConnectTimeoutMs => {
                self.connect_timeout_ms =
                    parse_ms(value, 1, CONNECT_TIMEOUT_MS_MAX).map_err(fail)?;
            }
            Key::IoTimeoutMs => {
                self.io_timeout_ms = parse_ms(value, 1, IO_TIMEOUT_MS_MAX).map_err(fail)?;
            }
            // Not Copy values: kept in `AdoptSettings` (see `apply_adopt`).
            Key::AdoptFrom | Key::AdoptUntil | Key::AdoptRemove | Key::MirrorTo => {}
        }
        Ok(())
    }

    /// The lock wait to send with a locked read. `max_execution_time_s` is PHP's setting (0 or
    /// negative = unlimited): by default a request waits for the lock as long as it may run.
    pub fn effective_lock_wait_ms(&self, max_execution_time_s: i64) -> u32 {
        if self.lock_wait_ms != 0 {
            return self.lock_wait_ms;
        }
        if max_execution_time_s <= 0 {
            return LOCK_WAIT_FALLBACK_MS;
        }
        clamp_ms(max_execution_time_s.saturating_mul(1000), LOCK_WAIT_MS_MAX)
    }

    /// The lock lease to send with a locked read: by default the request's time limit plus a grace
    /// for PHP's shutdown, so a live request never loses its lock.
    pub fn effective_lock_lease_ms(&self, max_execution_time_s: i64) -> u32 {
        if self.lock_lease_ms != 0 {
            return self.lock_lease_ms;
        }
        if max_execution_time_s <= 0 {
            return LOCK_LEASE_FALLBACK_MS;
        }
        let ms = max_execution_time_s
            .saturating_mul(1000)
            .saturating_add(i64::from(LOCK_LEASE_GRACE_MS));
        clamp_ms(ms, LOCK_LEASE_MS_MAX)
    }
}

/// Parses a `cluster.adopt_*` setting into `adopt`; on error nothing changes.
pub fn apply_adopt(adopt: &mut AdoptSettings, key: Key, value: &[u8]) -> Result<(), SettingError> {
    let fail = |reason: &'static str| SettingError {
        name: key.name(),
        value: String::from_utf8_lossy(&value[..value.len().min(64)]).into_owned(),
        reason,
    };
    let text = || String::from_utf8_lossy(value.trim_ascii()).into_owned();
    match key {
        Key::AdoptFrom => {
            adopt.from = crate::adopt::parse_source(value).map_err(fail)?;
            adopt.from_text = text();
        }
        Key::AdoptUntil => {
            adopt.until = crate::adopt::parse_until(value).map_err(fail)?;
            adopt.until_text = text();
        }
        Key::MirrorTo => {
            adopt.mirror = crate::adopt::parse_source(value).map_err(fail)?;
        }
        Key::AdoptRemove => {
            adopt.remove = match trim(value).to_ascii_lowercase().as_slice() {
                b"1" | b"on" | b"yes" | b"true" => true,
                b"0" | b"off" | b"no" | b"false" | b"" => false,
                _ => return Err(fail("must be 1 or 0 (on or off)")),
            };
        }
        _ => {}
    }
    Ok(())
}

fn clamp_ms(ms: i64, max: u32) -> u32 {
    u32::try_from(ms.clamp(0, i64::from(max))).unwrap_or(max)
}

/// One `cluster.*` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    LockWaitMs,
    LockLeaseMs,
    LockFailure,
    ConnectTimeoutMs,
    IoTimeoutMs,
    AdoptFrom,
    AdoptUntil,
    AdoptRemove,
    MirrorTo,
}

impl Key {
    pub const ALL: [Key; 9] = [
        Key::LockWaitMs,
        Key::LockLeaseMs,
        Key::LockFailure,
        Key::ConnectTimeoutMs,
        Key::IoTimeoutMs,
        Key::AdoptFrom,
        Key::AdoptUntil,
        Key::AdoptRemove,
        Key::MirrorTo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Key::LockWaitMs => "cluster.lock_wait_ms",
            Key::LockLeaseMs => "cluster.lock_lease_ms",
            Key::LockFailure => "cluster.lock_failure",
            Key::ConnectTimeoutMs => "cluster.connect_timeout_ms",
            Key::IoTimeoutMs => "cluster.io_timeout_ms",
            Key::AdoptFrom => "cluster.adopt_from",
            Key::AdoptUntil => "cluster.adopt_until",
            Key::AdoptRemove => "cluster.adopt_remove",
            Key::MirrorTo => "cluster.mirror_to",
        }
    }

    /// The index PHP hands back to the ini callback (`mh_arg1`).
    pub fn from_index(i: usize) -> Option<Key> {
        Key::ALL.get(i).copied()
    }
}

/// The ini declaration of one setting: name and default as PHP wants them (NUL-terminated).
pub struct IniDef {
    pub name: &'static CStr,
    pub default: &'static CStr,
}

/// Every `cluster.*` setting, in [`Key::ALL`] order. All are `PHP_INI_ALL`: a script may change
/// its own lock wait or lock failure policy with `ini_set()`.
pub const INI: [IniDef; 9] = [
    IniDef {
        name: c"cluster.lock_wait_ms",
        default: c"0",
    },
    IniDef {
        name: c"cluster.lock_lease_ms",
        default: c"0",
    },
    IniDef {
        name: c"cluster.lock_failure",
        default: c"error",
    },
    IniDef {
        name: c"cluster.connect_timeout_ms",
        default: c"1000",
    },
    IniDef {
        name: c"cluster.io_timeout_ms",
        default: c"5000",
    },
    IniDef {
        name: c"cluster.adopt_from",
        default: c"",
    },
    IniDef {
        name: c"cluster.adopt_until",
        default: c"",
    },
    IniDef {
        name: c"cluster.adopt_remove",
        default: c"1",
    },
    IniDef {
        name: c"cluster.mirror_to",
        default: c"",
    },
];

/// A refused setting value: which setting, what value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = \"{}\" refused: {}",
            self.name, self.value, self.reason
        )
    }
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

fn parse_ms(value: &[u8], min: u32, max: u32) -> Result<u32, &'static str> {
    let digits = trim(value);
    if digits.is_empty() {
        return Err("empty; expected a whole number of milliseconds");
    }
    if digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("expected a whole number of milliseconds (digits only)");
    }
    let mut n: u64 = 0;
    for d in digits {
        n = n * 10 + u64::from(d - b'0');
    }
    if n < u64::from(min) || n > u64::from(max) {
        return Err(if min == 0 {
            "out of range (0 or more, at most the documented maximum)"
        } else {
            "out of range (1 or more, at most the documented maximum)"
        });
    }
    u32::try_from(n).map_err(|_| "out of range")
}

/// Where scd listens for this PHP: the parsed `session.save_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Parses `session.save_path`: `unix:/absolute/path.sock` or `tcp://IP:PORT` (an IP literal:
/// the daemon is on this node, and a name lookup on every connect would be a hidden delay).
pub fn parse_save_path(raw: &[u8]) -> Result<Endpoint, &'static str> {
    if raw.len() > SAVE_PATH_MAX {
        return Err("too long; expected \"unix:/path/to/scd.sock\" or \"tcp://127.0.0.1:PORT\"");
    }
    let text = std::str::from_utf8(raw.trim_ascii()).map_err(
        |_| "not UTF-8; expected \"unix:/path/to/scd.sock\" or \"tcp://127.0.0.1:PORT\"",
    )?;
    if text.is_empty() {
        return Err("empty; expected \"unix:/path/to/scd.sock\" or \"tcp://127.0.0.1:PORT\"");
    }
    if let Some(path) = text
        .strip_prefix("unix://")
        .or_else(|| text.strip_prefix("unix:"))
    {
        if !path.starts_with('/') {
            return Err("the socket path after unix: must be absolute (start with /)");
        }
        if path.len() > UNIX_PATH_MAX {
            return Err("the socket path is longer than the 107 bytes a Unix socket address holds");
        }
        if path.contains('\0') {
            return Err("the socket path contains a NUL byte");
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = text.strip_prefix("tcp://") {
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| "after tcp:// expected IP:PORT with an IP literal, e.g. 127.0.0.1:7070 or [::1]:7070")?;
        if sock.port() == 0 {
            return Err("the TCP port must not be 0");
        }
        if matches!(sock.ip(), IpAddr::V4(ip) if ip.is_unspecified())
            || matches!(sock.ip(), IpAddr::V6(ip) if ip.is_unspecified())
        {
            return Err("the TCP address must be a real address, not 0.0.0.0 or ::");
        }
        return Ok(Endpoint::Tcp(sock));
    }
    Err("unknown scheme; expected \"unix:/path/to/scd.sock\" or \"tcp://127.0.0.1:PORT\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_ini_table() {
        let mut s = Settings::DEFAULT;
        let mut a = AdoptSettings::DEFAULT;
        for (key, def) in Key::ALL.iter().zip(INI.iter()) {
            assert_eq!(key.name().as_bytes(), def.name.to_bytes());
            s.apply(*key, def.default.to_bytes()).unwrap();
            apply_adopt(&mut a, *key, def.default.to_bytes()).unwrap();
        }
        assert_eq!(s, Settings::DEFAULT);
        assert_eq!(a, AdoptSettings::DEFAULT);
    }

    #[test]
    fn adopt_settings() {
        let mut a = AdoptSettings::DEFAULT;
        apply_adopt(&mut a, Key::AdoptFrom, b" files:/var/lib/php/sessions ").unwrap();
        assert_eq!(a.from_text, "files:/var/lib/php/sessions");
        assert!(apply_adopt(&mut a, Key::AdoptFrom, b"nfs:/x").is_err());
        assert_eq!(
            a.from_text, "files:/var/lib/php/sessions",
            "refused: unchanged"
        );
        apply_adopt(&mut a, Key::AdoptRemove, b"off").unwrap();
        assert!(!a.remove);
        assert!(apply_adopt(&mut a, Key::AdoptRemove, b"maybe").is_err());
        apply_adopt(&mut a, Key::AdoptUntil, b"+2h").unwrap();
        assert_eq!(a.until, crate::adopt::Until::After(7_200_000));
    }

    #[test]
    fn numbers_are_checked() {
        let mut s = Settings::DEFAULT;
        assert!(s.apply(Key::LockWaitMs, b" 2500 ").is_ok());
        assert_eq!(s.lock_wait_ms, 2500);
        for bad in [&b""[..], b"-1", b"1e3", b"12ms", b"99999999999", b"3600001"] {
            let err = s.apply(Key::LockWaitMs, bad).unwrap_err();
            assert_eq!(err.name, "cluster.lock_wait_ms");
        }
        assert_eq!(s.lock_wait_ms, 2500, "a refused value changes nothing");
        assert!(s.apply(Key::ConnectTimeoutMs, b"0").is_err());
        assert!(s.apply(Key::IoTimeoutMs, b"0").is_err());
        assert!(s.apply(Key::LockLeaseMs, b"50").is_err());
        assert!(s.apply(Key::LockLeaseMs, b"0").is_ok());
        assert!(s.apply(Key::LockLeaseMs, b"100").is_ok());
    }

    #[test]
    fn lock_failure_is_an_enum() {
        let mut s = Settings::DEFAULT;
        s.apply(Key::LockFailure, b"readonly").unwrap();
        assert_eq!(s.lock_failure, LockFailure::Readonly);
        let err = s.apply(Key::LockFailure, b"ignore").unwrap_err();
        assert!(
            err.to_string()
                .contains("cluster.lock_failure = \"ignore\" refused")
        );
        assert_eq!(s.lock_failure, LockFailure::Readonly);
    }

    #[test]
    fn lock_wait_and_lease_follow_max_execution_time() {
        let s = Settings::DEFAULT;
        assert_eq!(s.effective_lock_wait_ms(30), 30_000);
        assert_eq!(s.effective_lock_wait_ms(0), LOCK_WAIT_FALLBACK_MS);
        assert_eq!(s.effective_lock_wait_ms(i64::MAX), LOCK_WAIT_MS_MAX);
        assert_eq!(s.effective_lock_lease_ms(30), 30_000 + LOCK_LEASE_GRACE_MS);
        assert_eq!(s.effective_lock_lease_ms(-1), LOCK_LEASE_FALLBACK_MS);
        let set = Settings {
            lock_wait_ms: 250,
            lock_lease_ms: 9_000,
            ..Settings::DEFAULT
        };
        assert_eq!(set.effective_lock_wait_ms(30), 250);
        assert_eq!(set.effective_lock_lease_ms(30), 9_000);
    }

    #[test]
    fn save_paths() {
        assert_eq!(
            parse_save_path(b"unix:/run/scd/scd.sock"),
            Ok(Endpoint::Unix("/run/scd/scd.sock".into()))
        );
        assert_eq!(
            parse_save_path(b"unix:///run/scd.sock"),
            Ok(Endpoint::Unix("/run/scd.sock".into()))
        );
        assert_eq!(
            parse_save_path(b" tcp://127.0.0.1:7070 "),
            Ok(Endpoint::Tcp("127.0.0.1:7070".parse().unwrap()))
        );
        assert_eq!(
            parse_save_path(b"tcp://[::1]:7070"),
            Ok(Endpoint::Tcp("[::1]:7070".parse().unwrap()))
        );
        for bad in [
            &b""[..],
            b"/var/lib/php/sessions",
            b"unix:relative.sock",
            b"tcp://localhost:7070",
            b"tcp://127.0.0.1:0",
            b"tcp://0.0.0.0:7070",
            b"tcp://127.0.0.1",
            b"\xff\xfe",
        ] {
            assert!(parse_save_path(bad).is_err(), "{bad:?} must be refused");
        }
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        assert!(parse_save_path(long.as_bytes()).is_err());
        assert_eq!(Endpoint::Unix("/x.sock".into()).to_string(), "unix:/x.sock");
    }
}
