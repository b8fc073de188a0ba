//! The command line: `looper [serve]` runs the server; `trigger`, `status`, `runs`, `logs`
//! and `zulip` are small clients for daily use. `args` reads the words into a typed
//! command, then it runs here; each command's work is in its own file.

use std::collections::HashMap;
use std::io::Write;

use crate::server;

/// A line on stderr for a person, `eprintln!`'s way, but shown as
/// [`crate::os::visible::visible`] shows it when stderr is a terminal: it may quote what the
/// agent wrote (an error's tail of a run log, a run's message).
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::note_line(&format!($($arg)*))
    };
}

mod args;
mod client;
mod help;
mod logs;
mod show;
mod trigger;

pub use client::base_url;
pub use show::{describe_status, runs_table};

use args::Command;
use help::Topic;

/// Why a command failed: what `main` prints after `looper: `, and the exit code.
#[derive(Debug)]
enum Fail {
    /// The command line is wrong (exit 2): the message, then `Topic`'s usage line.
    Usage(Topic, String),
    /// Anything else (exit 1).
    Error(String),
}

impl Fail {
    fn usage(topic: Topic, message: impl Into<String>) -> Fail {
        Fail::Usage(topic, message.into())
    }

    fn code(&self) -> i32 {
        match self {
            Fail::Usage(..) => 2,
            Fail::Error(_) => 1,
        }
    }

    fn message(&self) -> String {
        match self {
            Fail::Usage(Topic::Looper, msg) => {
                format!("{msg}\n{}", help::usage_line(Topic::Looper))
            }
            // A command's own usage errors have always come with trailing space trimmed.
            Fail::Usage(topic, msg) => format!("{}\n{}", msg.trim_end(), help::usage_line(*topic)),
            Fail::Error(msg) => msg.clone(),
        }
    }
}

/// Writes `line` and a newline to stderr, shown visibly when stderr is a terminal.
pub(crate) fn note_line(line: &str) {
    use std::io::IsTerminal;
    let stderr = std::io::stderr();
    let text = format!("{line}\n");
    let shown = if stderr.is_terminal() {
        crate::os::visible::visible(text.as_bytes())
    } else {
        std::borrow::Cow::Borrowed(text.as_bytes())
    };
    let _ = stderr.lock().write_all(&shown);
}

/// Runs the command line and returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    use std::io::IsTerminal;
    let env = server::env_map();
    let result = args::parse(args).and_then(|command| {
        // What the agent wrote reaches a terminal shown, never obeyed; `--raw` (logs,
        // trigger) keeps the bytes, and a pipe gets them as they are.
        let stdout = std::io::stdout();
        if stdout.is_terminal() && !command.raw() {
            let mut out = crate::os::visible::Visible::new(stdout.lock());
            let result = run_command(command, &env, &mut out);
            let _ = out.flush();
            result
        } else {
            let mut out = stdout.lock();
            let result = run_command(command, &env, &mut out);
            let _ = out.flush();
            result
        }
    });
    match result {
        Ok(code) => code,
        Err(fail) => {
            note!("looper: {}", fail.message());
            fail.code()
        }
    }
}

/// Runs what the command line asks for.
fn run_command(
    command: Command,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<i32, Fail> {
    match command {
        Command::Version => {
            let _ = writeln!(out, "looper {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Help(topic) => {
            let _ = writeln!(out, "{}", help::text(topic));
            Ok(0)
        }
        Command::Serve => Ok(serve(env)),
        Command::Trigger(t) => trigger::trigger(&t, env, out),
        Command::Status(s) => show::status(&s, env, out),
        Command::Runs(r) => show::runs(&r, env, out),
        Command::Logs(l) => logs::logs(&l, env, out),
        Command::Resume(r) => trigger::resume(&r, env, out),
        Command::Pause(p) => trigger::pause(&p, env, out),
        Command::ZulipCheck => zulip_check(env, out),
        Command::ZulipSend(message) => zulip_send(&message, env, out),
    }
}

fn serve(env: &HashMap<String, String>) -> i32 {
    let outcome = server::run(env);
    // The last lines (`server.stop.done`) may still wait for the log's writers.
    crate::os::logging::flush();
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            note!("looper: {e}");
            match e {
                server::StartError::Config(_) => 2,
                server::StartError::Io(_) => 1,
            }
        }
    }
}

/// `looper zulip check`: where the credentials come from and what Zulip says of them.
fn zulip_check(env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let z = crate::zulip::Zulip::from_env(env).map_err(Fail::Error)?;
    for w in &z.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let Some(c) = &z.credentials else {
        let _ = writeln!(out, "Zulip: not configured");
        return Ok(1);
    };
    let _ = writeln!(out, "credentials: {}", c.source);
    let _ = writeln!(out, "site: {}", c.site);
    let _ = writeln!(out, "bot: {}", c.email);
    let _ = writeln!(out, "key: (set, not shown)");
    let _ = writeln!(out, "target: {}", z.describe_target());
    let _ = writeln!(out, "timeout: {} s", z.timeout_secs);
    match crate::zulip::whoami(c, z.timeout_secs) {
        Ok(who) => {
            let _ = writeln!(out, "Zulip says: the credentials are {who}");
            Ok(0)
        }
        Err(e) => {
            let _ = writeln!(out, "check failed: {e}");
            Ok(1)
        }
    }
}

/// `looper zulip send <message>` (the parser has seen that it is not blank).
fn zulip_send(
    message: &str,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<i32, Fail> {
    let z = crate::zulip::Zulip::from_env(env).map_err(Fail::Error)?;
    if z.credentials.is_none() {
        return Err(Fail::Error(
            "Zulip is not configured (see `looper zulip check`)".into(),
        ));
    }
    let answer = z.send(message).map_err(|e| Fail::Error(e.0))?;
    let _ = writeln!(out, "{answer}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (i32, String) {
        let env: HashMap<String, String> =
            [("HOME".to_string(), "/nonexistent".to_string())].into();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let code = match args::parse(&args).and_then(|c| run_command(c, &env, &mut out)) {
            Ok(c) => c,
            Err(fail) => {
                out.extend_from_slice(fail.message().as_bytes());
                fail.code()
            }
        };
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn every_command_has_help_with_examples() {
        for cmd in [
            &["--help"][..],
            &["trigger", "--help"],
            &["status", "--help"],
            &["runs", "--help"],
            &["logs", "--help"],
            &["zulip", "--help"],
            &["serve", "--help"],
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 0, "{cmd:?}");
            assert!(
                text.contains("usage:") && text.contains("example"),
                "{cmd:?}: {text}"
            );
        }
        let (code, text) = run(&["status", "--version"]);
        assert_eq!(
            (code, text.trim()),
            (0, concat!("looper ", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn unknown_flags_and_commands_are_usage_errors() {
        for cmd in [
            &["frobnicate"][..],
            &["trigger", "--mesage", "x"],
            &["runs", "--limit"],
            &["runs", "--limit", "0"],
            &["trigger"],
            &["zulip", "send"],
            &["status", "--json=1"],
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 2, "{cmd:?}: {text}");
            assert!(text.contains("usage: looper"), "{cmd:?}: {text}");
        }
        // A subcommand's own usage, not the general one; a flag given twice is an error.
        for (cmd, own) in [
            (&["trigger", "--mesage", "x"][..], "usage: looper trigger"),
            (&["runs", "--limit", "0"], "usage: looper runs"),
            (
                &["trigger", "--message", "a", "--message", "b"],
                "usage: looper trigger",
            ),
            (&["logs", "a", "b"], "usage: looper logs"),
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 2, "{cmd:?}: {text}");
            assert!(text.contains(own), "{cmd:?}: {text}");
            assert!(!text.contains("[serve | trigger"), "{cmd:?}: {text}");
        }
        for cmd in [
            &["trigger", "-h"][..],
            &["status", "-h"],
            &["runs", "-h"],
            &["logs", "-h"],
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 0, "{cmd:?}: {text}");
            assert!(
                text.contains(&format!("usage: looper {}", cmd[0])),
                "{cmd:?}: {text}"
            );
        }
        let (code, text) = run(&["serve", "--help"]);
        assert_eq!(code, 0);
        assert!(
            text.contains("LOOPER_WORKSPACE") && text.contains("ZULIP_TO"),
            "{text}"
        );
    }

    /// A command's usage error ends with its own usage line (trailing space trimmed off the
    /// message), the rest with the general one; only usage errors exit 2.
    #[test]
    fn usage_errors_end_with_their_usage_line() {
        assert_eq!(
            Fail::usage(Topic::Status, "unknown argument: x \n").message(),
            "unknown argument: x\nusage: looper status [--json] [--url URL]"
        );
        assert_eq!(
            Fail::usage(Topic::Looper, "unknown command or arguments:  ").message(),
            format!(
                "unknown command or arguments:  \n{}",
                help::usage_line(Topic::Looper)
            )
        );
        assert!(help::usage_line(Topic::Looper).starts_with("usage: looper [serve | trigger"));
        assert_eq!(Fail::usage(Topic::Runs, "x").code(), 2);
        assert_eq!(Fail::Error("x".into()).code(), 1);
    }
}
