//! The inbox's desk: a request file goes through the pipeline as the hand-off of a run of
//! its workspace ([`crate::inbox`] knows no more of Looper than this).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::error::Refusal;
use crate::model::Trigger;
use crate::run::pipeline::submit;
use crate::run::trust::Caller;
use crate::state::app::App;

/// The inbox thread's requests go through the pipeline as hand-offs of a run of their
/// workspace.
impl crate::inbox::Desk for App {
    fn inboxes(&self) -> Vec<Arc<crate::inbox::Inbox>> {
        App::inboxes(self)
    }

    fn shutdown(&self) -> &crate::os::shutdown::Shutdown {
        App::shutdown(self)
    }

    fn doorbell(&self) -> &crate::inbox::Doorbell {
        App::doorbell(self)
    }

    fn new_id(&self) -> String {
        self.registry().new_id()
    }

    fn run_of(&self, request_id: &str) -> Option<Value> {
        self.history()
            .get(request_id)
            .and_then(|row| serde_json::to_value(row).ok())
    }

    fn hand_off(
        self: &Arc<Self>,
        workspace: &Path,
        body: &[u8],
        request_id: &str,
    ) -> Result<Value, Refusal> {
        let caller = Caller::Run {
            run_id: None,
            workspace: workspace.to_path_buf(),
        };
        submit(self, body, request_id, Trigger::Inbox, &caller)
    }
}
