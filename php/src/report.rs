//! Messages the module shows PHP users (warnings and notices), held in a fixed stack buffer.
//!
//! Why not a `String`: PHP may leave a C function with `longjmp` (a fatal error inside an error
//! handler, or `memory_limit` hit while allocating). Values that need dropping must not be alive
//! in the FFI frame when it calls back into PHP, so a report is plain bytes with no destructor.

use std::fmt;

use crate::constants::MESSAGE_MAX;

/// How loud a report is in PHP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Warning,
    Notice,
}

/// One message for PHP: a level and up to `MESSAGE_MAX - 1` bytes of text, always NUL-terminated
/// and never containing an interior NUL.
#[derive(Clone, Copy)]
pub struct Report {
    pub level: Level,
    len: usize,
    buf: [u8; MESSAGE_MAX],
}

impl Report {
    pub fn new(level: Level) -> Report {
        Report {
            level,
            len: 0,
            buf: [0; MESSAGE_MAX],
        }
    }

    /// A warning with the given text (cut at `MESSAGE_MAX - 1` bytes).
    pub fn warning(args: fmt::Arguments<'_>) -> Report {
        let mut r = Report::new(Level::Warning);
        // Writing into a Report never fails (it truncates), so the result carries nothing.
        let _ = fmt::write(&mut r, args);
        r
    }

    /// A notice with the given text.
    pub fn notice(args: fmt::Arguments<'_>) -> Report {
        let mut r = Report::new(Level::Notice);
        let _ = fmt::write(&mut r, args);
        r
    }

    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 characters are ever copied in (see write_str).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The text with its terminating NUL, for PHP's "%s".
    pub fn as_bytes_with_nul(&self) -> &[u8] {
        &self.buf[..=self.len]
    }
}

impl fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the NUL; cut at a character boundary.
        let room = MESSAGE_MAX - 1 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        for &b in &s.as_bytes()[..take] {
            // An interior NUL would cut the message short in C; show it instead.
            self.buf[self.len] = if b == 0 { b'?' } else { b };
            self.len += 1;
        }
        self.buf[self.len] = 0;
        Ok(())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.level, self.as_str())
    }
}

/// `warning!("...", args)` builds a warning [`Report`].
macro_rules! warning {
    ($($arg:tt)*) => { $crate::report::Report::warning(format_args!($($arg)*)) };
}
pub(crate) use warning;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_nul_terminated_and_cut_on_a_char_boundary() {
        let r = warning!("cluster: {}", "é".repeat(MESSAGE_MAX));
        assert!(r.as_str().len() < MESSAGE_MAX);
        assert!(r.as_str().starts_with("cluster: é"));
        let with_nul = r.as_bytes_with_nul();
        assert_eq!(with_nul.last(), Some(&0));
        assert_eq!(with_nul.iter().filter(|&&b| b == 0).count(), 1);
    }

    #[test]
    fn interior_nul_is_replaced() {
        let r = Report::notice(format_args!("a\0b"));
        assert_eq!(r.as_str(), "a?b");
        assert_eq!(r.level, Level::Notice);
    }
}
