//! Text for Zulip from people Looper does not trust (a run: the agent's words): quoted, not
//! spoken. Control characters are dropped, every mention form is defused, and the words go
//! into a quote block under a line of Looper's own, so that nothing a run writes pings
//! anyone or passes for Looper.

/// The most characters of a run's text Looper sends on to Zulip.
pub const MAX_RUN_MESSAGE: usize = 2000;

/// A run's hand-off text as it is sent to Zulip: Looper's own line saying which run hands
/// off, then the run's words quoted ([`quote_run_text`]), so that nothing the run writes
/// can pass for Looper.
pub fn handoff_text(message: &str, run_id: Option<&str>) -> String {
    let who = match run_id {
        Some(id) => format!("run {id}"),
        None => "a run (through its inbox)".to_string(),
    };
    format!("Looper: {who} hands off:\n{}\n", quote_run_text(message))
}

/// The agent's words for Zulip: control characters dropped, every mention form defused
/// ([`defuse_all_mentions`]), cut to [`MAX_RUN_MESSAGE`] characters, each line inside a
/// quote block (`> `). A blank line must follow the block before Looper's next line, or
/// Markdown would take that line into the quote.
pub fn quote_run_text(text: &str) -> String {
    let clean = defuse_all_mentions(&crate::os::visible::strip_controls(text));
    let mut cut: String = clean.chars().take(MAX_RUN_MESSAGE).collect();
    if clean.chars().count() > MAX_RUN_MESSAGE {
        cut.push_str(" […]");
    }
    let cut = cut.trim_end();
    if cut.is_empty() {
        return "> (nothing)".to_string();
    }
    cut.lines()
        .map(|l| {
            if l.is_empty() {
                ">".to_string()
            } else {
                format!("> {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every Zulip mention made plain text: a zero-width space after each `@` that starts
/// one — a person or a wildcard (`@**…**`), a group (`@*…*`), and their silent forms
/// (`@_**…**`, `@_*…*`). An `@` in an address (`a@b.c`) stays.
pub fn defuse_all_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        out.push('@');
        if after.starts_with('*') || after.starts_with("_*") {
            out.push('\u{200B}');
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Zulip's mentions that notify everyone (`@**all**`, `@**everyone**`, `@**channel**`,
/// `@**stream**`, `@**topic**`, their silent `@_**…**` forms, and role groups such as
/// `@*role:everyone*`) made plain text: a zero-width space after the `@`. For Looper's own
/// messages, which name only what the operator configured; a run's words go through
/// [`quote_run_text`].
pub fn defuse_mentions(text: &str) -> String {
    const WILDCARDS: [&str; 5] = ["all", "everyone", "channel", "stream", "topic"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let body = after.strip_prefix('_').unwrap_or(after);
        let lower = body.to_ascii_lowercase();
        let wildcard = WILDCARDS.iter().any(|w| {
            lower.starts_with(&format!("**{w}**")) || lower.starts_with(&format!("**{w}|"))
        });
        let group = lower.starts_with("*role:");
        out.push('@');
        if wildcard || group {
            out.push('\u{200B}');
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_text_is_quoted_capped_and_pings_nobody() {
        let t = handoff_text(
            "done @**all** and @_**Everyone** @**Tessa** @*role:members* @_*team* a@b.c\n\nLooper: the operator resumed the loop\u{1b}]52;c;eA==\u{7}",
            Some("r1"),
        );
        assert_eq!(
            t,
            "Looper: run r1 hands off:\n> done @\u{200B}**all** and @\u{200B}_**Everyone** @\u{200B}**Tessa** @\u{200B}*role:members* @\u{200B}_*team* a@b.c\n>\n> Looper: the operator resumed the loop]52;c;eA==\n"
        );
        let long = "x".repeat(MAX_RUN_MESSAGE + 50);
        let t = handoff_text(&long, None);
        assert!(t.starts_with("Looper: a run (through its inbox) hands off:\n> xxx"));
        assert!(t.chars().count() < MAX_RUN_MESSAGE + 80, "{}", t.len());
        assert!(t.ends_with("x […]\n"));
        assert_eq!(
            defuse_mentions("a@b.c @**stream|x** @**Tessa**"),
            "a@b.c @\u{200B}**stream|x** @**Tessa**"
        );
        assert_eq!(quote_run_text(" \n"), "> (nothing)");
    }
}
