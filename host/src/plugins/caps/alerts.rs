//! The `alerts` capability (WIT 0.3.0): a plugin raises an alert and the
//! host logs it and hands it to [`crate::alerts::Alerts`], which sends it
//! on. Every linker gets it, whatever the world: a 0.1.0 or 0.2.0
//! component simply does not import it, and a 0.3.0 component's exports
//! have the same types as its 0.1.0 or 0.2.0 counterpart's (records and
//! variants compare by structure), so one set of export bindings calls
//! both.
//!
//! A call keeps [`ALERTS_CAP`] alerts; fields are cut to their limits and
//! the rest is counted, logged once and dropped. A plugin cannot flood the
//! operator's channel, stall the call, or fail it by raising alerts.

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::alerts::hookvault::plugin0_3_0::alerts as wit;
use super::super::sandbox::cut;
use super::PluginState;
use crate::alerts::{Alert, Alerts, Severity};

/// Alerts kept per call.
pub const ALERTS_CAP: u32 = 20;
/// Longest title, message, label key and label value, in bytes; labels
/// kept per alert.
const TITLE_BYTES: usize = 200;
const MESSAGE_BYTES: usize = 4096;
const LABEL_BYTES: usize = 200;
const LABELS: usize = 16;

/// A call's alerts: where they go and how many were raised.
#[derive(Debug, Default)]
pub struct CallAlerts {
    sink: Option<Alerts>,
    repository: Option<String>,
    raised: u32,
    /// Kept for `plugin test`, which shows them instead of sending them.
    pub captured: Option<Vec<Alert>>,
}

impl CallAlerts {
    pub fn new(sink: Alerts, repository: String) -> Self {
        CallAlerts {
            sink: Some(sink),
            repository: Some(repository),
            raised: 0,
            captured: None,
        }
    }
}

/// Give `linker` the `alerts` interface.
pub fn add_to_linker<X: Send + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: Send> wit::Host for PluginState<X> {
    fn raise(&mut self, alert: wit::Alert) {
        let calls = &mut self.alerts;
        calls.raised = calls.raised.saturating_add(1);
        if calls.raised > ALERTS_CAP {
            if calls.raised == ALERTS_CAP + 1 {
                tracing::warn!(
                    plugin = %self.plugin,
                    delivery_id = %self.delivery_id,
                    "plugin alert limit ({ALERTS_CAP} per call) reached; further alerts dropped"
                );
            }
            return;
        }
        // Past the cap nothing is copied: a flood costs the lifting alone.
        let plugin = self.plugin.to_string();
        let delivery_id = self.delivery_id.clone();
        let alert = Alert {
            severity: match alert.severity {
                wit::Severity::Info => Severity::Info,
                wit::Severity::Warning => Severity::Warning,
                wit::Severity::Critical => Severity::Critical,
            },
            title: cut(alert.title, TITLE_BYTES),
            message: cut(alert.message, MESSAGE_BYTES),
            labels: alert
                .labels
                .into_iter()
                .take(LABELS)
                .map(|(k, v)| (cut(k, LABEL_BYTES), cut(v, LABEL_BYTES)))
                .collect(),
            source: plugin,
            repository: calls.repository.clone(),
            delivery_id: Some(delivery_id),
            at_ms: crate::event::now_ms(),
        };
        match (&mut calls.captured, &calls.sink) {
            (Some(captured), _) => captured.push(alert),
            (None, Some(sink)) => sink.raise(alert),
            (None, None) => Alerts::log_only().raise(alert),
        }
    }
}
