//! A tiny HTTP/1.1 responder for Prometheus: `GET /metrics` answers the statistics in the text
//! exposition format; anything else gets 404 or 405. One request per connection
//! (`Connection: close`), at most `METRICS_CONNECTIONS_MAX` at once, a request head of at most
//! `METRICS_REQUEST_HEAD_MAX_BYTES`, and a few seconds to send it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, warn};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::constants;
use crate::core::Core;
use crate::stats;

/// How long a scraper has to send its request head. The read is abandoned with the connection.
const REQUEST_HEAD_WAIT_MS: u64 = 5_000;

pub async fn serve(core: Rc<Core>, listener: TcpListener) {
    let active = Rc::new(Cell::new(0usize));
    while !core.stopping.get() {
        let accepted = listener.cancelable_accept(core.stop_handle()).await;
        if core.stopping.get() {
            break;
        }
        match accepted {
            Ok((stream, peer)) => {
                if active.get() >= constants::METRICS_CONNECTIONS_MAX {
                    debug!(
                        "metrics: refused {peer}, {} scrapes in progress",
                        active.get()
                    );
                    continue;
                }
                active.set(active.get() + 1);
                let core = core.clone();
                let active = active.clone();
                monoio::spawn(async move {
                    respond(&core, stream).await;
                    active.set(active.get() - 1);
                });
            }
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn respond(core: &Core, mut stream: TcpStream) {
    let head = match monoio::time::timeout(
        Duration::from_millis(REQUEST_HEAD_WAIT_MS),
        read_head(&mut stream),
    )
    .await
    {
        Ok(Some(head)) => head,
        // Timed out, closed early, or a head over the limit: close without a word.
        _ => return,
    };
    let (status, content_type, body) = match route(&head) {
        Route::Metrics => {
            let entries = stats::gather(core).await.entries();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                stats::render_prometheus(&entries),
            )
        }
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics\n".to_string(),
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
        Route::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.into_bytes()).await;
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= constants::METRICS_REQUEST_HEAD_MAX_BYTES {
            return None;
        }
        if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        let len = buf.len();
        let cap = buf
            .capacity()
            .min(constants::METRICS_REQUEST_HEAD_MAX_BYTES);
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(buf);
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Route::Bad;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    let path = target.split('?').next().unwrap_or("");
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"\xff\xfe HTTP/1.1\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"GET /metrics SPDY/3 extra\r\n\r\n"), Route::Bad);
    }
}
