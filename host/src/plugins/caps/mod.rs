//! The host's capabilities, one module per WIT interface, each in the
//! manner of wasmtime's `crates/wasi-config`:
//!
//! * a trait for what the capability needs from the host ([`GitSource`],
//!   [`ObjectSink`], [`Documents`], [`CurrentEvent`]), implemented by
//!   the real backup (`backup.rs`, `metadata.rs`: a vault and a fetch
//!   workspace) and by anything else that wants to run a plugin, such as
//!   a test's recording double;
//! * the WIT `Host` impl for [`PluginState<X>`] where `X` has the trait:
//!   it turns WIT values into typed ones (object ids parsed here, once)
//!   and back, and times and classifies every call ([`HostCalls`]);
//! * `add_to_linker`, which a world's loader calls for the capabilities
//!   that world grants.
//!
//! `types`, `log`, `config` and `alerts` need nothing from the host
//! beyond the call's own state, so every world gets them (see
//! `sandbox::link`).

pub mod alerts;
pub mod config;
pub mod documents;
pub mod git_source;
pub mod log;
pub mod metadata;
pub mod store;
pub mod types;

use std::time::{Duration, Instant};

use super::sandbox::PluginState;
use crate::failure::{Classify, FailureKind};
use crate::ids::GitOid;

pub use documents::Documents;
pub use git_source::GitSource;
pub use metadata::CurrentEvent;
pub use store::ObjectSink;

/// A capability's error: what the plugin is told, and whether trying again
/// can help (a plugin returns host errors as text; the kind is kept beside
/// it in [`HostCalls::failure`], so a refused token is not retried five
/// times only because the plugin passed it on).
#[derive(Debug)]
pub struct HostError {
    pub kind: FailureKind,
    pub message: String,
}

impl HostError {
    /// An error no retry can fix (an unknown source, a bad request).
    pub fn permanent(message: impl Into<String>) -> Self {
        HostError {
            kind: FailureKind::Permanent,
            message: message.into(),
        }
    }
}

impl<E: Classify> From<E> for HostError {
    fn from(error: E) -> Self {
        HostError {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// What the host's calls cost one plugin call.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostCalls {
    /// Time spent in host calls (fetch, walk, copy, ...): the rest of a
    /// call is the sandbox and the plugin's own work.
    pub time: Duration,
    /// The kind of the last host call that failed.
    pub failure: Option<FailureKind>,
}

impl<X> PluginState<X> {
    /// Run one host call on the capability `X`: timed, its error's kind
    /// kept, its message returned for the plugin.
    pub(crate) fn host_call<T>(
        &mut self,
        call: impl FnOnce(&mut X) -> Result<T, HostError>,
    ) -> Result<T, String> {
        let started = Instant::now();
        let result = call(&mut self.extra);
        self.host.time += started.elapsed();
        result.map_err(|e| {
            self.host.failure = Some(e.kind);
            e.message
        })
    }
}

/// Object ids from the plugin, parsed. An id that is no id is the
/// plugin's mistake: it is told so (the error names the id), and no kind
/// is noted, since no host call failed.
pub(crate) fn parse_oids(ids: &[String]) -> Result<Vec<GitOid>, String> {
    ids.iter()
        .map(|id| GitOid::from_hex(id).map_err(|e| e.to_string()))
        .collect()
}
