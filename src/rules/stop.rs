//! When the loop should stop: done (the TODO list has nothing open after a run that exited
//! 0), stuck (runs in a row that changed nothing) and over budget (runs or tokens a day,
//! the account's rate-limit use). Pure: the rows, the report and the time go in, a verdict
//! comes out; [`crate::autoloop::judge`] holds the loop by it, logs and says it.

use chrono::{DateTime, Local, NaiveTime, TimeZone};

use crate::model::{HoldReason, Report, Row, StopReason, Todo};

/// The longest streak of runs that changed nothing that is kept, and so the most
/// `LOOPER_NO_PROGRESS_RUNS` may ask for.
pub const MAX_NO_PROGRESS_RUNS: u32 = 100;

/// The stop rules' settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// `LOOPER_NO_PROGRESS_RUNS` (default 3; `0`: off).
    pub no_progress_runs: u32,
    /// `LOOPER_MAX_RUNS_PER_DAY`.
    pub max_runs_per_day: Option<u64>,
    /// `LOOPER_MAX_TOKENS_PER_DAY`.
    pub max_tokens_per_day: Option<u64>,
    /// `LOOPER_PAUSE_AT_PERCENT`.
    pub pause_at_percent: Option<f64>,
    /// `LOOPER_QUOTA_PACE=even` and its reserves.
    pub pace: Option<super::pace::Policy>,
}

/// A budget that is reached: which, what it says, and when it clears.
#[derive(Debug, Clone, PartialEq)]
pub struct Over {
    pub reason: HoldReason,
    pub detail: String,
    pub until: DateTime<Local>,
}

/// The machine's next local midnight after `now` (a day without one, at a DST change,
/// takes the first instant of the next day that exists).
pub fn next_midnight(now: DateTime<Local>) -> DateTime<Local> {
    let mut day = now.date_naive();
    for _ in 0..3 {
        day = day.succ_opt().unwrap_or(day);
        let midnight = day.and_time(NaiveTime::MIN);
        if let Some(t) = Local.from_local_datetime(&midnight).earliest() {
            return t;
        }
        for hour in 1..3 {
            if let Some(t) = Local
                .from_local_datetime(&(midnight + chrono::Duration::hours(hour)))
                .earliest()
            {
                return t;
            }
        }
    }
    now + chrono::Duration::days(1)
}

fn started_today(row: &Row, now: DateTime<Local>) -> bool {
    row.started_at.local().date_naive() == now.date_naive()
}

/// The first budget of `rules` that `rows` (one workspace's, any order) reach at `now`.
/// Runs started before `counted_from` (the end of the last daily pause) count toward no
/// daily budget: that day is over, in whatever time zone it was counted.
pub fn budget_over(
    rules: &Rules,
    rows: &[Row],
    now: DateTime<Local>,
    counted_from: Option<DateTime<Local>>,
) -> Option<Over> {
    let today: Vec<&Row> = rows
        .iter()
        .filter(|r| started_today(r, now))
        .filter(|r| counted_from.is_none_or(|from| r.started_at.local() >= from))
        .collect();
    if let Some(max) = rules.max_runs_per_day {
        let n = today.len() as u64;
        if n >= max {
            return Some(Over {
                reason: HoldReason::MaxRunsPerDay,
                detail: format!(
                    "{n} run{} started today, LOOPER_MAX_RUNS_PER_DAY={max}",
                    if n == 1 { "" } else { "s" }
                ),
                until: next_midnight(now),
            });
        }
    }
    if let Some(max) = rules.max_tokens_per_day {
        let used: u64 = today
            .iter()
            .filter_map(|r| r.report.tokens.as_ref())
            .map(|t| t.used)
            .fold(0, u64::saturating_add);
        if used >= max {
            return Some(Over {
                reason: HoldReason::MaxTokensPerDay,
                detail: format!(
                    "{} tokens today reach LOOPER_MAX_TOKENS_PER_DAY={}",
                    crate::report::thousands(used),
                    crate::report::thousands(max)
                ),
                until: next_midnight(now),
            });
        }
    }
    let percent = rules.pause_at_percent?;
    // The newest figures codex saw.
    let limits = rows
        .iter()
        .filter(|r| r.report.rate_limits.is_some())
        .max_by(|a, b| a.ended_at.cmp(&b.ended_at))?
        .report
        .rate_limits
        .clone()?;
    [("5-hour", &limits.primary), ("weekly", &limits.secondary)]
        .into_iter()
        .filter_map(|(name, w)| {
            let w = w.as_ref()?;
            let until = Local.timestamp_opt(w.resets_at?, 0).single()?;
            (w.used_percent >= percent && until > now).then(|| Over {
                reason: HoldReason::RateLimitPercent,
                detail: format!(
                    "codex reports {:.0}% of the {name} window used, at or over LOOPER_PAUSE_AT_PERCENT={percent}",
                    w.used_percent
                ),
                until,
            })
        })
        .max_by_key(|o| o.until)
}

/// Whether a run's end finishes the loop by its TODO list: it exited 0 and the list has
/// items, none of them open. (A list with no items at all is not a finished one: more
/// likely a file emptied by mistake.)
pub fn todo_done(return_code: Option<i32>, todo: Option<Todo>) -> bool {
    return_code == Some(0) && todo.is_some_and(|t| t.open == 0 && t.done > 0)
}

/// Whether a run counts for the stuck rule: it worked on the task (it reached the model)
/// and nothing else ended it (a usage limit, a person, another trigger, a shutdown: those
/// say nothing of its progress). A hung run counts.
pub fn counts_for_stuck(stop_reason: Option<StopReason>, report: &Report) -> bool {
    let stopped = stop_reason.is_some_and(StopReason::says_nothing_of_progress);
    let reached_model = report.tokens.is_some() || report.last_message.is_some();
    !stopped && reached_model
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, RateLimits, Stamp, Tokens, Trigger, Window};

    fn row(started: DateTime<Local>, tokens: Option<u64>) -> Row {
        Row {
            run_id: "r".into(),
            request_id: "r".into(),
            trigger: Trigger::Http,
            pid: 1,
            workspace: "/w".into(),
            log_path: "/l".into(),
            started_at: Stamp::from(started),
            ended_at: Some(Stamp::from(started)),
            return_code: Some(0),
            duration_seconds: Some(1.0),
            stop_reason: None,
            outcome: Some(Outcome::Ok),
            report: Report {
                tokens: tokens.map(|used| Tokens {
                    used,
                    ..Tokens::default()
                }),
                ..Report::default()
            },
        }
    }

    fn at(s: &str) -> DateTime<Local> {
        Local
            .from_local_datetime(
                &chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap(),
            )
            .earliest()
            .unwrap()
    }

    #[test]
    fn runs_a_day_pause_until_midnight_and_clear_then() {
        let rules = Rules {
            max_runs_per_day: Some(3),
            ..Rules::default()
        };
        let now = at("2026-12-02 15:00");
        let rows: Vec<Row> = (0..3)
            .map(|h| row(at(&format!("2026-12-02 1{h}:00")), None))
            .collect();
        let over = budget_over(&rules, &rows[..2], now, None);
        assert_eq!(over, None);
        let over = budget_over(&rules, &rows, now, None).expect("over");
        assert_eq!(over.reason, HoldReason::MaxRunsPerDay);
        assert_eq!(over.until, at("2026-12-03 00:00"));
        // Yesterday's runs do not count: the day turned, the budget cleared.
        assert_eq!(
            budget_over(&rules, &rows, at("2026-12-03 00:00"), None),
            None
        );
        // Nor do runs before the end of the last pause, whatever day a time zone makes of
        // them (a restart in a zone where that day is not over yet).
        let later = at("2026-12-02 15:30");
        assert_eq!(
            budget_over(&rules, &rows, later, Some(at("2026-12-02 15:10"))),
            None
        );
    }

    #[test]
    fn tokens_a_day_count_what_the_runs_recorded() {
        let rules = Rules {
            max_tokens_per_day: Some(20_000),
            ..Rules::default()
        };
        let now = at("2026-12-02 23:59");
        let mut rows = vec![row(at("2026-12-02 08:00"), Some(11_023))];
        rows.push(row(at("2026-12-01 08:00"), Some(50_000)));
        rows.push(row(at("2026-12-02 09:00"), None));
        assert_eq!(budget_over(&rules, &rows, now, None), None);
        rows.push(row(at("2026-12-02 10:00"), Some(9_000)));
        let over = budget_over(&rules, &rows, now, None).expect("over");
        assert_eq!(over.reason, HoldReason::MaxTokensPerDay);
        assert!(over.detail.contains("20,023 tokens"), "{}", over.detail);
        assert_eq!(over.until, at("2026-12-03 00:00"));
    }

    #[test]
    fn the_rate_limit_use_pauses_until_its_window_resets() {
        let rules = Rules {
            pause_at_percent: Some(80.0),
            ..Rules::default()
        };
        let now = at("2026-12-02 12:00");
        let reset = at("2026-12-02 14:30");
        let mut r = row(at("2026-12-02 11:00"), Some(1));
        r.report.rate_limits = Some(RateLimits {
            primary: Some(Window {
                used_percent: 85.0,
                window_minutes: Some(300),
                resets_at: Some(reset.timestamp()),
            }),
            secondary: Some(Window {
                used_percent: 20.0,
                window_minutes: Some(10080),
                resets_at: Some(reset.timestamp() + 86_400),
            }),
        });
        let over = budget_over(&rules, std::slice::from_ref(&r), now, None).expect("over");
        assert_eq!(
            (over.reason, over.until),
            (HoldReason::RateLimitPercent, reset)
        );
        assert!(
            over.detail.contains("85% of the 5-hour window"),
            "{}",
            over.detail
        );
        // Past the reset the figures are old: no pause.
        assert_eq!(budget_over(&rules, &[r], reset, None), None);
    }

    #[test]
    fn only_an_exit_0_with_every_item_done_finishes() {
        let done = Some(Todo { open: 0, done: 4 });
        assert!(todo_done(Some(0), done));
        assert!(!todo_done(Some(1), done));
        assert!(!todo_done(Some(-15), done));
        assert!(!todo_done(Some(0), Some(Todo { open: 1, done: 3 })));
        assert!(!todo_done(Some(0), Some(Todo { open: 0, done: 0 })));
        assert!(!todo_done(Some(0), None));
    }

    #[test]
    fn stops_and_runs_that_never_reached_the_model_count_for_nothing() {
        let worked = Report {
            tokens: Some(Tokens::default()),
            ..Report::default()
        };
        assert!(counts_for_stuck(None, &worked));
        assert!(counts_for_stuck(Some(StopReason::HandedOff), &worked));
        assert!(counts_for_stuck(Some(StopReason::Hung), &worked));
        for reason in [
            StopReason::UsageLimit,
            StopReason::Shutdown,
            StopReason::External,
            StopReason::Replaced,
            StopReason::Stopped,
        ] {
            assert!(!counts_for_stuck(Some(reason), &worked), "{reason:?}");
        }
        assert!(!counts_for_stuck(None, &Report::default()));
    }

    #[test]
    fn midnight_is_the_next_local_one() {
        assert_eq!(
            next_midnight(at("2026-12-02 00:00")),
            at("2026-12-03 00:00")
        );
        assert_eq!(
            next_midnight(at("2026-12-31 23:59")),
            at("2027-01-01 00:00")
        );
    }
}
