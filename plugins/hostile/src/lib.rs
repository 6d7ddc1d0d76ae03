//! A filter plugin that misbehaves on purpose, chosen by its config:
//! `{"mode": "loop" | "memory" | "panic" | "flood" | "recurse" | "log-flood" | "keep"}`.
//! hookvault's tests load it to prove that a hostile plugin costs one failed
//! delivery, never the service.

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit/plugin@0.1.0",
    world: "filter",
});

use hookvault::plugin::config;
use hookvault::plugin::log::{self, Level};

/// Recursion with a frame the optimiser cannot drop: the call stack runs out.
fn descend(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    if n == 0 {
        return frame[0];
    }
    descend(std::hint::black_box(n - 1)).wrapping_add(frame[63])
}

#[derive(serde::Deserialize)]
struct Settings {
    mode: String,
}

struct Hostile;

impl Guest for Hostile {
    fn filter(_event: Event) -> Decision {
        let settings: Settings = match serde_json::from_str(&config::get()) {
            Ok(s) => s,
            Err(e) => return Decision::Skip(format!("bad config: {e}")),
        };
        match settings.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "flood" => {
                let line = "x".repeat(1024);
                for _ in 0..5_000 {
                    println!("{line}");
                }
                Decision::Keep
            }
            "recurse" => Decision::Skip(format!("depth {}", descend(u64::MAX))),
            "log-flood" => {
                let line = "y".repeat(8 * 1024);
                for _ in 0..20_000 {
                    log::log(Level::Info, &line);
                }
                Decision::Keep
            }
            _ => Decision::Keep,
        }
    }
}

export!(Hostile);
