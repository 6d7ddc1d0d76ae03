//! `config` (WIT 0.1.0): the plugin's `config` table from `hookvault.toml`,
//! as JSON text.

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::filter::hookvault::plugin::config as wit;
use super::PluginState;

/// Give `linker` the `config` interface.
pub fn add_to_linker<X: Send + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: Send> wit::Host for PluginState<X> {
    fn get(&mut self) -> String {
        self.config_json.to_string()
    }
}
