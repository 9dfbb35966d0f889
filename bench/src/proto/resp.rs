//! RESP2, the Redis protocol: just what the session handlers send. Commands go out as arrays of
//! bulk strings; replies are parsed without copying (a bulk string borrows from the buffer).

use super::Parse;

/// Longest status or error line accepted (Redis' own messages are far shorter).
const LINE_MAX: usize = 512;

/// One RESP2 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// `+OK`
    Simple(&'a [u8]),
    /// `-ERR ...`
    Error(&'a [u8]),
    /// `:1`
    Int(i64),
    /// `$n` followed by n bytes.
    Bulk(&'a [u8]),
    /// `$-1` (or `*-1`): no such key / SET NX refused.
    Nil,
}

/// Appends one command (an array of bulk strings).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for arg in args {
        header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, tag: u8, n: usize) {
    out.push(tag);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Parses one reply from the start of `buf`. `len_max` bounds a bulk string before the client
/// waits for (or allocates room for) its bytes.
pub fn parse(buf: &[u8], len_max: usize) -> Parse<Value<'_>> {
    let Some(line_end) = find_crlf(buf) else {
        // A line longer than any header we expect is garbage, not a slow server.
        return if buf.len() > LINE_MAX {
            Parse::Invalid("RESP line too long".into())
        } else {
            Parse::Incomplete
        };
    };
    let Some((&tag, line)) = buf[..line_end].split_first() else {
        return Parse::Invalid("empty RESP line".into());
    };
    let after_line = line_end + 2;
    match tag {
        b'+' => Parse::Done(Value::Simple(line), after_line),
        b'-' => Parse::Done(Value::Error(line), after_line),
        b':' => match parse_int(line) {
            Some(n) => Parse::Done(Value::Int(n), after_line),
            None => Parse::Invalid("bad RESP integer".into()),
        },
        b'$' | b'*' => {
            let Some(n) = parse_int(line) else {
                return Parse::Invalid("bad RESP length".into());
            };
            if n == -1 {
                return Parse::Done(Value::Nil, after_line);
            }
            if tag == b'*' {
                // No command the handlers send answers with an array.
                return Parse::Invalid("unexpected RESP array".into());
            }
            let Ok(n) = usize::try_from(n) else {
                return Parse::Invalid("negative RESP length".into());
            };
            if n > len_max {
                return Parse::Invalid("RESP bulk string over the limit".into());
            }
            let end = after_line + n;
            if buf.len() < end + 2 {
                return Parse::Incomplete;
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Parse::Invalid("RESP bulk string not ended by CRLF".into());
            }
            Parse::Done(Value::Bulk(&buf[after_line..end]), end + 2)
        }
        _ => Parse::Invalid("unknown RESP type".into()),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).take(LINE_MAX + 1).position(|w| w == b"\r\n")
}

fn parse_int(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_command() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b"vv"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(
            parse(b"+OK\r\nrest", 10),
            Parse::Done(Value::Simple(b"OK"), 5)
        );
        assert_eq!(
            parse(b"-ERR no\r\n", 10),
            Parse::Done(Value::Error(b"ERR no"), 9)
        );
        assert_eq!(parse(b":12\r\n", 10), Parse::Done(Value::Int(12), 5));
        assert_eq!(parse(b"$-1\r\n", 10), Parse::Done(Value::Nil, 5));
        assert_eq!(
            parse(b"$3\r\nabc\r\n", 10),
            Parse::Done(Value::Bulk(b"abc"), 9)
        );
    }

    #[test]
    fn waits_for_the_whole_reply_and_refuses_garbage() {
        assert_eq!(parse(b"$3\r\nab", 10), Parse::Incomplete);
        assert_eq!(parse(b"+O", 10), Parse::Incomplete);
        assert!(matches!(parse(b"$11\r\n", 10), Parse::Invalid(_)));
        assert!(matches!(parse(b"$3\r\nabcXY", 10), Parse::Invalid(_)));
        assert!(matches!(parse(b"?x\r\n", 10), Parse::Invalid(_)));
        assert!(matches!(parse(&[b'+'; 600], 10), Parse::Invalid(_)));
    }
}
