//! The agent's bytes shown to a person, never obeyed by their terminal or their chat. A
//! run's output, its last message and its hand-off text are the agent's, and an escape
//! sequence in them would write the operator's clipboard (`ESC ] 52`), retitle or clear
//! their terminal, hide text or forge a link; in Zulip a control character has no business
//! at all. So:
//!
//! - [`visible`] and [`Visible`] show every control character but tab and newline — C0,
//!   DEL, C1, the `ESC` that starts every sequence — as plain text (`^[`, `^?`, `\u009b`),
//!   and a byte that is not UTF-8 as `\xff`: for terminals (the server's stderr, and the
//!   command line when its output is one);
//! - [`strip_controls`] drops them: for Zulip.
//!
//! Log files keep every byte as it came.

use std::borrow::Cow;
use std::io::{self, Write};

/// Whether `c` is a control character that a terminal could act on (tab and newline are
/// text), or one that changes how the text around it is shown: the bidirectional marks,
/// embeddings, overrides and isolates (text shown in another order than it reads), and
/// the line and paragraph separators.
fn is_control(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n')
        || ('\u{80}'..='\u{9f}').contains(&c)
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Appends how `c` is shown: `^X` for C0 and DEL, `\u00XX` for C1, `c` itself otherwise.
fn show(c: char, out: &mut Vec<u8>) {
    match c as u32 {
        n @ 0..=0x1f if c != '\t' && c != '\n' => out.extend_from_slice(&[b'^', n as u8 + 0x40]),
        0x7f => out.extend_from_slice(b"^?"),
        n if n >= 0x80 && is_control(c) => out.extend_from_slice(format!("\\u{n:04x}").as_bytes()),
        _ => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// Renders `input` into `out`, up to an incomplete UTF-8 sequence at its very end (when
/// `more` says more bytes follow); how many bytes were taken.
fn render(input: &[u8], out: &mut Vec<u8>, more: bool) -> usize {
    let mut rest = input;
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                text.chars().for_each(|c| show(c, out));
                return input.len();
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // `good` was just found to be UTF-8.
                if let Ok(text) = std::str::from_utf8(good) {
                    text.chars().for_each(|c| show(c, out));
                }
                match e.error_len() {
                    Some(n) => {
                        for b in &bad[..n] {
                            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                        }
                        rest = &bad[n..];
                    }
                    // Cut short at the end: the rest of the character may come next.
                    None if more => return input.len() - bad.len(),
                    None => {
                        for b in bad {
                            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                        }
                        return input.len();
                    }
                }
            }
        }
    }
}

/// Whether `bytes` need no change to be shown: printable ASCII, tabs and newlines.
fn plain(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| (0x20..0x7f).contains(b) || *b == b'\n' || *b == b'\t')
}

/// `bytes` as a terminal may show them (see the module's notes).
pub fn visible(bytes: &[u8]) -> Cow<'_, [u8]> {
    if plain(bytes) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    render(bytes, &mut out, false);
    Cow::Owned(out)
}

/// `text` without its control characters (tab and newline stay): for Zulip.
pub fn strip_controls(text: &str) -> String {
    text.chars().filter(|c| !is_control(*c)).collect()
}

/// A writer that shows what passes through it as [`visible`] does, a character cut between
/// two writes included.
pub struct Visible<W: Write> {
    inner: W,
    /// The start of a character whose end has not come yet.
    carry: Vec<u8>,
}

impl<W: Write> Visible<W> {
    pub fn new(inner: W) -> Visible<W> {
        Visible {
            inner,
            carry: Vec::new(),
        }
    }
}

impl<W: Write> Write for Visible<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(buf);
        let mut out = Vec::with_capacity(input.len() + 16);
        let taken = render(&input, &mut out, true);
        self.carry = input[taken..].to_vec();
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.carry.is_empty() {
            let mut out = Vec::new();
            render(&std::mem::take(&mut self.carry), &mut out, false);
            self.inner.write_all(&out)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for Visible<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(bytes: &[u8]) -> String {
        String::from_utf8(visible(bytes).into_owned()).unwrap()
    }

    #[test]
    fn every_control_but_tab_and_newline_is_shown_as_text() {
        assert_eq!(shown(b"plain\ttext\n"), "plain\ttext\n");
        // A clipboard write, a title, a hyperlink, a clear screen, hidden text.
        assert_eq!(
            shown(b"\x1b]52;c;ZXZpbA==\x07 \x1b]0;t\x07 \x1b]8;;http://x\x1b\\ \x1b[2J\x1b[8m"),
            "^[]52;c;ZXZpbA==^G ^[]0;t^G ^[]8;;http://x^[\\ ^[[2J^[[8m"
        );
        assert_eq!(shown(b"cr\r del\x7f nul\0"), "cr^M del^? nul^@");
        // C1 controls (CSI as one character), and bytes that are not UTF-8.
        assert_eq!(shown("a\u{9b}2J é".as_bytes()), "a\\u009b2J é");
        assert_eq!(shown(b"\xff\x9bx"), "\\xff\\x9bx");
        assert!(!shown(b"\x1b\x9b\x7f\x07")
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f));
    }

    #[test]
    fn text_that_would_be_shown_out_of_order_is_named() {
        // A right-to-left override makes "exe.txt" of "txt.exe"; isolates and separators.
        assert_eq!(shown("a\u{202e}b".as_bytes()), "a\\u202eb");
        assert_eq!(shown("\u{2066}x\u{2069}".as_bytes()), "\\u2066x\\u2069");
        assert_eq!(shown("l\u{2028}p\u{2029}".as_bytes()), "l\\u2028p\\u2029");
        assert_eq!(strip_controls("\u{200f}ok\u{61c}"), "ok");
    }

    #[test]
    fn a_character_cut_between_writes_is_joined() {
        let mut out = Vec::new();
        {
            let mut w = Visible::new(&mut out);
            let csi = "\u{9b}".as_bytes();
            w.write_all(&[b'a', csi[0]]).unwrap();
            w.write_all(&[csi[1], b'b', 0xc3]).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a\\u009bb\\xc3");
    }

    #[test]
    fn zulip_text_loses_its_controls() {
        assert_eq!(
            strip_controls("ok\u{1b}]52;c;eA==\u{7}\n\tnext\u{9b}\u{7f}"),
            "ok]52;c;eA==\n\tnext"
        );
    }
}
