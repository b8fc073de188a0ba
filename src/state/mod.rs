//! What the server keeps: the live runs (the registry and its run guard), the history
//! (`runs.jsonl`), the loop's holds and queued messages (`loop-state.json`), the account's
//! quota figures (`quota.jsonl`), and the one
//! context every thread shares ([`app::App`]).

pub(crate) mod account;
pub(crate) mod app;
pub(crate) mod history;
pub(crate) mod holds;
pub(crate) mod loopfile;
pub(crate) mod outbox;
pub(crate) mod registry;
