//! The retained-message store: the last retained message per topic, looked up by filter.
//! (CONTRACT — implementation in progress.)

use std::sync::Arc;

use crate::message::Message;

/// Retained messages indexed by topic level, so a filter lookup visits only what can match.
#[derive(Debug, Default)]
pub struct RetainedStore {}

impl RetainedStore {
    /// Stores `msg` as the retained message of its topic, replacing any previous one; an
    /// empty payload clears the topic instead. Returns the replaced message, if any.
    pub fn set(&mut self, msg: Arc<Message>) -> Option<Arc<Message>> {
        let _ = msg;
        todo!()
    }

    /// Appends to `out` every retained message whose topic matches (non-shared) `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let _ = (filter, out);
        todo!()
    }

    /// Number of retained topics.
    pub fn len(&self) -> usize {
        todo!()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
