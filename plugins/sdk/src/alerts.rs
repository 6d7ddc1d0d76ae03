//! Alerts for people (WIT 0.3.0). The host logs each one and, when the
//! operator configured alert webhooks, POSTs it to them; the plugin never
//! does HTTP itself. A call keeps a few alerts (20) and cuts long fields;
//! more are dropped, never fatal. In a native build they go to stderr.

#[cfg(target_arch = "wasm32")]
use crate::filter::bindings::hookvault::plugin0_3_0::alerts as host;

pub use crate::filter::bindings::hookvault::plugin0_3_0::alerts::Severity;

/// Raise an alert: a one-line `title`, a `message` saying what happened
/// and what to do, and `labels` (key, value) sent as given.
pub fn raise(severity: Severity, title: &str, message: &str, labels: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    host::raise(&host::Alert {
        severity,
        title: title.to_string(),
        message: message.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("alert {severity:?}: {title}: {message} {labels:?}");
}
