//! What Looper says on Zulip, and how it gets there: a trigger's announcement, the news
//! after a run's end, the queue of messages Zulip did not take.

pub(crate) mod announce;
