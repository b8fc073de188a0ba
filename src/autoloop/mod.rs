//! The loop's holds decided: the stop rules applied to one workspace when a run ends, when
//! autopoll ticks, when a run hands off and when the operator resumes.

pub(crate) mod judge;
