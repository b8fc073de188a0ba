//! The help texts: `looper --help`, each command's `--help`, and the usage line that ends a
//! usage error.

const USAGE: &str = "usage: looper [serve | trigger | status | runs | logs | pause | resume | zulip check | zulip send] [--help] [--version]";

const HELP: &str = "\
looper - announce on Zulip, stop every live `codex exec` run, start one fresh run

usage:
  looper [serve]                 run the server (LOOPER_HOST:LOOPER_PORT, default 127.0.0.1:3456)
  looper trigger [options]       ask the server for a fresh run (POST /run)
  looper status [--json]         what runs now, what ended last, what autopoll does
  looper runs [--limit N]        recent runs as a table
  looper logs [RUN_ID] [-f]      a run's log (the active run's, else the newest), -f follows it
  looper pause [--workspace W]   hold the loop until `looper resume` (POST /pause); --finish
  looper resume [--workspace W]  end the loop's pauses and finish (POST /resume)
  looper zulip check             where Zulip credentials come from, and the target
  looper zulip send <message>    post a message with the configured credentials
  looper <command> --help        help for one command
  looper --version

examples:
  looper
  looper trigger --message 'Looper: fresh run' --prompt-file scripts/looper-prompt.md --follow
  looper status

Configuration is by environment variables; see README.md.";

const TRIGGER_HELP: &str = "\
looper trigger - ask the server for a fresh run (POST /run) and print its JSON answer

usage: looper trigger (--message TEXT | --message-file PATH | --done) [options]

options:
  --message TEXT, --message-file PATH   the Zulip announcement (required)
  --prompt TEXT, --prompt-file PATH     the prompt (default: the server's default prompt;
                                        an empty prompt announces and stops only)
  --workspace DIR                       directory for codex exec -C (default: the server's)
  --from-run ID                         the run sending this trigger (default: $LOOPER_RUN_ID)
  --delay SECONDS                       wait before spawning (default: the server's)
  --url URL                             the server (default: $LOOPER_URL, with or without /run,
                                        else http://127.0.0.1:$LOOPER_PORT)
  --follow                              print the new run's log until it exits (stdout
                                        is the log; the JSON answer goes to stderr)
  --raw                                 with --follow: the log's bytes as they are (to a
                                        terminal, control characters are shown as ^[ etc.)
  --inbox                               leave the request in $LOOPER_INBOX instead of HTTP
  --done                                from a run: the task is done, the loop finishes
                                        (nothing is stopped, nothing starts; the message
                                        defaults to \"done: the task is finished\")
  --help

Inside a run, when Looper cannot be reached over HTTP (codex's sandbox allows no socket),
the request goes into $LOOPER_INBOX: `queued <path>` on stderr, then Looper's answer as
over HTTP (waiting up to 30 s, or $LOOPER_INBOX_WAIT_SECONDS; without an answer the request
stays queued, exit 0).

The token comes from $LOOPER_API_TOKEN. Exit code 0 when the answer is ok (with --follow:
and the run exited 0), 1 otherwise, 2 for a usage error.

examples:
  looper trigger --message 'Looper: fresh run'
  looper trigger --message-file msg.txt --prompt-file prompt.md --workspace ~/src/app
  looper trigger --message 'next step' --from-run \"$LOOPER_RUN_ID\"
  looper trigger --done --message 'all items ticked'";

const PAUSE_HELP: &str = "\
looper pause - hold a loop: autopoll starts nothing, a run's hand-off is answered 429

usage: looper pause [--workspace DIR] [--finish] [--url URL]

options:
  --workspace DIR   the loop of this workspace (default: the one autopoll works in)
  --finish          finish the loop instead (as a run's `looper trigger --done` does)
  --url URL         the server (default: $LOOPER_URL, else http://127.0.0.1:$LOOPER_PORT)
  --help

It stops nothing: the live run goes on (stop it with `looper trigger --message M --prompt
''`). A paused loop shows in `looper status`, the page and /metrics, and waits until
`looper resume` or a trigger of yours. The operator's token comes from $LOOPER_API_TOKEN; a
run may not pause. Exit code 0 when the server answered ok, 1 otherwise, 2 for a usage
error.

examples:
  looper pause
  looper trigger --message 'stopping for today' --prompt '' && looper pause
  looper pause --finish --workspace ~/src/app";

const RESUME_HELP: &str = "\
looper resume - end the loop's pauses: finished, stuck, over budget, codex's usage limit

usage: looper resume [--workspace DIR] [--url URL]

options:
  --workspace DIR   only this workspace's loop (default: every workspace's)
  --url URL         the server (default: $LOOPER_URL, else http://127.0.0.1:$LOOPER_PORT)
  --help

Autopoll goes on in the resumed workspace at its next tick. A budget that is still over is
waived until it clears (the day turns, the window resets). The operator's token comes from
$LOOPER_API_TOKEN; a run may not resume. Exit code 0 when the server answered ok (also when
nothing was paused), 1 otherwise, 2 for a usage error.

examples:
  looper resume
  looper resume --workspace ~/src/app";

const STATUS_HELP: &str = "\
looper status - show what runs now, what ended last, and what autopoll does

usage: looper status [--json] [--url URL]

  --json    print the raw /status answer

examples:
  looper status
  looper status --json | jq .active";

const LOGS_HELP: &str = "\
looper logs - print a run's log (the active run's by default, else the newest run's)

usage: looper logs [RUN_ID] [-f | --follow-loop] [--raw] [--url URL]

  -f, --follow     keep printing as the log grows, until the run ends (exit 0 when it
                   exited 0); a run that was replaced says which run replaced it
  --follow-loop    follow, and go on with each next run's log (replaced or ended, the
                   loop's next run is followed when it starts) until interrupted
  --raw            the log's bytes as they are, even to a terminal (which otherwise sees
                   the agent's control characters shown as ^[, ^G, \\u009b, never obeyed)

examples:
  looper logs
  looper logs 0a1b2c3d
  looper logs -f
  looper logs --follow-loop";

const RUNS_HELP: &str = "\
looper runs - recent runs, newest first

usage: looper runs [--limit N] [--json] [--url URL]

  --limit N   how many (default 20, at most 1000)
  --json      print the raw /runs answer
  --url URL   the server (default: $LOOPER_URL, else http://127.0.0.1:$LOOPER_PORT)

columns: RC is the return code (`running` while it runs, `?` when it could not be
learnt, -N after signal N); TOKENS what the model reported; COMMITS made during the run.
NOTE says why a run ended other than by itself (empty: it exited on its own, RC says how):
  handed_off   it asked for the next run, which replaced it (a success)
  replaced     a run someone else asked for replaced it
  stopped      the operator stopped it and started nothing (empty prompt, Stop)
  hung         its log stopped growing for LOOPER_HUNG_RUN_SECONDS
  shutdown     Looper shut down and stopped it
  external     someone else ended it (SIGTERM, SIGINT or SIGHUP Looper did not send)
  usage_limit  it ended on codex's usage limit

examples:
  looper runs
  looper runs --limit 5";

const ZULIP_HELP: &str = "\
looper zulip - check or use the Zulip configuration (the same variables as the server)

usage:
  looper zulip check            where credentials come from, the site, the bot and the target;
                                the key is never printed; exit 1 when Zulip is unusable
  looper zulip send <message>   post <message> to the configured target

examples:
  looper zulip check
  ZULIP_MESSAGE_TYPE=private ZULIP_TO=8-Tessa looper zulip send 'hello from looper'";

/// Which help text: the general one or a command's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Topic {
    Looper,
    Serve,
    Trigger,
    Status,
    Runs,
    Logs,
    Resume,
    Pause,
    Zulip,
}

/// The help text of `topic`.
pub fn text(topic: Topic) -> String {
    match topic {
        Topic::Looper => HELP.to_string(),
        Topic::Serve => serve_help(),
        Topic::Trigger => TRIGGER_HELP.to_string(),
        Topic::Status => STATUS_HELP.to_string(),
        Topic::Runs => RUNS_HELP.to_string(),
        Topic::Logs => LOGS_HELP.to_string(),
        Topic::Resume => RESUME_HELP.to_string(),
        Topic::Pause => PAUSE_HELP.to_string(),
        Topic::Zulip => ZULIP_HELP.to_string(),
    }
}

/// The line that ends a usage error of `topic`: the command's own usage line (from its help,
/// so the two cannot drift apart), or the general one for the rest.
pub fn usage_line(topic: Topic) -> &'static str {
    let help = match topic {
        Topic::Trigger => TRIGGER_HELP,
        Topic::Status => STATUS_HELP,
        Topic::Runs => RUNS_HELP,
        Topic::Logs => LOGS_HELP,
        Topic::Resume => RESUME_HELP,
        Topic::Pause => PAUSE_HELP,
        Topic::Looper | Topic::Serve | Topic::Zulip => return USAGE,
    };
    help.lines()
        .find(|l| l.starts_with("usage:"))
        .unwrap_or(USAGE)
}

/// `looper serve --help`: what it does, and every variable it reads.
fn serve_help() -> String {
    let mut text = String::from(
        "looper serve - run the server (also: plain `looper`)\n\nusage: looper [serve]\n\n\
         Configuration is by environment variables (an empty value counts as unset; see\n\
         README.md for each one's default and meaning):\n",
    );
    for var in crate::config::KNOWN_VARS {
        text.push_str(&format!("  {var}\n"));
    }
    text.push_str(
        "\nexamples:\n  looper\n  LOOPER_WORKSPACE=~/src/app LOOPER_PORT=3457 looper serve",
    );
    text
}

#[cfg(test)]
mod tests {
    use crate::model::StopReason;

    /// `looper runs --help` explains every word its NOTE column can show.
    #[test]
    fn the_runs_help_explains_every_note() {
        let every = [
            StopReason::HandedOff,
            StopReason::Replaced,
            StopReason::Stopped,
            StopReason::Hung,
            StopReason::Shutdown,
            StopReason::External,
            StopReason::UsageLimit,
        ];
        // A new reason fails to compile here until it is listed above (and explained).
        for reason in every {
            match reason {
                StopReason::HandedOff
                | StopReason::Replaced
                | StopReason::Stopped
                | StopReason::Hung
                | StopReason::Shutdown
                | StopReason::External
                | StopReason::UsageLimit => {}
            }
            let line = format!("\n  {} ", reason.as_str());
            assert!(
                super::RUNS_HELP.contains(&line),
                "{line:?} is not explained"
            );
        }
    }
}
