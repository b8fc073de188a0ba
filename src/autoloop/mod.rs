//! The loop's holds decided: the stop rules applied to one workspace when a run ends, when
//! autopoll ticks, when a run hands off and when the operator resumes.

pub(crate) mod judge;

use std::path::PathBuf;

use crate::state::app::App;

/// Where autopoll starts runs: `LOOPER_WORKSPACE`, else the workspace of the newest run in
/// the history (a first trigger names the loop's workspace); else nowhere. As runs and
/// holds know it: canonical (a link, `..` or a trailing slash in the variable is resolved).
pub fn workspace(app: &App) -> Option<PathBuf> {
    if app.cfg().workspace_set {
        return Some(app.workspace_named(None));
    }
    app.history().recent_workspaces(1).into_iter().next()
}
