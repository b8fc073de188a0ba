//! The vocabulary every room speaks, and nothing else: how a run was triggered, why it was
//! stopped and how it ended ([`Trigger`], [`StopReason`], [`Outcome`]), what holds a loop
//! ([`Hold`]), a run's history [`Row`] and its [`Report`], the [`Stamp`] of a time, and the
//! limits of a request wherever it comes from. Plain data with its JSON form; every room
//! below and above reads these types, none of their strings.

mod hold;
mod report;
mod row;
mod time;
mod words;

pub use hold::{Hold, HoldReason, HoldState, LoopState};
pub use report::{Git, RateLimits, Report, Todo, TokenSource, Tokens, Window};
pub use row::Row;
pub use time::Stamp;
pub use words::{Outcome, StopReason, Trigger};

/// Longest delay or interval accepted anywhere (one day): in a request, and in the
/// configuration.
pub const MAX_SECONDS: f64 = 86_400.0;
/// Largest request body, over HTTP or in an inbox file.
pub const MAX_BODY: usize = 1024 * 1024;
