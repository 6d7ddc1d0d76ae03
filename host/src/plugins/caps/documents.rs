//! `documents` (WIT 0.2.0): versioned JSON documents of the event's
//! repository (pull requests, comments), keyed by collection and key.

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::metadata::hookvault::plugin0_2_0::documents as wit;
use super::{HostError, PluginState};

/// What a metadata backup needs from the vault it writes to.
pub trait Documents: Send {
    /// Store a new version of `collection/key`; the version's id.
    fn put(&mut self, collection: &str, key: &str, json: &[u8]) -> Result<String, HostError>;

    /// The latest version of `collection/key`, if any.
    fn get(&mut self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, HostError>;
}

/// Give `linker` the `documents` interface, served by `X`.
pub fn add_to_linker<X: Documents + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: Documents> wit::Host for PluginState<X> {
    fn put(&mut self, collection: String, key: String, json: String) -> Result<String, String> {
        self.host_call(|documents| documents.put(&collection, &key, json.as_bytes()))
    }

    fn get(&mut self, collection: String, key: String) -> Result<Option<String>, String> {
        let Some(bytes) = self.host_call(|documents| documents.get(&collection, &key))? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("document {collection}/{key} is not UTF-8"))
    }
}
