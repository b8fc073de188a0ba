//! Why a request was not done ([`Refusal`]): the reason in the domain's words ([`Why`]) and
//! one sentence for its user. Every room that can refuse a request (the transport, the
//! request, the trust rings, the pipeline, the stop, the inbox) speaks it; it depends on
//! nothing of Looper's. The HTTP layer alone turns a reason into a status
//! ([`crate::http`]'s `Why::status`), for its answers and for the inbox's answer files.

use std::fmt;

use serde_json::{json, Value};

/// What kind of refusal, as the one who asked should understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The request is malformed or names something that cannot be.
    Invalid,
    /// No token, or the wrong one.
    NoToken,
    /// The caller may not ask this (a run asking more than a hand-off, a web page).
    NotAllowed,
    NotFound,
    WrongMethod,
    /// The client took too long to send its request.
    TooSlow,
    NoLength,
    TooLarge,
    NotJson,
    /// Another trigger sets up a run.
    Busy,
    /// The run that sends it is no longer the active one.
    Stale,
    /// The run that sends it was never started by Looper.
    UnknownRun,
    /// Only a run's own hand-off may say this (`loop_done`).
    NotAHandOff,
    /// The loop is held (finished, or paused by a rule that is no budget): a hand-off
    /// starts nothing.
    Held,
    /// A budget of the loop's is spent.
    OverBudget,
    /// The operator paused the loop: come back after `looper resume`.
    Paused,
    HeadTooLarge,
    /// Looper's side failed: its configuration, a tool, the system.
    Broken,
    /// What the request needs written could not be (a full disk): nothing was done.
    CannotSave,
    /// Zulip did not take the announcement (nothing was stopped).
    ZulipFailed,
    /// Too many at once, or Looper is shutting down.
    Unavailable,
}

/// A request refused: why, and one sentence for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub why: Why,
    pub message: String,
}

impl Refusal {
    pub fn new(why: Why, message: impl Into<String>) -> Refusal {
        Refusal {
            why,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(Why::Invalid, message)
    }

    /// What every step with an effect answers once a shutdown began.
    pub fn shutting_down() -> Refusal {
        Refusal::new(Why::Unavailable, "Looper is shutting down")
    }

    pub fn body(&self) -> Value {
        json!({"ok": false, "error": self.message})
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.why, self.message)
    }
}
