//! The loop's rules as pure functions: state, event and time in, a verdict out; nothing here
//! reads a clock, a file or a lock. The stop rules (done, stuck, budgets), the crash
//! back-off, codex's usage-limit message, and the pace of the account's quota.

pub(crate) mod backoff;
pub(crate) mod pace;
pub(crate) mod stop;
pub mod usage_limit;
