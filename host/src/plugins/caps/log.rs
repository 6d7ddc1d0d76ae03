//! `log` (WIT 0.1.0): a plugin's lines go into the host's log with the
//! plugin's name and the delivery id, at most [`LOG_LINES_CAP`] lines of
//! [`LOG_LINE_BYTES`] per call; `plugin test` keeps them to show.

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::filter::hookvault::plugin::log as wit;
use super::super::sandbox::{LOG_LINE_BYTES, LOG_LINES_CAP, LogLine, cut};
use super::PluginState;

/// Give `linker` the `log` interface.
pub fn add_to_linker<X: Send + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: Send> wit::Host for PluginState<X> {
    fn log(&mut self, level: wit::Level, message: String) {
        self.log_lines = self.log_lines.saturating_add(1);
        if self.log_lines > LOG_LINES_CAP {
            if self.log_lines == LOG_LINES_CAP + 1 {
                warn!(plugin = %self.plugin, "plugin log limit reached; further lines dropped");
            }
            return;
        }
        let message = cut(message, LOG_LINE_BYTES);
        if let Some(captured) = &mut self.captured {
            captured.push(LogLine {
                level: match level {
                    wit::Level::Trace => "trace",
                    wit::Level::Debug => "debug",
                    wit::Level::Info => "info",
                    wit::Level::Warn => "warn",
                    wit::Level::Error => "error",
                },
                message: message.clone(),
            });
        }
        let plugin = &*self.plugin;
        let delivery_id = self.delivery_id.as_str();
        match level {
            wit::Level::Trace => trace!(plugin, delivery_id, "{message}"),
            wit::Level::Debug => debug!(plugin, delivery_id, "{message}"),
            wit::Level::Info => info!(plugin, delivery_id, "{message}"),
            wit::Level::Warn => warn!(plugin, delivery_id, "{message}"),
            wit::Level::Error => error!(plugin, delivery_id, "{message}"),
        }
    }
}
