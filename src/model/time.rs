//! Times as Looper keeps them: an instant with the offset it was written in, saved and
//! shown as RFC 3339 (`2026-12-07T16:48:12.356884698+00:00`), compared as instants whatever
//! time zone wrote them.

use std::fmt;

use chrono::{DateTime, FixedOffset, Local};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant on the wall clock, with the offset it was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(DateTime<FixedOffset>);

impl Stamp {
    /// Now, in the machine's local offset.
    pub fn now() -> Stamp {
        Stamp(Local::now().fixed_offset())
    }

    /// `after` from now.
    pub fn after(after: std::time::Duration) -> Stamp {
        let ahead = chrono::Duration::from_std(after).unwrap_or_default();
        Stamp(Local::now().fixed_offset() + ahead)
    }

    pub fn parse(text: &str) -> Option<Stamp> {
        DateTime::parse_from_rfc3339(text).ok().map(Stamp)
    }

    /// This instant in the machine's local time zone (for calendar rules and people).
    pub fn local(self) -> DateTime<Local> {
        self.0.with_timezone(&Local)
    }

    /// Seconds since the Unix epoch.
    pub fn timestamp(self) -> i64 {
        self.0.timestamp()
    }

    /// The seconds from `earlier` to this instant (0 when `earlier` is later).
    pub fn seconds_since(self, earlier: Stamp) -> f64 {
        let ms = (self.0 - earlier.0).num_milliseconds().max(0);
        ms as f64 / 1000.0
    }

    /// `2026-12-07 17:00 UTC`, as holds' ends are said to people.
    pub fn minute(self) -> String {
        self.local().format("%Y-%m-%d %H:%M %Z").to_string()
    }
}

impl From<DateTime<Local>> for Stamp {
    fn from(t: DateTime<Local>) -> Stamp {
        Stamp(t.fixed_offset())
    }
}

impl From<std::time::SystemTime> for Stamp {
    fn from(t: std::time::SystemTime) -> Stamp {
        Stamp::from(DateTime::<Local>::from(t))
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339())
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        let text = String::deserialize(d)?;
        Stamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_as_written_and_compare_as_instants() {
        let a = Stamp::parse("2026-12-07T16:48:12.356884698+00:00").unwrap();
        assert_eq!(a.to_string(), "2026-12-07T16:48:12.356884698+00:00");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Stamp>(&json).unwrap(), a);
        // The same instant written in another zone is the same instant.
        let b = Stamp::parse("2026-12-07T17:48:12.356884698+01:00").unwrap();
        assert_eq!(a.timestamp(), b.timestamp());
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        assert!(serde_json::from_str::<Stamp>("\"t\"").is_err());
        assert_eq!(b.seconds_since(a), 0.0);
    }
}
