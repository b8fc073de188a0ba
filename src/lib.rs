//! Looper: one HTTP trigger that announces on Zulip, stops every live `codex exec` run with
//! everything it started, and launches one fresh detached `codex exec` with the same prompt,
//! logging its output. An optional autopoll restarts work when everything has gone quiet.
//!
//! # Layout
//! Folders depend one way: each uses only those listed below it (no circle, no arrow back
//! up), and each owns its state behind methods. From the top:
//!
//! The doors, where work comes in:
//! - [`cli`]: the command line (lexopt into a typed command); `main` only calls
//!   [`cli::main`]. [`server`]: start-up (configuration, directories, the log, the socket,
//!   the signal thread, the runs a previous Looper left) and shutdown.
//! - [`api`]: what each HTTP request gets: who asks, `/status`, `/runs`, a run's files,
//!   `/metrics`, `/quota`, the page (`assets/index.html`, built in), `/run`, `/pause` and
//!   `/resume`.
//! - [`autopoll`]: the thread that starts a run when everything has gone quiet, and
//!   replaces a hung one.
//!
//! A run's way, from a request to its end:
//! - [`run`]: the request read ([`run::request`]) and admitted ([`run::trust`]: who asks,
//!   what each may ask), the pipeline that `/run`, the inbox and autopoll share
//!   ([`run::pipeline`]: the run guard, plan, announce, stop, spawn, startup check), the
//!   stop ([`run::stop`]), the child and its log ([`run::spawn`], [`run::output`]), and
//!   **where a run ends**: [`run::watch`], the one owner of its end (exit, report, row,
//!   the loop's verdict, what is said).
//! - [`notify`]: every message on Zulip, the way the operator configured, through one
//!   function; the outbox of hand-off messages Zulip did not take; what follows a run.
//! - [`autoloop`]: the stop rules applied to one workspace from one event (a run's end, a
//!   tick, a hand-off, a resume): holds begin and end only here.
//!
//! What the server keeps:
//! - [`state`]: the registry (live runs, the run guard, ids and tokens, process groups),
//!   the history (`runs.jsonl`), the holds and the outbox (`loop-state.json`), the
//!   account's quota figures (`quota.jsonl`), and [`App`],
//!   the one context every thread shares. [`config`]: every environment variable, parsed
//!   from a map (reads no file).
//!
//! The parts, which know no run's story:
//! - [`rules`]: the loop's rules, pure (stop rules, crash back-off, codex's usage-limit
//!   text, the quota's pace line). [`report`]: what a run did, read from codex's output and
//!   session file, git (asked so that the workspace's configuration runs nothing) and the
//!   TODO file; and the account's windows, from the newest session files.
//! - [`http`]: HTTP/1.1 on std's `TcpListener` and `httparse` for any [`http::Handler`],
//!   every limit where the bytes arrive, and the one place a refusal becomes a status.
//!   [`inbox`]: the hand-off that needs no network, for a [`inbox::Desk`]. [`zulip`]: the
//!   client, its credentials, the operator's script, text made safe to post.
//! - [`os`]: raw calls behind safe functions (the crate's `unsafe`, each with its
//!   `// SAFETY:`), processes and signals, sockets, cgroups, the helpers' jail (Landlock,
//!   seccomp), files others may have planted, the server log, text for terminals.
//! - [`model`]: the vocabulary (trigger, stop reason, outcome, hold, row, report, time),
//!   and [`error`]: why a request was refused.
//!
//! [`App`]: state::app::App

pub mod cli;
pub(crate) mod server;

pub(crate) mod api;
pub(crate) mod autopoll;

pub(crate) mod run;

pub(crate) mod notify;

pub(crate) mod autoloop;

pub(crate) mod config;
pub(crate) mod state;

pub(crate) mod report;
pub(crate) mod rules;

pub(crate) mod http;
pub(crate) mod inbox;
pub(crate) mod zulip;

pub(crate) mod error;
pub(crate) mod model;
pub(crate) mod os;

/// What the tests outside the crate read: the variables Looper knows, how codex prints a
/// usage limit's reset time, and Zulip's Basic authentication.
pub use config::{CLIENT_VARS, KNOWN_VARS};
pub use rules::usage_limit::{clock_text, date_text};
pub use zulip::base64;
