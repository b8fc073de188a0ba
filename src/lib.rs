//! Looper: one HTTP trigger that announces on Zulip, stops every live `codex exec` run with
//! everything it started, and launches one fresh detached `codex exec` with the same prompt,
//! logging its output. An optional autopoll restarts work when everything has gone quiet.
//!
//! # Layout
//! Rooms depend one way: each uses only rooms listed below it (no import circles), and
//! each owns its state behind methods.
//!
//! The doors:
//! - [`cli`]: the command line, parsed by lexopt into a typed command, then run; `main`
//!   only calls [`cli::main`].
//! - [`server`]: start-up (configuration, directories, the log, the socket, the signal
//!   thread) and shutdown.
//! - [`api`]: what each request gets: routing, the token, `/status`, `/runs`, `/metrics`,
//!   the page (`assets/index.html`, built in), a run's log, `/run`.
//! - [`autopoll`]: the thread that starts a run when everything has gone quiet.
//!
//! The loop:
//! - [`pipeline`]: `/run`, the inbox and autopoll's one way to a run: admit → the run
//!   guard → plan → announce → stop → spawn → startup check.
//! - [`spawn`]: a run's log, its child, its registration and its watcher thread, which
//!   records the run's end.
//! - [`stop`]: finding every process a stop takes and ending them.
//! - [`announce`]: what Looper says on Zulip, before a trigger and after a run's end.
//! - [`trust`]: the three rings: who asks (operator, run, anyone) and what each may ask.
//! - [`app`]: what one server's threads share, each part behind a method.
//! - [`registry`]: the one owner of Looper's runs (a `RunHandle` each), the run guard,
//!   the recent exits and the counters that `/status` and `/metrics` read.
//! - [`config`]: every environment variable, parsed from a map (reads no file).
//! - [`judge`]: the stop rules applied to one workspace (a finished loop, a pause) over
//!   [`rules`] (pure), kept by [`loopstate`] (`loop-state.json`).
//!
//! The parts:
//! - [`http`]: HTTP/1.1 on std's `TcpListener` and `httparse` for any [`http::Handler`]:
//!   the accept loop, a thread per connection, every limit on what a client sends.
//! - [`inbox`]: the hand-off that needs no network (`<workspace>/.looper/inbox`), taken by
//!   one thread for a [`inbox::Desk`].
//! - [`zulip`]: credentials, recipients, sending. [`output`]: run logs and the mirror of
//!   their output. [`cgroup`]: a cgroup per run where one can be made.
//! - [`policy`]: autopoll's rules (crash back-off, usage-limit pause), pure.
//! - [`report`]: what a run did (tokens, last message, TODO counts) from its output, its
//!   session file and the workspace; [`git`]: HEAD, commits and the work tree, asked so
//!   that the workspace's own git configuration runs nothing as Looper.
//! - [`request`]: a `/run` body read and validated. [`history`]: `runs.jsonl`.
//! - [`signals`]: signals that reach the right process (pidfds), one stop in progress, how a
//!   child starts; [`procs`]: `/proc` scanning, matching, process trees; [`sockets`]: who
//!   is at the other end of a loopback connection. [`tokens`]: secrets compared and made.
//! - [`sys`]: safe wrappers around raw calls (sockets, inotify, eventfd, poll); it and
//!   [`signals`] (and [`procs`]'s getuid) hold the crate's `unsafe`, each block with its
//!   `// SAFETY:`.
//! - [`logging`], [`error`], [`shutdown`], [`paths`], [`limits`] (codex's usage-limit
//!   error), [`codex`] (the binary and its command line), [`metrics`] (the text format,
//!   rendered from a snapshot).

pub(crate) mod api;
pub(crate) mod autoloop;
pub(crate) mod autopoll;
pub mod cli;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod inbox;
pub(crate) mod model;
pub(crate) mod notify;
pub(crate) mod os;
pub(crate) mod report;
pub(crate) mod rules;
pub(crate) mod run;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod zulip;

/// What the tests outside the crate read: the variables Looper knows, how codex prints a
/// usage limit's reset time, and Zulip's Basic authentication.
pub use config::{CLIENT_VARS, KNOWN_VARS};
pub use rules::usage_limit::{clock_text, date_text};
pub use zulip::base64;
