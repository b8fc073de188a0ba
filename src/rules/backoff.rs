//! Autopoll's policy: what a run's end means for the next start (a crash loop backs off,
//! codex's usage limit pauses — kept by [`crate::state::holds`] with the other pauses —, a
//! healthy run resets the back-off) and whether a tick may start a run. Pure: the state, the event and the time go in, a verdict comes out; the caller
//! logs, announces and starts. Nothing here reads a clock or a file.

use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use crate::rules::usage_limit::UsageLimit;

/// A run that exits non-zero sooner than this after its start counts as a crash.
pub const QUICK_EXIT: Duration = Duration::from_secs(60);
/// Crashes in a row before autopoll backs off.
pub const CRASH_LOOP_THRESHOLD: u32 = 3;
/// The back-off starts at the poll interval, but never below this: a failing codex is not
/// restarted more than a handful of times a minute, whatever the settings.
pub const MIN_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The settings the policy decides by.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `LOOPER_IDLE_POLL_SECONDS`: the first back-off's length (at least [`MIN_BACKOFF`]).
    pub idle_poll: Duration,
    /// How long after the reset codex named autopoll waits before it starts again.
    pub usage_limit_margin: Duration,
}

/// What autopoll remembers between runs.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Crashes in a row (quick non-zero exits not caused by Looper or anyone else).
    crashes: u32,
    backoff_until: Option<Instant>,
    /// Whether the current crash loop was announced already.
    announced: bool,
    /// When the next tick is due, for `/status`.
    next_tick: Option<Instant>,
}

/// A run's end, as the policy sees it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// `None`: not known (a run adopted after a restart): no crash either way.
    pub return_code: Option<i32>,
    pub elapsed: Duration,
    /// Its end has a reason other than codex failing: Looper or someone else stopped it,
    /// or codex's usage limit ended it.
    pub explained: bool,
    /// Codex's usage limit, when that is how it ended.
    pub usage_limit: Option<UsageLimit>,
}

/// A crash loop's back-off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Crashes in a row.
    pub crashes: u32,
    pub length: Duration,
    /// The first back-off of this loop, to be said once.
    pub new: bool,
}

/// What a run's end changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdict {
    /// A crash loop backs off.
    pub backoff: Option<Backoff>,
    /// A healthy run ended a crash count of this many.
    pub reset_after: Option<u32>,
    /// Codex's usage limit pauses autopoll until then (its reset plus the margin).
    pub pause_until: Option<DateTime<Local>>,
    /// The run counted as a crash (a quick non-zero exit nobody asked for).
    pub crash: bool,
}

/// What `/status` and `/metrics` show of the policy.
#[derive(Debug, Clone)]
pub struct View {
    pub crashes: u32,
    /// How long the back-off still lasts (none, or over: `None`).
    pub backoff_left: Option<Duration>,
    pub next_tick_in: Option<Duration>,
}

impl Policy {
    /// The verdict on a run's end at `now`.
    pub fn on_end(&mut self, end: &RunEnd, settings: Settings, now: Instant) -> Verdict {
        let mut verdict = Verdict::default();
        let quick = end.elapsed < QUICK_EXIT;
        if let Some(limit) = &end.usage_limit {
            // Not a crash: codex will not work before the reset, whatever we do.
            let margin =
                chrono::Duration::from_std(settings.usage_limit_margin).unwrap_or_default();
            verdict.pause_until = Some(limit.resets_at + margin);
        } else if quick && end.explained {
            // Stopped on purpose: says nothing about codex's health.
        } else if quick && end.return_code.is_some_and(|rc| rc != 0) {
            return self.crashed(settings, now);
        } else if self.crashes > 0 || self.backoff_until.is_some() {
            verdict.reset_after = Some(self.crashes);
            self.crashes = 0;
            self.backoff_until = None;
            self.announced = false;
        }
        verdict
    }

    /// The verdict on a start of autopoll's that failed before any run (the run log could
    /// not be made: a full disk): a crash, as a run that dies at once would be.
    pub fn start_failed(&mut self, settings: Settings, now: Instant) -> Verdict {
        self.crashed(settings, now)
    }

    fn crashed(&mut self, settings: Settings, now: Instant) -> Verdict {
        let mut verdict = Verdict {
            crash: true,
            ..Verdict::default()
        };
        self.crashes += 1;
        if self.crashes >= CRASH_LOOP_THRESHOLD {
            let base = settings.idle_poll.max(MIN_BACKOFF);
            let doublings = (self.crashes - CRASH_LOOP_THRESHOLD).min(16);
            let backoff = base.saturating_mul(1 << doublings).min(MAX_BACKOFF);
            self.backoff_until = Some(now + backoff);
            let new = !self.announced;
            self.announced = true;
            verdict.backoff = Some(Backoff {
                crashes: self.crashes,
                length: backoff,
                new,
            });
        }
        verdict
    }

    /// Whether autopoll backs off from a crash loop at `now` (a tick starts nothing).
    pub fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|until| now < until)
    }

    /// Notes when the next tick is due.
    pub fn next_tick_at(&mut self, when: Instant) {
        self.next_tick = Some(when);
    }

    /// What outlives a restart: the crashes in a row and how long the back-off still
    /// lasts at `now` (none when there is nothing to remember).
    pub fn remembered(&self, now: Instant) -> Option<(u32, Duration)> {
        let left = self
            .backoff_until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        (self.crashes > 0).then_some((self.crashes, left))
    }

    /// The policy a restarted Looper goes on with: `crashes` in a row, backing off for
    /// `left` more (at most [`MAX_BACKOFF`]), the back-off said already.
    pub fn restored(crashes: u32, left: Duration, now: Instant) -> Policy {
        Policy {
            crashes,
            backoff_until: (!left.is_zero()).then(|| now + left.min(MAX_BACKOFF)),
            announced: crashes >= CRASH_LOOP_THRESHOLD,
            next_tick: None,
        }
    }

    pub fn view(&self, now: Instant) -> View {
        View {
            crashes: self.crashes,
            backoff_left: self
                .backoff_until
                .filter(|until| *until > now)
                .map(|until| until - now),
            next_tick_in: self.next_tick.map(|t| t.saturating_duration_since(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        idle_poll: Duration::from_secs(300),
        usage_limit_margin: Duration::from_secs(60),
    };

    fn end(return_code: i32, secs: u64) -> RunEnd {
        RunEnd {
            return_code: Some(return_code),
            elapsed: Duration::from_secs(secs),
            explained: false,
            usage_limit: None,
        }
    }

    #[test]
    fn quick_crashes_back_off_doubling_and_are_announced_once() {
        let (mut p, now) = (Policy::default(), Instant::now());
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| p.on_end(&end(1, 2), SETTINGS, now))
            .collect();
        assert_eq!(verdicts[0].backoff, None);
        assert_eq!(verdicts[1].backoff, None);
        let b = |crashes, secs, new| {
            Some(Backoff {
                crashes,
                length: Duration::from_secs(secs),
                new,
            })
        };
        assert_eq!(verdicts[2].backoff, b(3, 300, true));
        assert_eq!(verdicts[3].backoff, b(4, 600, false));
        assert_eq!(verdicts[4].backoff, b(5, 1200, false));
        assert!(p.backing_off(now));
        assert!(!p.backing_off(now + Duration::from_secs(1201)));
    }

    #[test]
    fn the_backoff_has_a_floor_and_a_ceiling() {
        let fast = Settings {
            idle_poll: Duration::from_millis(100),
            ..SETTINGS
        };
        let (mut p, now) = (Policy::default(), Instant::now());
        let mut last = None;
        for _ in 0..40 {
            last = p.on_end(&end(1, 0), fast, now).backoff;
        }
        assert_eq!(last.map(|b| b.length), Some(MAX_BACKOFF));
        let mut p = Policy::default();
        for _ in 0..3 {
            last = p.on_end(&end(1, 0), fast, now).backoff;
        }
        assert_eq!(last.map(|b| b.length), Some(MIN_BACKOFF));
    }

    #[test]
    fn a_stop_is_no_crash_and_a_healthy_run_resets() {
        let (mut p, now) = (Policy::default(), Instant::now());
        for _ in 0..3 {
            p.on_end(&end(1, 1), SETTINGS, now);
        }
        let stopped = RunEnd {
            explained: true,
            ..end(-15, 1)
        };
        assert_eq!(p.on_end(&stopped, SETTINGS, now), Verdict::default());
        assert_eq!(p.view(now).crashes, 3);
        // A slow failure is no crash either: it resets the count.
        let v = p.on_end(&end(1, 120), SETTINGS, now);
        assert_eq!(v.reset_after, Some(3));
        assert_eq!(p.view(now).crashes, 0);
        assert!(p.view(now).backoff_left.is_none());
        assert!(!p.backing_off(now));
        // The next loop is announced again.
        for _ in 0..3 {
            last_announce(&mut p, now);
        }
        assert!(matches!(
            p.on_end(&end(1, 1), SETTINGS, now).backoff,
            Some(Backoff {
                crashes: 4,
                new: false,
                ..
            })
        ));
    }

    fn last_announce(p: &mut Policy, now: Instant) -> Option<bool> {
        p.on_end(&end(1, 1), SETTINGS, now).backoff.map(|b| b.new)
    }

    #[test]
    fn the_usage_limit_pauses_until_its_reset_and_is_no_crash() {
        let (mut p, now, local) = (Policy::default(), Instant::now(), Local::now());
        let resets_at = local + chrono::Duration::hours(2);
        let limited = RunEnd {
            explained: true,
            usage_limit: Some(UsageLimit {
                resets_at,
                stated: true,
            }),
            ..end(1, 5)
        };
        let until = resets_at + chrono::Duration::seconds(60);
        assert_eq!(p.on_end(&limited, SETTINGS, now).pause_until, Some(until));
        assert_eq!(p.view(now).crashes, 0, "a usage limit is no crash");
        assert!(!p.backing_off(now), "the pause is the loop state's");
    }
}
