//! Everything that touches PHP's C ABI, and the crate's only `unsafe`.
//!
//! The structures below are declared by hand from PHP 8.2's headers (`zend_modules.h`,
//! `zend_ini.h`, `zend_types.h`, `ext/session/php_session.h`); their sizes and field offsets are
//! asserted at compile time for x86-64/aarch64 Linux, and a test compiles a C program against the
//! installed headers to check the same numbers. `build.rs` supplies the module API number and the
//! build ID of the PHP found by `php-config`.
//!
//! Every function PHP calls is a thin trampoline: it turns C arguments into Rust slices, runs the
//! safe logic in [`crate::handler`] under `catch_unwind` (a panic never crosses into PHP; in release
//! builds `panic = "abort"` stops the worker instead), and turns the result back into C. While a
//! trampoline calls back into PHP (`_emalloc`, `php_error_docref`) it holds nothing that needs
//! dropping, because PHP may leave through `longjmp` (a fatal error) and skip Rust destructors.

use std::cell::UnsafeCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use crate::handler;
use crate::report::{Level, Report, warning};
use crate::settings::{INI, Key};

use crate::build_info::{BUILD_ID, ZEND_MODULE_API_NO};

// ---------------------------------------------------------------------------------------------
// Constants from the headers.

const SUCCESS: c_int = 0;
const FAILURE: c_int = -1;
const E_WARNING: c_int = 1 << 1;
const E_NOTICE: c_int = 1 << 3;
const MODULE_DEP_REQUIRED: u8 = 1;
/// `ZEND_INI_ALL`: settable in php.ini, per directory and with `ini_set()`.
const ZEND_INI_ALL: u8 = (1 << 0) | (1 << 1) | (1 << 2);
const ZEND_INI_STAGE_STARTUP: c_int = 1 << 0;
/// `GC_STRING`: `IS_STRING` (6) with `GC_NOT_COLLECTABLE` (1 << 4) in the flags.
const GC_STRING: u32 = 6 | (1 << 4);
/// `IS_STR_INTERNED` (`GC_IMMUTABLE`): never freed by its users.
const IS_STR_INTERNED: u32 = 1 << 6;
/// `IS_STR_PERSISTENT` (`GC_PERSISTENT`): allocated with malloc, not emalloc.
const IS_STR_PERSISTENT: u32 = 1 << 7;
/// `offsetof(php_ps_globals, send_cookie)`: set to make `php_session_reset_id()` send the
/// session cookie (checked against the headers by the layout test).
const PS_SEND_COOKIE_OFFSET: usize = 360;
/// syslog's `LOG_NOTICE`, the severity of `php_log_err()`.
const LOG_NOTICE: c_int = 5;
/// `ZEND_MM_ALIGNMENT` on 64-bit Linux.
const ZEND_MM_ALIGNMENT: usize = 8;

// ---------------------------------------------------------------------------------------------
// Structures.

/// `zend_string`: a refcounted header followed by the bytes and a NUL.
#[repr(C)]
pub struct ZendString {
    refcount: u32,
    type_info: u32,
    h: u64,
    len: usize,
    val: [c_char; 1],
}

type ModuleFn = unsafe extern "C" fn(c_int, c_int) -> c_int;

/// `zend_module_entry` (NTS layout: `globals_ptr` is a plain pointer).
#[repr(C)]
pub struct ZendModuleEntry {
    size: u16,
    zend_api: u32,
    zend_debug: u8,
    zts: u8,
    ini_entry: *const c_void,
    deps: *const ZendModuleDep,
    name: *const c_char,
    functions: *const c_void,
    module_startup_func: Option<ModuleFn>,
    module_shutdown_func: Option<ModuleFn>,
    request_startup_func: Option<ModuleFn>,
    request_shutdown_func: Option<ModuleFn>,
    info_func: Option<unsafe extern "C" fn(*mut ZendModuleEntry)>,
    version: *const c_char,
    globals_size: usize,
    globals_ptr: *mut c_void,
    globals_ctor: Option<unsafe extern "C" fn(*mut c_void)>,
    globals_dtor: Option<unsafe extern "C" fn(*mut c_void)>,
    post_deactivate_func: Option<unsafe extern "C" fn() -> c_int>,
    module_started: c_int,
    type_: u8,
    handle: *mut c_void,
    module_number: c_int,
    build_id: *const c_char,
}

/// `zend_module_dep`.
#[repr(C)]
pub struct ZendModuleDep {
    name: *const c_char,
    rel: *const c_char,
    version: *const c_char,
    type_: u8,
}

type OnModify = unsafe extern "C" fn(
    *mut ZendIniEntry,
    *mut ZendString,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    c_int,
) -> c_int;

/// `zend_ini_entry_def`: how an extension declares a setting.
#[repr(C)]
pub struct ZendIniEntryDef {
    name: *const c_char,
    on_modify: Option<OnModify>,
    mh_arg1: *mut c_void,
    mh_arg2: *mut c_void,
    mh_arg3: *mut c_void,
    value: *const c_char,
    displayer: Option<unsafe extern "C" fn(*mut ZendIniEntry, c_int)>,
    value_length: u32,
    name_length: u16,
    modifiable: u8,
}

/// `zend_ini_entry`: PHP's live copy of a setting (only passed back to us; never read).
#[repr(C)]
pub struct ZendIniEntry {
    name: *mut ZendString,
    on_modify: Option<OnModify>,
    mh_arg1: *mut c_void,
    mh_arg2: *mut c_void,
    mh_arg3: *mut c_void,
    value: *mut ZendString,
    orig_value: *mut ZendString,
    displayer: Option<unsafe extern "C" fn(*mut ZendIniEntry, c_int)>,
    module_number: c_int,
    modifiable: u8,
    orig_modifiable: u8,
    modified: u8,
}

type ModData = *mut *mut c_void;

/// `ps_module`: the nine hooks of a session save handler.
#[repr(C)]
pub struct PsModule {
    s_name: *const c_char,
    s_open: unsafe extern "C" fn(ModData, *const c_char, *const c_char) -> c_int,
    s_close: unsafe extern "C" fn(ModData) -> c_int,
    s_read: unsafe extern "C" fn(ModData, *mut ZendString, *mut *mut ZendString, i64) -> c_int,
    s_write: unsafe extern "C" fn(ModData, *mut ZendString, *mut ZendString, i64) -> c_int,
    s_destroy: unsafe extern "C" fn(ModData, *mut ZendString) -> c_int,
    s_gc: unsafe extern "C" fn(ModData, i64, *mut i64) -> i64,
    s_create_sid: unsafe extern "C" fn(ModData) -> *mut ZendString,
    s_validate_sid: unsafe extern "C" fn(ModData, *mut ZendString) -> c_int,
    s_update_timestamp:
        unsafe extern "C" fn(ModData, *mut ZendString, *mut ZendString, i64) -> c_int,
}

/// The first fields of `php_ps_globals` (`PS(...)`); only `id` is used. Declaring a prefix is
/// enough because the module never takes the size of the whole structure.
#[repr(C)]
pub struct PsGlobalsHead {
    save_path: *mut c_char,
    session_name: *mut c_char,
    id: *mut ZendString,
}

// Sizes and offsets from PHP 8.2's headers on 64-bit Linux (checked against the real headers by
// `tests::layout_matches_the_installed_php_headers`).
#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ZendString>() == 32);
    assert!(offset_of!(ZendString, len) == 16);
    assert!(offset_of!(ZendString, val) == 24);
    assert!(size_of::<ZendModuleEntry>() == 168);
    assert!(offset_of!(ZendModuleEntry, ini_entry) == 16);
    assert!(offset_of!(ZendModuleEntry, module_startup_func) == 48);
    assert!(offset_of!(ZendModuleEntry, info_func) == 80);
    assert!(offset_of!(ZendModuleEntry, post_deactivate_func) == 128);
    assert!(offset_of!(ZendModuleEntry, module_number) == 152);
    assert!(offset_of!(ZendModuleEntry, build_id) == 160);
    assert!(size_of::<ZendModuleDep>() == 32);
    assert!(size_of::<ZendIniEntryDef>() == 64);
    assert!(offset_of!(ZendIniEntryDef, value_length) == 56);
    assert!(offset_of!(ZendIniEntryDef, modifiable) == 62);
    assert!(size_of::<ZendIniEntry>() == 72);
    assert!(size_of::<PsModule>() == 80);
    assert!(offset_of!(PsModule, s_update_timestamp) == 72);
    assert!(offset_of!(PsGlobalsHead, id) == 16);
};

// ---------------------------------------------------------------------------------------------
// What PHP exports to us (resolved when PHP loads cluster.so).

unsafe extern "C" {
    fn _emalloc(size: usize) -> *mut c_void;
    fn _efree(ptr: *mut c_void);
    fn php_error_docref(docref: *const c_char, type_: c_int, format: *const c_char, ...);
    fn zend_register_ini_entries(defs: *const ZendIniEntryDef, module_number: c_int) -> c_int;
    fn zend_unregister_ini_entries(module_number: c_int);
    fn zend_ini_long(name: *const c_char, name_length: usize, orig: c_int) -> i64;
    fn zend_ini_string(name: *const c_char, name_length: usize, orig: c_int) -> *mut c_char;
    fn display_ini_entries(module: *mut ZendModuleEntry);
    fn php_info_print_table_start();
    fn php_info_print_table_end();
    fn php_info_print_table_header(num_cols: c_int, ...);
    fn php_info_print_table_row(num_cols: c_int, ...);
    fn php_session_register_module(module: *const PsModule) -> c_int;
    fn php_session_reset_id() -> c_int;
    fn php_log_err_with_severity(message: *const c_char, syslog_type: c_int);
    static mut ps_globals: PsGlobalsHead;
}

// ---------------------------------------------------------------------------------------------
// The statics PHP reads.

/// Holds data PHP only reads (or, for the module entry, writes during startup on one thread).
#[repr(transparent)]
struct Shared<T>(UnsafeCell<T>);

// SAFETY: PHP NTS loads, starts and runs the module on one thread per process; the module entry is
// written by PHP only at startup (before any request) and the other tables are never written.
unsafe impl<T> Sync for Shared<T> {}

const MODULE_NAME: &CStr = c"cluster";
const MODULE_VERSION: &CStr = {
    const BYTES: &[u8] = concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes();
    match CStr::from_bytes_with_nul(BYTES) {
        Ok(s) => s,
        Err(_) => panic!("package version contains a NUL"),
    }
};

static DEPS: Shared<[ZendModuleDep; 2]> = Shared(UnsafeCell::new([
    ZendModuleDep {
        name: c"session".as_ptr(),
        rel: ptr::null(),
        version: ptr::null(),
        type_: MODULE_DEP_REQUIRED,
    },
    ZendModuleDep {
        name: ptr::null(),
        rel: ptr::null(),
        version: ptr::null(),
        type_: 0,
    },
]));

const fn ini_def(i: usize) -> ZendIniEntryDef {
    let def = &INI[i];
    ZendIniEntryDef {
        name: def.name.as_ptr(),
        on_modify: Some(on_modify),
        // The setting's index in Key::ALL: how on_modify knows which setting changed.
        mh_arg1: ptr::without_provenance_mut(i),
        mh_arg2: ptr::null_mut(),
        mh_arg3: ptr::null_mut(),
        value: def.default.as_ptr(),
        displayer: None,
        value_length: def.default.to_bytes().len() as u32,
        name_length: def.name.to_bytes().len() as u16,
        modifiable: ZEND_INI_ALL,
    }
}

const INI_END: ZendIniEntryDef = ZendIniEntryDef {
    name: ptr::null(),
    on_modify: None,
    mh_arg1: ptr::null_mut(),
    mh_arg2: ptr::null_mut(),
    mh_arg3: ptr::null_mut(),
    value: ptr::null(),
    displayer: None,
    value_length: 0,
    name_length: 0,
    modifiable: 0,
};

static INI_ENTRIES: Shared<[ZendIniEntryDef; 10]> = Shared(UnsafeCell::new([
    ini_def(0),
    ini_def(1),
    ini_def(2),
    ini_def(3),
    ini_def(4),
    ini_def(5),
    ini_def(6),
    ini_def(7),
    ini_def(8),
    INI_END,
]));
const _: () = assert!(INI.len() == 9 && Key::ALL.len() == 9);

static PS_MODULE: Shared<PsModule> = Shared(UnsafeCell::new(PsModule {
    s_name: MODULE_NAME.as_ptr(),
    s_open: ps_open,
    s_close: ps_close,
    s_read: ps_read,
    s_write: ps_write,
    s_destroy: ps_destroy,
    s_gc: ps_gc,
    s_create_sid: ps_create_sid,
    s_validate_sid: ps_validate_sid,
    s_update_timestamp: ps_update_timestamp,
}));

static MODULE: Shared<ZendModuleEntry> = Shared(UnsafeCell::new(ZendModuleEntry {
    size: std::mem::size_of::<ZendModuleEntry>() as u16,
    zend_api: ZEND_MODULE_API_NO,
    zend_debug: 0,
    zts: 0,
    ini_entry: ptr::null(),
    deps: DEPS.0.get() as *const ZendModuleDep,
    name: MODULE_NAME.as_ptr(),
    functions: ptr::null(),
    module_startup_func: Some(minit),
    module_shutdown_func: Some(mshutdown),
    request_startup_func: None,
    request_shutdown_func: None,
    info_func: Some(minfo),
    version: MODULE_VERSION.as_ptr(),
    globals_size: 0,
    globals_ptr: ptr::null_mut(),
    globals_ctor: None,
    globals_dtor: None,
    post_deactivate_func: Some(post_deactivate),
    module_started: 0,
    type_: 0,
    handle: ptr::null_mut(),
    module_number: 0,
    build_id: BUILD_ID.as_ptr(),
}));

/// The entry point PHP looks up after `dlopen("cluster.so")`.
#[unsafe(no_mangle)]
pub extern "C" fn get_module() -> *mut ZendModuleEntry {
    MODULE.0.get()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Runs hook logic; a panic becomes a warning (debug builds; release builds abort on panic).
fn guarded<T>(f: impl FnOnce() -> Result<T, Report>) -> Result<T, Report> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            handler::after_panic();
            Err(warning!(
                "cluster: internal error in cluster.so (a bug); the session operation was abandoned"
            ))
        }
    }
}

/// Shows a report to the PHP user as a warning or notice.
fn emit(report: &Report) {
    let level = match report.level {
        Level::Warning => E_WARNING,
        Level::Notice => E_NOTICE,
    };
    let text = report.as_bytes_with_nul();
    // SAFETY: both strings are NUL-terminated and outlive the call; "%s" makes PHP treat the text
    // as data, never as a format. `report` is plain bytes: nothing is skipped if PHP longjmps.
    unsafe { php_error_docref(ptr::null(), level, c"%s".as_ptr(), text.as_ptr()) };
}

/// The bytes of a PHP string (empty for NULL).
///
/// # Safety
/// `s` is NULL or a valid `zend_string` that outlives the returned slice.
unsafe fn zstr_bytes<'a>(s: *const ZendString) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    // SAFETY: per the contract, `s` is a live zend_string: `len` bytes follow `val`.
    unsafe {
        let len = (*s).len;
        std::slice::from_raw_parts(ptr::addr_of!((*s).val).cast::<u8>(), len)
    }
}

/// A new request-lifetime PHP string holding a copy of `len` bytes at `data`.
///
/// # Safety
/// `data` points at `len` readable bytes (or `len` is 0).
unsafe fn zstr_new(data: *const u8, len: usize) -> *mut ZendString {
    let header = std::mem::offset_of!(ZendString, val);
    // len is bounded by the largest session (1 MiB), far from overflowing; saturate anyway so a
    // bug becomes a failed allocation in PHP rather than a short buffer.
    let size = header
        .saturating_add(len)
        .saturating_add(1)
        .saturating_add(ZEND_MM_ALIGNMENT - 1)
        & !(ZEND_MM_ALIGNMENT - 1);
    // SAFETY: _emalloc returns `size` writable bytes aligned to 8, or leaves through PHP's fatal
    // error (memory_limit) without returning; the header fields and `len + 1` value bytes fit in
    // `size` bytes by construction; `data` has `len` readable bytes per the contract.
    unsafe {
        let s = _emalloc(size).cast::<ZendString>();
        (*s).refcount = 1;
        (*s).type_info = GC_STRING;
        (*s).h = 0;
        (*s).len = len;
        let val = ptr::addr_of_mut!((*s).val).cast::<u8>();
        if len > 0 {
            ptr::copy_nonoverlapping(data, val, len);
        }
        *val.add(len) = 0;
        s
    }
}

/// Drops one reference to a PHP string (PHP's `zend_string_release`).
///
/// # Safety
/// `s` is a valid, non-NULL `zend_string` the caller owns one reference to.
unsafe fn zstr_release(s: *mut ZendString) {
    // SAFETY: per the contract `s` is live and we own a reference.
    unsafe {
        let flags = (*s).type_info;
        if flags & IS_STR_INTERNED != 0 {
            return; // interned strings live as long as PHP
        }
        if flags & IS_STR_PERSISTENT != 0 {
            // Never the case for a session ID; leaking one string beats freeing it with the
            // wrong allocator.
            return;
        }
        (*s).refcount -= 1;
        if (*s).refcount == 0 {
            _efree(s.cast());
        }
    }
}

fn max_execution_time_s() -> i64 {
    ini_long(c"max_execution_time")
}

/// The current value of a numeric PHP setting (0 when unset or unknown).
fn ini_long(name: &CStr) -> i64 {
    // SAFETY: the name is NUL-terminated and its length excludes the NUL, as zend_ini_long wants.
    unsafe { zend_ini_long(name.as_ptr(), name.to_bytes().len(), 0) }
}

/// A marker for `*mod_data`: PHP skips write and close when it is NULL. The module keeps its
/// state in process globals, so any non-NULL value will do.
static MOD_DATA_MARK: u8 = 0;

fn mod_data_mark() -> *mut c_void {
    ptr::addr_of!(MOD_DATA_MARK).cast_mut().cast()
}

// ---------------------------------------------------------------------------------------------
// Module lifecycle.

unsafe extern "C" fn minit(_type: c_int, module_number: c_int) -> c_int {
    // SAFETY: INI_ENTRIES is a NULL-terminated array of valid definitions with static lifetime.
    if unsafe { zend_register_ini_entries(INI_ENTRIES.0.get().cast(), module_number) } != SUCCESS {
        return FAILURE;
    }
    // SAFETY: PS_MODULE is static and its hooks have the signatures php_session.h declares.
    unsafe { php_session_register_module(PS_MODULE.0.get()) }
}

unsafe extern "C" fn mshutdown(_type: c_int, module_number: c_int) -> c_int {
    let _ = guarded(|| {
        handler::module_shutdown();
        Ok(())
    });
    // SAFETY: the entries were registered under this number in minit.
    unsafe { zend_unregister_ini_entries(module_number) };
    SUCCESS
}

/// After every request, once all RSHUTDOWN functions (session's write and close among them) have
/// run: release a lock PHP never closed (a fatal error, an exit in a strange place).
unsafe extern "C" fn post_deactivate() -> c_int {
    if let Err(r) = guarded(|| {
        handler::request_end();
        Ok(())
    }) {
        // Output is already shut down at this point; the report can only go to the log.
        eprintln!("{}", r.as_str());
    }
    SUCCESS
}

unsafe extern "C" fn minfo(module: *mut ZendModuleEntry) {
    let handler_name = ini_string(c"session.save_handler");
    let save_path = ini_string(c"session.save_path");
    let rows = guarded(|| Ok(handler::info_rows(handler_name, save_path))).unwrap_or_default();
    let rows: Vec<(CString, CString)> = rows
        .into_iter()
        .map(|(k, v)| (cstring(k), cstring(&v)))
        .collect();
    // SAFETY: every string is NUL-terminated and lives until the end of this function; the
    // variadic calls pass exactly num_cols `const char *` arguments; `module` is PHP's entry.
    unsafe {
        php_info_print_table_start();
        php_info_print_table_header(2, c"cluster session module".as_ptr(), c"enabled".as_ptr());
        for (k, v) in &rows {
            php_info_print_table_row(2, k.as_ptr(), v.as_ptr());
        }
        php_info_print_table_end();
        display_ini_entries(module);
    }
}

/// The current value of a PHP setting (empty when unset or unknown).
fn ini_string(name: &CStr) -> &'static [u8] {
    // SAFETY: the name is NUL-terminated with its length excluding the NUL; PHP returns NULL or
    // a NUL-terminated string owned by its ini table, alive at least until the setting changes
    // (not during this phpinfo call).
    unsafe {
        let v = zend_ini_string(name.as_ptr(), name.to_bytes().len(), 0);
        if v.is_null() {
            &[]
        } else {
            CStr::from_ptr(v).to_bytes()
        }
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

/// PHP calls this for every change of a `cluster.*` setting (startup, ini_set, end of request).
unsafe extern "C" fn on_modify(
    _entry: *mut ZendIniEntry,
    new_value: *mut ZendString,
    mh_arg1: *mut c_void,
    _mh_arg2: *mut c_void,
    _mh_arg3: *mut c_void,
    stage: c_int,
) -> c_int {
    let Some(key) = Key::from_index(mh_arg1.addr()) else {
        return FAILURE;
    };
    // SAFETY: PHP passes the new value as a live zend_string (or NULL) for the call's duration.
    let value = unsafe { zstr_bytes(new_value) };
    let result = guarded(|| {
        handler::apply_setting(key, value).map_err(|e| {
            if stage == ZEND_INI_STAGE_STARTUP {
                warning!("cluster: {e}; using the default")
            } else {
                warning!("cluster: {e}")
            }
        })
    });
    match result {
        Ok(()) => SUCCESS,
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The nine session hooks.

unsafe extern "C" fn ps_open(
    mod_data: ModData,
    save_path: *const c_char,
    _name: *const c_char,
) -> c_int {
    let path: &[u8] = if save_path.is_null() {
        &[]
    } else {
        // SAFETY: PHP passes PS(save_path), a NUL-terminated string alive for the call.
        unsafe { CStr::from_ptr(save_path) }.to_bytes()
    };
    if let Err(r) = guarded(|| handler::open(path)) {
        emit(&r);
        return FAILURE;
    }
    let maxlifetime = ini_long(c"session.gc_maxlifetime");
    let _ = guarded(|| {
        handler::check_window(maxlifetime);
        Ok(())
    });
    // PHP hands a custom module's IDs through unchecked. Drop a malformed incoming ID here, before
    // PHP looks at it, so PHP asks create_sid for a new one (strict mode or not).
    // SAFETY: ps_globals is PHP's session state; NTS PHP runs one request per process, and open
    // runs inside session_start() where PS(id) is NULL or a request string PHP owns.
    unsafe {
        let globals = ptr::addr_of_mut!(ps_globals);
        let id = (*globals).id;
        if !id.is_null() {
            let keep = guarded(|| Ok(handler::accepts_incoming_id(zstr_bytes(id), maxlifetime)))
                .unwrap_or(false);
            if !keep {
                (*globals).id = ptr::null_mut();
                zstr_release(id);
            }
        }
        *mod_data = mod_data_mark();
    }
    write_log();
    SUCCESS
}

unsafe extern "C" fn ps_close(mod_data: ModData) -> c_int {
    let result = guarded(handler::close);
    // SAFETY: PHP passes &PS(mod_data).
    unsafe { *mod_data = ptr::null_mut() };
    match result {
        Ok(()) => SUCCESS,
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

unsafe extern "C" fn ps_read(
    _mod_data: ModData,
    key: *mut ZendString,
    val: *mut *mut ZendString,
    maxlifetime: i64,
) -> c_int {
    let met = max_execution_time_s();
    // SAFETY: PHP passes PS(id), alive for the call.
    let id = unsafe { zstr_bytes(key) };
    let result = guarded(|| handler::read(id, maxlifetime, met));
    write_log();
    match result {
        Ok(done) => {
            // SAFETY: `done.data` points into the handler's read buffer, which nothing touches
            // until the next hook call; `val` is PHP's out-pointer.
            unsafe { *val = zstr_new(done.data_ptr, done.data_len) };
            if let Some(new_id) = done.new_id {
                // SAFETY: called from PHP's read hook, inside session_start() (or
                // session_regenerate_id/session_reset), where PS(id) is the request's ID.
                unsafe { switch_session_id(new_id.as_bytes()) };
            }
            SUCCESS
        }
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

/// Makes PHP use `new_id` for the rest of the request and send it to the client, as
/// `session_regenerate_id()` would, but keeping the data and creating no second session: PS(id)
/// is replaced, `PS(send_cookie)` set, and `php_session_reset_id()` queues the Set-Cookie header
/// (replacing one already queued for the session name) and updates the SID constant.
///
/// # Safety
/// Only from a session hook of this request, while PHP's session state is live.
unsafe fn switch_session_id(new_id: &[u8]) {
    // SAFETY: NTS PHP: ps_globals is this process' session state; PS(id) is NULL or a request
    // string PHP owns one reference to, which is replaced by a new request string. The caller
    // of the read hook passed PS(id) as `key` and does not use it after the hook returns.
    // send_cookie is a `bool` at PS_SEND_COOKIE_OFFSET (layout test).
    unsafe {
        let globals = ptr::addr_of_mut!(ps_globals);
        let old = (*globals).id;
        (*globals).id = zstr_new(new_id.as_ptr(), new_id.len());
        if !old.is_null() {
            zstr_release(old);
        }
        *globals
            .cast::<u8>()
            .add(PS_SEND_COOKIE_OFFSET)
            .cast::<bool>() = true;
        // Its failure (no ID) cannot happen here: the ID was just set.
        php_session_reset_id();
    }
}

/// Writes the handler's pending log lines to PHP's error log (`error_log`, or the SAPI's log).
fn write_log() {
    while let Some(r) = guarded(|| Ok(handler::take_log())).ok().flatten() {
        let text = r.as_bytes_with_nul();
        // SAFETY: NUL-terminated text in a plain array; PHP copies it out.
        unsafe { php_log_err_with_severity(text.as_ptr().cast(), LOG_NOTICE) };
    }
}

/// `flock(LOCK_EX | LOCK_NB)` on an open file: PHP's files handler locks its `sess_<id>` files
/// this way (blocking there; here non-blocking, so the caller can bound the wait). Ok(false):
/// someone else holds the lock.
pub(crate) fn flock_exclusive_nonblocking(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: a valid open descriptor owned by `file` for the call's duration.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
}

unsafe extern "C" fn ps_write(
    _mod_data: ModData,
    key: *mut ZendString,
    val: *mut ZendString,
    maxlifetime: i64,
) -> c_int {
    // SAFETY: PHP passes live strings for the call.
    let (id, data) = unsafe { (zstr_bytes(key), zstr_bytes(val)) };
    let result = guarded(|| handler::write(id, data, maxlifetime));
    write_log();
    match result {
        Ok(None) => SUCCESS,
        Ok(Some(notice)) => {
            emit(&notice);
            SUCCESS
        }
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

unsafe extern "C" fn ps_destroy(_mod_data: ModData, key: *mut ZendString) -> c_int {
    // SAFETY: PHP passes a live string for the call.
    let id = unsafe { zstr_bytes(key) };
    let result = guarded(|| handler::destroy(id));
    write_log();
    match result {
        Ok(()) => SUCCESS,
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

unsafe extern "C" fn ps_gc(_mod_data: ModData, maxlifetime: i64, nrdels: *mut i64) -> i64 {
    let n = guarded(|| Ok(handler::gc(maxlifetime))).unwrap_or(0);
    if !nrdels.is_null() {
        // SAFETY: PHP passes a pointer to its counter.
        unsafe { *nrdels = n };
    }
    n
}

unsafe extern "C" fn ps_create_sid(_mod_data: ModData) -> *mut ZendString {
    match guarded(handler::create_sid) {
        Ok(id) => {
            let text = id.as_bytes();
            // SAFETY: `text` is a live slice of `id`, a plain byte array on this frame.
            unsafe { zstr_new(text.as_ptr(), text.len()) }
        }
        Err(r) => {
            emit(&r);
            ptr::null_mut()
        }
    }
}

unsafe extern "C" fn ps_validate_sid(_mod_data: ModData, key: *mut ZendString) -> c_int {
    // SAFETY: PHP passes a live string for the call.
    let id = unsafe { zstr_bytes(key) };
    let maxlifetime = ini_long(c"session.gc_maxlifetime");
    let result = guarded(|| handler::validate_sid(id, maxlifetime));
    write_log();
    match result {
        Ok(true) => SUCCESS,
        Ok(false) => FAILURE,
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

unsafe extern "C" fn ps_update_timestamp(
    _mod_data: ModData,
    key: *mut ZendString,
    val: *mut ZendString,
    maxlifetime: i64,
) -> c_int {
    // SAFETY: PHP passes live strings for the call.
    let (id, data) = unsafe { (zstr_bytes(key), zstr_bytes(val)) };
    let result = guarded(|| handler::update_timestamp(id, data, maxlifetime));
    write_log();
    match result {
        Ok(()) => SUCCESS,
        Err(r) => {
            emit(&r);
            FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// Compiles a C program against the installed PHP headers and compares every size and offset
    /// the module relies on with the Rust declarations above.
    #[test]
    fn layout_matches_the_installed_php_headers() {
        let includes = Command::new("php-config")
            .arg("--includes")
            .output()
            .expect("php-config (php-dev) is needed to check the FFI layout");
        assert!(includes.status.success());
        let includes = String::from_utf8(includes.stdout).unwrap();
        let dir = std::env::temp_dir().join(format!("scd-php-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        let exe = dir.join("layout");
        std::fs::write(&src, LAYOUT_C).unwrap();
        let cc = Command::new("cc")
            .args(includes.split_whitespace())
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("a C compiler (cc) is needed to check the FFI layout");
        assert!(
            cc.status.success(),
            "cc failed: {}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = Command::new(&exe).output().unwrap();
        assert!(out.status.success());
        let _ = std::fs::remove_dir_all(&dir);
        let facts = String::from_utf8(out.stdout).unwrap();
        let rust: &[(&str, usize)] = &[
            ("sizeof zend_string", size_of::<ZendString>()),
            ("offsetof zend_string.len", offset_of!(ZendString, len)),
            ("offsetof zend_string.val", offset_of!(ZendString, val)),
            ("sizeof zend_module_entry", size_of::<ZendModuleEntry>()),
            (
                "offsetof zend_module_entry.deps",
                offset_of!(ZendModuleEntry, deps),
            ),
            (
                "offsetof zend_module_entry.info_func",
                offset_of!(ZendModuleEntry, info_func),
            ),
            (
                "offsetof zend_module_entry.globals_size",
                offset_of!(ZendModuleEntry, globals_size),
            ),
            (
                "offsetof zend_module_entry.post_deactivate_func",
                offset_of!(ZendModuleEntry, post_deactivate_func),
            ),
            (
                "offsetof zend_module_entry.type",
                offset_of!(ZendModuleEntry, type_),
            ),
            (
                "offsetof zend_module_entry.module_number",
                offset_of!(ZendModuleEntry, module_number),
            ),
            (
                "offsetof zend_module_entry.build_id",
                offset_of!(ZendModuleEntry, build_id),
            ),
            ("sizeof zend_module_dep", size_of::<ZendModuleDep>()),
            (
                "offsetof zend_module_dep.type",
                offset_of!(ZendModuleDep, type_),
            ),
            ("sizeof zend_ini_entry_def", size_of::<ZendIniEntryDef>()),
            (
                "offsetof zend_ini_entry_def.value",
                offset_of!(ZendIniEntryDef, value),
            ),
            (
                "offsetof zend_ini_entry_def.value_length",
                offset_of!(ZendIniEntryDef, value_length),
            ),
            (
                "offsetof zend_ini_entry_def.name_length",
                offset_of!(ZendIniEntryDef, name_length),
            ),
            (
                "offsetof zend_ini_entry_def.modifiable",
                offset_of!(ZendIniEntryDef, modifiable),
            ),
            ("sizeof zend_ini_entry", size_of::<ZendIniEntry>()),
            ("sizeof ps_module", size_of::<PsModule>()),
            (
                "offsetof ps_module.s_create_sid",
                offset_of!(PsModule, s_create_sid),
            ),
            (
                "offsetof ps_module.s_update_timestamp",
                offset_of!(PsModule, s_update_timestamp),
            ),
            ("offsetof php_ps_globals.id", offset_of!(PsGlobalsHead, id)),
            ("offsetof php_ps_globals.send_cookie", PS_SEND_COOKIE_OFFSET),
            ("ZEND_MODULE_API_NO", ZEND_MODULE_API_NO as usize),
            ("GC_STRING", GC_STRING as usize),
            ("IS_STR_INTERNED", IS_STR_INTERNED as usize),
            ("IS_STR_PERSISTENT", IS_STR_PERSISTENT as usize),
            ("ZEND_MM_ALIGNMENT", ZEND_MM_ALIGNMENT),
            ("ZEND_INI_ALL", ZEND_INI_ALL as usize),
            ("ZEND_INI_STAGE_STARTUP", ZEND_INI_STAGE_STARTUP as usize),
            ("E_WARNING", E_WARNING as usize),
            ("E_NOTICE", E_NOTICE as usize),
            ("MODULE_DEP_REQUIRED", MODULE_DEP_REQUIRED as usize),
            ("ZEND_DEBUG", 0),
            ("USING_ZTS", 0),
        ];
        let mut checked = 0;
        for line in facts.lines() {
            let (name, value) = line.rsplit_once(' ').unwrap();
            let value: usize = value.parse().unwrap();
            let (_, ours) = rust
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no Rust counterpart for {name}"));
            assert_eq!(
                *ours, value,
                "{name}: Rust says {ours}, the PHP headers say {value}"
            );
            checked += 1;
        }
        assert_eq!(
            checked,
            rust.len(),
            "every Rust fact was checked against the headers"
        );
        let build_id = BUILD_ID.to_str().unwrap();
        assert!(facts.contains(&format!("ZEND_MODULE_API_NO {ZEND_MODULE_API_NO}")));
        assert_eq!(build_id, format!("API{ZEND_MODULE_API_NO},NTS"));
    }

    const LAYOUT_C: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include "php.h"
#include "ext/session/php_session.h"
#define SIZE(t) printf("sizeof " #t " %zu\n", sizeof(t))
#define OFF(t, f) printf("offsetof " #t "." #f " %zu\n", offsetof(t, f))
#define VAL(v) printf(#v " %zu\n", (size_t)(v))
int main(void) {
    SIZE(zend_string); OFF(zend_string, len); OFF(zend_string, val);
    SIZE(zend_module_entry); OFF(zend_module_entry, deps); OFF(zend_module_entry, info_func);
    OFF(zend_module_entry, globals_size); OFF(zend_module_entry, post_deactivate_func);
    OFF(zend_module_entry, type); OFF(zend_module_entry, module_number);
    OFF(zend_module_entry, build_id);
    SIZE(zend_module_dep); OFF(zend_module_dep, type);
    SIZE(zend_ini_entry_def); OFF(zend_ini_entry_def, value);
    OFF(zend_ini_entry_def, value_length); OFF(zend_ini_entry_def, name_length);
    OFF(zend_ini_entry_def, modifiable);
    SIZE(zend_ini_entry);
    SIZE(ps_module); OFF(ps_module, s_create_sid); OFF(ps_module, s_update_timestamp);
    OFF(php_ps_globals, id); OFF(php_ps_globals, send_cookie);
    VAL(ZEND_MODULE_API_NO); VAL(GC_STRING); VAL(IS_STR_INTERNED); VAL(IS_STR_PERSISTENT);
    VAL(ZEND_MM_ALIGNMENT); VAL(ZEND_INI_ALL); VAL(ZEND_INI_STAGE_STARTUP);
    VAL(E_WARNING); VAL(E_NOTICE); VAL(MODULE_DEP_REQUIRED); VAL(ZEND_DEBUG); VAL(USING_ZTS);
    return 0;
}
"#;
}
