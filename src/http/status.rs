//! The one place where a refusal's reason ([`Why`]) becomes an HTTP status: for an answer
//! over HTTP and for the inbox's answer files, which carry the status an HTTP caller would
//! have got.

use crate::error::{Refusal, Why};

impl Why {
    /// The HTTP status that says this reason.
    pub fn status(self) -> u16 {
        match self {
            Why::Invalid => 400,
            Why::NoToken => 401,
            Why::NotAllowed => 403,
            Why::NotFound => 404,
            Why::WrongMethod => 405,
            Why::TooSlow => 408,
            Why::Busy | Why::Stale | Why::UnknownRun | Why::NotAHandOff | Why::Held => 409,
            Why::NoLength => 411,
            Why::TooLarge => 413,
            Why::NotJson => 415,
            Why::OverBudget | Why::Paused => 429,
            Why::HeadTooLarge => 431,
            Why::Broken => 500,
            Why::ZulipFailed => 502,
            Why::CannotSave => 507,
            Why::Unavailable => 503,
        }
    }
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        self.why.status()
    }
}

/// The reason phrase of `status`.
pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}
