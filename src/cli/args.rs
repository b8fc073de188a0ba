//! The command line as a typed [`Command`]: every word is read and checked here, before
//! anything runs. lexopt reads each command's options; the rules around it keep the command
//! line Looper has always had: a `--help`/`-h` anywhere after a command asks for that
//! command's help, `--version` may follow any one word, and every option is one whole word
//! (`--name value` or `--name=value`) — no `-fx` clusters, and `--` ends nothing.

use std::path::PathBuf;

use lexopt::Arg::{Long, Short};

use super::help::Topic;
use super::Fail;

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Version,
    Help(Topic),
    Serve,
    Trigger(Trigger),
    Status(Status),
    Runs(Runs),
    Logs(Logs),
    Resume(Resume),
    Pause(Pause),
    ZulipCheck,
    /// `zulip send <message>`.
    ZulipSend(String),
}

/// `looper trigger`: the `/run` request to make, and how to make it.
#[derive(Debug, Default, PartialEq)]
pub struct Trigger {
    /// The Zulip announcement: `--message`, or what `--message-file` holds; never blank.
    pub message: String,
    /// `--prompt`, or what `--prompt-file` holds; `None`: the server's default prompt.
    pub prompt: Option<String>,
    /// `--workspace` as typed; made absolute when the request is built.
    pub workspace: Option<PathBuf>,
    /// `--from-run`; `None`: `$LOOPER_RUN_ID`. A blank one names no run at all.
    pub from_run: Option<String>,
    /// `--delay`, in seconds.
    pub delay: Option<f64>,
    pub url: Option<String>,
    pub follow: bool,
    /// `--inbox`: through `$LOOPER_INBOX` even when HTTP would work.
    pub inbox: bool,
    /// `--done`: the run says the task is done (`loop_done`); the loop finishes.
    pub done: bool,
    /// `--raw`: the run's log bytes as they are, even to a terminal.
    pub raw: bool,
}

/// `looper resume`: end the loop's pauses (of one workspace, or of all).
#[derive(Debug, Default, PartialEq)]
pub struct Resume {
    pub workspace: Option<PathBuf>,
    pub url: Option<String>,
}

/// `looper pause`: hold a loop (paused, or finished) until `looper resume`.
#[derive(Debug, Default, PartialEq)]
pub struct Pause {
    pub workspace: Option<PathBuf>,
    pub finish: bool,
    pub url: Option<String>,
}

/// `looper status`.
#[derive(Debug, Default, PartialEq)]
pub struct Status {
    pub url: Option<String>,
    pub json: bool,
}

/// `looper runs`.
#[derive(Debug, PartialEq)]
pub struct Runs {
    pub url: Option<String>,
    /// How many rows, 1 to 1000.
    pub limit: usize,
    pub json: bool,
}

/// `looper logs`.
#[derive(Debug, Default, PartialEq)]
pub struct Logs {
    /// `None`: the active run's, else the newest run's.
    pub run_id: Option<String>,
    pub url: Option<String>,
    pub follow: bool,
    /// `--follow-loop`: follow, and go on with each next run's log.
    pub follow_loop: bool,
    /// `--raw`: the log's bytes as they are, even to a terminal.
    pub raw: bool,
}

impl Command {
    /// Whether the output keeps the agent's bytes as they are (`--raw`).
    pub fn raw(&self) -> bool {
        match self {
            Command::Trigger(t) => t.raw,
            Command::Logs(l) => l.raw,
            _ => false,
        }
    }
}

/// How many rows `looper runs` shows unless `--limit` says otherwise.
const RUNS_DEFAULT_LIMIT: &str = "20";

/// Reads the command line (without the program's name) into the command it asks for.
pub fn parse(args: &[String]) -> Result<Command, Fail> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if matches!(words[..], ["--version" | "-V"] | [_, "--version" | "-V"]) {
        return Ok(Command::Version);
    }
    let Some((&name, rest)) = words.split_first() else {
        return Ok(Command::Serve);
    };
    let wants_help = rest.iter().any(|w| matches!(*w, "--help" | "-h"));
    match (name, rest) {
        ("--help" | "-h" | "help", []) => Ok(Command::Help(Topic::Looper)),
        ("serve", []) => Ok(Command::Serve),
        ("serve", ["--help" | "-h"]) => Ok(Command::Help(Topic::Serve)),
        ("trigger", _) if wants_help => Ok(Command::Help(Topic::Trigger)),
        ("status", _) if wants_help => Ok(Command::Help(Topic::Status)),
        ("runs", _) if wants_help => Ok(Command::Help(Topic::Runs)),
        ("logs", _) if wants_help => Ok(Command::Help(Topic::Logs)),
        ("resume", _) if wants_help => Ok(Command::Help(Topic::Resume)),
        ("pause", _) if wants_help => Ok(Command::Help(Topic::Pause)),
        // A bare `looper zulip` shows what it can do.
        ("zulip", _) if wants_help || rest.is_empty() => Ok(Command::Help(Topic::Zulip)),
        ("trigger", _) => trigger(rest).map(Command::Trigger),
        ("status", _) => status(rest).map(Command::Status),
        ("runs", _) => runs(rest).map(Command::Runs),
        ("logs", _) => logs(rest).map(Command::Logs),
        ("resume", _) => resume(rest).map(Command::Resume),
        ("pause", _) => pause(rest).map(Command::Pause),
        ("zulip", ["check"]) => Ok(Command::ZulipCheck),
        ("zulip", ["send", message]) if message.trim().is_empty() => {
            Err(Fail::usage(Topic::Looper, "zulip send needs a message"))
        }
        ("zulip", ["send", message]) => Ok(Command::ZulipSend(message.to_string())),
        ("zulip", ["send", ..]) => Err(Fail::usage(
            Topic::Looper,
            "zulip send takes one message (quote it)",
        )),
        _ => Err(Fail::usage(
            Topic::Looper,
            format!("unknown command or arguments: {}", words.join(" ")),
        )),
    }
}

fn trigger(words: &[&str]) -> Result<Trigger, Fail> {
    let mut opts = Options::new(Topic::Trigger, words);
    let mut t = Trigger::default();
    let (mut message, mut message_file, mut prompt, mut prompt_file) = (None, None, None, None);
    let (mut workspace, mut delay) = (None, None);
    while let Some(arg) = opts.next()? {
        match arg {
            Long("message") => opts.once(&mut message)?,
            Long("message-file") => opts.once(&mut message_file)?,
            Long("prompt") => opts.once(&mut prompt)?,
            Long("prompt-file") => opts.once(&mut prompt_file)?,
            Long("workspace") => opts.once(&mut workspace)?,
            Long("from-run") => opts.once(&mut t.from_run)?,
            Long("delay") => opts.once(&mut delay)?,
            Long("url") => opts.once(&mut t.url)?,
            Long("follow") => t.follow = opts.switch()?,
            Long("inbox") => t.inbox = opts.switch()?,
            Long("done") => t.done = opts.switch()?,
            Long("raw") => t.raw = opts.switch()?,
            _ => return Err(opts.unknown()),
        }
    }
    let message = text("--message", message, message_file)?.filter(|m| !m.trim().is_empty());
    t.message = match message {
        Some(m) => m,
        None if t.done => DONE_MESSAGE.to_string(),
        None => {
            return Err(Fail::usage(
                Topic::Trigger,
                "trigger needs --message or --message-file",
            ))
        }
    };
    t.prompt = text("--prompt", prompt, prompt_file)?;
    t.workspace = workspace.map(PathBuf::from);
    t.delay = match delay {
        Some(raw) => Some(raw.parse().map_err(|_| {
            Fail::usage(
                Topic::Trigger,
                format!("--delay takes seconds, got {raw:?}"),
            )
        })?),
        None => None,
    };
    Ok(t)
}

/// The text of `--x` or the contents of `--x-file` (`name` is `--x`); both at once is an
/// error. The file is read here, while parsing, so that the errors come in the order they
/// always have: the message's before the prompt's before the delay's.
fn text(name: &str, given: Option<String>, file: Option<String>) -> Result<Option<String>, Fail> {
    match (given, file) {
        (Some(_), Some(_)) => Err(Fail::usage(
            Topic::Trigger,
            format!("give {name} or {name}-file, not both"),
        )),
        (Some(text), None) => Ok(Some(text)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| Fail::Error(format!("cannot read {path} ({name}-file): {e}"))),
        (None, None) => Ok(None),
    }
}

/// The announcement of `trigger --done` without a message of its own.
const DONE_MESSAGE: &str = "done: the task is finished";

fn resume(words: &[&str]) -> Result<Resume, Fail> {
    let mut opts = Options::new(Topic::Resume, words);
    let (mut r, mut workspace) = (Resume::default(), None);
    while let Some(arg) = opts.next()? {
        match arg {
            Long("workspace") => opts.once(&mut workspace)?,
            Long("url") => opts.once(&mut r.url)?,
            _ => return Err(opts.unknown()),
        }
    }
    r.workspace = workspace.map(PathBuf::from);
    Ok(r)
}

fn pause(words: &[&str]) -> Result<Pause, Fail> {
    let mut opts = Options::new(Topic::Pause, words);
    let (mut p, mut workspace) = (Pause::default(), None);
    while let Some(arg) = opts.next()? {
        match arg {
            Long("workspace") => opts.once(&mut workspace)?,
            Long("finish") => p.finish = opts.switch()?,
            Long("url") => opts.once(&mut p.url)?,
            _ => return Err(opts.unknown()),
        }
    }
    p.workspace = workspace.map(PathBuf::from);
    Ok(p)
}

fn status(words: &[&str]) -> Result<Status, Fail> {
    let mut opts = Options::new(Topic::Status, words);
    let mut s = Status::default();
    while let Some(arg) = opts.next()? {
        match arg {
            Long("url") => opts.once(&mut s.url)?,
            Long("json") => s.json = opts.switch()?,
            _ => return Err(opts.unknown()),
        }
    }
    Ok(s)
}

fn runs(words: &[&str]) -> Result<Runs, Fail> {
    let mut opts = Options::new(Topic::Runs, words);
    let (mut url, mut limit, mut json) = (None, None, false);
    while let Some(arg) = opts.next()? {
        match arg {
            Long("url") => opts.once(&mut url)?,
            Long("limit") => opts.once(&mut limit)?,
            Long("json") => json = opts.switch()?,
            _ => return Err(opts.unknown()),
        }
    }
    let raw = limit.as_deref().unwrap_or(RUNS_DEFAULT_LIMIT);
    let limit = raw
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| {
            Fail::usage(
                Topic::Runs,
                format!("--limit takes a number from 1 to 1000, got {raw:?}"),
            )
        })?;
    Ok(Runs { url, limit, json })
}

fn logs(words: &[&str]) -> Result<Logs, Fail> {
    // A word that does not start with `-` is the run id wherever it stands, even right after
    // `--url`, which then takes the next word that does start with `-`: only `--url=URL`
    // works. So it has always been.
    let (ids, flags): (Vec<&str>, Vec<&str>) = words.iter().partition(|w| !w.starts_with('-'));
    let mut opts = Options::new(Topic::Logs, &flags);
    let mut l = Logs::default();
    while let Some(arg) = opts.next()? {
        match arg {
            Long("url") => opts.once(&mut l.url)?,
            Short('f') | Long("follow") => l.follow = opts.switch()?,
            Long("raw") => l.raw = opts.switch()?,
            Long("follow-loop") => {
                l.follow_loop = opts.switch()?;
                l.follow |= l.follow_loop;
            }
            _ => return Err(opts.unknown()),
        }
    }
    if ids.len() > 1 {
        return Err(Fail::usage(Topic::Logs, "logs takes at most one run id"));
    }
    l.run_id = ids.first().map(|id| id.to_string());
    Ok(l)
}

/// One command's options, read by lexopt one whole word at a time.
struct Options {
    parser: lexopt::Parser,
    /// The word being read, as typed: errors name it.
    word: String,
    /// Whose usage line ends an error.
    topic: Topic,
}

impl Options {
    fn new(topic: Topic, words: &[&str]) -> Options {
        Options {
            parser: lexopt::Parser::from_args(words),
            word: String::new(),
            topic,
        }
    }

    /// The next option; `None` at the end.
    fn next(&mut self) -> Result<Option<lexopt::Arg<'_>>, Fail> {
        // Each option is read whole (its value taken or refused) before the next, so lexopt
        // always has the next word at hand here.
        let Some(word) = self
            .parser
            .try_raw_args()
            .and_then(|raw| raw.peek().map(|w| w.to_string_lossy().into_owned()))
        else {
            return Ok(None);
        };
        self.word = word;
        // lexopt would take `--` for the end of the options and `-fx` for `-f -x` (or `-f`
        // with the value `x`): here each is one word that no command knows.
        let cluster = !self.word.starts_with("--")
            && self.word.starts_with('-')
            && self.word.chars().count() > 2;
        if self.word == "--" || cluster {
            return Err(self.unknown());
        }
        let topic = self.topic;
        // lexopt fails only on a value left unread, and none is.
        self.parser
            .next()
            .map_err(|e| Fail::usage(topic, e.to_string()))
    }

    /// The name of the option being read: `--url` of `--url=x`.
    fn name(&self) -> &str {
        self.word
            .split_once('=')
            .map_or(&self.word, |(name, _)| name)
    }

    /// The value of an option that may be given once, into `slot`: what follows its `=`, or
    /// else the next word, whatever that looks like.
    fn once(&mut self, slot: &mut Option<String>) -> Result<(), Fail> {
        let value = self
            .parser
            .value()
            // The words came in as `String`s: nothing is lost.
            .map(|v| v.to_string_lossy().into_owned())
            .map_err(|_| Fail::usage(self.topic, format!("{} needs a value", self.name())))?;
        if slot.replace(value).is_some() {
            return Err(Fail::usage(
                self.topic,
                format!("{} given twice", self.name()),
            ));
        }
        Ok(())
    }

    /// A switch: `true`, unless it came with a value (`--json=1`), which no switch takes.
    fn switch(&mut self) -> Result<bool, Fail> {
        match self.parser.optional_value() {
            Some(_) => Err(self.unknown()),
            None => Ok(true),
        }
    }

    fn unknown(&self) -> Fail {
        Fail::usage(self.topic, format!("unknown argument: {}", self.word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, Fail> {
        let args: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        parse(&args)
    }

    fn ok(words: &[&str]) -> Command {
        parse_words(words).unwrap_or_else(|e| panic!("{words:?}: {e:?}"))
    }

    /// The usage error `words` make: whose usage line ends it, and the message.
    fn usage(words: &[&str]) -> (Topic, String) {
        match parse_words(words) {
            Err(Fail::Usage(topic, msg)) => (topic, msg),
            other => panic!("{words:?}: not a usage error: {other:?}"),
        }
    }

    fn trigger_of(words: &[&str]) -> Trigger {
        match ok(words) {
            Command::Trigger(t) => t,
            other => panic!("{words:?}: {other:?}"),
        }
    }

    fn logs_of(words: &[&str]) -> Logs {
        match ok(words) {
            Command::Logs(l) => l,
            other => panic!("{words:?}: {other:?}"),
        }
    }

    /// A file of this test's own, holding `text`.
    fn file(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("looper-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// `--version` alone, or after any one word, asks for the version; nothing else does.
    #[test]
    fn version_follows_any_one_word() {
        for words in [
            &["--version"][..],
            &["-V"],
            &["status", "--version"],
            &["frobnicate", "-V"],
            &["-h", "-V"],
        ] {
            assert_eq!(ok(words), Command::Version, "{words:?}");
        }
        assert_eq!(
            usage(&["--version", "x"]),
            (
                Topic::Looper,
                "unknown command or arguments: --version x".into()
            )
        );
    }

    /// No command serves; `--help`, `-h` or `help` alone is the general help; a help word
    /// anywhere after a command is that command's help, even where it would be a value.
    #[test]
    fn help_and_serve() {
        assert_eq!(ok(&[]), Command::Serve);
        assert_eq!(ok(&["serve"]), Command::Serve);
        for words in [&["--help"][..], &["-h"], &["help"]] {
            assert_eq!(ok(words), Command::Help(Topic::Looper), "{words:?}");
        }
        for (words, topic) in [
            (&["serve", "-h"][..], Topic::Serve),
            (&["serve", "--help"], Topic::Serve),
            (&["trigger", "--bogus", "-h"], Topic::Trigger),
            (&["trigger", "--message", "--help"], Topic::Trigger),
            (&["status", "x", "--help"], Topic::Status),
            (&["runs", "--limit", "0", "-h"], Topic::Runs),
            (&["logs", "a", "b", "-h"], Topic::Logs),
            (&["zulip"], Topic::Zulip),
            (&["zulip", "send", "-h"], Topic::Zulip),
            (&["zulip", "check", "--help"], Topic::Zulip),
        ] {
            assert_eq!(ok(words), Command::Help(topic), "{words:?}");
        }
        // `--message=--help` is a message, not a help word.
        assert_eq!(
            trigger_of(&["trigger", "--message=--help"]).message,
            "--help"
        );
    }

    /// What no command knows is named whole, with the general usage line.
    #[test]
    fn unknown_commands_are_named_whole() {
        for (words, named) in [
            (&["frobnicate"][..], "frobnicate"),
            (&["help", "trigger"], "help trigger"),
            (&["--help", "x"], "--help x"),
            (&["serve", "x"], "serve x"),
            (&["serve", "--help", "x"], "serve --help x"),
            (&["zulip", "check", "x"], "zulip check x"),
            (&["zulip", "frob"], "zulip frob"),
            (&[""], ""),
        ] {
            assert_eq!(
                usage(words),
                (
                    Topic::Looper,
                    format!("unknown command or arguments: {named}")
                ),
                "{words:?}"
            );
        }
    }

    /// Every trigger option lands in its field; a value may follow `=` or come as the next
    /// word, whatever that looks like.
    #[test]
    fn trigger_takes_every_option() {
        let t = trigger_of(&[
            "trigger",
            "--message",
            "hello",
            "--prompt=p=q",
            "--workspace",
            "ws",
            "--from-run",
            "abc",
            "--delay",
            "1.5",
            "--url",
            "127.0.0.1:1",
            "--follow",
            "--inbox",
            "--done",
            "--raw",
        ]);
        assert_eq!(
            t,
            Trigger {
                message: "hello".into(),
                prompt: Some("p=q".into()),
                workspace: Some("ws".into()),
                from_run: Some("abc".into()),
                delay: Some(1.5),
                url: Some("127.0.0.1:1".into()),
                follow: true,
                inbox: true,
                done: true,
                raw: true,
            }
        );
        let t = trigger_of(&["trigger", "--message", "--follow", "--prompt", ""]);
        assert_eq!(
            (t.message.as_str(), t.prompt.as_deref()),
            ("--follow", Some(""))
        );
        assert!(!t.follow);
        // A blank --from-run is kept: it says "no run", over $LOOPER_RUN_ID.
        assert_eq!(
            trigger_of(&["trigger", "--message", "m", "--from-run", ""]).from_run,
            Some(String::new())
        );
        assert_eq!(
            trigger_of(&["trigger", "--message", "m", "--delay", "-1"]).delay,
            Some(-1.0)
        );
    }

    /// The message and the prompt may come from files, read while parsing.
    #[test]
    fn trigger_reads_the_files() {
        let msg = file("message.txt", "from a file\n");
        let prompt = file("prompt.md", "a prompt\n");
        let t = trigger_of(&["trigger", "--message-file", &msg, "--prompt-file", &prompt]);
        assert_eq!(t.message, "from a file\n");
        assert_eq!(t.prompt.as_deref(), Some("a prompt\n"));
        let blank = file("blank.txt", "  \n");
        assert_eq!(
            usage(&["trigger", "--message-file", &blank]),
            (
                Topic::Trigger,
                "trigger needs --message or --message-file".into()
            )
        );
        let missing = format!("{msg}.missing");
        match parse_words(&["trigger", "--message-file", &missing, "--delay", "x"]) {
            Err(Fail::Error(e)) => assert!(
                e.starts_with(&format!("cannot read {missing} (--message-file): ")),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        match parse_words(&["trigger", "--message", "m", "--prompt-file", &missing]) {
            Err(Fail::Error(e)) => assert!(e.contains("(--prompt-file)"), "{e}"),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(std::path::Path::new(&msg).parent().unwrap());
    }

    /// Each wrong trigger command line gets its own message and trigger's usage line; the
    /// options are all read before the message, the prompt and the delay are checked.
    #[test]
    fn trigger_errors() {
        for (words, msg) in [
            (
                &["trigger"][..],
                "trigger needs --message or --message-file",
            ),
            (
                &["trigger", "--message", " "],
                "trigger needs --message or --message-file",
            ),
            (
                &["trigger", "--message="],
                "trigger needs --message or --message-file",
            ),
            (
                &["trigger", "--delay", "x"],
                "trigger needs --message or --message-file",
            ),
            (&["trigger", "--message"], "--message needs a value"),
            (
                &["trigger", "--message", "a", "--message"],
                "--message needs a value",
            ),
            (
                &["trigger", "--message", "a", "--message", "b"],
                "--message given twice",
            ),
            (
                &["trigger", "--message=a", "--message=b"],
                "--message given twice",
            ),
            (
                &["trigger", "--message", "a", "--message-file=x"],
                "give --message or --message-file, not both",
            ),
            (
                &[
                    "trigger",
                    "--message",
                    "m",
                    "--prompt",
                    "a",
                    "--prompt-file",
                    "b",
                ],
                "give --prompt or --prompt-file, not both",
            ),
            (
                &["trigger", "--message", "m", "--delay", "x"],
                "--delay takes seconds, got \"x\"",
            ),
            (
                &["trigger", "--message", "a", "--message", "b", "--x"],
                "--message given twice",
            ),
            (&["trigger", "--mesage", "x"], "unknown argument: --mesage"),
            (
                &["trigger", "--message", "m", "--follow=1"],
                "unknown argument: --follow=1",
            ),
            (
                &["trigger", "--message", "m", "extra"],
                "unknown argument: extra",
            ),
            (&["trigger", "--message", "m", "-"], "unknown argument: -"),
            (
                &["trigger", "--message", "m", "--", "x"],
                "unknown argument: --",
            ),
            (
                &["trigger", "--message", "m", "-fx"],
                "unknown argument: -fx",
            ),
            (
                &["trigger", "--message", "m", "-h=1"],
                "unknown argument: -h=1",
            ),
            (
                &["trigger", "--message", "m", "--=x"],
                "unknown argument: --=x",
            ),
            (
                &["trigger", "--message", "m", "--version"],
                "unknown argument: --version",
            ),
            (
                &["trigger", "--unknown", "--message"],
                "unknown argument: --unknown",
            ),
        ] {
            assert_eq!(usage(words), (Topic::Trigger, msg.into()), "{words:?}");
        }
    }

    #[test]
    fn status_options_and_errors() {
        assert_eq!(ok(&["status"]), Command::Status(Status::default()));
        assert_eq!(
            ok(&["status", "--json", "--url=h:1", "--json"]),
            Command::Status(Status {
                url: Some("h:1".into()),
                json: true
            })
        );
        for (words, msg) in [
            (&["status", "--json=1"][..], "unknown argument: --json=1"),
            (&["status", "--json="], "unknown argument: --json="),
            (&["status", "x"], "unknown argument: x"),
            (&["status", "-j"], "unknown argument: -j"),
            (&["status", "-5"], "unknown argument: -5"),
            (&["status", "--limit", "5"], "unknown argument: --limit"),
            (&["status", "--url"], "--url needs a value"),
            (&["status", "--url", "a", "--url", "b"], "--url given twice"),
        ] {
            assert_eq!(usage(words), (Topic::Status, msg.into()), "{words:?}");
        }
    }

    #[test]
    fn runs_options_and_errors() {
        let runs = |words: &[&str]| match ok(words) {
            Command::Runs(r) => r,
            other => panic!("{words:?}: {other:?}"),
        };
        assert_eq!(
            runs(&["runs"]),
            Runs {
                url: None,
                limit: 20,
                json: false
            }
        );
        assert_eq!(runs(&["runs", "--limit=1000", "--json"]).limit, 1000);
        assert_eq!(runs(&["runs", "--limit", "+5"]).limit, 5);
        for (words, msg) in [
            (&["runs", "--limit"][..], "--limit needs a value"),
            (
                &["runs", "--limit", "0"],
                "--limit takes a number from 1 to 1000, got \"0\"",
            ),
            (
                &["runs", "--limit", "1001"],
                "--limit takes a number from 1 to 1000, got \"1001\"",
            ),
            (
                &["runs", "--limit", "-5"],
                "--limit takes a number from 1 to 1000, got \"-5\"",
            ),
            (
                &["runs", "--limit", ""],
                "--limit takes a number from 1 to 1000, got \"\"",
            ),
            (
                &["runs", "--limit", "1", "--limit", "2"],
                "--limit given twice",
            ),
            (
                &["runs", "--limit", "0", "--bogus"],
                "unknown argument: --bogus",
            ),
            (&["runs", "x"], "unknown argument: x"),
        ] {
            assert_eq!(usage(words), (Topic::Runs, msg.into()), "{words:?}");
        }
    }

    /// A run id may stand anywhere; a word that does not start with `-` is never the value
    /// of `--url` (only `--url=URL` gives one).
    #[test]
    fn logs_options_and_errors() {
        assert_eq!(logs_of(&["logs"]), Logs::default());
        for words in [&["logs", "-f", "abc"][..], &["logs", "abc", "--follow"]] {
            assert_eq!(
                logs_of(words),
                Logs {
                    run_id: Some("abc".into()),
                    url: None,
                    follow: true,
                    follow_loop: false,
                    raw: false,
                },
                "{words:?}"
            );
        }
        let looping = logs_of(&["logs", "--follow-loop"]);
        assert!(looping.follow && looping.follow_loop, "{looping:?}");
        assert!(logs_of(&["logs", "--raw"]).raw);
        assert_eq!(
            logs_of(&["logs", "--url=h:1", "abc"]).url.as_deref(),
            Some("h:1")
        );
        let odd = logs_of(&["logs", "--url", "abc", "-f"]);
        assert_eq!(
            (odd.url.as_deref(), odd.run_id.as_deref()),
            (Some("-f"), Some("abc"))
        );
        assert!(!odd.follow);
        for (words, msg) in [
            (&["logs", "--url", "h:1"][..], "--url needs a value"),
            (&["logs", "a", "b"], "logs takes at most one run id"),
            (&["logs", "a", "b", "--bogus"], "unknown argument: --bogus"),
            (&["logs", "-ff"], "unknown argument: -ff"),
            (&["logs", "-f=x"], "unknown argument: -f=x"),
            (&["logs", "--follow=x"], "unknown argument: --follow=x"),
            (&["logs", "--"], "unknown argument: --"),
            (&["logs", "-"], "unknown argument: -"),
            (&["logs", "--json"], "unknown argument: --json"),
        ] {
            assert_eq!(usage(words), (Topic::Logs, msg.into()), "{words:?}");
        }
    }

    /// `zulip send` takes exactly one word, which may look like anything but a help word.
    #[test]
    fn zulip_commands() {
        assert_eq!(ok(&["zulip", "check"]), Command::ZulipCheck);
        assert_eq!(
            ok(&["zulip", "send", "hi there"]),
            Command::ZulipSend("hi there".into())
        );
        assert_eq!(
            ok(&["zulip", "send", "--version"]),
            Command::ZulipSend("--version".into())
        );
        for (words, msg) in [
            (
                &["zulip", "send"][..],
                "zulip send takes one message (quote it)",
            ),
            (
                &["zulip", "send", "a", "b"],
                "zulip send takes one message (quote it)",
            ),
            (&["zulip", "send", " "], "zulip send needs a message"),
        ] {
            assert_eq!(usage(words), (Topic::Looper, msg.into()), "{words:?}");
        }
    }
}
