//! Looper: one HTTP trigger that announces on Zulip, stops every live `codex exec` run with
//! everything it started, and launches one fresh detached `codex exec` with the same prompt,
//! logging its output. An optional autopoll restarts work when everything has gone quiet.
//!
//! # Layout
//! - [`cli`]: the command line, read by lexopt into a typed command and then run; `main`
//!   only calls [`cli::main`].
//! - [`config`]: every environment variable, parsed and validated from a map.
//! - [`server`]: start-up (directories, log, socket, signals) and shutdown.
//! - [`http`]: HTTP/1.1 on std's `TcpListener` and `httparse`: the accept loop, one thread
//!   per connection, every limit on what a client sends.
//! - [`api`]: what each request gets: routing, the token, `/status`, `/runs`, `/run`, the
//!   page (`assets/index.html`, built in), a run's log.
//! - [`app`]: state shared by the threads: the run guard, live runs, shutdown.
//! - [`run`]: the `/run` pipeline: validate → announce → stop → spawn → startup check.
//! - [`codex`]: binary resolution and the exact command line.
//! - [`procs`]: `/proc` scanning, process trees, stopping; its `unsafe` calls, and
//!   [`sys`]'s socket call, each carry a `// SAFETY:`.
//! - [`sys`]: safe wrappers around raw calls outside process handling.
//! - [`output`]: run logs (written by the runs themselves) and the per-child watcher.
//! - [`inbox`]: the hand-off that needs no network: `/run` bodies dropped as files into
//!   `<workspace>/.looper/inbox`, taken by one thread through the same pipeline.
//! - [`autopoll`]: the idle poller, hung runs and crash-loop back-off.
//! - [`metrics`]: `/metrics` in Prometheus' text format, and the counters behind it.
//! - [`limits`]: codex's usage-limit error and the reset time it names.
//! - [`history`]: `runs.jsonl`, the run history behind `/runs`.
//! - [`zulip`]: credentials, recipients, sending.
//! - [`logging`]: the server log's line format and sink.

pub mod announce;
pub mod api;
pub mod app;
pub mod autopoll;
pub mod cgroup;
pub mod cli;
pub mod codex;
pub mod config;
pub mod error;
pub mod history;
pub mod http;
pub mod inbox;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod paths;
pub mod pipeline;
pub mod procs;
pub mod registry;
pub mod request;
pub mod server;
pub mod shutdown;
pub mod spawn;
pub mod stop;
pub mod sys;
pub mod tokens;
pub mod trust;
pub mod zulip;
