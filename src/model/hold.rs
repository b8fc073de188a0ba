//! What holds a workspace's loop: it is finished (the task is done) or paused (stuck, over a
//! budget, at codex's usage limit), since when, until when, and why in words for people.

use serde::{Deserialize, Serialize};

use super::Stamp;

/// Whether a held loop is done or waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// The task is done: nothing starts until an operator resumes the loop.
    Finished,
    /// The loop waits: for its time to pass, or for an operator.
    Paused,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Finished => "finished",
            HoldState::Paused => "paused",
        }
    }
}

/// Where a workspace's loop stands (`/status`'s `loop.state`): held, or not (a run lives,
/// or none does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopState {
    Running,
    Idle,
    Paused,
    Finished,
}

impl LoopState {
    /// The state of a loop held by `hold`, else running or idle by whether a run lives.
    pub fn of(hold: Option<HoldState>, run_live: bool) -> LoopState {
        match hold {
            Some(HoldState::Finished) => LoopState::Finished,
            Some(HoldState::Paused) => LoopState::Paused,
            None if run_live => LoopState::Running,
            None => LoopState::Idle,
        }
    }
}

/// Why a loop is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The TODO file has no open item after a run that exited 0.
    TodoDone,
    /// The newest run handed off with `loop_done`.
    LoopDone,
    /// `LOOPER_NO_PROGRESS_RUNS` runs in a row changed nothing.
    NoProgress,
    MaxRunsPerDay,
    MaxTokensPerDay,
    /// The account's rate-limit use reached `LOOPER_PAUSE_AT_PERCENT`.
    RateLimitPercent,
    /// Codex's usage limit, until its reset.
    UsageLimit,
    /// The account's use runs ahead of its pace (`LOOPER_QUOTA_PACE`), until the pace line
    /// catches up or the window resets.
    QuotaPace,
    /// A state file was no state of Looper's (set aside): what held the loops may be lost,
    /// so every loop waits for the operator.
    StateLost,
    /// The operator paused the loop (`looper pause`) or finished it (`--finish`, or a
    /// `--done` of theirs).
    Operator,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::TodoDone => "todo_done",
            HoldReason::LoopDone => "loop_done",
            HoldReason::NoProgress => "no_progress",
            HoldReason::MaxRunsPerDay => "max_runs_per_day",
            HoldReason::MaxTokensPerDay => "max_tokens_per_day",
            HoldReason::RateLimitPercent => "rate_limit_percent",
            HoldReason::UsageLimit => "usage_limit",
            HoldReason::QuotaPace => "quota_pace",
            HoldReason::StateLost => "state_lost",
            HoldReason::Operator => "operator",
        }
    }

    /// A budget counted by the local day (its pause ends at midnight).
    pub fn is_daily(self) -> bool {
        matches!(
            self,
            HoldReason::MaxRunsPerDay | HoldReason::MaxTokensPerDay
        )
    }

    /// A hold that a hand-off is told to wait out (`429`): a budget's pause, or the
    /// operator's; the others are `409`.
    pub fn asks_to_wait(self, state: HoldState) -> bool {
        self.is_budget() || (self == HoldReason::Operator && state == HoldState::Paused)
    }

    /// A budget's pause: a hand-off is told `429` (come back later), the others `409`.
    pub fn is_budget(self) -> bool {
        matches!(
            self,
            HoldReason::MaxRunsPerDay
                | HoldReason::MaxTokensPerDay
                | HoldReason::RateLimitPercent
                | HoldReason::UsageLimit
                | HoldReason::QuotaPace
        )
    }
}

/// Why a workspace's loop starts nothing by itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hold {
    pub state: HoldState,
    pub reason: HoldReason,
    /// For people: what happened, and what ends it.
    pub detail: String,
    pub since: Stamp,
    /// When it ends by itself; `None`: when an operator resumes the loop.
    pub until: Option<Stamp>,
    /// The run that ended the loop or paused it.
    pub run_id: Option<String>,
}

impl Hold {
    pub fn new(
        state: HoldState,
        reason: HoldReason,
        detail: String,
        until: Option<Stamp>,
        run_id: Option<&str>,
    ) -> Hold {
        Hold {
            state,
            reason,
            detail,
            since: Stamp::now(),
            until,
            run_id: run_id.map(str::to_string),
        }
    }

    /// Whether its time is over at `now`.
    pub fn over(&self, now: Stamp) -> bool {
        self.until.is_some_and(|u| u <= now)
    }
}
