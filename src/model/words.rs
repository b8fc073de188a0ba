//! The words a run is described with: who asked for it, why Looper stopped it, and how it
//! ended. Each is an enum written in JSON exactly as its `snake_case` name, as the history,
//! `/runs`, `/metrics` and the page have always spelled it.

use serde::{Deserialize, Serialize};

/// Who asked for a run (a history row's `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Http,
    /// A request file dropped into a run's inbox (the hand-off that needs no network).
    Inbox,
    Autopoll,
}

impl Trigger {
    /// Every trigger, in the order `/metrics` lists them.
    pub const ALL: [Trigger; 3] = [Trigger::Http, Trigger::Inbox, Trigger::Autopoll];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Inbox => "inbox",
            Trigger::Autopoll => "autopoll",
        }
    }
}

/// Why a run ended other than by itself (a history row's `stop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It asked for the next run (its hand-off), which replaced it: a success.
    HandedOff,
    /// A fresh run replaced it, asked for by someone else.
    Replaced,
    /// The operator stopped it and started nothing in its place (a trigger with an empty
    /// prompt, the page's Stop).
    Stopped,
    /// Its log stopped growing for `LOOPER_HUNG_RUN_SECONDS`.
    Hung,
    /// Looper shut down.
    Shutdown,
    /// Someone else ended it with SIGTERM, SIGINT or SIGHUP (a person, a script, the
    /// system): no crash.
    External,
    /// It ended on codex's usage limit: no crash either.
    UsageLimit,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        Outcome::from(self).as_str()
    }

    /// Whether a run that ended so says nothing of whether it works on its task (the stuck
    /// rule does not count it).
    pub fn says_nothing_of_progress(self) -> bool {
        matches!(
            self,
            StopReason::UsageLimit
                | StopReason::Shutdown
                | StopReason::External
                | StopReason::Replaced
                | StopReason::Stopped
        )
    }
}

/// How a run ended (a history row's `outcome`, `/metrics`' label): by itself (`ok`,
/// `failed`), for a stop reason, or `unknown` when its exit code could not be learnt (it
/// ended while no Looper watched it, and wrote no trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    HandedOff,
    Replaced,
    Stopped,
    Hung,
    External,
    Shutdown,
    UsageLimit,
    Unknown,
}

impl Outcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::HandedOff,
        Outcome::Replaced,
        Outcome::Stopped,
        Outcome::Hung,
        Outcome::External,
        Outcome::Shutdown,
        Outcome::UsageLimit,
        Outcome::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::HandedOff => "handed_off",
            Outcome::Replaced => "replaced",
            Outcome::Stopped => "stopped",
            Outcome::Hung => "hung",
            Outcome::External => "external",
            Outcome::Shutdown => "shutdown",
            Outcome::UsageLimit => "usage_limit",
            Outcome::Unknown => "unknown",
        }
    }

    /// The outcome of a run that ended with `reason` (when something other than the run
    /// ended it) and `return_code` (`None`: not known).
    pub fn of(reason: Option<StopReason>, return_code: Option<i32>) -> Outcome {
        match (reason, return_code) {
            (Some(r), _) => Outcome::from(r),
            (None, Some(0)) => Outcome::Ok,
            (None, Some(_)) => Outcome::Failed,
            (None, None) => Outcome::Unknown,
        }
    }
}

impl From<StopReason> for Outcome {
    fn from(r: StopReason) -> Outcome {
        match r {
            StopReason::HandedOff => Outcome::HandedOff,
            StopReason::Replaced => Outcome::Replaced,
            StopReason::Stopped => Outcome::Stopped,
            StopReason::Hung => Outcome::Hung,
            StopReason::Shutdown => Outcome::Shutdown,
            StopReason::External => Outcome::External,
            StopReason::UsageLimit => Outcome::UsageLimit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_are_written_as_they_always_were() {
        let json = serde_json::to_string(&[Outcome::HandedOff, Outcome::UsageLimit]).unwrap();
        assert_eq!(json, r#"["handed_off","usage_limit"]"#);
        assert_eq!(
            serde_json::to_string(&StopReason::Replaced).unwrap(),
            r#""replaced""#
        );
        assert_eq!(
            serde_json::to_string(&Trigger::Inbox).unwrap(),
            r#""inbox""#
        );
        for o in Outcome::ALL {
            let back: Outcome = serde_json::from_str(&format!("\"{}\"", o.as_str())).unwrap();
            assert_eq!(back, o);
        }
        assert_eq!(Outcome::of(None, Some(0)), Outcome::Ok);
        assert_eq!(Outcome::of(None, Some(-9)), Outcome::Failed);
        assert_eq!(Outcome::of(None, None), Outcome::Unknown);
        assert_eq!(
            Outcome::of(Some(StopReason::Hung), Some(-15)),
            Outcome::Hung
        );
        assert!(serde_json::from_str::<Outcome>("\"ok \"").is_err());
    }
}
