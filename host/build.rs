//! Builds the WebAssembly plugins for `wasm32-wasip2` so that `cargo build`,
//! `cargo run` and `cargo install` produce a working service:
//!
//! * `plugins/` (the default plugins, embedded in the binary) and
//! * `examples/plugins/skip-refs`, `skip-bots` and `force-push-guard`
//!   (example custom plugins, used by tests).
//!
//! The nested cargo uses its own target directory next to the outer one, so
//! it never waits on the outer build's lock. The artifact directory is
//! exported to the crate as `HOOKVAULT_PLUGIN_ARTIFACTS`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TARGET: &str = "wasm32-wasip2";

/// Why the build script failed.
enum Failure {
    /// Complete in one line: nothing else to show.
    OneLine(String),
    /// The nested build's output (already on stderr) explains it.
    WithOutput(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::WithOutput(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::WithOutput(message.to_string())
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        // `cargo::error` fails the build by itself; exiting 0 keeps cargo
        // from dumping the script's output around a message that says it all.
        Err(Failure::OneLine(message)) => {
            println!("cargo::error={message}");
            ExitCode::SUCCESS
        }
        // Exiting non-zero makes cargo show the plugin compiler's output.
        Err(Failure::WithOutput(message)) => {
            println!("cargo::error={message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Failure> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .parent()
        .ok_or("host/ has no parent directory")?
        .to_path_buf();
    for watched in ["plugins", "wit", "examples/plugins"] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo::rerun-if-env-changed=HOOKVAULT_PLUGIN_TARGET_DIR");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        return Err(Failure::OneLine(format!(
            "the {TARGET} Rust target is not installed; install it with `rustup target add {TARGET}`"
        )));
    }

    let target_dir = plugin_target_dir(&root)?;
    build(&root.join("plugins/Cargo.toml"), &target_dir)?;
    for example in ["skip-refs", "skip-bots", "force-push-guard"] {
        build(
            &root.join(format!("examples/plugins/{example}/Cargo.toml")),
            &target_dir,
        )?;
    }
    let artifacts = target_dir.join(TARGET).join("release");
    for name in [
        "absurd",
        "future",
        "git_backup",
        "pr_metadata",
        "hostile",
        "noisy",
        "skip_refs",
        "skip_bots",
        "force_push_guard",
        "ungranted",
    ] {
        let file = artifacts.join(format!("{name}.wasm"));
        if !file.is_file() {
            return Err(format!("plugin build produced no {}", file.display()).into());
        }
    }
    println!(
        "cargo::rustc-env=HOOKVAULT_PLUGIN_ARTIFACTS={}",
        artifacts.display()
    );
    Ok(())
}

/// `<outer target dir>/wasm-plugins/<checkout>`, found from OUT_DIR
/// (`<target>/<profile>/build/<pkg>-<hash>/out`). One directory per
/// checkout: two clones sharing a target directory (as CI's cache allows)
/// must never pick up each other's plugins. Cargo shares this script's
/// *run* between such clones too (its name does not depend on the path)
/// and calls it fresh while the other clone's `plugins/` is unchanged, so
/// `.ci/run` also passes `HOOKVAULT_PLUGIN_TARGET_DIR` per checkout, which
/// the run watches.
fn plugin_target_dir(root: &Path) -> Result<PathBuf, String> {
    use std::hash::{Hash, Hasher};
    if let Ok(dir) = env::var("HOOKVAULT_PLUGIN_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target = out
        .ancestors()
        .nth(4)
        .ok_or("OUT_DIR is not inside a target directory")?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut hasher);
    Ok(target
        .join("wasm-plugins")
        .join(format!("{:016x}", hasher.finish())))
}

fn build(manifest: &Path, target_dir: &Path) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    // Settings meant for the outer (host) build must not leak into the
    // plugin build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo for {}: {e}", manifest.display()))?;
    if !status.success() {
        return Err(format!(
            "building the plugins in {} for {TARGET} failed (see the output above)",
            manifest.display()
        ));
    }
    Ok(())
}
