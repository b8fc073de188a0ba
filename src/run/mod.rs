//! A run's way from a request to its end: the request read and admitted, the pipeline
//! (plan, announce, stop, spawn, startup check), the stop, the child and its log, and the
//! watcher that owns its end.

pub(crate) mod codex;
pub(crate) mod desk;
pub(crate) mod output;
pub(crate) mod pipeline;
pub(crate) mod request;
pub(crate) mod spawn;
pub(crate) mod stop;
pub(crate) mod trust;
pub(crate) mod watch;
