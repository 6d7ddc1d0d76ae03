//! The `metadata-backup` world: store what is not git (pull requests,
//! comments) as versioned JSON documents. Built against WIT 0.3.0 (0.2.0's
//! `metadata-backup` plus `alerts`).

/// The world's generated bindings.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/plugin@0.3.0",
        world: "metadata-backup",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "hookvault_plugin::metadata::bindings",
        with: {
            "hookvault:plugin/types@0.1.0": crate::filter::bindings::hookvault::plugin0_1_0::types,
            "hookvault:plugin/log@0.1.0": crate::filter::bindings::hookvault::plugin0_1_0::log,
            "hookvault:plugin/config@0.1.0": crate::filter::bindings::hookvault::plugin0_1_0::config,
            "hookvault:plugin/alerts@0.3.0": crate::filter::bindings::hookvault::plugin0_3_0::alerts,
        },
    });
}

/// Versioned JSON documents of the event's repository.
pub use bindings::hookvault::plugin0_2_0::documents;
/// The pull request and comments the event carries.
pub use bindings::hookvault::plugin0_2_0::metadata as source;

use crate::Event;

/// A metadata backup plugin. Export it with
/// [`export_metadata_backup!`](crate::export_metadata_backup).
pub trait MetadataBackup {
    /// The plugin's config table from `hookvault.toml`.
    type Config: serde::de::DeserializeOwned;

    /// Store what the event carries; returns the ids of the document
    /// versions written. An `Err` fails the delivery, which the host
    /// retries.
    fn backup(event: &Event, config: &Self::Config) -> Result<Vec<String>, String>;
}

/// What the exported `backup` function does: read the config (a bad one
/// fails the backup, naming the key), then back up.
pub fn run<M: MetadataBackup>(event: Event) -> Result<Vec<String>, String> {
    let config = crate::config::parse::<M::Config>().map_err(|e| e.to_string())?;
    M::backup(&event, &config)
}

/// Export a [`MetadataBackup`] as the component's `backup` function.
#[macro_export]
macro_rules! export_metadata_backup {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __HookvaultMetadataBackup;

        impl $crate::metadata::bindings::Guest for __HookvaultMetadataBackup {
            fn backup(
                event: $crate::Event,
            ) -> ::core::result::Result<
                ::std::vec::Vec<::std::string::String>,
                ::std::string::String,
            > {
                $crate::metadata::run::<$plugin>(event)
            }
        }

        $crate::metadata::bindings::export_world!(
            __HookvaultMetadataBackup with_types_in $crate::metadata::bindings
        );
    };
}
