//! Hostile plugins against the real sandbox: each misbehaviour costs one
//! failed call with a clear error, and the engine keeps working afterwards.

use std::time::Duration;

use hookvault::event::{Event, EventKind, RefChange, RefKind};
use hookvault::ids::{RefName, RepoName};
use hookvault::plugins::{Decision, FilterPlugin, Limits, PluginError, PluginSpec};

const ARTIFACTS: &str = env!("HOOKVAULT_PLUGIN_ARTIFACTS");

fn event() -> Event {
    Event {
        delivery_id: "d-1".into(),
        source: "cloud".into(),
        event_key: "repo:push".into(),
        kind: EventKind::Push,
        repository: RepoName::parse("acme/app").expect("name"),
        actor: Some("Dana".into()),
        changes: vec![RefChange {
            name: RefName::parse("refs/heads/main").expect("ref name"),
            kind: RefKind::Branch,
            old_target: None,
            new_target: Some("e91f3c7a2b5d8e0f4a6c1b3d5e7f9a0b2c4d6e8f".into()),
            forced: false,
        }],
        received_at_ms: 0,
        pull_request: None,
        comment: None,
        comments: Vec::new(),
        previous_name: None,
    }
}

fn hostile(engine: &wasmtime::Engine, mode: &str, limits: Limits) -> FilterPlugin {
    let bytes = std::fs::read(format!("{ARTIFACTS}/hostile.wasm")).expect("hostile plugin built");
    FilterPlugin::load(
        engine,
        PluginSpec {
            name: format!("hostile-{mode}").into(),
            config_json: format!(r#"{{"mode":"{mode}"}}"#).into(),
            limits,
            bytes,
        },
    )
    .expect("hostile plugin loads")
}

fn limits() -> Limits {
    Limits {
        fuel: 200_000_000,
        memory_bytes: 32 << 20,
        timeout: Duration::from_secs(20),
    }
}

fn engine() -> wasmtime::Engine {
    hookvault::plugins::new_engine().expect("engine")
}

fn reason(result: Result<Decision, PluginError>) -> String {
    match result {
        Err(PluginError::Trap { reason, .. }) => reason,
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let engine = engine();
    let plugin = hostile(&engine, "loop", limits());
    assert!(reason(plugin.run(&event())).contains("fuel"));
}

#[test]
fn wall_clock_deadline_stops_a_loop_with_unbounded_fuel() {
    let engine = engine();
    let plugin = hostile(
        &engine,
        "loop",
        Limits {
            fuel: u64::MAX,
            timeout: Duration::from_millis(300),
            ..limits()
        },
    );
    assert!(reason(plugin.run(&event())).contains("wall-clock"));
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let engine = engine();
    let plugin = hostile(&engine, "memory", limits());
    let why = reason(plugin.run(&event()));
    assert!(why.contains("memory"), "{why}");
}

#[test]
fn panic_is_contained() {
    let engine = engine();
    let plugin = hostile(&engine, "panic", limits());
    let why = reason(plugin.run(&event()));
    assert!(why.contains("panicked"), "{why}");
}

#[test]
fn output_flood_is_capped_not_fatal() {
    let engine = engine();
    let plugin = hostile(&engine, "flood", limits());
    assert_eq!(
        plugin.run(&event()).expect("flood completes"),
        Decision::Keep
    );
}

#[test]
fn engine_survives_hostile_calls() {
    let engine = engine();
    for mode in ["loop", "memory", "panic"] {
        assert!(hostile(&engine, mode, limits()).run(&event()).is_err());
    }
    let good = hostile(&engine, "keep", limits());
    for _ in 0..20 {
        assert_eq!(
            good.run(&event()).expect("well-behaved call"),
            Decision::Keep
        );
    }
}

#[test]
fn garbage_bytes_are_refused_at_load() {
    let engine = engine();
    let result = FilterPlugin::load(
        &engine,
        PluginSpec {
            name: "garbage".into(),
            config_json: "{}".into(),
            limits: limits(),
            bytes: b"\0asm not really".to_vec(),
        },
    );
    assert!(matches!(result, Err(PluginError::Load { .. })));
}

#[test]
fn skip_refs_example_decides_by_glob() {
    let engine = engine();
    let bytes = std::fs::read(format!("{ARTIFACTS}/skip_refs.wasm")).expect("example built");
    let plugin = FilterPlugin::load(
        &engine,
        PluginSpec {
            name: "skip-wip".into(),
            config_json: r#"{"skip":["refs/heads/wip/*"]}"#.into(),
            limits: limits(),
            bytes,
        },
    )
    .expect("loads");
    let mut e = event();
    assert_eq!(plugin.run(&e).expect("runs"), Decision::Keep);
    e.changes[0].name = RefName::parse("refs/heads/wip/spike").expect("ref name");
    assert!(matches!(plugin.run(&e).expect("runs"), Decision::Skip(_)));
    let mut main = e.changes[0].clone();
    main.name = RefName::parse("refs/heads/main").expect("ref name");
    e.changes.push(main);
    assert_eq!(
        plugin.run(&e).expect("runs"),
        Decision::Refs(vec!["refs/heads/main".into()])
    );
}
