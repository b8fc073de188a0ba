//! HTTP/1.1 on std's `TcpListener` and the `httparse` crate: one blocking accept loop hands
//! each connection to a thread of its own, which reads one request at a time, lets its
//! [`Handler`] answer it (Looper's is [`crate::api`]: `/health` at once, `/run`'s pipeline on
//! this same thread behind the one run guard) and writes the answer before it reads the next.
//! The transport knows nothing of what it serves.
//!
//! Why not tiny_http (the design's first choice): tiny_http 0.12 drains a body it was not
//! asked to read by allocating the whole declared length when the request is dropped, on
//! every answer path, so one `Content-Length: 1000000000000` killed Looper; it also read
//! heads of any size and drained unread bodies and pipelines on its loop. Here every limit
//! sits where the bytes arrive:
//! - a request head is at most [`MAX_HEAD`] bytes and must arrive within
//!   [`Limits::head_deadline`];
//! - a body is at most [`MAX_BODY`] (`413` from its declared length, never allocated from
//!   it) and must arrive within [`Limits::body_deadline`]; a body that is not read is never
//!   drained: the answer says `Connection: close` and the connection is closed;
//! - every read and write has [`Limits::io_timeout`]; a connection waits that long for its
//!   next request;
//! - at most [`MAX_CONNECTIONS`] connections are served; past that the oldest connection
//!   still waiting for a request head is closed to make room (so slow-loris clients cannot
//!   crowd out a probe), and when none waits the newcomer gets `503`;
//! - one request is in flight per connection: a client that pipelines and never reads
//!   blocks only its own thread, until the write timeout closes it;
//! - a thread that cannot be spawned is a logged refusal (the connection is closed).

mod head;
mod status;

pub use head::{parse_head, Head};
use status::reason;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Refusal, Why};
use crate::model::MAX_BODY;
use crate::os::logging::Q;
use crate::os::shutdown::Shutdown;

/// Largest request head: request line and headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take: set from the configuration (`LOOPER_HTTP_*_SECONDS`, for
/// tests that would otherwise sit these out), with the defaults below.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The longest a client may take to send a whole request head.
    pub head_deadline: Duration,
    /// The longest a client may take to send a whole body.
    pub body_deadline: Duration,
    /// The longest one read or write may block; also how long a kept-alive connection
    /// waits for its next request.
    pub io_timeout: Duration,
    /// How long a client still sending a body we did not read gets to finish (see
    /// [`linger`]).
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_deadline: Duration::from_secs(10),
            body_deadline: Duration::from_secs(15),
            io_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
        }
    }
}

/// What answers the requests of one server.
pub trait Handler: Send + Sync + 'static {
    /// The answer to one request (its body, when wanted, read through `rq`).
    fn handle(self: &Arc<Self>, rq: &mut Request) -> Response;
    /// Set when the server shuts down: the accept loop and kept-alive connections end.
    fn shutdown(&self) -> &Shutdown;
}
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Evicted connections whose threads are still ending may hold this many places beyond
/// [`MAX_CONNECTIONS`]; past that the accept loop waits for them to go (at most
/// [`EVICTED_WAIT`]: their sockets are shut, so they end as soon as they are scheduled).
const EVICTED_SLACK: usize = 64;
const EVICTED_WAIT: Duration = Duration::from_secs(2);
/// Pauses after an accept failure (say, out of descriptors), doubling while it goes on.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// A client still sending a body we did not read (too large, or unauthorized) gets a short
/// while to finish ([`Limits::linger`]), so that closing does not reset the connection
/// before it has read our answer, but only for bodies up to this (a larger declaration is
/// not an honest client's).
const LINGER_MAX_BODY: u64 = 16 * 1024 * 1024;
/// What each read asks for at most.
const READ_CHUNK: usize = 8 * 1024;

/// The connections being served, so that the accept loop can make room.
#[derive(Default)]
struct Connections {
    table: Mutex<Table>,
    /// Signalled whenever a connection gives up its place.
    freed: std::sync::Condvar,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Each connection's socket and what it is doing.
    entries: HashMap<u64, (RawFd, State)>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Waiting for a request head since then: it may be closed to make room.
    Head(Instant),
    /// Reading a body, being answered, or writing.
    Busy,
    /// Closed to make room; its thread has yet to end.
    Evicted,
}

impl Table {
    fn count(&self, state: fn(&State) -> bool) -> usize {
        self.entries.values().filter(|e| state(&e.1)).count()
    }
}

impl Connections {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for the connection on `fd`, closing the connection that has waited longest
    /// for a request head when all places are taken; `None` when none waits.
    fn admit(self: &Arc<Self>, fd: RawFd) -> Option<Slot> {
        let mut t = self.table();
        // Evicted connections end on their own: under heavy load their threads may be slow
        // to run, and a newcomer waits for them rather than being refused.
        let give_up = Instant::now() + EVICTED_WAIT;
        while t.entries.len() >= MAX_CONNECTIONS + EVICTED_SLACK
            && t.count(|s| *s == State::Evicted) > 0
        {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            t = match self.freed.wait_timeout(t, left) {
                Ok((t, _)) => t,
                Err(e) => e.into_inner().0,
            };
        }
        if t.count(|s| *s != State::Evicted) >= MAX_CONNECTIONS {
            let oldest = t
                .entries
                .iter()
                .filter_map(|(id, (fd, state))| match state {
                    State::Head(since) => Some((*since, *id, *fd)),
                    _ => None,
                })
                .min();
            let (_, id, victim) = oldest?;
            // The entry is removed before its socket is closed (see `Slot`), so `victim`
            // is still that connection's open socket while we hold the lock.
            crate::os::sys::shutdown_socket(victim);
            if let Some(e) = t.entries.get_mut(&id) {
                e.1 = State::Evicted;
            }
            log::debug!("http.evicted reason=waiting_for_head");
        }
        t.next_id += 1;
        let id = t.next_id;
        t.entries.insert(id, (fd, State::Head(Instant::now())));
        Some(Slot {
            conns: Arc::clone(self),
            id,
        })
    }
}

/// A connection's place; freed on drop, before its socket is closed.
struct Slot {
    conns: Arc<Connections>,
    id: u64,
}

impl Slot {
    /// Marks the connection as waiting for a request head (it may be closed for room) or not.
    fn waiting(&self, yes: bool) {
        if let Some(e) = self.conns.table().entries.get_mut(&self.id) {
            if e.1 != State::Evicted {
                e.1 = if yes {
                    State::Head(Instant::now())
                } else {
                    State::Busy
                };
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.table().entries.remove(&self.id);
        self.conns.freed.notify_all();
    }
}

/// One connection: its place first, so that it is given up before the socket closes.
struct Conn {
    slot: Slot,
    stream: TcpStream,
    limits: Limits,
    /// Bytes read but not yet used (the start of the next request).
    buf: Vec<u8>,
}

/// Serves until shutdown; the signal thread wakes the blocked `accept` by shutting the
/// listening socket.
pub fn serve<H: Handler>(app: &Arc<H>, listener: &TcpListener, limits: Limits) {
    let conns = Arc::new(Connections::default());
    let mut pause = Duration::ZERO;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => {
                pause = Duration::ZERO;
                stream
            }
            Err(_) if app.shutdown().is_set() => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                pause = (pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
                log::error!(
                    "http.accept_failed error={} pause_ms={}",
                    Q(&e.to_string()),
                    pause.as_millis()
                );
                if app.shutdown().wait(pause) {
                    return;
                }
                continue;
            }
        };
        if app.shutdown().is_set() {
            return;
        }
        let Some(slot) = conns.admit(stream.as_raw_fd()) else {
            log::warn!("http.refused reason=connections limit={MAX_CONNECTIONS}");
            refuse(stream);
            continue;
        };
        let conn = Conn {
            slot,
            stream,
            limits,
            buf: Vec::new(),
        };
        let worker_app = Arc::clone(app);
        let spawned = std::thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || serve_connection(&worker_app, conn));
        if let Err(e) = spawned {
            // The connection went down with the closure: the client sees it close.
            log::error!("http.refused reason=thread error={}", Q(&e.to_string()));
        }
    }
}

/// Answers `503` to a connection there is no room for, without reading or waiting.
fn refuse(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let body = Refusal::new(Why::Unavailable, "busy: too many connections").body();
    let answer = Response::json(503, body.to_string());
    let _ = (&stream).write_all(&response_bytes(&answer, true, false));
}

/// The answer to one request.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Further headers (name, value).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }
}

fn serve_connection<H: Handler>(app: &Arc<H>, mut conn: Conn) {
    let _ = conn.stream.set_nodelay(true);
    let _ = conn.stream.set_write_timeout(Some(conn.limits.io_timeout));
    loop {
        conn.slot.waiting(true);
        let head = match read_head(&mut conn) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                // A broken head: answer and close (the rest of the stream means nothing).
                let answer = Response::json(e.status(), e.body().to_string());
                let _ = write_response(&mut conn.stream, &answer, true, false);
                log::info!(
                    "http.end method=- path=- status={} error={}",
                    e.status(),
                    Q(&e.message)
                );
                return;
            }
        };
        conn.slot.waiting(false);
        let mut rq = Request {
            head,
            peer: conn.stream.peer_addr().ok(),
            local: conn.stream.local_addr().ok(),
            conn: &mut conn,
            body_read: false,
        };
        let outcome = app.handle(&mut rq);
        // An unread body is never drained: the connection closes instead.
        let unread = rq.head.has_body() && !rq.body_read;
        let close = rq.head.close || unread;
        let declared = rq.head.content_length.unwrap_or(u64::MAX);
        let head_only = rq.head.method == "HEAD";
        drop(rq);
        let written = write_response(&mut conn.stream, &outcome, close, head_only);
        if unread && declared <= LINGER_MAX_BODY && written.is_ok() {
            linger(&mut conn.stream, declared, conn.limits);
        }
        if close || written.is_err() || app.shutdown().is_set() {
            return;
        }
    }
}

/// One request being answered, with access to its body.
pub struct Request<'a> {
    pub head: Head,
    /// The client's address and ours, when the socket tells.
    pub peer: Option<std::net::SocketAddr>,
    pub local: Option<std::net::SocketAddr>,
    conn: &'a mut Conn,
    body_read: bool,
}

impl Request<'_> {
    /// Reads the whole body (at most [`MAX_BODY`], within [`Limits::body_deadline`]).
    pub fn body(&mut self) -> Result<Vec<u8>, Refusal> {
        if self.head.chunked {
            return Err(Refusal::new(
                Why::NoLength,
                "send the body with a Content-Length (chunked bodies are not accepted)",
            ));
        }
        let len = self.head.content_length.unwrap_or(0);
        if len > MAX_BODY as u64 {
            return Err(Refusal::new(Why::TooLarge, "body is larger than 1 MiB"));
        }
        let len = len as usize;
        if self.head.expect_continue && self.conn.buf.len() < len {
            self.conn
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| Refusal::bad_request(format!("could not read the body: {e}")))?;
        }
        let mut body = Vec::with_capacity(len);
        let from_buf = len.min(self.conn.buf.len());
        body.extend(self.conn.buf.drain(..from_buf));
        let limits = self.conn.limits;
        let deadline = Instant::now() + limits.body_deadline;
        let timed_out = || Refusal::new(Why::TooSlow, "timed out reading the request body");
        let mut chunk = [0u8; READ_CHUNK];
        while body.len() < len {
            let want = (len - body.len()).min(READ_CHUNK);
            match read_some(&mut self.conn.stream, &mut chunk[..want], deadline, limits) {
                Ok(0) => {
                    return Err(Refusal::bad_request(
                        "the body ended before its Content-Length",
                    ))
                }
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => return Err(timed_out()),
                Err(e) => {
                    return Err(Refusal::bad_request(format!(
                        "could not read the body: {e}"
                    )))
                }
            }
        }
        self.body_read = true;
        Ok(body)
    }
}

/// After the answer (and our half-close), reads and discards what the client still sends,
/// up to its declared body and for at most [`Limits::linger`], so that the client reads our
/// answer instead of a reset. Bounded in time and bytes: never a drain of an arbitrary body.
fn linger(stream: &mut TcpStream, declared: u64, limits: Limits) {
    let deadline = Instant::now() + limits.linger;
    let mut left = declared + READ_CHUNK as u64;
    let mut sink = [0u8; READ_CHUNK];
    while left > 0 {
        match read_some(stream, &mut sink, deadline, limits) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// One read, waiting at most [`Limits::io_timeout`] and never past `deadline`.
fn read_some(
    stream: &mut TcpStream,
    into: &mut [u8],
    deadline: Instant,
    limits: Limits,
) -> std::io::Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left.min(limits.io_timeout)))?;
        match stream.read(into) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads the next request head. `Ok(None)`: the client closed, or sent nothing while the
/// connection waited for its next request.
fn read_head(conn: &mut Conn) -> Result<Option<Head>, Refusal> {
    let deadline = Instant::now() + conn.limits.head_deadline;
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if !conn.buf.is_empty() {
            if let Some((head, len)) = parse_head(&conn.buf)? {
                conn.buf.drain(..len);
                return Ok(Some(head));
            }
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Refusal::new(
                Why::HeadTooLarge,
                "request head is larger than 16 KiB",
            ));
        }
        let want = (MAX_HEAD - conn.buf.len()).min(READ_CHUNK);
        match read_some(&mut conn.stream, &mut chunk[..want], deadline, conn.limits) {
            Ok(0) => return Ok(None),
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(_) if conn.buf.is_empty() => return Ok(None),
            Err(e) if is_timeout(&e) => {
                return Err(Refusal::new(
                    Why::TooSlow,
                    "timed out reading the request head",
                ))
            }
            Err(_) => return Ok(None),
        }
    }
}

fn response_bytes(answer: &Response, close: bool, head_only: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\nX-Content-Type-Options: nosniff\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.body.len(),
        if close { "close" } else { "keep-alive" }
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(&answer.body);
    }
    out
}

/// Writes one answer whole (bounded by the write timeout). A client that hung up is not our
/// failure: the caller just closes.
fn write_response(
    stream: &mut TcpStream,
    answer: &Response,
    close: bool,
    head_only: bool,
) -> std::io::Result<()> {
    stream.write_all(&response_bytes(answer, close, head_only))?;
    if close {
        // Half-close first, so that the client reads the whole answer before the end.
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cap the oldest head-waiter makes room; evicted connections whose threads
    /// have not ended yet make a newcomer wait for them (a heavily loaded machine runs those
    /// threads late), not be refused; only busy connections mean a refusal.
    #[test]
    fn the_table_evicts_head_waiters_and_waits_for_evicted_ones() {
        let conns = Arc::new(Connections::default());
        // -1: no descriptor, so the evictions shut nothing down.
        let mut slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| conns.admit(-1).expect("room"))
            .collect();
        let evicted = |c: &Connections| c.table().count(|s| *s == State::Evicted);
        for _ in 0..EVICTED_SLACK {
            slots.push(conns.admit(-1).expect("room made by eviction"));
        }
        assert_eq!(evicted(&conns), EVICTED_SLACK);
        // The table is at its bound; one evicted connection ends a little later.
        let first_evicted = slots.remove(0);
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first_evicted);
        });
        let waited = Instant::now();
        let newcomer = conns.admit(-1);
        assert!(
            newcomer.is_some(),
            "refused while an evicted connection was ending"
        );
        assert!(waited.elapsed() >= Duration::from_millis(50));
        ender.join().unwrap();
        slots.push(newcomer.unwrap());
        // Every place busy, none evicted: a newcomer is refused at once.
        for slot in &slots {
            slot.waiting(false);
        }
        slots.retain(|s| {
            conns
                .table()
                .entries
                .get(&s.id)
                .is_some_and(|e| e.1 == State::Busy)
        });
        let mut more = Vec::new();
        while slots.len() + more.len() < MAX_CONNECTIONS {
            let slot = conns.admit(-1).expect("room");
            slot.waiting(false);
            more.push(slot);
        }
        assert!(conns.admit(-1).is_none());
    }

    fn head(raw: &str) -> Result<Option<(Head, usize)>, Refusal> {
        parse_head(raw.as_bytes())
    }

    #[test]
    fn heads_parse_with_what_looper_needs() {
        let raw = "POST /runs?limit=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n{\"a\":";
        let (h, len) = head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 5);
        assert_eq!((h.method.as_str(), h.path.as_str()), ("POST", "/runs"));
        assert_eq!(h.query("limit"), Some("5"));
        assert_eq!(h.content_length, Some(12));
        assert!(h.expect_continue && !h.close && h.has_body());
        assert_eq!(h.header("authorization").collect::<Vec<_>>(), ["Bearer t"]);
        assert!(head("GET /health HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        let (h, _) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(h.close, "HTTP/1.0 closes by default");
    }

    #[test]
    fn hostile_heads_are_refused() {
        let huge = head("GET / HTTP/1.1\r\nContent-Length: 18446744073709551615999\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(huge.content_length, Some(u64::MAX));
        for (raw, status) in [
            ("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            ("GET\x00 / HTTP/1.1\r\n\r\n", 400),
        ] {
            assert_eq!(head(raw).unwrap_err().status(), status, "{raw:?}");
        }
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head(&raw).unwrap_err().status(), 431);
    }
}
