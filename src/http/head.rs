//! A request head, parsed by `httparse` from the bytes that arrived (at most
//! [`super::MAX_HEAD`]) into what Looper needs of it, owned.

use crate::error::{Refusal, Why};

/// Headers a request may carry.
const MAX_HEADERS: usize = 64;

/// A parsed request head: what Looper needs of it, owned.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The target without its query.
    pub path: String,
    /// Header names (lower case) and values of the headers Looper reads.
    pub headers: Vec<(String, String)>,
    /// The declared body length; `None` when absent.
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub(super) expect_continue: bool,
    /// The client wants the connection closed after this request.
    pub(super) close: bool,
}

impl Head {
    /// The values of header `name` (lower case).
    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request declares a body.
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }

    /// The value of query parameter `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Headers kept from a request (the rest are read past).
const KEPT_HEADERS: [&str; 6] = [
    "authorization",
    "x-looper-token",
    "host",
    "origin",
    "sec-fetch-site",
    "content-type",
];

/// Parses a request head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(Why::HeadTooLarge, "too many request headers"))
        }
        Err(e) => return Err(Refusal::bad_request(format!("malformed HTTP request: {e}"))),
    };
    let target = req.path.unwrap_or("/").to_string();
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        target,
        // HTTP/1.0 closes unless asked to keep the connection.
        close: req.version == Some(0),
        ..Head::default()
    };
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        match name.as_str() {
            "content-length" => {
                let n = parse_length(&value)?;
                if head.content_length.is_some_and(|m| m != n) {
                    return Err(Refusal::bad_request("conflicting Content-Length headers"));
                }
                head.content_length = Some(n);
            }
            "transfer-encoding" => head.chunked = true,
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.close = false;
                    }
                }
            }
            n if KEPT_HEADERS.contains(&n) => head.headers.push((name, value)),
            _ => {}
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(Refusal::bad_request(
            "a request may not carry both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Some((head, len)))
}

/// A `Content-Length` value: digits only. A number too large for any body Looper takes
/// counts as `u64::MAX` (refused as too large, never allocated).
fn parse_length(value: &str) -> Result<u64, Refusal> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::bad_request(format!(
            "Content-Length must be a number, got {value:?}"
        )));
    }
    Ok(value.parse::<u64>().unwrap_or(u64::MAX))
}
