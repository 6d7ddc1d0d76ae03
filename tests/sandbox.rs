//! Hostile plugins against the real sandbox: each misbehaviour costs one
//! failed call with a clear error, and the engine keeps working afterwards.

use std::path::Path;
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
            alerts: hookvault::alerts::Alerts::log_only(),
        },
    )
    .expect("hostile plugin loads")
}

fn limits() -> Limits {
    Limits {
        fuel: 200_000_000,
        memory_bytes: 32 << 20,
        timeout: Duration::from_secs(20),
        output_bytes: hookvault::plugins::OUTPUT_CAP,
        // Large enough for the 100 MiB config below to reach the plugin.
        input_bytes: 256 << 20,
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
    let error = plugin.run(&event()).expect_err("a panic fails the call");
    let why = error.to_string();
    // Which build, what it said, where it was.
    assert!(why.contains("aborted: it panicked"), "{why}");
    assert!(why.contains("(sha256 "), "{why}");
    assert!(why.contains("hostile plugin panics on purpose"), "{why}");
    assert!(why.contains("wasm backtrace (innermost first): "), "{why}");
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
fn deep_recursion_exhausts_the_stack_and_is_contained() {
    let engine = engine();
    let plugin = hostile(&engine, "recurse", limits());
    let why = reason(plugin.run(&event()));
    assert!(why.contains("stack"), "{why}");
    let good = hostile(&engine, "keep", limits());
    assert_eq!(good.run(&event()).expect("next call"), Decision::Keep);
}

#[test]
fn a_100_mib_config_string_fails_the_call_not_the_host() {
    let engine = engine();
    let bytes = std::fs::read(format!("{ARTIFACTS}/hostile.wasm")).expect("hostile plugin built");
    let huge = format!(r#"{{"mode":"keep","pad":"{}"}}"#, "x".repeat(100 << 20));
    let plugin = FilterPlugin::load(
        &engine,
        PluginSpec {
            name: "hostile-huge-config".into(),
            config_json: huge.into(),
            limits: limits(),
            bytes,
            alerts: hookvault::alerts::Alerts::log_only(),
        },
    )
    .expect("loads");
    let why = reason(plugin.run(&event()));
    assert!(why.contains("memory"), "{why}");
    let good = hostile(&engine, "keep", limits());
    assert_eq!(good.run(&event()).expect("next call"), Decision::Keep);
}

#[test]
fn an_input_over_the_limit_is_refused_before_the_call() {
    let engine = engine();
    let bytes = std::fs::read(format!("{ARTIFACTS}/hostile.wasm")).expect("hostile plugin built");
    // The default input limit (16 MiB): a 100 MiB config never reaches
    // the plugin, and the error says which setting allows it.
    let config = hookvault::config::PluginConfig::filter_at(Path::new("hostile.wasm"));
    let huge = format!(r#"{{"mode":"keep","pad":"{}"}}"#, "x".repeat(100 << 20));
    let plugin = FilterPlugin::load(
        &engine,
        PluginSpec {
            name: "hostile-huge-config".into(),
            config_json: huge.into(),
            limits: Limits::of(&config),
            bytes: bytes.clone(),
            alerts: hookvault::alerts::Alerts::log_only(),
        },
    )
    .expect("loads");
    let error = plugin.run(&event()).expect_err("refused");
    assert!(
        matches!(error, PluginError::InputTooLarge { limit, .. } if limit == 16 << 20),
        "{error:?}"
    );
    assert!(error.to_string().contains("raise `input_mib`"), "{error}");
    assert_eq!(error.kind(), hookvault::failure::FailureKind::Permanent);
    // An event over a small limit, likewise; under it, the call runs.
    let small = |input_bytes| {
        hostile(
            &engine,
            "keep",
            Limits {
                input_bytes,
                ..limits()
            },
        )
    };
    assert!(matches!(
        small(100).run(&event()),
        Err(PluginError::InputTooLarge { .. })
    ));
    assert_eq!(small(64 << 10).run(&event()).expect("runs"), Decision::Keep);
}

#[test]
fn the_output_kept_is_the_plugins_own_limit() {
    let engine = engine();
    let plugin = hostile(
        &engine,
        "flood",
        Limits {
            output_bytes: 3000,
            ..limits()
        },
    );
    let trial = plugin.trial(&event()).expect("trial");
    assert_eq!(trial.decision.expect("flood completes"), Decision::Keep);
    let kept = trial.report.stdout.len();
    assert!(kept > 0 && kept <= 3000, "{kept} bytes kept");
    let default = hostile(&engine, "flood", limits())
        .trial(&event())
        .expect("trial");
    let kept = default.report.stdout.len();
    assert!(
        kept > 3000 && kept <= hookvault::plugins::OUTPUT_CAP,
        "{kept} bytes kept"
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
            alerts: hookvault::alerts::Alerts::log_only(),
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
            alerts: hookvault::alerts::Alerts::log_only(),
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

#[test]
fn a_pinned_plugin_whose_file_differs_is_refused_naming_both_hashes() {
    use sha2::Digest as _;
    let path = format!("{ARTIFACTS}/skip_refs.wasm");
    let bytes = std::fs::read(&path).expect("example built");
    let actual: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = |pin: &str| -> hookvault::config::PluginConfig {
        toml::from_str(&format!(
            "name = \"skip\"\nkind = \"filter\"\npath = \"{path}\"\nsha256 = \"{pin}\"\n"
        ))
        .expect("plugin config")
    };
    assert!(PluginSpec::from_config(&config(&actual)).is_ok());
    assert!(PluginSpec::from_config(&config(&actual.to_ascii_uppercase())).is_ok());
    let wrong = "0".repeat(64);
    let Err(err) = PluginSpec::from_config(&config(&wrong)) else {
        panic!("a file that differs from its pin is loaded");
    };
    assert!(matches!(err, PluginError::Pinned { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&actual) && message.contains(&wrong),
        "{message}"
    );
    assert_eq!(err.kind(), hookvault::failure::FailureKind::Permanent);
}

/// `hookvault plugin check` on a component file, through the binary: its
/// JSON report and exit status.
fn check(path: &std::path::Path) -> (bool, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .args(["plugin", "check", "--json"])
        .arg(path)
        .output()
        .expect("hookvault plugin check");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plugin check report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

#[test]
fn plugin_check_names_the_world_and_refuses_an_import_the_host_does_not_grant() {
    let artifacts = std::path::Path::new(ARTIFACTS);
    for (file, world, version) in [
        ("skip_refs.wasm", "filter", "0.1.0"),
        ("git_backup.wasm", "backup", "0.1.0"),
        ("pr_metadata.wasm", "metadata-backup", "0.2.0"),
    ] {
        let (ok, report) = check(&artifacts.join(file));
        assert!(ok, "{file}: {report}");
        assert_eq!(report["loads"], true, "{file}: {report}");
        let component = &report["component"];
        assert_eq!(component["world"], world, "{file}: {report}");
        let versions = component["hookvault_versions"]
            .as_array()
            .expect("versions");
        assert!(versions.iter().any(|v| v == version), "{file}: {report}");
        let bytes = std::fs::read(artifacts.join(file)).expect("read");
        assert_eq!(component["size"], bytes.len(), "{file}");
        assert_eq!(component["sha256"].as_str().map(str::len), Some(64));
    }
    // A filter asking for a network socket: refused, the import named.
    // Built against a hookvault WIT version this host does not serve.
    let (ok, report) = check(&artifacts.join("future.wasm"));
    assert!(!ok, "{report}");
    assert_eq!(
        report["component"]["hookvault_versions"],
        serde_json::json!(["9.0.0"]),
        "{report}"
    );
    assert!(
        report["error"]
            .as_str()
            .expect("error")
            .contains("hookvault:plugin/log@9.0.0"),
        "{report}"
    );
    let (ok, report) = check(&artifacts.join("ungranted.wasm"));
    assert!(!ok, "{report}");
    assert_eq!(report["loads"], false);
    assert_eq!(report["component"]["imports"][0], "evil:net/socket@0.1.0");
    let error = report["error"].as_str().expect("error");
    assert!(error.contains("evil:net/socket@0.1.0"), "{error}");
    // Not a component at all: a clear error, no component shown.
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = tmp.path().join("not-a-plugin.wasm");
    std::fs::write(&text, b"hello, I am text").expect("write");
    let (ok, report) = check(&text);
    assert!(!ok && report["component"].is_null(), "{report}");
    assert!(
        report["error"]
            .as_str()
            .expect("error")
            .contains("not-a-plugin.wasm"),
        "{report}"
    );
}

/// `hookvault plugin test` through the binary: exit status, stdout, stderr.
const SAMPLE_PUSH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/payloads/cloud-repo-push.json"
);

fn plugin_test(wasm: &str, args: &[&str]) -> (bool, String, String) {
    plugin_test_on(wasm, Path::new(SAMPLE_PUSH), args)
}

/// `plugin test` of an artifact on the webhook body at `event`.
fn plugin_test_on(wasm: &str, event: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .args(["plugin", "test"])
        .arg(format!("{ARTIFACTS}/{wasm}"))
        .arg("--event")
        .arg(event)
        .args(args)
        .output()
        .expect("hookvault plugin test");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_test_runs_a_filter_as_serve_would_and_names_what_went_wrong() {
    // A decision, with the fuel it cost.
    let (ok, stdout, stderr) = plugin_test(
        "skip_refs.wasm",
        &["--set", r#"skip=["refs/heads/feature/*"]"#, "--json"],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["repository"], "acme-eng/billing-service", "{report}");
    assert_eq!(report["decision"], "refs", "{report}");
    assert_eq!(
        report["refs"],
        serde_json::json!(["refs/heads/main"]),
        "{report}"
    );
    assert!(report["fuel_used"].as_u64().expect("fuel") > 0, "{report}");

    // Every ref matches: skip, with the plugin's reason.
    let (ok, stdout, stderr) =
        plugin_test("skip_refs.wasm", &["--set", r#"skip=["refs/heads/*"]"#]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("decision: skip ("), "{stdout}");

    // A hostile filter: the call fails, named, exit 1.
    let (ok, _, stderr) = plugin_test("hostile.wasm", &["--set", "mode=loop"]);
    assert!(!ok);
    assert!(stderr.contains("fuel"), "{stderr}");
    let (ok, _, stderr) = plugin_test("hostile.wasm", &["--set", "mode=panic"]);
    assert!(!ok);
    assert!(stderr.contains("the call failed"), "{stderr}");

    // A log flood (20,000 lines of 8 KiB): the call completes; the host
    // keeps 1,000 lines, each cut to 4 KiB.
    let (ok, _, stderr) = plugin_test("hostile.wasm", &["--set", "mode=log-flood"]);
    assert!(ok, "{}", &stderr[..stderr.len().min(2000)]);
    let lines = stderr.lines().count();
    let longest = stderr.lines().map(str::len).max().unwrap_or(0);
    assert!((1000..1100).contains(&lines), "{lines} log lines");
    assert!(longest < 4096 + 512, "a line of {longest} bytes");

    // An event hookvault ignores runs no plugin; a backup plugin is not a
    // filter.
    let (ok, stdout, stderr) = plugin_test(
        "skip_refs.wasm",
        &["--event-key", "repo:commit_status_created", "--json"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"ignored\":true"), "{stdout}");
    let (ok, _, stderr) = plugin_test("git_backup.wasm", &[]);
    assert!(!ok);
    assert!(stderr.contains("is a backup plugin"), "{stderr}");
}

#[test]
fn skip_bots_example_skips_pushes_by_matching_actors_only() {
    // The payload's actor is "Dana Okafor".
    let (ok, stdout, stderr) = plugin_test(
        "skip_bots.wasm",
        &["--set", r#"actors=["*[bot]", "dana *"]"#, "--json"],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["decision"], "skip", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .expect("reason")
            .contains("Dana Okafor"),
        "{report}"
    );
    let (ok, stdout, stderr) = plugin_test(
        "skip_bots.wasm",
        &["--set", r#"actors=["*[bot]"]"#, "--json"],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["decision"], "keep", "{report}");
}

#[test]
fn an_alert_flood_keeps_a_few_cut_to_size_and_the_call_completes() {
    // Five alerts with 1 MiB fields and 1,000 labels, then 100,000 more.
    let (ok, stdout, stderr) = plugin_test("noisy.wasm", &["--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["decision"], "keep", "the call completes");
    let alerts = report["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 20, "{} alerts kept", alerts.len());
    for (n, alert) in alerts.iter().enumerate() {
        if n >= 5 {
            assert_eq!(alert["title"], "again");
            continue;
        }
        let title = alert["title"].as_str().expect("title");
        let message = alert["message"].as_str().expect("message");
        assert!(title.len() <= 200 + 3, "a title of {} bytes", title.len());
        assert!(
            message.len() <= 4096 + 3,
            "a message of {} bytes",
            message.len()
        );
        let labels = alert["labels"].as_object().expect("labels");
        assert_eq!(labels.len(), 16);
        assert_eq!(alert["source"], "noisy.wasm", "{}", alert["source"]);
    }
}

#[test]
fn force_push_guard_example_alerts_on_a_rewritten_protected_branch_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(SAMPLE_PUSH).expect("payload"))
            .expect("json");
    // The sample moves main and deletes feature/old-export; mark main's
    // move as a force-push.
    body["push"]["changes"][0]["forced"] = serde_json::Value::Bool(true);
    let forced = dir.path().join("forced.json");
    std::fs::write(&forced, body.to_string()).expect("write");
    let guard = |event: &Path, protected: &str| -> serde_json::Value {
        let setting = format!("protected={protected}");
        let (ok, stdout, stderr) = plugin_test_on(
            "force_push_guard.wasm",
            event,
            &["--set", &setting, "--json"],
        );
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).expect("json")
    };
    let report = guard(&forced, r#"["refs/heads/main"]"#);
    assert_eq!(
        report["decision"], "keep",
        "the guard never blocks: {report}"
    );
    let alerts = report["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{report}");
    assert_eq!(alerts[0]["severity"], "critical");
    assert_eq!(
        alerts[0]["title"],
        "main was force-pushed in acme-eng/billing-service"
    );
    let message = alerts[0]["message"].as_str().expect("message");
    assert!(
        message.contains(
            "`hookvault undo --repo acme-eng/billing-service --ref refs/heads/main --before "
        ),
        "{message}"
    );
    assert_eq!(alerts[0]["labels"]["actor"], "Dana Okafor");
    // Every branch guarded: the deletion alerts too; the unforced sample
    // with only main guarded raises nothing.
    let report = guard(&forced, r#"["refs/heads/*"]"#);
    assert_eq!(
        report["alerts"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    let report = guard(Path::new(SAMPLE_PUSH), r#"["refs/heads/main"]"#);
    assert_eq!(
        report["alerts"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
}

#[test]
fn plugin_test_backs_a_repository_up_into_a_scratch_vault_and_stores_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = small_repo(dir.path());
    let vault = dir.path().join("vault");
    let (repo, vault) = (
        repo.to_str().expect("utf-8"),
        vault.to_str().expect("utf-8"),
    );
    let backup = || -> serde_json::Value {
        let args = ["--repo-dir", repo, "--vault", vault, "--json"];
        let (ok, stdout, stderr) = plugin_test("git_backup.wasm", &args);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).expect("json")
    };
    let first = backup();
    assert_eq!(first["world"], "backup", "{first}");
    let summary = &first["backup"];
    assert_eq!(summary["refs"], 2, "main and v1: {first}");
    assert_eq!(
        summary["objects_written"], 3,
        "a commit, a tree, a blob: {first}"
    );
    assert!(
        summary["snapshot"].as_str().is_some_and(|s| s.len() == 64),
        "{first}"
    );
    // The kept vault already holds it: nothing new.
    let again = backup();
    assert_eq!(
        again["backup"]["snapshot"],
        serde_json::Value::Null,
        "{again}"
    );
    assert!(
        again["logs"].to_string().contains("refs unchanged"),
        "{again}"
    );

    // A metadata plugin stores the pull request as one document version.
    let pull_request = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/payloads/cloud-pullrequest-created.json"
    );
    let (ok, stdout, stderr) = plugin_test_on(
        "pr_metadata.wasm",
        Path::new(pull_request),
        &["--event-key", "pullrequest:created", "--json"],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["world"], "metadata-backup", "{report}");
    assert_eq!(
        report["documents"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
}

/// A repository in `dir/repo` with one commit of one file on `main`, and a
/// tag `v1`.
fn small_repo(dir: &Path) -> std::path::PathBuf {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main", "repo"]);
    std::fs::write(dir.join("repo/a.txt"), "a\n").expect("write");
    git(&["-C", "repo", "add", "a.txt"]);
    git(&["-C", "repo", "commit", "-q", "-m", "A"]);
    git(&["-C", "repo", "tag", "v1"]);
    dir.join("repo")
}

#[test]
fn absurd_host_call_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = small_repo(dir.path());
    let repo = repo.to_str().expect("utf-8");
    let call = |mode: &str| -> String {
        let setting = format!("mode={mode}");
        let (ok, stdout, stderr) =
            plugin_test("absurd.wasm", &["--repo-dir", repo, "--set", &setting]);
        assert!(!ok, "{mode} succeeded: {stdout}");
        stderr
    };
    // A million tips the repository does not have: refused, naming the
    // first, after a bounded time and memory.
    let stderr = call("walk-million");
    assert!(
        stderr.contains("walking acme-eng/billing-service")
            && stderr.contains("0000000000000000000000000000000000000001 could not be found"),
        "{stderr}"
    );
    let stderr = call("copy-unknown");
    assert!(
        stderr.contains("reading object 0000000000000000000000000000000000000001"),
        "{stderr}"
    );
    let stderr = call("copy-garbage");
    assert!(
        stderr.contains("invalid git object id \"not an object id\": expected 40 hex digits"),
        "{stderr}"
    );
    // --repo-dir that is no repository.
    let not_a_repo = dir.path().join("empty");
    std::fs::create_dir(&not_a_repo).expect("mkdir");
    let (ok, _, stderr) = plugin_test(
        "git_backup.wasm",
        &["--repo-dir", not_a_repo.to_str().expect("utf-8")],
    );
    assert!(!ok);
    assert!(stderr.contains("not a git repository"), "{stderr}");
    let stderr = call("commit-unknown");
    assert!(
        stderr.contains("ref refs/heads/ghost points at 0000000000000000000000000000000000000007, which is not in the vault"),
        "{stderr}"
    );
}
