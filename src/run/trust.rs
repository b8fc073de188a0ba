//! Who asks, and what each may ask for. Three rings (SECURITY.md has the why):
//!
//! - the **operator** — Looper's configuration (autopoll, hung-run replacement) and whoever
//!   presents `LOOPER_API_TOKEN`: everything, the fields that choose a program included;
//! - a **local** caller — loopback without a token, when none is configured: everything the
//!   original documents except choosing a program (`codex_exec_binary`,
//!   `zulip_script_path`), which would be code execution for any web page or local user;
//! - a **run** — its inbox, its own `LOOPER_RUN_TOKEN`, or a loopback connection whose
//!   client process belongs to a run: the hand-off only (message, prompt, `from_run_id`,
//!   its own workspace); its Zulip text is capped, quoted under Looper's line naming the
//!   run, and pings nobody.
//!
//! The rules are plain functions over a parsed request; finding which run a connection's
//! client belongs to reads `/proc` ([`run_of_connection`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{Refusal, Why};
use crate::os::procs;
use crate::os::sockets;
use crate::run::request::RunRequest;
use crate::state::app::App;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// Looper's own configuration, or a holder of `LOOPER_API_TOKEN`.
    Operator,
    /// Loopback, with no token configured.
    Local,
    /// A run: `run_id` when Looper knows which one (its token or its process; an inbox file
    /// names only its workspace), and the run's workspace (canonical).
    Run {
        run_id: Option<String>,
        workspace: PathBuf,
    },
}

impl Caller {
    /// For the log: `operator`, `local`, `run:<id>` or `inbox`.
    pub fn describe(&self) -> String {
        match self {
            Caller::Operator => "operator".into(),
            Caller::Local => "local".into(),
            Caller::Run {
                run_id: Some(id), ..
            } => format!("run:{id}"),
            Caller::Run { run_id: None, .. } => "inbox".into(),
        }
    }
}

/// The request fields a run may send: the hand-off.
const HANDOFF_FIELDS: [&str; 6] = [
    "zulip_message",
    "codex_prompt",
    "prompt",
    "from_run_id",
    "workspace",
    "loop_done",
];

/// The fields that choose a program to run.
const PROGRAM_FIELDS: [&str; 2] = ["codex_exec_binary", "zulip_script_path"];

/// What a program-choosing field needs, said to a caller that may not send it.
fn program_refusal(field: &str, caller: &Caller) -> Refusal {
    let config = match field {
        "codex_exec_binary" => "CODEX_EXEC_BINARY",
        _ => "LOOPER_ZULIP_SCRIPT",
    };
    let why = match caller {
        Caller::Local => format!(
            "{field} chooses a program to run, and no LOOPER_API_TOKEN is configured: only the operator may choose one. Set {config} in Looper's configuration, or set LOOPER_API_TOKEN and send it (Authorization: Bearer ...). Nothing was changed"
        ),
        _ => format!(
            "{field} chooses a program to run: a run may only hand off (zulip_message, codex_prompt, from_run_id, its own workspace). Nothing was changed"
        ),
    };
    Refusal::new(Why::NotAllowed, why)
}

/// Checks `req` against what `caller` may ask for, before anything has an effect, and for a
/// run fills in what its hand-off means: its own workspace, its own run id, and its Zulip
/// text capped and marked. `known_workspace` tells the workspace of a run Looper knows.
pub fn admit(
    caller: &Caller,
    req: &mut RunRequest,
    known_workspace: impl Fn(&str) -> Option<PathBuf>,
) -> Result<(), Refusal> {
    let Caller::Run { run_id, workspace } = caller else {
        let chooses = [&req.codex_exec_binary, &req.zulip_script_path];
        if *caller == Caller::Local {
            if let Some((field, _)) = PROGRAM_FIELDS
                .iter()
                .zip(chooses)
                .find(|(_, v)| v.is_some())
            {
                return Err(program_refusal(field, caller));
            }
        }
        return Ok(());
    };
    let beyond = req.fields.iter().find(|f| !HANDOFF_FIELDS.contains(f));
    if let Some(field) = beyond {
        if PROGRAM_FIELDS.contains(field) {
            return Err(program_refusal(field, caller));
        }
        return Err(Refusal::new(
            Why::NotAllowed,
            format!(
                "{field} is not part of a hand-off: a run may send only {}. Nothing was changed",
                HANDOFF_FIELDS.join(", ")
            ),
        ));
    }
    if let Some(asked) = &req.workspace {
        let same = Path::new(asked)
            .canonicalize()
            .is_ok_and(|real| real == *workspace);
        if !same {
            return Err(Refusal::new(
                Why::NotAllowed,
                format!(
                    "a run hands off only to its own workspace ({}); {asked} is another directory, or a link to one. Nothing was changed",
                    workspace.display()
                ),
            ));
        }
    }
    req.workspace = Some(workspace.to_string_lossy().into_owned());
    match (run_id, &req.from_run_id) {
        (Some(me), Some(named)) if named != me => {
            return Err(Refusal::new(
                Why::NotAllowed,
                format!("from_run_id {named} is another run than the one asking ({me}). Nothing was changed"),
            ))
        }
        (Some(me), None) => req.from_run_id = Some(me.clone()),
        (None, Some(named)) if known_workspace(named).is_some_and(|w| w != *workspace) => {
            return Err(Refusal::new(
                Why::NotAllowed,
                format!("from_run_id {named} is a run of another workspace. Nothing was changed"),
            ));
        }
        _ => {}
    }
    let from = run_id.as_deref().or(req.from_run_id.as_deref());
    req.zulip_message = crate::zulip::text::handoff_text(&req.zulip_message, from);
    Ok(())
}

/// Who is at the other end of a connection, as far as runs go.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// A process of run `0` holds the client's end.
    Run(String),
    /// Nobody Looper can tie to a run: another host or user, a process outside every run,
    /// or `/proc` cannot tell.
    NotRun,
    /// A loopback client that closed its end before Looper looked: it cannot be told from a
    /// run's process that sends and leaves at once.
    Gone,
}

/// The run a loopback connection's client belongs to: the process holding the client's end
/// of the connection (found through `/proc/net/tcp` and the processes' descriptors) carries
/// a `LOOPER_RUN_ID` of this Looper's, descends from a live run, or sits in a run's cgroup.
pub fn run_of_connection(app: &App, peer: SocketAddr, local: SocketAddr) -> Peer {
    if !peer.ip().to_canonical().is_loopback() {
        return Peer::NotRun;
    }
    let uid = procs::current_uid();
    let inode = match sockets::client_socket(peer, local) {
        sockets::Client::Held { uid: owner, inode } if owner == uid => inode,
        sockets::Client::Gone => return Peer::Gone,
        _ => return Peer::NotRun,
    };
    let mut run_of: HashMap<i32, String> = procs::runs_of(uid, app.url()).into_iter().collect();
    // Without cgroups, a run's processes that dropped their environment are found as its
    // descendants, which takes the full table; with them, the table is not needed.
    let table = if app.cgroups().is_none() && !app.registry().live().is_empty() {
        match procs::scan(uid) {
            Ok(table) => table,
            Err(_) => return Peer::NotRun,
        }
    } else {
        Vec::new()
    };
    for (id, pids) in app.registry().members(&table) {
        for pid in pids {
            run_of.entry(pid).or_insert_with(|| id.clone());
        }
    }
    run_of
        .into_iter()
        .find(|(pid, _)| sockets::holds_socket(*pid, inode))
        .map_or(Peer::NotRun, |(_, id)| Peer::Run(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> RunRequest {
        crate::run::request::parse_request(json.as_bytes()).unwrap()
    }

    fn run_caller(ws: &Path) -> Caller {
        Caller::Run {
            run_id: Some("r1".into()),
            workspace: ws.canonicalize().unwrap(),
        }
    }

    #[test]
    fn only_the_operator_chooses_a_program() {
        for body in [
            r#"{"zulip_message":"m","codex_exec_binary":"/tmp/evil.sh"}"#,
            r#"{"zulip_message":"m","zulip_script_path":"/usr/bin/env"}"#,
        ] {
            let mut r = request(body);
            assert!(admit(&Caller::Operator, &mut r, |_| None).is_ok());
            let e = admit(&Caller::Local, &mut request(body), |_| None).unwrap_err();
            assert_eq!(e.why, Why::NotAllowed, "{body}");
            assert!(e.message.contains("LOOPER_API_TOKEN"), "{}", e.message);
            let e =
                admit(&run_caller(Path::new("/tmp")), &mut request(body), |_| None).unwrap_err();
            assert_eq!(e.why, Why::NotAllowed, "{body}");
        }
        let mut r = request(
            r#"{"zulip_message":"m","workspace":"/anywhere","codex_exec_delay_seconds":3}"#,
        );
        assert!(admit(&Caller::Local, &mut r, |_| None).is_ok());
    }

    /// A run may hand off to its own workspace only (named, or by a link: the canonical
    /// directory decides), as itself, with no other field that has an effect.
    #[test]
    fn a_run_may_only_hand_off() {
        let base = std::env::temp_dir().join(format!("looper-trust-{}", std::process::id()));
        let ws = base.join("ws");
        let other = base.join("other");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let _ = std::fs::remove_file(ws.join("link"));
        std::os::unix::fs::symlink(&other, ws.join("link")).unwrap();
        let caller = run_caller(&ws);
        let mut ok = request(&format!(
            r#"{{"zulip_message":"next","codex_prompt":"p","workspace":"{}","password_store":"x"}}"#,
            ws.display()
        ));
        admit(&caller, &mut ok, |_| None).unwrap();
        assert_eq!(ok.from_run_id.as_deref(), Some("r1"));
        assert_eq!(ok.workspace.as_deref(), ws.canonicalize().unwrap().to_str());
        assert_eq!(ok.zulip_message, "Looper: run r1 hands off:\n> next\n");
        for asked in [
            other.clone(),
            ws.join("link"),
            PathBuf::from("/nonexistent"),
        ] {
            let mut r = request(&format!(
                r#"{{"zulip_message":"m","workspace":"{}"}}"#,
                asked.display()
            ));
            let e = admit(&caller, &mut r, |_| None).unwrap_err();
            assert_eq!(e.why, Why::NotAllowed, "{}", asked.display());
        }
        for field in [
            r#""codex_exec_delay_seconds":1"#,
            r#""codex_exec_startup_check_seconds":1"#,
            r#""new_task_delay_seconds":1"#,
        ] {
            let mut r = request(&format!(r#"{{"zulip_message":"m",{field}}}"#));
            let e = admit(&caller, &mut r, |_| None).unwrap_err();
            assert_eq!(e.why, Why::NotAllowed, "{field}");
        }
        let mut r = request(r#"{"zulip_message":"m","from_run_id":"r2"}"#);
        assert_eq!(
            admit(&caller, &mut r, |_| None).unwrap_err().why,
            Why::NotAllowed
        );
        // An inbox request names no run of its own; one naming another workspace's is a lie.
        let inbox = Caller::Run {
            run_id: None,
            workspace: ws.canonicalize().unwrap(),
        };
        let mut r = request(r#"{"zulip_message":"m","from_run_id":"r9"}"#);
        let e = admit(&inbox, &mut r, |_| Some(other.clone())).unwrap_err();
        assert_eq!(e.why, Why::NotAllowed);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
