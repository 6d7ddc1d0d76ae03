//! `hookvault plugin new`: a ready-to-build plugin crate of one world,
//! outside hookvault's tree, that depends on the guest SDK
//! (`hookvault-plugin`) by path or by version and has a passing test.
//!
//! The sources come from `scaffold/*.rs.in`; `tests/plugin_new.rs`
//! builds and tests each kind, so a template that stops compiling fails
//! CI.

use std::path::{Path, PathBuf};

/// Which world the new plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Filter,
    Backup,
    Metadata,
}

impl Kind {
    pub fn parse(kind: &str) -> Result<Self, ScaffoldError> {
        match kind {
            "filter" => Ok(Kind::Filter),
            "backup" => Ok(Kind::Backup),
            "metadata" => Ok(Kind::Metadata),
            other => Err(ScaffoldError::Kind(other.to_string())),
        }
    }

    /// As `--kind` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Backup => "backup",
            Kind::Metadata => "metadata",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Kind::Filter => include_str!("scaffold/filter.rs.in"),
            Kind::Backup => include_str!("scaffold/backup.rs.in"),
            Kind::Metadata => include_str!("scaffold/metadata.rs.in"),
        }
    }

    /// `kind` in the `[[plugins]]` entry.
    fn config_kind(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Backup | Kind::Metadata => "backup",
        }
    }
}

/// Where the new crate finds the SDK.
#[derive(Clone, Debug)]
pub enum Sdk {
    /// A directory holding the SDK's `Cargo.toml` (`plugins/sdk`).
    Path(PathBuf),
    /// A release of `hookvault-plugin` from the crate registry.
    Version(String),
}

impl Sdk {
    /// The SDK of the source tree this hookvault was built from, when it
    /// is still there.
    pub fn built_in() -> Option<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
        let dir = dir.canonicalize().ok()?;
        dir.join("Cargo.toml").is_file().then_some(Sdk::Path(dir))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("unknown plugin kind {0:?}: use filter, backup or metadata")]
    Kind(String),
    #[error("{name:?} cannot name a plugin crate: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("{path} already exists and is not empty: choose another name or --dir")]
    Exists { path: PathBuf },
    #[error("the SDK directory {path} holds no Cargo.toml")]
    NotAnSdk { path: PathBuf },
    #[error(
        "this hookvault was built from a source tree that is gone, so the plugin SDK is not at hand: pass --sdk PATH (plugins/sdk of hookvault's source) or --sdk-version VERSION"
    )]
    NoSdk,
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Debug, serde::Serialize)]
pub struct Created {
    pub name: String,
    pub kind: Kind,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The component `cargo build --release --target wasm32-wasip2` makes.
    pub component: PathBuf,
}

/// The webhook body `plugin test` gets in a new filter's README.
const SAMPLE_PUSH: &str = include_str!("../../../examples/payloads/cloud-repo-push.json");

/// Check `name` as a cargo package name that is also a usable crate name.
fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let bad = |reason| {
        Err(ScaffoldError::Name {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("it must be 1 to 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("it must start with a lowercase ASCII letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return bad("only lowercase ASCII letters, digits, '-' and '_' are allowed");
    }
    let crate_name = name.replace('-', "_");
    if [
        "self",
        "super",
        "crate",
        "std",
        "core",
        "alloc",
        "test",
        "proc_macro",
    ]
    .contains(&crate_name.as_str())
    {
        return bad("it is reserved by Rust");
    }
    Ok(())
}

/// Write a new plugin crate `name` of `kind` into `dir` (which must not
/// exist, or be empty).
pub fn create(name: &str, kind: Kind, dir: &Path, sdk: &Sdk) -> Result<Created, ScaffoldError> {
    check_name(name)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(ScaffoldError::Exists {
            path: dir.to_path_buf(),
        });
    }
    let dependency = match sdk {
        Sdk::Path(path) => {
            if !path.join("Cargo.toml").is_file() {
                return Err(ScaffoldError::NotAnSdk { path: path.clone() });
            }
            let path = path.canonicalize().map_err(io(path))?;
            format!(
                "{{ path = {} }}",
                toml::Value::String(path.display().to_string())
            )
        }
        Sdk::Version(version) => format!("{}", toml::Value::String(version.clone())),
    };
    let crate_name = name.replace('-', "_");
    let mut files: Vec<(PathBuf, String)> = vec![
        ("Cargo.toml".into(), cargo_toml(name, kind, &dependency)),
        (
            "src/lib.rs".into(),
            kind.source()
                .replace("__NAME__", name)
                .replace("__CRATE__", &crate_name),
        ),
        ("README.md".into(), readme(name, kind, &crate_name)),
        (".gitignore".into(), "/target\n".into()),
    ];
    if kind == Kind::Filter {
        files.push(("events/push.json".into(), SAMPLE_PUSH.to_string()));
    }
    let mut written = Vec::new();
    for (relative, content) in files {
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, content).map_err(io(&path))?;
        written.push(relative);
    }
    Ok(Created {
        name: name.to_string(),
        kind,
        dir: dir.to_path_buf(),
        files: written,
        component: PathBuf::from(format!("target/wasm32-wasip2/release/{crate_name}.wasm")),
    })
}

fn cargo_toml(name: &str, kind: Kind, sdk: &str) -> String {
    let world = kind.name();
    let json = if kind == Kind::Metadata {
        "serde_json = \"1\"\n"
    } else {
        ""
    };
    format!(
        r#"# A hookvault {world} plugin. Build the component with
#   cargo build --release --target wasm32-wasip2
# and run its tests natively with `cargo test`.
[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
rust-version = "1.95"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
hookvault-plugin = {sdk}
serde = {{ version = "1", features = ["derive"] }}
{json}
[profile.release]
opt-level = "s"
lto = true
strip = true

# Its own workspace, wherever it is put.
[workspace]
"#
    )
}

fn readme(name: &str, kind: Kind, crate_name: &str) -> String {
    let try_it = if kind == Kind::Filter {
        format!(
            "\nRun it on a webhook body exactly as `serve` would:\n\n```sh\nhookvault plugin test target/wasm32-wasip2/release/{crate_name}.wasm \\\n  --event events/push.json --set 'skip=[\"refs/heads/wip/*\"]'\n```\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"# {name}

A hookvault {kind} plugin, written with the `hookvault-plugin` SDK.

```sh
rustup target add wasm32-wasip2                  # once
cargo test                                       # its unit tests, natively
cargo build --release --target wasm32-wasip2     # the component
hookvault plugin check target/wasm32-wasip2/release/{crate_name}.wasm
```
{try_it}
Then add it to `hookvault.toml`:

```toml
[[plugins]]
name = "{name}"
kind = "{config_kind}"
path = "/path/to/{name}/target/wasm32-wasip2/release/{crate_name}.wasm"
```

See hookvault's `docs/plugins.md` for the capabilities, the limits and how
to debug a plugin.
"#,
        kind = kind.name(),
        config_kind = kind.config_kind(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_crates_are_refused() {
        for bad in [
            "",
            "Upper",
            "1st",
            "a b",
            "../x",
            "std",
            "self",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(check_name(bad), Err(ScaffoldError::Name { .. })),
                "{bad:?} was accepted"
            );
        }
        for good in ["skip-wip", "guard_2", "a"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_crate_is_written_once_and_never_over_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = Sdk::Version("0.1.0".into());
        let target = dir.path().join("guard");
        let created = create("guard", Kind::Filter, &target, &sdk).expect("create");
        assert!(created.files.contains(&PathBuf::from("events/push.json")));
        let manifest = std::fs::read_to_string(target.join("Cargo.toml")).expect("manifest");
        assert!(
            manifest.contains("hookvault-plugin = \"0.1.0\""),
            "{manifest}"
        );
        let lib = std::fs::read_to_string(target.join("src/lib.rs")).expect("lib");
        assert!(!lib.contains("__NAME__") && lib.contains("guard"));
        assert!(matches!(
            create("guard", Kind::Filter, &target, &sdk),
            Err(ScaffoldError::Exists { .. })
        ));
        assert!(matches!(
            create(
                "x",
                Kind::Backup,
                &dir.path().join("x"),
                &Sdk::Path(dir.path().into())
            ),
            Err(ScaffoldError::NotAnSdk { .. })
        ));
    }
}
