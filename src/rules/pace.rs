//! Spending the account's quota like a budget (`LOOPER_QUOTA_PACE=even`): at a time `t` into
//! a window of length `L`, the loop may have used `(100 − reserve) × t / L` percent of it,
//! plus [`ALLOWANCE`] so that one run can always start at a window's beginning. The reserve
//! is the owner's share: `LOOPER_QUOTA_RESERVE_PERCENT`, and during the working hours
//! (`LOOPER_QUOTA_WORK_HOURS`, local time) `LOOPER_QUOTA_WORK_RESERVE_PERCENT`. Ahead of the
//! line the loop waits until the line catches up, or the window resets.
//!
//! Pure: the figures, the instant (Unix seconds) and the wall clock at an instant (`wall`:
//! the local date and time there, so that time zones and DST changes are the caller's) go
//! in, a verdict comes out.

use chrono::{Datelike, NaiveDateTime, Timelike};

use crate::model::Window;

/// Percentage points over the line that are always allowed: one run at a window's start.
pub const ALLOWANCE: f64 = 5.0;

/// The longest window taken for one (codex's are 5 hours and a week): 31 days.
pub const LONGEST_WINDOW: i64 = 31 * 24 * 3600;

/// The wall clock: the local date and time at an instant (Unix seconds).
pub type Wall<'a> = &'a dyn Fn(i64) -> NaiveDateTime;

/// Days and a time of day, local: `Mon-Fri 09:00-18:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkHours {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after midnight: from, and until (up to 24:00).
    from: u32,
    until: u32,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl WorkHours {
    /// Reads `<days> <HH:MM>-<HH:MM>`: days as `Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri` (a range
    /// may wrap: `Fri-Mon`) or `daily`; the time from before until, up to `24:00`.
    pub fn parse(text: &str) -> Result<WorkHours, String> {
        let shape = "expected days and hours such as \"Mon-Fri 09:00-18:00\"";
        let mut words = text.split_whitespace();
        let (Some(days_text), Some(hours), None) = (words.next(), words.next(), words.next())
        else {
            return Err(format!("{shape}, got {text:?}"));
        };
        let daily = days_text.eq_ignore_ascii_case("daily");
        let mut days = [daily; 7];
        for part in days_text.split(',').filter(|_| !daily) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (Some(a), Some(b)) = (day_number(a), day_number(b)) else {
                return Err(format!("{shape}: {part:?} is not a day or a range of days"));
            };
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (from, until) = hours
            .split_once('-')
            .and_then(|(f, u)| Some((clock_minutes(f)?, clock_minutes(u)?)))
            .ok_or_else(|| format!("{shape}: {hours:?} is not HH:MM-HH:MM"))?;
        if from >= until {
            return Err(format!(
                "{shape}: {hours:?} ends before it begins (hours over midnight are two ranges' work: not supported)"
            ));
        }
        Ok(WorkHours { days, from, until })
    }

    /// Whether the wall-clock time `at` is inside the working hours.
    pub fn contains(&self, at: NaiveDateTime) -> bool {
        let day = at.weekday().num_days_from_monday() as usize;
        let minute = at.hour() * 60 + at.minute();
        self.days[day] && (self.from..self.until).contains(&minute)
    }

    /// As people write it: `Mon,Tue,Wed,Thu,Fri 09:00-18:00`.
    pub fn text(&self) -> String {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days[*d])
            .map(|d| ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][d])
            .collect();
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        format!("{} {}-{}", days.join(","), hm(self.from), hm(self.until))
    }
}

fn day_number(name: &str) -> Option<usize> {
    let name = name.to_ascii_lowercase();
    DAYS.iter()
        .position(|full| name == *full || name == full[..3])
}

fn clock_minutes(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0)) && text.len() <= 5).then_some(h * 60 + m)
}

/// The pacing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `LOOPER_QUOTA_RESERVE_PERCENT`: the owner's share of each window (default 0).
    pub reserve: f64,
    /// `LOOPER_QUOTA_WORK_HOURS` and, during them, `LOOPER_QUOTA_WORK_RESERVE_PERCENT`.
    pub work: Option<(WorkHours, f64)>,
}

impl Policy {
    /// The reserve in force at wall-clock time `at`.
    pub fn reserve_at(&self, at: NaiveDateTime) -> f64 {
        match self.work {
            Some((hours, reserve)) if hours.contains(at) => reserve,
            _ => self.reserve,
        }
    }
}

/// One of the account's windows, as far as pacing needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub used: f64,
    pub seconds: i64,
    pub resets_at: i64,
}

impl Span {
    /// A window codex reported with its length and reset (`None`: one it did not, or one
    /// no account has: longer than [`LONGEST_WINDOW`], a use that is no percentage).
    pub fn of(w: &Window) -> Option<Span> {
        let seconds = i64::try_from(w.window_minutes?.checked_mul(60)?).ok()?;
        let fits = seconds > 0 && seconds <= LONGEST_WINDOW && w.used_percent.is_finite();
        fits.then_some(Span {
            used: w.used_percent.clamp(0.0, 100.0),
            seconds,
            resets_at: w.resets_at?,
        })
    }

    /// The window's start.
    pub fn start(&self) -> i64 {
        self.resets_at.saturating_sub(self.seconds)
    }
}

/// The account's windows that pacing can use, named as people say them.
pub fn spans(limits: &crate::model::RateLimits) -> Vec<(&'static str, Span)> {
    [("5-hour", &limits.primary), ("weekly", &limits.secondary)]
        .into_iter()
        .filter_map(|(name, w)| Some((name, Span::of(w.as_ref()?)?)))
        .collect()
}

/// The machine's wall clock (its `TZ`) at an instant.
pub fn local_wall(at: i64) -> NaiveDateTime {
    local(at).naive_local()
}

/// An instant in the machine's time zone.
pub fn local(at: i64) -> chrono::DateTime<chrono::Local> {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_opt(at, 0)
        .single()
        .unwrap_or_else(chrono::Local::now)
}

/// The owner's share, in words: `, 10% kept for you, 50% Mon-Fri 09:00-18:00`.
pub fn reserve_words(policy: &Policy) -> String {
    let mut words = String::new();
    if policy.reserve > 0.0 {
        words.push_str(&format!(", {}% kept for you", policy.reserve));
    }
    if let Some((hours, reserve)) = policy.work {
        words.push_str(&format!(", {reserve}% in {}", hours.text()));
    }
    words
}

/// The pace line: how much of `span`'s window the loop may have used at instant `at`.
pub fn line(policy: &Policy, span: &Span, at: i64, wall: Wall) -> f64 {
    let share = 100.0 - policy.reserve_at(wall(at));
    let t = at.saturating_sub(span.start()).clamp(0, span.seconds) as f64;
    (share * t / span.seconds as f64 + ALLOWANCE).min(share)
}

/// A window ahead of its pace: which, how far, and when the loop may go on.
#[derive(Debug, Clone, PartialEq)]
pub struct Ahead {
    pub name: &'static str,
    pub used: f64,
    pub line: f64,
    /// When the line reaches the use (or the window resets), Unix seconds.
    pub until: i64,
    /// Whether that is the window's reset (the line does not catch up before it).
    pub at_reset: bool,
}

/// The windows that are ahead of their pace at `now` (a window whose reset has passed is
/// a new one, not yet reported: never ahead; one whose reset is further than its length is
/// no window running now); the one that holds longest. At most 2,000 steps of a window.
pub fn ahead(
    policy: &Policy,
    windows: &[(&'static str, Span)],
    now: i64,
    wall: Wall,
) -> Option<Ahead> {
    windows
        .iter()
        // A reset more than a window away is no figure of a window now running.
        .filter(|(_, s)| s.resets_at > now && s.resets_at.saturating_sub(now) <= s.seconds)
        .filter_map(|(name, s)| {
            let at_now = line(policy, s, now, wall);
            if s.used <= at_now {
                return None;
            }
            // Forward in steps of at most a minute (a window's 2000th part when shorter):
            // the working hours move the line, so no closed form.
            let step = (s.seconds / 2000).clamp(1, 60);
            let mut t = now;
            while t < s.resets_at && line(policy, s, t, wall) < s.used {
                t += step;
            }
            Some(Ahead {
                name,
                used: s.used,
                line: at_now,
                until: t.min(s.resets_at),
                at_reset: t >= s.resets_at,
            })
        })
        .max_by_key(|a| a.until)
}

/// When a window is used up at the rate of the last hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Forecast {
    /// Fewer than two figures five minutes apart in the last hour of this window.
    Unknown,
    /// Used up at that instant (Unix seconds), before the reset.
    UsedUpAt(i64),
    /// Not before the reset: the use it reaches by then.
    NotBeforeReset(f64),
}

/// The forecast for `span` at `now` from earlier figures of the same window (`(at, used)`,
/// any order): the rate from the oldest figure of the last hour at least five minutes old.
pub fn forecast(span: &Span, earlier: &[(i64, f64)], now: i64) -> Forecast {
    let Some(&(then, used_then)) = earlier
        .iter()
        .filter(|(at, _)| *at >= now - 3600 && *at <= now - 300 && *at >= span.start())
        .min_by_key(|(at, _)| *at)
    else {
        return Forecast::Unknown;
    };
    let rate = (span.used - used_then) / now.saturating_sub(then) as f64;
    if rate <= 0.0 {
        return Forecast::NotBeforeReset(span.used);
    }
    let left = (100.0 - span.used).max(0.0);
    // A float too large for an i64 saturates; so does the sum.
    let at = now.saturating_add((left / rate).ceil() as i64);
    if at >= span.resets_at {
        let by_reset = span.used + rate * span.resets_at.saturating_sub(now) as f64;
        Forecast::NotBeforeReset(by_reset.clamp(0.0, 100.0))
    } else {
        Forecast::UsedUpAt(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Window;
    use chrono::{NaiveDate, TimeZone, Utc};

    const HOUR: i64 = 3600;

    fn utc(s: &str) -> i64 {
        Utc.from_utc_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
            .timestamp()
    }

    /// The wall clock of a zone `offset` hours east of UTC.
    fn fixed(offset: i64) -> impl Fn(i64) -> NaiveDateTime {
        move |at| {
            chrono::DateTime::from_timestamp(at + offset * HOUR, 0)
                .unwrap()
                .naive_utc()
        }
    }

    /// Central Europe around the spring DST change of 2027: UTC+1 until 2027-03-28 01:00 UTC
    /// (02:00 local becomes 03:00), UTC+2 after it; and the autumn one: UTC+2 until
    /// 2027-10-31 01:00 UTC (03:00 local becomes 02:00 again), UTC+1 after it.
    fn europe(at: i64) -> NaiveDateTime {
        let summer = at >= utc("2027-03-28 01:00") && at < utc("2027-10-31 01:00");
        fixed(if summer { 2 } else { 1 })(at)
    }

    fn plain(reserve: f64) -> Policy {
        Policy {
            reserve,
            work: None,
        }
    }

    fn week(used: f64, resets_at: i64) -> Span {
        Span {
            used,
            seconds: 7 * 24 * HOUR,
            resets_at,
        }
    }

    #[test]
    fn working_hours_are_read_as_people_write_them() {
        let w = WorkHours::parse("Mon-Fri 09:00-18:00").unwrap();
        assert_eq!(w.text(), "Mon,Tue,Wed,Thu,Fri 09:00-18:00");
        let w = WorkHours::parse("fri-mon 08:30-24:00").unwrap();
        assert_eq!(w.text(), "Mon,Fri,Sat,Sun 08:30-24:00");
        assert_eq!(
            WorkHours::parse("Monday,Wed 7:00-9:00").unwrap().text(),
            "Mon,Wed 07:00-09:00"
        );
        assert_eq!(
            WorkHours::parse("daily 00:00-01:00").unwrap().days,
            [true; 7]
        );
        for bad in [
            "",
            "Mon-Fri",
            "Mon-Fri 9-18",
            "Mon-Fri 18:00-09:00",
            "Mon-Fri 09:00-09:00",
            "Mo-Fr 09:00-18:00",
            "Mon-Fri 09:00-25:00",
            "Mon-Fri 09:60-10:00",
            "Mon-Fri 09:00-18:00 extra",
            "Mondays 09:00-18:00",
        ] {
            assert!(WorkHours::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn working_hours_hold_on_the_wall_clock() {
        let w = WorkHours::parse("Mon-Fri 09:00-18:00").unwrap();
        // Monday 2026-12-07.
        let at = |d: u32, h: u32, m: u32| {
            NaiveDate::from_ymd_opt(2026, 12, d)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
        };
        assert!(w.contains(at(7, 9, 0)));
        assert!(w.contains(at(11, 17, 59)));
        assert!(!w.contains(at(7, 8, 59)));
        assert!(!w.contains(at(7, 18, 0)));
        assert!(!w.contains(at(12, 12, 0)), "Saturday");
        // The same instant is work in Berlin and not in New York.
        let instant = utc("2026-12-07 09:30");
        assert!(w.contains(fixed(1)(instant)));
        assert!(!w.contains(fixed(-5)(instant)));
    }

    #[test]
    fn the_line_rises_evenly_to_the_owners_share() {
        let resets = utc("2026-12-14 00:00");
        let s = week(0.0, resets);
        let wall = fixed(0);
        let p = plain(20.0);
        assert_eq!(line(&p, &s, s.start(), &wall), ALLOWANCE);
        let half = line(&p, &s, s.start() + s.seconds / 2, &wall);
        assert!((half - (40.0 + ALLOWANCE)).abs() < 1e-9, "{half}");
        assert_eq!(line(&p, &s, resets, &wall), 80.0);
        assert_eq!(line(&p, &s, resets + HOUR, &wall), 80.0);
        assert_eq!(line(&p, &s, s.start() - HOUR, &wall), ALLOWANCE);
    }

    #[test]
    fn under_the_line_is_never_held_and_a_run_can_start_a_window() {
        let resets = utc("2026-12-14 00:00");
        let wall = fixed(0);
        let p = plain(0.0);
        // Just reset: a little use is the allowance's.
        let s = week(4.0, resets);
        assert_eq!(ahead(&p, &[("weekly", s)], s.start() + 60, &wall), None);
        // Halfway, under half.
        let s = week(49.0, resets);
        assert_eq!(
            ahead(&p, &[("weekly", s)], s.start() + s.seconds / 2, &wall),
            None
        );
    }

    #[test]
    fn ahead_waits_until_the_line_catches_up() {
        let resets = utc("2026-12-14 00:00");
        let wall = fixed(0);
        let p = plain(0.0);
        // A day into the week with 60 % used: the line reaches 60 % at (60 − 5) / 100 of
        // the week.
        let s = week(60.0, resets);
        let now = s.start() + 24 * HOUR;
        let a = ahead(&p, &[("weekly", s)], now, &wall).expect("ahead");
        let expect = s.start() + (0.55 * s.seconds as f64) as i64;
        assert!((a.until - expect).abs() <= 60, "{} vs {expect}", a.until);
        assert!(a.until >= expect);
        assert!(!a.at_reset);
        assert_eq!(a.name, "weekly");
        // The longer hold of two windows is the one said.
        let five = Span {
            used: 90.0,
            seconds: 5 * HOUR,
            resets_at: now + HOUR,
        };
        let a = ahead(&p, &[("5-hour", five), ("weekly", s)], now, &wall).unwrap();
        assert_eq!(a.name, "weekly");
    }

    #[test]
    fn a_reset_ends_every_wait() {
        let wall = fixed(0);
        let p = plain(30.0);
        let now = utc("2026-12-07 12:00");
        // 75 % used with an hour of the 5-hour window left: the line (70 %) never gets there.
        let s = Span {
            used: 75.0,
            seconds: 5 * HOUR,
            resets_at: now + HOUR,
        };
        let a = ahead(&p, &[("5-hour", s)], now, &wall).unwrap();
        assert_eq!((a.until, a.at_reset), (now + HOUR, true));
        // After the reset the figures are the old window's: no hold.
        assert_eq!(ahead(&p, &[("5-hour", s)], now + HOUR, &wall), None);
    }

    #[test]
    fn the_working_hours_keep_the_day_for_the_owner() {
        // Weekly window from Monday 00:00 UTC; work Mon-Fri 09:00-18:00 with 80 % kept.
        let hours = WorkHours::parse("Mon-Fri 09:00-18:00").unwrap();
        let p = Policy {
            reserve: 10.0,
            work: Some((hours, 80.0)),
        };
        let wall = fixed(0);
        let resets = utc("2026-12-14 00:00");
        let s = week(14.0, resets);
        let monday = s.start();
        // Monday 08:00: the night's line (90 % × 8/168 + 5 ≈ 9.3 %) is under 14 %; the
        // working day's is lower still; at 18:00 the evening's (14.6 %) is over it.
        let a = ahead(&p, &[("weekly", s)], monday + 8 * HOUR, &wall).unwrap();
        assert_eq!(a.until, monday + 18 * HOUR, "{}", a.until - monday);
        // Later in the week, at night: flat out (under the line).
        let friday_night = monday + 4 * 24 * HOUR + 22 * HOUR;
        assert_eq!(ahead(&p, &[("weekly", s)], friday_night, &wall), None);
        // With work in the owner's zone, UTC−5: 09:00 there is 14:00 UTC, 18:00 is 23:00.
        let ny = fixed(-5);
        let a = ahead(&p, &[("weekly", s)], monday + 14 * HOUR, &ny).unwrap();
        assert_eq!(a.until, monday + 23 * HOUR);
        // Without the working hours the same figures wait only for the night's line.
        let a = ahead(&plain(10.0), &[("weekly", s)], monday + 8 * HOUR, &wall).unwrap();
        assert!(
            (a.until - (monday + 16 * HOUR + 48 * 60)).abs() <= 60,
            "{}",
            a.until - monday
        );
    }

    #[test]
    fn dst_changes_move_the_working_hours_with_the_wall_clock() {
        // Daily 09:00-18:00 local the owner keeps everything (the line is flat at 0).
        let hours = WorkHours::parse("daily 09:00-18:00").unwrap();
        let p = Policy {
            reserve: 0.0,
            work: Some((hours, 100.0)),
        };
        // The week before the spring change. Saturday (UTC+1): held from 10:00 local until
        // 18:00 local, 17:00 UTC, when the night's line (86.5 %) passes 85 %.
        let s = week(85.0, utc("2027-03-29 00:00"));
        let a = ahead(&p, &[("weekly", s)], utc("2027-03-27 09:00"), &europe).unwrap();
        assert_eq!(a.until, utc("2027-03-27 17:00"));
        // Sunday, after the change (UTC+2): 18:00 local is 16:00 UTC.
        let s = week(97.0, utc("2027-03-29 00:00"));
        let a = ahead(&p, &[("weekly", s)], utc("2027-03-28 08:00"), &europe).unwrap();
        assert_eq!(a.until, utc("2027-03-28 16:00"));
        // And back in autumn: Sunday 18:00 local is 17:00 UTC again.
        let s = week(97.0, utc("2027-11-01 00:00"));
        let a = ahead(&p, &[("weekly", s)], utc("2027-10-31 09:00"), &europe).unwrap();
        assert_eq!(a.until, utc("2027-10-31 17:00"));
    }

    #[test]
    fn figures_no_account_has_hold_nothing_and_wedge_nothing() {
        let wall = fixed(0);
        let p = plain(10.0);
        let now = utc("2026-12-07 12:00");
        let w = |used: f64, minutes: u64, resets_at: i64| Window {
            used_percent: used,
            window_minutes: Some(minutes),
            resets_at: Some(resets_at),
        };
        // Windows of no account: too long, no use, reset at the end of time.
        assert_eq!(Span::of(&w(50.0, u64::MAX, now)), None);
        assert_eq!(Span::of(&w(50.0, 60 * 24 * 366, now)), None);
        assert_eq!(Span::of(&w(f64::NAN, 300, now)), None);
        assert_eq!(Span::of(&w(1e300, 300, now)).map(|s| s.used), Some(100.0));
        // A reset years away, or at the ends of i64: no hold, no endless stepping.
        for resets_at in [now + 10 * 365 * 86_400, i64::MAX, i64::MIN] {
            let s = Span::of(&w(99.0, 10_080, resets_at)).unwrap();
            assert_eq!(ahead(&p, &[("weekly", s)], now, &wall), None);
            let _ = line(&p, &s, now, &wall);
            let _ = forecast(&s, &[(now - 3000, 98.0)], now);
        }
        // A rate too small to reach 100 % within an i64.
        let s = Span {
            used: 1.0,
            seconds: 300,
            resets_at: i64::MAX,
        };
        let _ = forecast(&s, &[(now - 3000, 1.0 - 1e-300)], now);
    }

    #[test]
    fn the_forecast_follows_the_last_hour() {
        let now = utc("2026-12-10 12:00"); // Thursday
        let s = week(50.0, utc("2026-12-14 00:00"));
        assert_eq!(forecast(&s, &[], now), Forecast::Unknown);
        assert_eq!(forecast(&s, &[(now - 60, 49.0)], now), Forecast::Unknown);
        // 2 points an hour: 25 hours left.
        let f = forecast(&s, &[(now - HOUR, 48.0), (now - 600, 49.9)], now);
        match f {
            Forecast::UsedUpAt(at) => assert!((at - (now + 25 * HOUR)).abs() <= 1, "{f:?}"),
            other => panic!("{other:?}"),
        }
        // Slower: not before the reset (84 hours away at 0.1 a hour: 58.4 %).
        let f = forecast(&s, &[(now - HOUR, 49.9)], now);
        match f {
            Forecast::NotBeforeReset(p) => assert!((p - 58.4).abs() < 1e-6, "{p}"),
            other => panic!("{other:?}"),
        }
        // Figures of the window before this one do not count.
        let young = Span {
            used: 10.0,
            seconds: 5 * HOUR,
            resets_at: now + 5 * HOUR - 600,
        };
        assert_eq!(
            forecast(&young, &[(now - 1800, 80.0)], now),
            Forecast::Unknown
        );
    }
}
