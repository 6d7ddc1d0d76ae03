//! The `backup` world: drive one backup of git data through the host's
//! git source and store. Bytes never enter the plugin. Built against WIT
//! 0.3.0 (0.1.0's `backup` plus `alerts`; see [`crate::filter`] on why that
//! costs nothing when no alert is raised).

/// The world's generated bindings.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/plugin@0.3.0",
        world: "backup",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "hookvault_plugin::backup::bindings",
        with: {
            "hookvault:plugin/types@0.1.0": crate::filter::bindings::hookvault::plugin0_1_0::types,
            "hookvault:plugin/log@0.1.0": crate::filter::bindings::hookvault::plugin0_1_0::log,
            "hookvault:plugin/config@0.1.0": crate::filter::bindings::hookvault::plugin0_1_0::config,
            "hookvault:plugin/alerts@0.3.0": crate::filter::bindings::hookvault::plugin0_3_0::alerts,
        },
    });
}

pub use bindings::Report;
/// The event's repository, fetched by the host.
pub use bindings::hookvault::plugin0_1_0::git_source;
/// The content-addressed store.
pub use bindings::hookvault::plugin0_1_0::store;

use crate::Event;

/// A backup plugin. Export it with [`export_backup!`](crate::export_backup).
pub trait Backup {
    /// The plugin's config table from `hookvault.toml`.
    type Config: serde::de::DeserializeOwned;

    /// Back up what `event` changed. An `Err` fails the delivery, which
    /// the host retries.
    fn backup(event: &Event, config: &Self::Config) -> Result<Report, String>;
}

/// What the exported `backup` function does: read the config (a bad one
/// fails the backup, naming the key), then back up.
pub fn run<B: Backup>(event: Event) -> Result<Report, String> {
    let config = crate::config::parse::<B::Config>().map_err(|e| e.to_string())?;
    B::backup(&event, &config)
}

/// Export a [`Backup`] as the component's `backup` function.
#[macro_export]
macro_rules! export_backup {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __HookvaultBackup;

        impl $crate::backup::bindings::Guest for __HookvaultBackup {
            fn backup(
                event: $crate::Event,
            ) -> ::core::result::Result<$crate::backup::Report, ::std::string::String> {
                $crate::backup::run::<$plugin>(event)
            }
        }

        $crate::backup::bindings::export_world!(
            __HookvaultBackup with_types_in $crate::backup::bindings
        );
    };
}
