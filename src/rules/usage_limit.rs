//! Codex's usage limit: accounts run into it every few hours, and `codex exec` then prints
//! (on stderr, twice) `ERROR: You’ve hit your usage limit. ... try again at 10:44 PM.` and
//! exits 1. This reads that error at the end of a run's output and the reset time it names,
//! so that autopoll waits for the reset instead of restarting codex into the same wall.

use chrono::{DateTime, Datelike, Duration, Local, NaiveDate, NaiveTime, TimeZone};

/// How long to wait when codex names no readable reset time (`Try again later.`).
pub const UNKNOWN_RESET_WAIT: Duration = Duration::minutes(30);
/// Codex prints whole minutes: a time up to this far in the past is still today's.
const PAST_TOLERANCE: Duration = Duration::minutes(5);

/// The usage limit a run ran into.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageLimit {
    /// When the limit resets, as codex said (or now plus 30 minutes when it did not say).
    pub resets_at: DateTime<Local>,
    /// Whether codex named the time.
    pub stated: bool,
}

/// Finds codex's usage-limit error among the last lines of a run's output (`tail`) and
/// reads its reset time, relative to `now`.
pub fn detect(tail: &str, now: DateTime<Local>) -> Option<UsageLimit> {
    let line = tail.lines().rev().take(20).find(|l| {
        let l = l.to_ascii_lowercase().replace('\u{2019}', "'");
        l.contains("hit your usage limit")
    })?;
    let lower = line.to_ascii_lowercase();
    let reset = lower
        .find("try again at ")
        .map(|at| &line[at + "try again at ".len()..])
        .and_then(|rest| parse_reset(rest.trim().trim_end_matches('.'), now));
    Some(match reset {
        Some(resets_at) => UsageLimit {
            resets_at,
            stated: true,
        },
        None => UsageLimit {
            resets_at: now + UNKNOWN_RESET_WAIT,
            stated: false,
        },
    })
}

/// `7:13 PM` (today, or tomorrow when more than 5 minutes past) or `Sep 30th, 2026 4:05 PM`.
fn parse_reset(text: &str, now: DateTime<Local>) -> Option<DateTime<Local>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [time, meridiem] => {
            let t = parse_clock(time, meridiem)?;
            let today = local(now.date_naive(), t)?;
            if today < now - PAST_TOLERANCE {
                local(now.date_naive().succ_opt()?, t)
            } else {
                Some(today)
            }
        }
        [month, day, year, time, meridiem] => {
            let month = month_number(month)?;
            let day: u32 = day
                .trim_end_matches(',')
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .parse()
                .ok()?;
            let year: i32 = year.trim_end_matches(',').parse().ok()?;
            let date = NaiveDate::from_ymd_opt(year, month, day)?;
            local(date, parse_clock(time, meridiem)?)
        }
        _ => None,
    }
}

/// `4:05` with `PM` as a time of day.
fn parse_clock(time: &str, meridiem: &str) -> Option<NaiveTime> {
    let (h, m) = time.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if !(1..=12).contains(&h) {
        return None;
    }
    let h = match meridiem.to_ascii_uppercase().as_str() {
        "AM" => h % 12,
        "PM" => h % 12 + 12,
        _ => return None,
    };
    NaiveTime::from_hms_opt(h, m, 0)
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let name = name.to_ascii_lowercase();
    let prefix = name.get(..3)?;
    MONTHS
        .iter()
        .position(|m| *m == prefix)
        .map(|i| i as u32 + 1)
}

/// A local date and time as an instant (the earlier one where a clock change repeats it).
fn local(date: NaiveDate, time: NaiveTime) -> Option<DateTime<Local>> {
    Local.from_local_datetime(&date.and_time(time)).earliest()
}

/// How codex prints a reset time of today (`7:13 PM`), for tests and stand-ins.
pub fn clock_text(at: DateTime<Local>) -> String {
    at.format("%-I:%M %p").to_string()
}

/// How codex prints a reset time of another day (`Sep 30th, 2026 4:05 PM`).
pub fn date_text(at: DateTime<Local>) -> String {
    let day = at.day();
    let suffix = match (day % 10, day % 100) {
        (1, n) if n != 11 => "st",
        (2, n) if n != 12 => "nd",
        (3, n) if n != 13 => "rd",
        _ => "th",
    };
    format!(
        "{} {day}{suffix}, {}",
        at.format("%b"),
        at.format("%Y %-I:%M %p")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Local> {
        Local
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
    }

    const URLS: &str = "Upgrade to Pro (https://chatgpt.com/explore/pro), visit https://chatgpt.com/settings/usage to purchase more credits or";

    #[test]
    fn reads_both_forms_and_both_apostrophes() {
        let now = at(2026, 11, 25, 18, 0);
        let out = format!(
            "work\nERROR: You\u{2019}ve hit your usage limit. {URLS} try again at 7:13 PM.\n"
        );
        assert_eq!(
            detect(&out, now),
            Some(UsageLimit {
                resets_at: at(2026, 11, 25, 19, 13),
                stated: true
            })
        );
        let out =
            "ERROR: You've hit your usage limit. Visit x or try again at Sep 30th, 2027 4:05 AM.";
        assert_eq!(detect(out, now).unwrap().resets_at, at(2027, 9, 30, 4, 5));
        let out = "ERROR: You've hit your usage limit. Try again later.";
        let later = detect(out, now).unwrap();
        assert_eq!(
            (later.resets_at, later.stated),
            (now + UNKNOWN_RESET_WAIT, false)
        );
        let out = "ERROR: You've hit your usage limit. try again at soon-ish.";
        assert!(!detect(out, now).unwrap().stated);
        assert_eq!(detect("ERROR: something else\n", now), None);
        assert_eq!(clock_text(at(2026, 11, 25, 19, 13)), "7:13 PM");
        assert_eq!(date_text(at(2027, 9, 30, 4, 5)), "Sep 30th, 2027 4:05 AM");
        assert_eq!(date_text(at(2027, 9, 22, 12, 5)), "Sep 22nd, 2027 12:05 PM");
    }

    /// The forms codex 0.171.0's source holds.
    #[test]
    fn reads_the_forms_of_codex_0_171() {
        let now = at(2026, 12, 1, 18, 0);
        let stated = |line: &str| {
            let l = detect(line, now).unwrap_or_else(|| panic!("not a usage limit: {line}"));
            assert!(l.stated, "{line}");
            l.resets_at
        };
        assert_eq!(
            stated("ERROR: You\u{2019}ve hit your usage limit. Try again at 10:20 PM."),
            at(2026, 12, 1, 22, 20)
        );
        assert_eq!(
            stated("ERROR: You've hit your usage limit. Upgrade to Plus to continue using Codex (https://chatgpt.com/explore/plus), or try again at Dec 2nd, 2026 2:20 AM."),
            at(2026, 12, 2, 2, 20)
        );
        assert_eq!(
            stated("ERROR: You've hit your usage limit for gpt-5.5-codex. Switch to another model now, or try again at 7:05 AM."),
            at(2026, 12, 2, 7, 5)
        );
        assert_eq!(
            stated("ERROR: You\u{2019}ve hit your usage limit for o4-mini. Switch to another model now, or try again at Dec 3rd, 2026 12:00 PM."),
            at(2026, 12, 3, 12, 0)
        );
        // No time at all (workspace credits, spend caps): the default wait, not stated.
        for line in [
            "ERROR: You've hit your usage limit. To get more access now, send a request to your admin or try again later.",
            "ERROR: You\u{2019}ve hit your usage limit. Visit https://chatgpt.com/settings/usage to purchase more credits",
            "ERROR: You've hit your usage limit.",
        ] {
            let l = detect(line, now).unwrap_or_else(|| panic!("not a usage limit: {line}"));
            assert_eq!((l.resets_at, l.stated), (now + UNKNOWN_RESET_WAIT, false), "{line}");
        }
    }

    #[test]
    fn a_time_well_past_is_tomorrows() {
        let now = at(2026, 11, 25, 23, 50);
        let line = |t: &str| format!("You've hit your usage limit. try again at {t}.");
        // Midnight and noon.
        assert_eq!(
            detect(&line("12:10 AM"), now).unwrap().resets_at,
            at(2026, 11, 26, 0, 10)
        );
        assert_eq!(
            detect(&line("12:00 PM"), now).unwrap().resets_at,
            at(2026, 11, 26, 12, 0)
        );
        // Codex prints whole minutes: 23:47 at 23:50 is today's, just passed.
        assert_eq!(
            detect(&line("11:47 PM"), now).unwrap().resets_at,
            at(2026, 11, 25, 23, 47)
        );
        assert_eq!(
            detect(&line("11:40 PM"), now).unwrap().resets_at,
            at(2026, 11, 26, 23, 40)
        );
        assert!(!detect(&line("13:10 PM"), now).unwrap().stated);
    }
}
