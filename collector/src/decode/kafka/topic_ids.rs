//! Topic names by topic id. Fetch and Produce v13+ name their topics by id only; Metadata
//! responses v10+ give both. What one Metadata response taught serves every Kafka flow of the
//! collector (a consumer asks for metadata on one connection and fetches on another), bounded.

use std::collections::HashMap;
use std::sync::Mutex;

/// Topic ids remembered at most; a new one beyond makes room by forgetting an arbitrary other
/// (its fetches then show no topic until a Metadata response names it again).
pub const MAX_TOPIC_IDS: usize = 4096;

/// Topic names by id, shared by the flows of one [`super::Kafka`] decoder.
#[derive(Debug, Default)]
pub struct TopicIds {
    names: Mutex<HashMap<[u8; 16], String>>,
}

impl TopicIds {
    /// Remembers what a Metadata response said.
    pub fn learn(&self, pairs: Vec<([u8; 16], String)>) {
        if pairs.is_empty() {
            return;
        }
        let Ok(mut names) = self.names.lock() else {
            return;
        };
        for (id, name) in pairs {
            if names.len() >= MAX_TOPIC_IDS && !names.contains_key(&id) {
                if let Some(k) = names.keys().next().copied() {
                    names.remove(&k);
                }
            }
            names.insert(id, name);
        }
    }

    /// The name of topic `id`, when a Metadata response gave it.
    pub fn name(&self, id: &[u8; 16]) -> Option<String> {
        self.names.lock().ok()?.get(id).cloned()
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.names.lock().map_or(0, |n| n.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_latest_name_wins() {
        let t = TopicIds::default();
        for i in 0..(MAX_TOPIC_IDS + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            t.learn(vec![(id, format!("t{i}"))]);
        }
        assert_eq!(t.len(), MAX_TOPIC_IDS);
        let id = [9u8; 16];
        t.learn(vec![(id, "old".into())]);
        t.learn(vec![(id, "new".into())]);
        assert_eq!(t.name(&id).as_deref(), Some("new"));
        assert_eq!(t.name(&[7u8; 16]), None);
    }
}
