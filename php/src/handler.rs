//! What each session hook does, in safe Rust. `ffi` calls these functions with plain slices and
//! turns their results into C; everything here can be read without knowing PHP's ABI.
//!
//! State lives in one process-global: PHP NTS runs one request at a time per process, so a worker
//! has one connection to scd (kept across requests, reconnected when it breaks) and at most one
//! session lock, taken by `read` and given back by `write` (WriteUnlock), `update_timestamp`
//! (Touch), `destroy`, `close`, or at the end of the request if PHP never closed the session.
//!
//! Every session ID is parsed with `scd_wire`'s parser before it goes anywhere: PHP does not check
//! a custom module's IDs, so a malformed ID from a cookie is refused here.

use std::sync::{Mutex, MutexGuard, PoisonError};

use scd_wire::SessionId;

use crate::adopt::{self, AdoptSettings, Found, WindowRecord};
use crate::conn::{Conn, ConnError, Reply};
use crate::constants::{ADOPT_RECORD_GRACE_S, WINDOW_RECORD_LIFETIME_S};
use crate::report::{Report, warning};
use crate::settings::{
    Endpoint, Key, LockFailure, SettingError, Settings, apply_adopt, parse_save_path,
};

/// The lock this request holds.
#[derive(Clone, Copy, Debug)]
struct Lock {
    sid: SessionId,
    token: u64,
}

struct State {
    settings: Settings,
    /// Where the last `open` said scd is.
    endpoint: Option<Endpoint>,
    conn: Option<Conn>,
    lock: Option<Lock>,
    /// A session read without its lock (`cluster.lock_failure = readonly`): never written.
    readonly: Option<SessionId>,
    /// The session whose lock went with a broken connection (scd releases a connection's locks
    /// when it closes), so that a later write can say why it is refused.
    lost: Option<SessionId>,
    /// The data of the last read, handed to PHP by pointer (see [`ReadDone`]).
    read_buf: Vec<u8>,
    /// The last connection problem, for phpinfo.
    last_error: Option<String>,
    /// The `cluster.adopt_*` settings (the migration window).
    adopt: AdoptSettings,
    /// What this process last learned about the migration window.
    window: Option<WindowCache>,
    /// Sessions this process adopted from the old store.
    adopted_here: u64,
    /// Lines for PHP's error log, written by `ffi` after the hook returns.
    log: Vec<Report>,
}

/// The migration window as this process last saw it in scd.
#[derive(Clone, Copy, Debug)]
struct WindowCache {
    key: [u8; 16],
    closes_ms: u64,
    closed: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    adopt: AdoptSettings::DEFAULT,
    window: None,
    adopted_here: 0,
    log: Vec::new(),
    settings: Settings::DEFAULT,
    endpoint: None,
    conn: None,
    lock: None,
    readonly: None,
    lost: None,
    read_buf: Vec::new(),
    last_error: None,
});

fn state() -> MutexGuard<'static, State> {
    // A panic inside a hook poisons the mutex; after_panic() has already reset what matters.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a successful read hands PHP: a view of the session data.
///
/// `data_ptr`/`data_len` point into the module's read buffer, which stays untouched until the
/// next hook call; `ffi` copies it into a PHP string at once. (A raw view rather than a borrowed
/// slice because the copy happens after the state lock is released: PHP's allocator may leave by
/// `longjmp`, and no lock guard may be alive then.)
///
/// `new_id`: PHP must use this ID from now on and send it to the client (the session moved, was
/// adopted from the old store, or an old-format ID got a fresh session).
#[derive(Clone, Copy)]
pub struct ReadDone {
    pub data_ptr: *const u8,
    pub data_len: usize,
    pub new_id: Option<IdText>,
}

/// A session ID's text in a plain array (no destructor; see `report`).
#[derive(Clone, Copy)]
pub struct IdText {
    buf: [u8; scd_wire::constants::ID_TEXT_MAX],
    len: usize,
}

impl IdText {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn of(sid: &SessionId) -> IdText {
        let text = sid.encode();
        let bytes = text.as_bytes();
        let mut out = IdText {
            buf: [0; scd_wire::constants::ID_TEXT_MAX],
            len: bytes.len(),
        };
        out.buf[..bytes.len()].copy_from_slice(bytes);
        out
    }
}

/// A session ID in a message or on the phpinfo page, cut after the first 4 hex digits of its
/// HASH: enough to tell sessions apart in a log, useless for taking one over (messages and
/// phpinfo pages are read by more people than the session's owner).
struct Shown<'a>(&'a SessionId);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.encode();
        let text = text.as_str();
        // HASH is always the last 32 hex digits.
        let keep = text.len().saturating_sub(28);
        write!(f, "{}...", &text[..keep])
    }
}

/// Shows an ID in a message: the text if it is short and printable, else a cut, escaped form.
fn shown(id: &[u8]) -> String {
    let cut = &id[..id.len().min(scd_wire::constants::ID_TEXT_MAX)];
    let mut s = String::from_utf8_lossy(cut).escape_default().to_string();
    if id.len() > cut.len() {
        s.push_str("...");
    }
    s
}

fn parse_id(id: &[u8]) -> Result<SessionId, Report> {
    SessionId::parse(id).map_err(|e| {
        warning!(
            "cluster: \"{}\" is not a cluster session ID ({e}); the session was not used",
            shown(id)
        )
    })
}

/// PHP's `maxlifetime` (seconds, `zend_long`) as the wire's `u32`; at least one second.
fn lifetime_s(maxlifetime: i64) -> u32 {
    u32::try_from(maxlifetime.max(1)).unwrap_or(u32::MAX)
}

impl State {
    /// Forgets the connection. Its lock, if any, is gone with it: scd releases every lock of a
    /// connection when the connection closes.
    fn drop_conn(&mut self) {
        self.conn = None;
        if let Some(lock) = self.lock.take() {
            self.lost = Some(lock.sid);
        }
    }

    /// A live connection to the endpoint of the last `open`: the existing one if it still works,
    /// else a new one. Returns whether the connection is fresh (a fresh connection that fails is
    /// not retried).
    fn connect(&mut self) -> Result<bool, Report> {
        let Some(endpoint) = self.endpoint.clone() else {
            return Err(warning!(
                "cluster: no session is open, so there is no session.save_path to reach scd at"
            ));
        };
        if let Some(conn) = &mut self.conn {
            if conn.endpoint() == &endpoint && conn.is_reusable() {
                return Ok(false);
            }
        }
        // A connection that changed endpoint, died, or came from our parent process (fork) goes;
        // the daemon releases whatever its locks were when it sees it close.
        self.drop_conn();
        let s = self.settings;
        match Conn::connect(&endpoint, s.connect_timeout_ms, s.io_timeout_ms) {
            Ok(conn) => {
                self.conn = Some(conn);
                self.last_error = None;
                Ok(true)
            }
            Err(e) => {
                let text = format!("cannot connect to scd at {endpoint}: {e}");
                self.last_error = Some(text.clone());
                Err(warning!("cluster: {text} (is scd running?)"))
            }
        }
    }

    /// Sends one request. A request that fails because a reused connection turned out dead (scd
    /// restarted since the last request) is sent once more on a new connection when `retry` says
    /// the request is safe to repeat.
    fn call(
        &mut self,
        what: &str,
        retry: bool,
        timeout_ms: u32,
        send: &mut dyn FnMut(&mut Conn, u32) -> Result<Reply, ConnError>,
    ) -> Result<Reply, Report> {
        let fresh = self.connect()?;
        let first = self.send_on_conn(timeout_ms, send);
        match first {
            Err(e) if !fresh && retry && e.is_stale_connection() => {
                self.connect()?;
                self.send_on_conn(timeout_ms, send)
                    .map_err(|e| self.lost(what, &e))
            }
            Err(e) => Err(self.lost(what, &e)),
            Ok(reply) => Ok(reply),
        }
    }

    fn send_on_conn(
        &mut self,
        timeout_ms: u32,
        send: &mut dyn FnMut(&mut Conn, u32) -> Result<Reply, ConnError>,
    ) -> Result<Reply, ConnError> {
        let conn = self.conn.as_mut().ok_or(ConnError::NotConnected)?;
        let result = send(conn, timeout_ms);
        if let Err(e) = &result {
            if e.breaks_connection() {
                // The stream may hold half a frame; never reuse it.
                self.drop_conn();
            }
        }
        result
    }

    /// The warning for a request that got no answer.
    fn lost(&mut self, what: &str, e: &ConnError) -> Report {
        let endpoint = self
            .endpoint
            .as_ref()
            .map_or_else(|| "?".to_string(), ToString::to_string);
        let text = format!("no answer from scd at {endpoint} while {what}: {e}");
        self.last_error = Some(text.clone());
        warning!("cluster: {text}")
    }

    fn io_timeout_ms(&self) -> u32 {
        self.settings.io_timeout_ms
    }

    /// Gives the held lock back (best effort: if the connection is gone, so is the lock).
    fn release_lock(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        let t = self.io_timeout_ms();
        if self
            .conn
            .as_ref()
            .is_some_and(|c| !c.owned_by_this_process())
        {
            // A forked child: the lock is the parent's, and so is the socket.
            self.conn = None;
            return;
        }
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.unlock(&lock.sid, lock.token, t) {
                if e.breaks_connection() {
                    self.drop_conn();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The migration window (cluster.adopt_*): see docs/operations.md, *Enabling SCD on a live farm*.

/// How a request on an old-format ID ended up.
enum Adopted {
    /// The session's data is in scd under this ID, locked by this request.
    Session(SessionId),
    /// Nothing to adopt: a fresh session.
    Fresh,
}

impl State {
    /// An ID on this node for a derived 16-byte key: the records the migration keeps in scd
    /// (which cluster ID an old ID became; the window's record) are sessions under such IDs.
    fn local_id(&mut self, key: [u8; 16]) -> Result<SessionId, Report> {
        self.connect()?;
        let node = self
            .conn
            .as_ref()
            .map(Conn::node)
            .ok_or_else(|| warning!("cluster: no connection to scd"))?;
        Ok(SessionId::new(node, None, 1, key))
    }

    /// A locked read that must succeed (the adoption's own records); any other answer is a
    /// warning. Returns (token, data if the session exists).
    fn lock_record(
        &mut self,
        sid: &SessionId,
        wait_ms: u32,
        lease_ms: u32,
        what: &str,
    ) -> Result<(u64, Option<Vec<u8>>), Report> {
        let t = wait_ms.saturating_add(self.io_timeout_ms());
        match self.call(what, true, t, &mut |c, t| {
            c.read_lock(sid, wait_ms, lease_ms, t)
        })? {
            Reply::Data { token, data, .. } => Ok((token, Some(data))),
            Reply::NotFound { token, .. } => Ok((token, None)),
            Reply::Refused(scd_wire::ErrorCode::LockTimeout, _) => Err(warning!(
                "cluster: timed out after {wait_ms} ms waiting for another request while {what}; \
                 raise cluster.lock_wait_ms to wait longer"
            )),
            other => Err(self.odd(what, &other)),
        }
    }

    fn odd(&mut self, what: &str, reply: &Reply) -> Report {
        self.drop_conn();
        warning!("cluster: scd answered with {reply:?} while {what}; the connection was reset")
    }

    fn write_record(
        &mut self,
        sid: &SessionId,
        token: u64,
        lifetime: u32,
        data: &[u8],
        what: &str,
    ) -> Result<(), Report> {
        let io_ms = self.io_timeout_ms();
        match self.call(what, false, io_ms, &mut |c, t| {
            c.write_unlock(sid, token, lifetime, data, t)
        })? {
            Reply::Done => Ok(()),
            other => Err(self.odd(what, &other)),
        }
    }

    fn unlock_record(&mut self, sid: &SessionId, token: u64) {
        let io_ms = self.io_timeout_ms();
        let ok = matches!(
            self.call("releasing a lock", false, io_ms, &mut |c, t| c
                .unlock(sid, token, t)),
            Ok(Reply::Done)
        );
        if !ok {
            // The connection goes, and with it every lock it held.
            self.drop_conn();
        }
    }

    /// Whether the migration window is open now. The window's record in scd (one per node, per
    /// source and end) says when it opened; the first request that finds it missing opens it,
    /// and the first that finds it past its end closes it; each writes one line to PHP's log.
    fn window_open(&mut self, maxlifetime: i64) -> Result<bool, Report> {
        let Some(source) = self.adopt.from.clone() else {
            return Ok(false);
        };
        let key = adopt::window_key(&self.adopt);
        let now = adopt::now_ms();
        if let Some(w) = self.window {
            if w.key == key && (w.closed || now < w.closes_ms) {
                return Ok(!w.closed);
            }
        }
        let sid = self.local_id(key)?;
        let wait_ms = self.settings.effective_lock_wait_ms(0);
        let lease_ms = self.settings.effective_lock_lease_ms(0);
        let what = "reading the migration window's record";
        let (token, data) = self.lock_record(&sid, wait_ms, lease_ms, what)?;
        let mut record = data.as_deref().and_then(WindowRecord::decode);
        let mut changed = false;
        let rec = record.get_or_insert_with(|| {
            changed = true;
            WindowRecord {
                opened_ms: now,
                closed_ms: 0,
                adopted: 0,
            }
        });
        let closes_ms = rec.closes_at(self.adopt.until, maxlifetime);
        if changed {
            self.log.push(Report::notice(format_args!(
                "cluster: migration window open on this node: session IDs not in the cluster \
                 format are adopted from {source} until {}",
                adopt::utc_text(closes_ms)
            )));
        }
        if now >= closes_ms && rec.closed_ms == 0 {
            rec.closed_ms = now;
            changed = true;
            self.log.push(Report::notice(format_args!(
                "cluster: migration window closed on this node at {} after adopting {} sessions \
                 from {source}; session IDs not in the cluster format are unknown from now on",
                adopt::utc_text(closes_ms),
                rec.adopted
            )));
        }
        let rec = *rec;
        if changed {
            let what = "writing the migration window's record";
            self.write_record(&sid, token, WINDOW_RECORD_LIFETIME_S, &rec.encode(), what)?;
        } else {
            self.unlock_record(&sid, token);
        }
        let closed = rec.closed_ms != 0;
        self.window = Some(WindowCache {
            key,
            closes_ms,
            closed,
        });
        Ok(!closed)
    }

    /// Seconds the records of this window must live: until it closes, plus a grace.
    fn record_lifetime(&self) -> u32 {
        let now = adopt::now_ms();
        let left_s = self
            .window
            .map_or(0, |w| w.closes_ms.saturating_sub(now) / 1000);
        u32::try_from(left_s)
            .unwrap_or(u32::MAX)
            .saturating_add(ADOPT_RECORD_GRACE_S)
    }

    /// Strict mode's check of an old-format ID: known if it was adopted already or the old store
    /// holds it. A failing old store answers "known": `read` then says what is wrong, instead of
    /// a silent fresh session that would log the user out.
    fn adoptable(&mut self, id: &[u8], maxlifetime: i64) -> Result<bool, Report> {
        if !self.window_open(maxlifetime)? {
            return Ok(false);
        }
        let Some(source) = self.adopt.from.clone() else {
            return Ok(false);
        };
        // The old store first, then scd's record: an adoption writes the record before it removes
        // the old copy, so a session being adopted right now is seen by one of the two checks.
        let text = std::str::from_utf8(id).unwrap_or("");
        let io_ms = self.io_timeout_ms();
        match adopt::exists(&source, text, maxlifetime, io_ms) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => {
                self.log.push(warning!(
                    "cluster: cannot check the old session store {source}: {e}"
                ));
                return Ok(true);
            }
        }
        let map = self.local_id(adopt::mapping_key(id))?;
        match self.call("checking an adopted session", true, io_ms, &mut |c, t| {
            c.exists(&map, t)
        })? {
            Reply::Exists(known) => Ok(known),
            other => Err(self.odd("checking an adopted session", &other)),
        }
    }

    /// `read` of an old-format ID. Inside the window: the session it was adopted as, or its data
    /// adopted now from the old store, or a fresh session; outside: a fresh session. The ID is
    /// always replaced by a cluster ID, which PHP sends to the client.
    ///
    /// Exactly once: the record "old ID → cluster ID" in scd is locked for the whole adoption,
    /// so a second request with the same old ID waits, then finds the record; the old store's
    /// own lock is held from the read of the old copy until it is removed, so a request of the
    /// old handler (or of another node) never sees half of it.
    fn adopt_read(
        &mut self,
        id: &[u8],
        maxlifetime: i64,
        max_execution_time_s: i64,
    ) -> Result<ReadDone, Report> {
        self.readonly = None;
        self.lost = None;
        self.read_buf.clear();
        // A lock from an earlier read of this request (another session): give it back.
        self.release_lock();
        let wait_ms = self.settings.effective_lock_wait_ms(max_execution_time_s);
        let lease_ms = self.settings.effective_lock_lease_ms(max_execution_time_s);
        let outcome = if self.window_open(maxlifetime)? {
            self.adopt_or_find(id, maxlifetime, wait_ms, lease_ms)?
        } else {
            Adopted::Fresh
        };
        let reply = match outcome {
            Adopted::Session(sid) => {
                let t = wait_ms.saturating_add(self.io_timeout_ms());
                let reply = self.call("reading the session", true, t, &mut |c, t| {
                    c.read_lock(&sid, wait_ms, lease_ms, t)
                })?;
                match reply {
                    Reply::Data { token, data, .. } => Some((sid, token, data)),
                    // Destroyed (or expired) since it was adopted: a fresh session, never the
                    // old ID's cluster ID again.
                    Reply::NotFound { token, .. } => {
                        self.unlock_record(&sid, token);
                        None
                    }
                    Reply::Refused(scd_wire::ErrorCode::LockTimeout, _) => {
                        return Err(warning!(
                            "cluster: timed out after {wait_ms} ms waiting for the lock on session \
                             {sid_shown}, which another request holds",
                            sid_shown = Shown(&sid)
                        ));
                    }
                    other => return Err(self.odd("reading the session", &other)),
                }
            }
            Adopted::Fresh => None,
        };
        let (sid, token, data) = match reply {
            Some(r) => r,
            None => {
                let sid = self.fresh_id()?;
                let (token, _) =
                    self.lock_record(&sid, wait_ms, lease_ms, "locking a new session")?;
                (sid, token, Vec::new())
            }
        };
        self.read_buf = data;
        self.lock = Some(Lock { sid, token });
        Ok(ReadDone {
            data_ptr: self.read_buf.as_ptr(),
            data_len: self.read_buf.len(),
            new_id: Some(IdText::of(&sid)),
        })
    }

    fn fresh_id(&mut self) -> Result<SessionId, Report> {
        let io_ms = self.io_timeout_ms();
        match self.call("creating a session ID", true, io_ms, &mut |c, t| {
            c.create_id(t)
        })? {
            Reply::Created(sid) => Ok(sid),
            other => Err(self.odd("creating a session ID", &other)),
        }
    }

    /// Inside the window: where the old ID's session is now (adopting it if nobody has yet).
    fn adopt_or_find(
        &mut self,
        id: &[u8],
        maxlifetime: i64,
        wait_ms: u32,
        lease_ms: u32,
    ) -> Result<Adopted, Report> {
        let map = self.local_id(adopt::mapping_key(id))?;
        let (map_token, known) =
            self.lock_record(&map, wait_ms, lease_ms, "looking up an adopted session")?;
        if let Some(text) = known {
            self.unlock_record(&map, map_token);
            return Ok(SessionId::parse(&text).map_or(Adopted::Fresh, Adopted::Session));
        }
        // Nobody adopted it on this node: this request does, holding the record's lock.
        let result = self.import(id, &map, map_token, maxlifetime, wait_ms, lease_ms);
        if result.is_err() {
            // Every lock of this connection (the record's, the new session's) goes with it; the
            // old copy is untouched, so the next request tries again.
            self.drop_conn();
            self.lost = None;
        }
        result
    }

    fn import(
        &mut self,
        id: &[u8],
        map: &SessionId,
        map_token: u64,
        maxlifetime: i64,
        wait_ms: u32,
        lease_ms: u32,
    ) -> Result<Adopted, Report> {
        let Some(source) = self.adopt.from.clone() else {
            return Ok(Adopted::Fresh);
        };
        let text = std::str::from_utf8(id).unwrap_or("");
        let io_ms = self.io_timeout_ms();
        let data_max = self
            .conn
            .as_ref()
            .map_or(scd_wire::constants::DATA_MAX_DEFAULT, Conn::data_max);
        let old_error = |e: String| {
            warning!("cluster: cannot adopt a session from the old session store {source}: {e}")
        };
        let mut old = adopt::lock(&source, text, wait_ms, lease_ms, io_ms).map_err(old_error)?;
        let found = old.read(maxlifetime, data_max).map_err(old_error)?;
        let record_lifetime = self.record_lifetime();
        match found {
            Found::Nothing => {
                drop(old);
                self.unlock_record(map, map_token);
                Ok(Adopted::Fresh)
            }
            Found::AdoptedAs(cluster_id) => {
                // Adopted by another node (shared Redis): remember it here too.
                let Ok(sid) = SessionId::parse(cluster_id.as_bytes()) else {
                    drop(old);
                    self.unlock_record(map, map_token);
                    return Ok(Adopted::Fresh);
                };
                let what = "recording an adopted session";
                self.write_record(map, map_token, record_lifetime, cluster_id.as_bytes(), what)?;
                Ok(Adopted::Session(sid))
            }
            Found::Data(data) => {
                let sid = self.fresh_id()?;
                let what = "storing an adopted session";
                let (token, _) = self.lock_record(&sid, wait_ms, lease_ms, what)?;
                self.write_record(&sid, token, lifetime_s(maxlifetime), &data, what)?;
                let cluster_id = sid.encode();
                let what = "recording an adopted session";
                self.write_record(
                    map,
                    map_token,
                    record_lifetime,
                    cluster_id.as_str().as_bytes(),
                    what,
                )?;
                // From here on the adoption is done: the old copy is only cleaned up.
                let marker_ms = u64::from(record_lifetime) * 1000;
                if let Err(e) = old.finish(cluster_id.as_str(), marker_ms, self.adopt.remove) {
                    self.log.push(warning!(
                        "cluster: adopted a session, but could not mark or remove its old copy in \
                         {source}: {e}"
                    ));
                }
                drop(old);
                self.adopted_here += 1;
                self.count_adoption();
                Ok(Adopted::Session(sid))
            }
        }
    }

    /// Adds one to the node's count of adopted sessions (the window's record). Best effort: a
    /// failure costs the statistic, never the session.
    fn count_adoption(&mut self) {
        let key = adopt::window_key(&self.adopt);
        let Ok(sid) = self.local_id(key) else {
            return;
        };
        let wait_ms = self.settings.effective_lock_wait_ms(0);
        let lease_ms = self.settings.effective_lock_lease_ms(0);
        let what = "counting an adopted session";
        let Ok((token, data)) = self.lock_record(&sid, wait_ms, lease_ms, what) else {
            return;
        };
        let mut rec = data
            .as_deref()
            .and_then(WindowRecord::decode)
            .unwrap_or(WindowRecord {
                opened_ms: adopt::now_ms(),
                closed_ms: 0,
                adopted: 0,
            });
        rec.adopted += 1;
        if self
            .write_record(&sid, token, WINDOW_RECORD_LIFETIME_S, &rec.encode(), what)
            .is_err()
        {
            self.drop_conn();
        }
    }

    /// `cluster.mirror_to`: the session as just stored in scd, also into the old store under its
    /// cluster ID. Best effort: a failure is logged and costs only the way back.
    fn mirror_write(&mut self, sid: &SessionId, data: &[u8], maxlifetime: i64) {
        let Some(target) = self.adopt.mirror.clone() else {
            return;
        };
        let id = sid.encode();
        let wait_ms = self.settings.effective_lock_wait_ms(0);
        let io_ms = self.io_timeout_ms();
        if let Err(e) = adopt::mirror_write(&target, id.as_str(), data, maxlifetime, wait_ms, io_ms)
        {
            self.log.push(warning!(
                "cluster: session {sid_shown} was not mirrored to {target}: {e}",
                sid_shown = Shown(sid)
            ));
        }
    }

    fn mirror_delete(&mut self, sid: &SessionId) {
        let Some(target) = self.adopt.mirror.clone() else {
            return;
        };
        let id = sid.encode();
        if let Err(e) = adopt::mirror_delete(&target, id.as_str(), self.io_timeout_ms()) {
            self.log.push(warning!(
                "cluster: the mirror of session {sid_shown} in {target} was not removed: {e}",
                sid_shown = Shown(sid)
            ));
        }
    }

    /// The node's window record, read without its lock, for phpinfo.
    fn window_record(&mut self) -> Option<WindowRecord> {
        self.adopt.from.as_ref()?;
        let sid = self.local_id(adopt::window_key(&self.adopt)).ok()?;
        let io_ms = self.io_timeout_ms();
        match self.call(
            "reading the migration window's record",
            true,
            io_ms,
            &mut |c, t| c.read(&sid, t),
        ) {
            Ok(Reply::Data { data, .. }) => WindowRecord::decode(&data),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and lifecycle.

pub fn apply_setting(key: Key, value: &[u8]) -> Result<(), SettingError> {
    let mut s = state();
    match key {
        Key::AdoptFrom | Key::AdoptUntil | Key::AdoptRemove | Key::MirrorTo => {
            apply_adopt(&mut s.adopt, key, value)?;
            // Another source or end is another window: ask scd again.
            s.window = None;
            Ok(())
        }
        _ => s.settings.apply(key, value),
    }
}

/// The next line for PHP's error log, if any (`ffi` writes them after each hook).
pub fn take_log() -> Option<Report> {
    let mut s = state();
    if s.log.is_empty() {
        None
    } else {
        Some(s.log.remove(0))
    }
}

/// After a panic in a hook: forget the connection (the daemon then releases its locks) and the
/// request's session state, so the next request starts clean.
pub fn after_panic() {
    let mut s = state();
    s.drop_conn();
    s.lock = None;
    s.readonly = None;
    s.lost = None;
    s.read_buf = Vec::new();
}

/// End of every request (after PHP's own session shutdown): a lock still held means PHP never
/// called close (a fatal error in an odd place); give it back now rather than at lease end.
pub fn request_end() {
    let mut s = state();
    s.release_lock();
    s.readonly = None;
    s.lost = None;
    // Do not keep a large session's bytes around between requests.
    if s.read_buf.capacity() > 64 * 1024 {
        s.read_buf = Vec::new();
    } else {
        s.read_buf.clear();
    }
}

pub fn module_shutdown() {
    let mut s = state();
    s.release_lock();
    s.drop_conn();
}

// ---------------------------------------------------------------------------------------------
// The hooks.

/// `open`: parse `session.save_path` and make sure scd answers. A daemon that is down fails here,
/// within the connect timeout, and `session_start()` fails with the warning.
pub fn open(save_path: &[u8]) -> Result<(), Report> {
    let endpoint = parse_save_path(save_path).map_err(|why| {
        warning!(
            "cluster: session.save_path \"{}\" cannot be used: {why}",
            String::from_utf8_lossy(&save_path[..save_path.len().min(256)])
        )
    })?;
    let mut s = state();
    s.endpoint = Some(endpoint);
    s.readonly = None;
    s.connect()?;
    Ok(())
}

/// At every `open` with a migration window configured: opens the window on this node at its first
/// session request, and closes it (with its log line) at the first request after its end. Costs a
/// round trip only when this process has not checked yet or its cached end has passed.
pub fn check_window(maxlifetime: i64) {
    let mut s = state();
    // `window_open` answers from this process's cached record while it is fresh.
    if let Err(r) = s.window_open(maxlifetime) {
        s.log.push(r);
    }
}

/// Whether an ID PHP got from the client may be used at all. A malformed ID is dropped before
/// PHP uses it, in strict mode and without it: PHP then asks `create_sid` for a new ID. While the
/// migration window is open, an ID of PHP's own format is kept: `read` adopts it (or gives it a
/// fresh session under a new cluster ID).
pub fn accepts_incoming_id(id: &[u8], maxlifetime: i64) -> bool {
    if SessionId::parse(id).is_ok() {
        return true;
    }
    if !adopt::valid_old_id(id) {
        return false;
    }
    let mut s = state();
    if s.adopt.from.is_none() {
        return false;
    }
    match s.window_open(maxlifetime) {
        Ok(open) => open,
        Err(r) => {
            s.log.push(r);
            false
        }
    }
}

/// `close`: release the lock if the request still holds it (no write happened, or the write
/// failed).
pub fn close() -> Result<(), Report> {
    let mut s = state();
    s.release_lock();
    s.readonly = None;
    s.lost = None;
    Ok(())
}

/// `read`: take the session's lock (waiting up to the lock wait) and return its data; an unknown
/// ID reads as empty and is locked, so this request creates it.
pub fn read(id: &[u8], maxlifetime: i64, max_execution_time_s: i64) -> Result<ReadDone, Report> {
    if SessionId::parse(id).is_err() && adopt::valid_old_id(id) {
        let mut s = state();
        if s.adopt.from.is_some() {
            return s.adopt_read(id, maxlifetime, max_execution_time_s);
        }
    }
    let sid = parse_id(id)?;
    let mut s = state();
    s.readonly = None;
    s.lost = None;
    s.read_buf.clear();
    let io_ms = s.io_timeout_ms();

    // session_reset() reads again without closing: the lock is already ours, so read without
    // asking for it again (asking would wait for ourselves).
    if let Some(lock) = s.lock {
        if lock.sid.same_session(&sid) {
            let reply = s.call("reading the session", false, io_ms, &mut |c, t| {
                c.read(&sid, t)
            })?;
            return finish_read(&mut s, &sid, reply);
        }
        s.release_lock();
    }

    let wait_ms = s.settings.effective_lock_wait_ms(max_execution_time_s);
    let lease_ms = s.settings.effective_lock_lease_ms(max_execution_time_s);
    // The socket waits for the lock wait plus the usual I/O time.
    let timeout_ms = wait_ms.saturating_add(io_ms);
    let reply = s.call("reading the session", true, timeout_ms, &mut |c, t| {
        c.read_lock(&sid, wait_ms, lease_ms, t)
    })?;
    match reply {
        Reply::Refused(scd_wire::ErrorCode::LockTimeout, _) => {
            if s.settings.lock_failure == LockFailure::Readonly {
                let reply = s.call("reading the session", true, io_ms, &mut |c, t| {
                    c.read(&sid, t)
                })?;
                // Nothing is shown now: output during session_start() (display_errors) would
                // stop PHP from sending its headers and abort the session. `write` says it.
                s.readonly = Some(sid);
                return finish_read(&mut s, &sid, reply);
            }
            Err(warning!(
                "cluster: timed out after {wait_ms} ms waiting for the lock on session {sid_shown}, which \
                 another request holds; raise cluster.lock_wait_ms to wait longer, or set \
                 cluster.lock_failure = readonly to read it without the lock",
                sid_shown = Shown(&sid)
            ))
        }
        reply => finish_read(&mut s, &sid, reply),
    }
}

fn finish_read(s: &mut State, sid: &SessionId, reply: Reply) -> Result<ReadDone, Report> {
    let (token, new_id) = match reply {
        Reply::Data {
            token,
            data,
            new_id,
        } => {
            s.read_buf = data;
            (token, new_id)
        }
        Reply::NotFound { token, new_id } => {
            s.read_buf.clear();
            (token, new_id)
        }
        Reply::Refused(code, message) => {
            return Err(warning!(
                "cluster: scd refused to read session {sid_shown}: {code:?}{}{message}",
                if message.is_empty() { "" } else { ": " },
                sid_shown = Shown(sid)
            ));
        }
        other => {
            s.drop_conn();
            return Err(warning!(
                "cluster: scd answered a read of session {sid_shown} with {other:?}; the connection was reset",
                sid_shown = Shown(sid)
            ));
        }
    };
    // The session moved: the lock is on the same session (same HASH) under its new ID, which
    // PHP uses from now on.
    let sid = new_id.unwrap_or(*sid);
    if token != 0 {
        s.lock = Some(Lock { sid, token });
    }
    if s.readonly.is_some() {
        s.readonly = Some(sid);
    }
    Ok(ReadDone {
        data_ptr: s.read_buf.as_ptr(),
        data_len: s.read_buf.len(),
        new_id: new_id.as_ref().map(IdText::of),
    })
}

/// The lock this request holds on `sid`, or the warning for writing without it.
fn held_lock(s: &State, sid: &SessionId, what: &str) -> Result<Lock, Report> {
    match s.lock {
        Some(lock) if lock.sid.same_session(sid) => Ok(lock),
        _ if s.lost.is_some_and(|l| l.same_session(sid)) => Err(lock_lost(sid, what)),
        _ => Err(warning!(
            "cluster: session {sid_shown} is not locked by this request, so it was not {what}",
            sid_shown = Shown(sid)
        )),
    }
}

/// `write`: store the data and release the lock in one request (WriteUnlock).
/// Success may come with a notice to show.
pub fn write(id: &[u8], data: &[u8], maxlifetime: i64) -> Result<Option<Report>, Report> {
    let sid = parse_id(id)?;
    let mut s = state();
    if s.readonly.is_some_and(|r| r.same_session(&sid)) {
        // Read without the lock (cluster.lock_failure = readonly): never written. Configured
        // behaviour, so not a failure, but the lost change is worth a notice.
        return Ok(Some(Report::notice(format_args!(
            "cluster: session {sid_shown} was read without its lock (another request held it and \
             cluster.lock_failure = readonly), so the changes of this request were not saved",
            sid_shown = Shown(&sid)
        ))));
    }
    let lock = held_lock(&s, &sid, "written")?;
    let data_max = s
        .conn
        .as_ref()
        .map_or(scd_wire::constants::DATA_MAX_DEFAULT, Conn::data_max);
    if data.len() > data_max as usize {
        return Err(too_large(&sid, data.len(), data_max));
    }
    let lifetime = lifetime_s(maxlifetime);
    let io_ms = s.io_timeout_ms();
    let reply = s.call(
        "writing the session (its changes are lost)",
        false,
        io_ms,
        &mut |c, t| c.write_unlock(&lock.sid, lock.token, lifetime, data, t),
    );
    // Whatever happened, this request no longer holds the lock: either scd released it with the
    // write, refused the token (not ours any more), or the connection (and with it the lock) is
    // gone.
    let refused_keeps_lock = matches!(
        reply,
        Ok(Reply::Refused(
            scd_wire::ErrorCode::TooLarge | scd_wire::ErrorCode::Storage,
            _
        ))
    );
    if !refused_keeps_lock {
        s.lock = None;
    }
    match reply? {
        Reply::Done => {
            s.mirror_write(&lock.sid, data, maxlifetime);
            Ok(None)
        }
        Reply::Refused(scd_wire::ErrorCode::NotLocked, _) => Err(lock_lost(&sid, "written")),
        Reply::Refused(scd_wire::ErrorCode::TooLarge, _) => {
            Err(too_large(&sid, data.len(), data_max))
        }
        Reply::Refused(code, message) => Err(warning!(
            "cluster: scd refused to write session {sid_shown} ({code:?}: {message}); the stored session \
             is unchanged",
            sid_shown = Shown(&sid)
        )),
        other => {
            s.drop_conn();
            Err(warning!(
                "cluster: scd answered a write of session {sid_shown} with {other:?}; the connection was reset",
                sid_shown = Shown(&sid)
            ))
        }
    }
}

fn too_large(sid: &SessionId, len: usize, max: u32) -> Report {
    warning!(
        "cluster: session {sid_shown} was not written: its data is {len} bytes, more than scd's limit of \
         {max} bytes; the stored session keeps its previous data",
        sid_shown = Shown(sid)
    )
}

fn lock_lost(sid: &SessionId, what: &str) -> Report {
    warning!(
        "cluster: session {sid_shown} was not {what}: this request no longer holds its lock (the lock \
         lease ran out, or the connection to scd broke); the changes of this request are lost",
        sid_shown = Shown(sid)
    )
}

/// `update_timestamp` (lazy_write, data unchanged): renew the lifetime and release the lock (Touch).
pub fn update_timestamp(id: &[u8], data: &[u8], maxlifetime: i64) -> Result<(), Report> {
    let sid = parse_id(id)?;
    let mut s = state();
    if s.readonly.is_some_and(|r| r.same_session(&sid)) {
        return Ok(());
    }
    let lock = held_lock(&s, &sid, "touched")?;
    let lifetime = lifetime_s(maxlifetime);
    let io_ms = s.io_timeout_ms();
    let reply = s.call(
        "touching the session (its lifetime was not renewed)",
        false,
        io_ms,
        &mut |c, t| c.touch(&lock.sid, lock.token, lifetime, t),
    );
    s.lock = None;
    match reply? {
        Reply::Done => {
            s.mirror_write(&lock.sid, data, maxlifetime);
            Ok(())
        }
        Reply::Refused(scd_wire::ErrorCode::NotLocked, _) => Err(lock_lost(&sid, "touched")),
        Reply::Refused(code, message) => Err(warning!(
            "cluster: scd refused to touch session {sid_shown} ({code:?}: {message})",
            sid_shown = Shown(&sid)
        )),
        other => {
            s.drop_conn();
            Err(warning!(
                "cluster: scd answered a touch of session {sid_shown} with {other:?}; the connection was reset",
                sid_shown = Shown(&sid)
            ))
        }
    }
}

/// `destroy`: delete the session (with this request's lock token when it holds the lock).
pub fn destroy(id: &[u8]) -> Result<(), Report> {
    let Ok(sid) = SessionId::parse(id) else {
        // Nothing can be stored under a malformed ID, so there is nothing to delete.
        return Ok(());
    };
    let mut s = state();
    let token = match s.lock {
        Some(lock) if lock.sid.same_session(&sid) => lock.token,
        _ => 0,
    };
    let io_ms = s.io_timeout_ms();
    let reply = s.call("destroying the session", true, io_ms, &mut |c, t| {
        c.destroy(&sid, token, t)
    })?;
    if token != 0 {
        s.lock = None;
    }
    match reply {
        Reply::Done | Reply::Refused(scd_wire::ErrorCode::NotFound, _) => {
            s.mirror_delete(&sid);
            Ok(())
        }
        Reply::Refused(code, message) => Err(warning!(
            "cluster: scd refused to destroy session {sid_shown} ({code:?}: {message})",
            sid_shown = Shown(&sid)
        )),
        other => {
            s.drop_conn();
            Err(warning!(
                "cluster: scd answered a destroy of session {sid_shown} with {other:?}; the connection was reset",
                sid_shown = Shown(&sid)
            ))
        }
    }
}

/// `gc`: scd expires sessions itself (every write and touch carries the lifetime), so PHP's
/// probabilistic garbage collection has nothing to do: zero sessions deleted.
pub fn gc(_maxlifetime: i64) -> i64 {
    0
}

/// `create_sid`: a new ID from scd (this node as master, fresh CSPRNG HASH, never reused).
pub fn create_sid() -> Result<IdText, Report> {
    let mut s = state();
    let io_ms = s.io_timeout_ms();
    let reply = s.call("creating a session ID", true, io_ms, &mut |c, t| {
        c.create_id(t)
    })?;
    match reply {
        Reply::Created(sid) => Ok(IdText::of(&sid)),
        Reply::Refused(code, message) => Err(warning!(
            "cluster: scd refused to create a session ID ({code:?}: {message})"
        )),
        other => {
            s.drop_conn();
            Err(warning!(
                "cluster: scd answered a request for a session ID with {other:?}; the connection was reset"
            ))
        }
    }
}

/// `validate_sid` (strict mode): does scd hold this session? A malformed ID is unknown without
/// asking.
pub fn validate_sid(id: &[u8], maxlifetime: i64) -> Result<bool, Report> {
    let Ok(sid) = SessionId::parse(id) else {
        let mut s = state();
        if s.adopt.from.is_some() && adopt::valid_old_id(id) {
            return s.adoptable(id, maxlifetime);
        }
        return Ok(false);
    };
    let mut s = state();
    let io_ms = s.io_timeout_ms();
    let reply = s.call("checking a session ID", true, io_ms, &mut |c, t| {
        c.exists(&sid, t)
    })?;
    match reply {
        Reply::Exists(known) => Ok(known),
        Reply::Refused(code, message) => Err(warning!(
            "cluster: scd refused to check session {sid_shown} ({code:?}: {message})",
            sid_shown = Shown(&sid)
        )),
        other => {
            s.drop_conn();
            Err(warning!(
                "cluster: scd answered a check of session {sid_shown} with {other:?}; the connection was reset",
                sid_shown = Shown(&sid)
            ))
        }
    }
}

/// The rows of the module's phpinfo() section. `save_handler`/`save_path` are PHP's current
/// `session.*` settings: when this process has no connection yet and the handler is ours, the
/// section tries one (bounded by the connect timeout) so the page shows whether scd answers.
pub fn info_rows(save_handler: &[u8], save_path: &[u8]) -> Vec<(&'static str, String)> {
    let mut s = state();
    let mut rows = vec![
        ("Version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "Built for PHP",
            format!(
                "{} ({})",
                crate::build_info::BUILT_FOR_PHP,
                crate::build_info::BUILD_SOURCE
            ),
        ),
        (
            "Protocol versions",
            format!(
                "{}..={}",
                scd_wire::constants::PROTOCOL_VERSION_MIN,
                scd_wire::constants::PROTOCOL_VERSION_MAX
            ),
        ),
    ];
    if s.conn.is_none() && save_handler == b"cluster" {
        match parse_save_path(save_path) {
            Ok(endpoint) => {
                s.endpoint = Some(endpoint);
                // The outcome is shown below (connection state or last error).
                let _ = s.connect();
            }
            Err(why) => s.last_error = Some(format!("session.save_path cannot be used: {why}")),
        }
    }
    let in_use = s.endpoint.as_ref().map_or_else(
        || "none (no session opened in this process)".to_string(),
        ToString::to_string,
    );
    rows.push(("Save path in use", in_use));
    let state_row = match (&s.conn, &s.last_error) {
        (Some(c), _) => format!("connected: {}", c.describe()),
        (None, Some(e)) => format!("not connected; last error: {e}"),
        (None, None) => "not connected".to_string(),
    };
    rows.push(("Connection", state_row));
    let record = if s.conn.is_some() {
        s.window_record()
    } else {
        None
    };
    let window = match (&s.adopt.from, s.window, record) {
        (None, _, _) => "off (cluster.adopt_from is empty)".to_string(),
        (Some(src), Some(w), _) if w.closed => format!("closed (adopting from {src})"),
        (Some(src), Some(w), _) => format!(
            "open until {}: adopting from {src}",
            adopt::utc_text(w.closes_ms)
        ),
        (Some(src), None, Some(r)) if r.closed_ms != 0 => format!(
            "closed on this node at {} (adopting from {src})",
            adopt::utc_text(r.closed_ms)
        ),
        (Some(src), None, Some(r)) => format!(
            "opened on this node at {}: adopting from {src}",
            adopt::utc_text(r.opened_ms)
        ),
        (Some(src), None, None) => {
            format!("opens at this node's first session request (adopting from {src})")
        }
    };
    rows.push(("Migration window", window));
    rows.push((
        "Sessions adopted by this process",
        s.adopted_here.to_string(),
    ));
    if s.adopt.from.is_some() {
        rows.push((
            "Sessions adopted on this node",
            record.map_or_else(|| "none yet".to_string(), |r| r.adopted.to_string()),
        ));
    }
    rows.push((
        "Lock held",
        match &s.lock {
            Some(l) => format!("session {}", Shown(&l.sid)),
            None => "none".to_string(),
        },
    ));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_ids_without_their_secret() {
        let id = b"0a000001-8707-0-0-1-00112233445566778899aabbccddeeff";
        let sid = SessionId::parse(id).unwrap();
        let shown = Shown(&sid).to_string();
        assert_eq!(shown, "0a000001-8707-0-0-1-0011...");
        assert!(!shown.contains("445566778899aabbccddeeff"));
    }

    #[test]
    fn incoming_ids_must_be_cluster_ids() {
        assert!(accepts_incoming_id(
            b"0a000001-8707-0-0-1-00112233445566778899aabbccddeeff",
            1440
        ));
        for bad in [
            &b""[..],
            b"abc",
            b"0A000001-8707-0-0-1-00112233445566778899aabbccddeeff",
            b"0a000001-8707-0-0-1-00112233445566778899aabbccddeeff-x",
            b"../../etc/passwd",
        ] {
            // No migration window: PHP's own IDs are not accepted either.
            assert!(!accepts_incoming_id(bad, 1440), "{bad:?}");
        }
    }

    #[test]
    fn lifetimes_fit_the_wire() {
        assert_eq!(lifetime_s(1440), 1440);
        assert_eq!(lifetime_s(0), 1);
        assert_eq!(lifetime_s(-5), 1);
        assert_eq!(lifetime_s(i64::MAX), u32::MAX);
    }
}
