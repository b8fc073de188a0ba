//! The error that ends a request: an HTTP status and one sentence for its user. Every room
//! that can refuse a request (the transport, the request, the trust rings, the pipeline,
//! the inbox) speaks it; it depends on nothing of Looper's.

use std::fmt;

use serde_json::{json, Value};

/// An error that ends a request: an HTTP status and one sentence for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// What every step with an effect answers once a shutdown began.
    pub fn shutting_down() -> ApiError {
        ApiError::new(503, "Looper is shutting down")
    }

    pub fn body(&self) -> Value {
        json!({"ok": false, "error": self.message})
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}
