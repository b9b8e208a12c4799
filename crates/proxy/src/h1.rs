//! The proxy's own HTTP/1.1 exchange for requests without a body and with a safe method
//! (GET, HEAD, OPTIONS: pages, assets, API reads, most of an app's traffic), on the upstream
//! connection the client connection keeps (see `affinity`).
//!
//! hyper's client runs each connection as a future of its own and hands it the request, and
//! takes back the response head and every body chunk, over channels. For a small exchange
//! that machinery costs more than the exchange itself. Here the request's own future writes
//! the head, reads and parses the response (with httparse, as hyper does) and returns a body
//! that reads straight from the connection. A response that arrived whole with its head is
//! answered from memory and its connection is free again at once; otherwise the body hands
//! the connection back when it ends. nginx works the same way.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD and for 1xx/204/304; a `Transfer-Encoding`
//! ending in chunked is decoded (the client side frames the body again); else
//! `Content-Length`; else the body lasts until the app closes the connection, which is then
//! not reused. Interim responses (103 Early Hints) are skipped. A kept connection the app
//! closed meanwhile fails before any byte of a response arrives: the request (safe and
//! bodiless, so idempotent, RFC 9110 §9.2.2) is then sent once more, on a new connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::affinity::Affinity;
use crate::rewrite;
use crate::upstream::{self, Upstream, UpstreamStream};

/// What a connection reads into at a time; a response head may grow it up to [`MAX_HEAD`].
const BUFFER_BYTES: usize = 16 * 1024;
/// The largest response head accepted (hyper's client allows about as much).
const MAX_HEAD: usize = 256 * 1024;
/// The most header fields a response head may have.
const MAX_HEADERS: usize = 128;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    /// Nothing came back: the request may not have reached the app (a kept connection the
    /// app had closed), so it may be sent again.
    #[error("the connection ended before any response")]
    NoAnswer(#[source] Option<io::Error>),
    #[error("the connection failed mid-response")]
    Io(#[source] io::Error),
    #[error("the connection was closed in the middle of the response head")]
    Truncated,
    #[error("invalid response head: {0}")]
    Invalid(&'static str),
    #[error("invalid response head")]
    Parse(#[source] httparse::Error),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    TooLarge,
}

/// Whether the proxy sends a request itself: a safe method and no body.
pub(crate) fn applies(method: &Method, body: &impl hyper::body::Body) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && body.is_end_stream()
}

/// Sends a request head (see `rewrite::encode_request_head`) on the client connection's
/// kept connection to `upstream`, or on a new one. `head_only`: it is a HEAD request.
pub(crate) async fn send(
    request: &[u8],
    head_only: bool,
    upstream: &Upstream,
    connect_timeout: Duration,
    affinity: &Affinity,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let mut kept = affinity.take_plain(upstream);
    loop {
        let reused = kept.is_some();
        let mut connection = match kept.take() {
            Some(connection) => connection,
            None => Connection::open(upstream, connect_timeout).await?,
        };
        match connection.exchange(request, head_only).await {
            Ok(head) => return Ok(head.into_response(connection, affinity)),
            Err(ExchangeError::NoAnswer(_)) if reused => continue,
            Err(error) => return Err(error),
        }
    }
}

/// An HTTP/1.1 connection to an app, with what was read from it and not used yet.
pub(crate) struct Connection {
    upstream: Upstream,
    stream: UpstreamStream,
    /// `buf[start..end]` was read and not used yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Connection {
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    async fn open(upstream: &Upstream, timeout: Duration) -> Result<Connection, ExchangeError> {
        let stream = upstream::connect_with_timeout(upstream, timeout).await.map_err(ExchangeError::Connect)?;
        Ok(Connection { upstream: upstream.clone(), stream, buf: vec![0; BUFFER_BYTES], start: 0, end: 0 })
    }

    async fn exchange(&mut self, request: &[u8], head_only: bool) -> Result<Head, ExchangeError> {
        if let Err(error) = self.stream.write_all(request).await {
            return Err(ExchangeError::NoAnswer(Some(error)));
        }
        // Bytes left over from an earlier exchange would be a response nobody asked for.
        self.start = 0;
        self.end = 0;
        let mut received = false;
        loop {
            if let Some(head) = self.parse_head(head_only)? {
                if head.status.is_informational() {
                    continue;
                }
                return Ok(head);
            }
            self.make_room()?;
            let read = self.stream.read(&mut self.buf[self.end..]).await;
            match read {
                Ok(0) if received => return Err(ExchangeError::Truncated),
                Ok(0) => return Err(ExchangeError::NoAnswer(None)),
                Ok(n) => self.end += n,
                Err(error) if received => return Err(ExchangeError::Io(error)),
                Err(error) => return Err(ExchangeError::NoAnswer(Some(error))),
            }
            received = true;
        }
    }

    /// The response head at the start of the buffer, if it is all there (and consumes it).
    fn parse_head(&mut self, head_only: bool) -> Result<Option<Head>, ExchangeError> {
        if self.start == self.end {
            return Ok(None);
        }
        let raw = &self.buf[self.start..self.end];
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let length = match response.parse(raw).map_err(ExchangeError::Parse)? {
            httparse::Status::Complete(length) => length,
            httparse::Status::Partial => return Ok(None),
        };
        let status = response.code.and_then(|code| StatusCode::from_u16(code).ok());
        let status = status.ok_or(ExchangeError::Invalid("bad status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Invalid("the app switched protocols without being asked to"));
        }
        let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        // One copy of the head; the header values are slices of it.
        let copy = Bytes::copy_from_slice(&raw[..length]);
        let base = raw.as_ptr().addr();
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| ExchangeError::Invalid("bad header field name"))?;
            let offset = field.value.as_ptr().addr().wrapping_sub(base);
            let slice = offset.checked_add(field.value.len()).and_then(|end| copy.get(offset..end));
            let value = match slice {
                Some(slice) if slice == field.value => HeaderValue::from_maybe_shared(copy.slice_ref(slice)),
                _ => HeaderValue::from_bytes(field.value),
            };
            headers.append(name, value.map_err(|_| ExchangeError::Invalid("bad header field value"))?);
        }
        self.start += length;
        let framing = framing(status, head_only, &mut headers)?;
        let keep_alive = version == Version::HTTP_11
            && !matches!(framing, Framing::UntilClose)
            && !rewrite::connection_tokens(&headers).any(|token| token.eq_ignore_ascii_case("close"));
        Ok(Some(Head { status, headers, framing, keep_alive }))
    }

    /// Space at the end of the buffer for the next read: what is used goes, and a head that
    /// fills it all grows it (up to [`MAX_HEAD`]).
    fn make_room(&mut self) -> Result<(), ExchangeError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else if self.buf.len() < MAX_HEAD {
            self.buf.resize((self.buf.len() * 2).min(MAX_HEAD), 0);
        } else {
            return Err(ExchangeError::TooLarge);
        }
        Ok(())
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Takes up to `limit` bytes that were read.
    fn take(&mut self, limit: u64) -> Bytes {
        let count = self.available().min(usize::try_from(limit).unwrap_or(usize::MAX));
        let data = Bytes::copy_from_slice(&self.buf[self.start..self.start + count]);
        self.start += count;
        data
    }

    /// Reads more of the body. `Ok(0)`: the app closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.make_room().is_err() {
            return Poll::Ready(Err(invalid_body("a chunk line is longer than the buffer")));
        }
        let mut buf = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// The line at the start of what was read, without its line ending, if it is all there
    /// (consumed: it stays readable until the next read).
    fn line(&mut self) -> Option<&[u8]> {
        let start = self.start;
        let newline = self.buf[start..self.end].iter().position(|byte| *byte == b'\n')?;
        self.start += newline + 1;
        let line = &self.buf[start..start + newline];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    fn into_response(self, mut connection: Connection, affinity: &Affinity) -> Response<UpstreamBody> {
        let Head { status, headers, framing, keep_alive } = self;
        let keep = keep_alive.then(|| affinity.clone());
        let state = match framing {
            Framing::Empty => {
                give_back(keep, connection);
                State::Done
            }
            Framing::Length(length) if (connection.available() as u64) >= length => {
                let body = connection.take(length);
                give_back(keep, connection);
                State::Ready(body)
            }
            framing => State::Reading { connection, framing, keep },
        };
        let mut response = Response::new(UpstreamBody { state });
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// Returns a connection whose exchange is over to its client connection, if it may be
/// reused: kept alive, and nothing more was sent than was asked for.
fn give_back(keep: Option<Affinity>, connection: Connection) {
    if let Some(affinity) = keep {
        if connection.available() == 0 {
            affinity.keep_plain(connection);
        }
    }
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug)]
enum Framing {
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Where a chunked body's decoding is.
#[derive(Debug)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes still to come.
    Data(u64),
    /// At the line ending after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, up to an empty one.
    Trailers,
}

fn framing(status: StatusCode, head_only: bool, headers: &mut HeaderMap) -> Result<Framing, ExchangeError> {
    if head_only || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // The transfer coding decides; a Content-Length next to it is wrong and must go.
        headers.remove(CONTENT_LENGTH);
        let last = headers.get_all(TRANSFER_ENCODING).iter().filter_map(|value| value.to_str().ok()).next_back();
        let chunked = last
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.to_str().map_err(|_| ExchangeError::Invalid("bad Content-Length"))?.split(',') {
            let part = part.trim();
            let parsed = (!part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or(ExchangeError::Invalid("bad Content-Length"))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(ExchangeError::Invalid("conflicting Content-Length values"));
            }
            length = Some(parsed);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

fn invalid_body(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// A response body from the app, read from its connection as the client side asks for it.
pub(crate) struct UpstreamBody {
    state: State,
}

enum State {
    Done,
    /// All of the body, read with the head.
    Ready(Bytes),
    Reading {
        connection: Connection,
        framing: Framing,
        /// Where the connection goes when the body has ended, if it may be reused.
        keep: Option<Affinity>,
    },
}

/// What decoding the bytes at hand gave.
enum Step {
    Data(Bytes),
    End,
    NeedMore,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let State::Reading { connection, keep, .. } = std::mem::replace(&mut self.state, State::Done) {
            give_back(keep, connection);
        }
    }
}

fn step(connection: &mut Connection, framing: &mut Framing) -> io::Result<Step> {
    match framing {
        Framing::Empty => Ok(Step::End),
        Framing::Length(0) => Ok(Step::End),
        Framing::Length(remaining) | Framing::Chunked(Chunk::Data(remaining)) => {
            if connection.available() == 0 {
                return Ok(Step::NeedMore);
            }
            let data = connection.take(*remaining);
            *remaining -= data.len() as u64;
            if let Framing::Chunked(chunk @ Chunk::Data(0)) = framing {
                *chunk = Chunk::DataEnd;
            }
            Ok(Step::Data(data))
        }
        Framing::UntilClose => {
            if connection.available() == 0 {
                return Ok(Step::NeedMore);
            }
            Ok(Step::Data(connection.take(u64::MAX)))
        }
        Framing::Chunked(chunk) => loop {
            match chunk {
                Chunk::Size => {
                    let Some(line) = connection.line() else { return Ok(Step::NeedMore) };
                    let size = chunk_size(line)?;
                    *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    if size > 0 {
                        return step(connection, framing);
                    }
                }
                Chunk::DataEnd => {
                    let Some(line) = connection.line() else { return Ok(Step::NeedMore) };
                    if !line.is_empty() {
                        return Err(invalid_body("chunk data longer than its size"));
                    }
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line) = connection.line() else { return Ok(Step::NeedMore) };
                    if line.is_empty() {
                        return Ok(Step::End);
                    }
                }
                Chunk::Data(_) => return step(connection, framing),
            }
        },
    }
}

/// The size on a chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.split(|byte| *byte == b';').next().unwrap_or_default().trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid_body("bad chunk size"));
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .ok_or_else(|| invalid_body("bad chunk size"))
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        loop {
            let (connection, framing) = match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Ready(_) => {
                    let State::Ready(body) = std::mem::replace(&mut this.state, State::Done) else { continue };
                    return Poll::Ready(Some(Ok(Frame::data(body))));
                }
                State::Reading { connection, framing, .. } => (connection, framing),
            };
            let stepped = step(connection, framing);
            match stepped {
                Ok(Step::Data(data)) => {
                    // The client side stops asking once it has Content-Length bytes: the
                    // connection goes back with the last of them.
                    if matches!(framing, Framing::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(error) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) if matches!(framing, Framing::UntilClose) => {
                    // The end of such a body; the connection is not reused.
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.state = State::Done;
                    let error = io::Error::new(io::ErrorKind::UnexpectedEof, "the app closed the connection mid-body");
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(_) => {}
                Err(error) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Ready(body) => SizeHint::with_exact(body.len() as u64),
            State::Reading { framing: Framing::Length(remaining), .. } => SizeHint::with_exact(*remaining),
            State::Reading { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert_eq!(chunk_size(b"10;name=value").unwrap(), 16);
        assert_eq!(chunk_size(b"A ; x").unwrap(), 10);
        for bad in [&b""[..], b"x", b"-1", b"1 2", b"ffffffffffffffff"] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    fn framing_of(status: u16, head_only: bool, pairs: &[(&str, &str)]) -> Result<(Framing, HeaderMap), ExchangeError> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        framing(StatusCode::from_u16(status).unwrap(), head_only, &mut headers).map(|f| (f, headers))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert!(matches!(framing_of(200, false, &[("content-length", "5")]).unwrap().0, Framing::Length(5)));
        assert!(matches!(framing_of(200, false, &[("content-length", "5, 5")]).unwrap().0, Framing::Length(5)));
        assert!(matches!(framing_of(200, true, &[("content-length", "5")]).unwrap().0, Framing::Empty));
        assert!(matches!(framing_of(304, false, &[("content-length", "5")]).unwrap().0, Framing::Empty));
        assert!(matches!(framing_of(204, false, &[]).unwrap().0, Framing::Empty));
        assert!(matches!(framing_of(200, false, &[]).unwrap().0, Framing::UntilClose));
        let (chunked, headers) =
            framing_of(200, false, &[("transfer-encoding", "gzip, chunked"), ("content-length", "3")]).unwrap();
        assert!(matches!(chunked, Framing::Chunked(Chunk::Size)));
        assert!(!headers.contains_key(CONTENT_LENGTH), "a Content-Length next to Transfer-Encoding goes");
        assert!(matches!(framing_of(200, false, &[("transfer-encoding", "gzip")]).unwrap().0, Framing::UntilClose));
        for bad in ["-1", "5, 6", "", "0x10", "+5"] {
            assert!(framing_of(200, false, &[("content-length", bad)]).is_err(), "{bad:?}");
        }
    }
}
