//! A filter that floods the `alerts` capability (WIT 0.3.0): five alerts
//! with a 1 MiB title and message and 1,000 labels each, then 100,000 small
//! ones. hookvault's tests load it to prove that the host keeps a few, cut
//! to size, and that the call still completes with its decision.

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit/plugin@0.3.0",
    world: "filter",
    generate_all,
});

use hookvault::plugin0_3_0::alerts::{self, Alert, Severity};

struct Noisy;

impl Guest for Noisy {
    fn filter(_event: Event) -> Decision {
        let huge = "z".repeat(1 << 20);
        let labels: Vec<(String, String)> = (0..1_000)
            .map(|i| (format!("key-{i}"), huge[..300].to_string()))
            .collect();
        let oversized = Alert {
            severity: Severity::Critical,
            title: huge.clone(),
            message: huge,
            labels,
        };
        for _ in 0..5 {
            alerts::raise(&oversized);
        }
        let small = Alert {
            severity: Severity::Warning,
            title: "again".into(),
            message: "and again".into(),
            labels: Vec::new(),
        };
        for _ in 0..100_000 {
            alerts::raise(&small);
        }
        Decision::Keep
    }
}

export!(Noisy);
