//! `types` (WIT 0.1.0): the records every world shares. No functions;
//! the host's part is turning an [`Event`] into the WIT `event`.

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::filter::hookvault::plugin::types as wit;
use super::PluginState;
use crate::event::{Event, RefKind};

pub use wit::Event as WitEvent;

/// Give `linker` the `types` interface.
pub fn add_to_linker<X: Send + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: Send> wit::Host for PluginState<X> {}

/// `event` as a plugin receives it, with the refs filters `excluded`.
pub fn to_wit(event: &Event, excluded: &[String]) -> wit::Event {
    wit::Event {
        delivery_id: event.delivery_id.clone(),
        source: event.source.clone(),
        event_key: event.event_key.clone(),
        repository: event.repository.to_string(),
        actor: event.actor.clone(),
        changes: event
            .changes
            .iter()
            .map(|c| wit::RefChange {
                name: c.name.to_string(),
                kind: match c.kind {
                    RefKind::Branch => wit::RefKind::Branch,
                    RefKind::Tag => wit::RefKind::Tag,
                    RefKind::Other => wit::RefKind::Other,
                },
                old_target: c.old_target.clone(),
                new_target: c.new_target.clone(),
                forced: c.forced,
            })
            .collect(),
        excluded_refs: excluded.to_vec(),
        received_at_ms: event.received_at_ms,
    }
}
