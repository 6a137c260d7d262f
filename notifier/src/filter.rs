//! `?type=A,B&product_id=X`: which events a client wants. Clients with the same filter share
//! one channel of the feed ([`crate::feed::Feed::subscribe`]), so each event is filtered once
//! per distinct filter, not once per client.

use std::collections::BTreeSet;

use crate::live_event::LiveEvent;

/// A filter, comparable and hashable so that equal filters share a channel.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    pub types: Option<BTreeSet<String>>,
    pub product_id: Option<String>,
}

impl Filter {
    /// From `?type=A,B` (comma-separated) and `?product_id=`.
    pub fn new(types: Option<&str>, product_id: Option<String>) -> Filter {
        Filter {
            types: types.map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            product_id,
        }
    }

    /// True for the filter of a client that wants every event.
    pub fn accepts_all(&self) -> bool {
        self.types.is_none() && self.product_id.is_none()
    }

    pub fn matches(&self, event: &LiveEvent) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(&event.event_type))
            && self
                .product_id
                .as_ref()
                .is_none_or(|p| *p == event.product_id)
    }
}
