//! A plugin in a second language: `examples/plugins/python-skip-refs`,
//! built here with componentize-py (found through
//! `HOOKVAULT_COMPONENTIZE_PY`; `bash .ci/componentize-py.sh` installs it)
//! against the published WIT, and run under `plugin test` exactly like the
//! Rust `skip-refs`: the same decisions on the same webhook body.

use std::path::Path;
use std::process::Command;

const SAMPLE_PUSH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/payloads/cloud-repo-push.json"
);

/// The compiled-component cache every command of this test shares: the
/// 18 MB component is compiled once, not once per command.
fn cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-plugin-cache")
}

fn plugin_test(component: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .env("HOOKVAULT_PLUGIN_CACHE", cache())
        .args(["plugin", "test"])
        .arg(component)
        .args(["--event", SAMPLE_PUSH, "--json"])
        .args(args)
        .output()
        .expect("hookvault plugin test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn the_python_example_builds_loads_and_decides_like_the_rust_one() {
    let Some(tool) = std::env::var_os("HOOKVAULT_COMPONENTIZE_PY") else {
        panic!(
            "HOOKVAULT_COMPONENTIZE_PY is not set: this test builds a Python plugin with \
             componentize-py. Run `export HOOKVAULT_COMPONENTIZE_PY=\"$(bash .ci/componentize-py.sh)\"` first."
        );
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let component = out_dir.path().join("skip_refs_py.wasm");
    let built = Command::new(&tool)
        .arg("-d")
        .arg(root.join("wit/plugin@0.3.0"))
        .args(["-w", "filter", "componentize", "app", "-o"])
        .arg(&component)
        .current_dir(root.join("examples/plugins/python-skip-refs"))
        .output()
        .expect("run componentize-py");
    assert!(
        built.status.success(),
        "componentize-py: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let check = Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .env("HOOKVAULT_PLUGIN_CACHE", cache())
        .args(["plugin", "check", "--json"])
        .arg(&component)
        .output()
        .expect("plugin check");
    let checked: serde_json::Value = serde_json::from_slice(&check.stdout).expect("json");
    assert_eq!(checked["loads"], true, "{checked}");
    assert_eq!(checked["component"]["world"], "filter", "{checked}");

    // The sample push moves refs/heads/main and deletes
    // refs/heads/feature/old-export. Both plugins on the same settings:
    let rust = Path::new(env!("HOOKVAULT_PLUGIN_ARTIFACTS")).join("skip_refs.wasm");
    for setting in [
        r#"skip=["refs/heads/feature/*"]"#,
        r#"skip=["refs/heads/*"]"#,
        r#"skip=["refs/tags/*"]"#,
    ] {
        let python = plugin_test(&component, &["--set", setting]);
        let native = plugin_test(&rust, &["--set", setting]);
        for field in ["decision", "refs"] {
            assert_eq!(
                python[field], native[field],
                "{setting}: {python} vs {native}"
            );
        }
    }
    let narrowed = plugin_test(&component, &["--set", r#"skip=["refs/heads/feature/*"]"#]);
    assert_eq!(narrowed["decision"], "refs", "{narrowed}");
    assert_eq!(
        narrowed["logs"][0]["message"],
        "not backing up refs/heads/feature/old-export"
    );

    // A bad config is logged and the event kept, as the SDK's filters do.
    let bad = plugin_test(&component, &["--set", "skip=3"]);
    assert_eq!(bad["decision"], "keep", "{bad}");
    assert_eq!(bad["logs"][0]["level"], "error", "{bad}");
}
