//! A filter plugin that misbehaves on purpose, chosen by its config:
//! `{"mode": "loop" | "memory" | "panic" | "flood" | "keep"}`.
//! hookvault's tests load it to prove that a hostile plugin costs one failed
//! delivery, never the service.

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit/plugin@0.1.0",
    world: "filter",
});

use hookvault::plugin::config;

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
            _ => Decision::Keep,
        }
    }
}

export!(Hostile);
