//! The `filter` world: decide, before any fetch, whether and what to back
//! up. Built against WIT 0.3.0, whose `filter` adds only the `alerts`
//! import: a filter that raises no alert imports nothing of 0.3.0 (unused
//! imports are dropped from the component) and loads on any host that
//! serves 0.1.0.

/// The world's generated bindings.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/plugin@0.3.0",
        world: "filter",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "hookvault_plugin::filter::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::Decision;

use crate::Event;

impl Event {
    /// Keep the changed refs `keep` accepts: every one (keep the event),
    /// none (skip it, naming them) or some (back up only those; the others
    /// keep their previous snapshot state).
    pub fn keep_refs(&self, keep: impl Fn(&crate::RefChange) -> bool) -> Decision {
        let (kept, dropped): (Vec<_>, Vec<_>) = self.changes.iter().partition(|c| keep(c));
        if dropped.is_empty() {
            Decision::Keep
        } else if kept.is_empty() {
            let names: Vec<&str> = dropped.iter().map(|c| c.name.as_str()).collect();
            Decision::Skip(format!("no changed ref is backed up: {}", names.join(", ")))
        } else {
            Decision::Refs(kept.into_iter().map(|c| c.name.clone()).collect())
        }
    }
}

/// A filter plugin. Export it with [`export_filter!`](crate::export_filter).
pub trait Filter {
    /// The plugin's config table from `hookvault.toml` (use `()`-like
    /// `struct Config {}` with `#[serde(default)]` fields when every key is
    /// optional).
    type Config: serde::de::DeserializeOwned;

    /// The decision for one event. An `Err` is logged and the event is
    /// kept: a filter that fails never drops a backup.
    fn filter(event: &Event, config: &Self::Config) -> Result<Decision, String>;
}

/// What the exported `filter` function does: read the config, decide, and
/// keep the event (logging why) when either fails.
pub fn run<F: Filter>(event: Event) -> Decision {
    let decided = crate::config::parse::<F::Config>()
        .map_err(|e| e.to_string())
        .and_then(|config| F::filter(&event, &config));
    match decided {
        Ok(decision) => decision,
        Err(message) => {
            crate::log::error(&format!("{message}; the event is backed up unfiltered"));
            Decision::Keep
        }
    }
}

/// Export a [`Filter`] as the component's `filter` function.
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __HookvaultFilter;

        impl $crate::filter::bindings::Guest for __HookvaultFilter {
            fn filter(event: $crate::Event) -> $crate::filter::Decision {
                $crate::filter::run::<$plugin>(event)
            }
        }

        $crate::filter::bindings::export_world!(
            __HookvaultFilter with_types_in $crate::filter::bindings
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_refs_keeps_skips_or_narrows() {
        let event = Event::test_push("acme/widgets")
            .updating("refs/heads/main", "a", "b")
            .creating("refs/heads/wip/x", "c");
        assert_eq!(event.keep_refs(|_| true), Decision::Keep);
        assert_eq!(
            event.keep_refs(|_| false),
            Decision::Skip("no changed ref is backed up: refs/heads/main, refs/heads/wip/x".into())
        );
        assert_eq!(
            event.keep_refs(|c| !c.name.starts_with("refs/heads/wip/")),
            Decision::Refs(vec!["refs/heads/main".into()])
        );
    }
}
