//! Lines in the host's log. The host tags each with the plugin and the
//! delivery id, caps their number and length, and escapes control
//! characters. In a native build (a plugin's `cargo test`) lines go to
//! stderr instead.

#[cfg(target_arch = "wasm32")]
use crate::filter::bindings::hookvault::plugin0_1_0::log as host;

pub use crate::filter::bindings::hookvault::plugin0_1_0::log::Level;

/// One line at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{level:?}: {message}");
}

pub fn trace(message: &str) {
    log(Level::Trace, message);
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}
