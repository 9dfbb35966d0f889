//! Reads the PHP this machine has (through `php-config`) and writes the constants that must match
//! it into `$OUT_DIR/php_build.rs`: the module API number and the build ID PHP compares when it
//! loads `cluster.so` (`API20220829,NTS`).
//!
//! Without `php-config` the crate still builds (someone who only wants the daemon must be able to
//! build the workspace): it falls back to PHP 8.2 NTS and says so with a cargo warning.
//!
//! Only non-debug NTS PHP is supported: a ZTS PHP keeps `ps_globals` in thread-local storage and a
//! debug PHP gives `_emalloc` extra parameters, neither of which this module declares. For such a
//! PHP the build still writes the NTS build ID, so PHP refuses to load the module with its own
//! "build ID mismatch" message instead of loading something that would crash.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the module was built for when `php-config` is missing: Debian 12's PHP.
const FALLBACK_API: u32 = 20220829;
const FALLBACK_VERSION: &str = "8.2 (php-config not found)";

struct Php {
    api: u32,
    version: String,
    source: &'static str,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PHP_CONFIG");
    let php = probe().unwrap_or_else(|why| {
        println!(
            "cargo:warning=scd-php: {why}; building cluster.so for PHP 8.2 NTS (API {FALLBACK_API}). \
             Install php-dev (php-config) or set PHP_CONFIG to build for your PHP."
        );
        Php {
            api: FALLBACK_API,
            version: FALLBACK_VERSION.to_string(),
            source: "defaults",
        }
    });
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let code = format!(
        "/// Module API number (`ZEND_MODULE_API_NO`) of the PHP this module was built for.\n\
         pub const ZEND_MODULE_API_NO: u32 = {api};\n\
         /// Build ID PHP compares on load (`ZEND_MODULE_BUILD_ID`).\n\
         pub const BUILD_ID: &::std::ffi::CStr = c\"API{api},NTS\";\n\
         /// PHP version reported by php-config at build time (shown in phpinfo).\n\
         pub const BUILT_FOR_PHP: &str = {version:?};\n\
         /// Where the constants came from: \"php-config\" or \"defaults\".\n\
         pub const BUILD_SOURCE: &str = {source:?};\n",
        api = php.api,
        version = php.version,
        source = php.source,
    );
    fs::write(out.join("php_build.rs"), code).expect("write php_build.rs");
}

fn probe() -> Result<Php, String> {
    let tool = env::var("PHP_CONFIG").unwrap_or_else(|_| "php-config".to_string());
    let include_dir = run(&tool, "--include-dir")?;
    let version = run(&tool, "--version")?;
    let include_dir = PathBuf::from(include_dir);
    let modules_h = include_dir.join("Zend/zend_modules.h");
    let config_h = include_dir.join("main/php_config.h");
    println!("cargo:rerun-if-changed={}", modules_h.display());
    println!("cargo:rerun-if-changed={}", config_h.display());

    // The number PHP checks is ZEND_MODULE_API_NO; --phpapi is PHP_API_VERSION, which is the same
    // number on every 8.x release but is a different constant, so prefer the header.
    let api = match define_value(&modules_h, "ZEND_MODULE_API_NO") {
        Some(v) => v.parse::<u32>().map_err(|_| {
            format!(
                "ZEND_MODULE_API_NO {v:?} in {} is not a number",
                modules_h.display()
            )
        })?,
        None => {
            let v = run(&tool, "--phpapi")?;
            v.parse::<u32>()
                .map_err(|_| format!("php-config --phpapi printed {v:?}, not a number"))?
        }
    };
    let major = version.split('.').next().unwrap_or("");
    if major != "8" {
        return Err(format!(
            "php-config reports PHP {version}; cluster.so declares PHP 8's structures only"
        ));
    }
    if !version.starts_with("8.2.") {
        println!(
            "cargo:warning=scd-php: building for PHP {version}; the module's structures are \
             declared from PHP 8.2's headers and tested with 8.2 only"
        );
    }
    if let Ok(text) = fs::read_to_string(&config_h) {
        if text.lines().any(|l| l.trim() == "#define ZTS 1") {
            println!(
                "cargo:warning=scd-php: PHP {version} is a thread-safe (ZTS) build; cluster.so \
                 supports NTS PHP only and is built as NTS, so this PHP will refuse to load it"
            );
        }
        if text.lines().any(|l| l.trim() == "#define ZEND_DEBUG 1") {
            println!(
                "cargo:warning=scd-php: PHP {version} is a debug build; cluster.so supports \
                 non-debug PHP only, so this PHP will refuse to load it"
            );
        }
    }
    Ok(Php {
        api,
        version,
        source: "php-config",
    })
}

fn run(tool: &str, arg: &str) -> Result<String, String> {
    let out = Command::new(tool)
        .arg(arg)
        .output()
        .map_err(|e| format!("cannot run `{tool} {arg}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{tool} {arg}` failed with {}", out.status));
    }
    let text =
        String::from_utf8(out.stdout).map_err(|_| format!("`{tool} {arg}` printed non-UTF-8"))?;
    Ok(text.trim().to_string())
}

/// The value of `#define NAME value` in a header, if the header has one.
fn define_value(header: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(header).ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "#define" || words.next()? != name {
            return None;
        }
        words.next().map(str::to_string)
    })
}
