//! `hookvault plugin new`: each kind of crate it writes builds with the
//! SDK from this tree, passes its own tests natively, is formatted, and
//! its component loads; the filter then runs under `plugin test`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One cargo target directory for every generated crate and every run:
/// the SDK's dependencies compile once.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-new")
}

fn cargo(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(dir);
    // The outer build's settings are not the plugin's.
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hookvault(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run hookvault");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write, test natively, check formatting, build and `plugin check` a
/// crate of `kind`; returns its directory and component.
fn new_plugin(parent: &Path, name: &str, kind: &str, world: &str) -> (PathBuf, PathBuf) {
    let (ok, stdout, stderr) =
        hookvault(&["plugin", "new", name, "--kind", kind, "--json"], parent);
    assert!(ok, "plugin new: {stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let dir = parent.join(name);
    assert_eq!(created["dir"], name, "{created}");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
    assert!(
        manifest.contains("hookvault-plugin = { path = "),
        "{manifest}"
    );
    let target = target_dir();
    let target = target.to_str().expect("utf-8 path");
    cargo(&dir, &["fmt", "--check"]);
    cargo(&dir, &["test", "--target-dir", target]);
    let (component, _) = build_and_check_in(&dir, name, world);
    (dir, component)
}

/// Build the crate `name` (in `dir`) and `plugin check` its component:
/// it loads, as `world`. Returns the component and the check's report.
fn build_and_check_in(dir: &Path, name: &str, world: &str) -> (PathBuf, serde_json::Value) {
    let target = target_dir();
    let target = target.to_str().expect("utf-8 path");
    cargo(
        dir,
        &[
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
            target,
        ],
    );
    let component = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let (ok, stdout, stderr) = hookvault(
        &[
            "plugin",
            "check",
            component.to_str().expect("utf-8"),
            "--json",
        ],
        dir,
    );
    assert!(ok, "plugin check: {stdout}{stderr}");
    let checked: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(checked["loads"], true, "{checked}");
    assert_eq!(checked["component"]["world"], world, "{checked}");
    (component, checked)
}

#[test]
fn a_new_filter_builds_passes_its_test_and_decides_under_plugin_test() {
    let parent = tempfile::tempdir().expect("tempdir");
    let (dir, component) = new_plugin(parent.path(), "skip-wip", "filter", "filter");
    let component = component.to_str().expect("utf-8");
    // `plugin test` on the crate's sample push, which changes
    // refs/heads/main and deletes refs/heads/feature/old-export.
    let run = |setting: &str| -> serde_json::Value {
        let args = [
            "plugin",
            "test",
            component,
            "--event",
            "events/push.json",
            "--set",
            setting,
            "--json",
        ];
        let (ok, stdout, stderr) = hookvault(&args, &dir);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).expect("json")
    };
    let report = run(r#"skip=["refs/heads/feature/*"]"#);
    assert_eq!(report["decision"], "refs", "{report}");
    assert_eq!(
        report["refs"],
        serde_json::json!(["refs/heads/main"]),
        "{report}"
    );

    // A misspelt key: the event is kept and the log names the key.
    let report = run("skipp=[]");
    assert_eq!(report["decision"], "keep", "{report}");
    let logged = report["logs"][0]["message"].as_str().unwrap_or_default();
    assert_eq!(report["logs"][0]["level"], "error", "{report}");
    assert!(
        logged.contains("invalid plugin config") && logged.contains("unknown field `skipp`"),
        "{report}"
    );
}

#[test]
fn new_backup_and_metadata_plugins_build_pass_their_tests_and_load_with_alerts_too() {
    let parent = tempfile::tempdir().expect("tempdir");
    let kinds = [
        ("mirror-all", "backup", "backup", "let remote: BTreeMap"),
        (
            "pr-titles",
            "metadata",
            "metadata-backup",
            "let Some(pull_request)",
        ),
    ];
    for (name, kind, world, first_line) in kinds {
        let (dir, _) = new_plugin(parent.path(), name, kind, world);
        // Built as generated, it imports only 0.1.0/0.2.0 interfaces; once
        // it raises an alert it is a 0.3.0 component, and still loads.
        let lib = dir.join("src/lib.rs");
        let source = std::fs::read_to_string(&lib).expect("read");
        let alerting = source.replacen(
            first_line,
            &format!(
                "hookvault_plugin::alerts::raise(hookvault_plugin::alerts::Severity::Info, \"started\", \"\", &[]);\n        {first_line}"
            ),
            1,
        );
        assert_ne!(alerting, source, "{first_line:?} is in the template");
        std::fs::write(&lib, alerting).expect("write");
        let (_, checked) = build_and_check_in(&dir, name, world);
        assert_eq!(checked["component"]["world_version"], "0.3.0", "{checked}");
    }
}

#[test]
fn plugin_new_refuses_bad_names_kinds_and_a_used_directory() {
    let parent = tempfile::tempdir().expect("tempdir");
    let (ok, _, stderr) = hookvault(&["plugin", "new", "Bad Name"], parent.path());
    assert!(!ok);
    assert!(stderr.contains("cannot name a plugin crate"), "{stderr}");
    let (ok, _, stderr) = hookvault(&["plugin", "new", "x", "--kind", "alert"], parent.path());
    assert!(!ok);
    assert!(stderr.contains("unknown plugin kind \"alert\""), "{stderr}");
    std::fs::create_dir(parent.path().join("taken")).expect("mkdir");
    std::fs::write(parent.path().join("taken/keep.txt"), "mine").expect("write");
    let (ok, _, stderr) = hookvault(&["plugin", "new", "taken"], parent.path());
    assert!(!ok);
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(parent.path().join("taken/keep.txt")).expect("read"),
        "mine"
    );
    let (ok, _, stderr) = hookvault(
        &[
            "plugin",
            "new",
            "x",
            "--sdk",
            parent.path().to_str().expect("utf-8"),
        ],
        parent.path(),
    );
    assert!(!ok);
    assert!(stderr.contains("holds no Cargo.toml"), "{stderr}");
}
