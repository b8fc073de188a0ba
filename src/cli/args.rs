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
    /// `None`: the active run's.
    pub run_id: Option<String>,
    pub url: Option<String>,
    pub follow: bool,
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
        // A bare `looper zulip` shows what it can do.
        ("zulip", _) if wants_help || rest.is_empty() => Ok(Command::Help(Topic::Zulip)),
        ("trigger", _) => trigger(rest).map(Command::Trigger),
        ("status", _) => status(rest).map(Command::Status),
        ("runs", _) => runs(rest).map(Command::Runs),
        ("logs", _) => logs(rest).map(Command::Logs),
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
            _ => return Err(opts.unknown()),
        }
    }
    t.message = text("--message", message, message_file)?
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| Fail::usage(Topic::Trigger, "trigger needs --message or --message-file"))?;
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
