//! What a component is, read from its type alone: the world it targets
//! (told by what it exports and by the hookvault interfaces it imports),
//! that world's WIT version, and every import and export. Used by loading
//! (which world's linker a backup plugin gets) and by `plugin check`.

use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

/// A world this host serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `hookvault:plugin/filter@0.1.0`.
    Filter,
    /// `hookvault:plugin/backup@0.1.0`: git.
    Backup,
    /// `hookvault:plugin/metadata-backup@0.2.0`: pull requests.
    MetadataBackup,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Filter => "filter",
            World::Backup => "backup",
            World::MetadataBackup => "metadata-backup",
        }
    }

    /// The oldest WIT package version that defines it.
    pub fn wit_version(self) -> &'static str {
        match self {
            World::Filter | World::Backup => "0.1.0",
            World::MetadataBackup => "0.2.0",
        }
    }
}

/// A component's shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    /// `None`: it exports neither `filter` nor `backup`.
    pub world: Option<World>,
    /// The WIT version of its world: the world's own, or a later one whose
    /// additions it imports (0.3.0 for a filter that raises alerts).
    pub world_version: Option<String>,
    /// The versions of the hookvault interfaces it imports (`0.1.0`, ...).
    pub hookvault_versions: Vec<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub size: usize,
    pub sha256: String,
}

/// Compile `bytes` and read what the component imports and exports.
pub fn inspect(
    engine: &Engine,
    plugin: &str,
    bytes: &[u8],
) -> Result<(Component, Inspection), PluginError> {
    let component = Component::from_binary(engine, bytes).map_err(|e| PluginError::Load {
        plugin: plugin.to_string(),
        world: "any",
        message: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let imports_hookvault = |interface: &str| {
        imports
            .iter()
            .any(|i| i.starts_with(&format!("hookvault:plugin/{interface}@")))
    };
    let exports_func = |name: &str| exports.iter().any(|e| e == name);
    let world = if exports_func("backup") && imports_hookvault("documents") {
        Some(World::MetadataBackup)
    } else if exports_func("backup") {
        Some(World::Backup)
    } else if exports_func("filter") {
        Some(World::Filter)
    } else {
        None
    };
    let mut hookvault_versions: Vec<String> = imports
        .iter()
        .filter_map(|i| i.strip_prefix("hookvault:plugin/"))
        .filter_map(|i| i.split_once('@').map(|(_, v)| v.to_string()))
        .collect();
    hookvault_versions.sort_by_key(|v| version_key(v));
    hookvault_versions.dedup();
    let world_version = world.map(|w| {
        hookvault_versions
            .last()
            .filter(|v| version_key(v) > version_key(w.wit_version()))
            .cloned()
            .unwrap_or_else(|| w.wit_version().to_string())
    });
    let sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    Ok((
        component,
        Inspection {
            world,
            world_version,
            hookvault_versions,
            imports,
            exports,
            size: bytes.len(),
            sha256,
        },
    ))
}

/// `major.minor.patch` as numbers, for ordering (0.10.0 after 0.9.0).
fn version_key(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(u64::MAX))
        .collect()
}
