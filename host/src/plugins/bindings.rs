//! The generated bindings of every world and version the host serves, in
//! one place. An interface two worlds share is generated once and reused
//! (`with:`), so one host implementation serves every version that
//! imports it:
//!
//! * `filter`: WIT 0.1.0, world `filter`, with the 0.1.0 `types`, `log`
//!   and `config` every world imports;
//! * `backup`: 0.1.0, world `backup` (`git-source`, `store`);
//! * `metadata`: 0.2.0, world `metadata-backup` (`metadata`, `documents`);
//! * `alerts`: 0.3.0's `alerts` (from its `filter` world). The 0.3.0
//!   worlds export what their 0.1.0 and 0.2.0 counterparts export, with
//!   the same types, so the export bindings above call them too.
//!
//! Which world a component targets is read from its type by
//! `inspect::inspect`, for loading and for `plugin check` alike.

pub mod filter {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "filter",
    });
}

pub mod backup {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "backup",
        imports: {
            "hookvault:plugin/store.latest-refs": trappable,
        },
        with: {
            "hookvault:plugin/types": super::filter::hookvault::plugin::types,
            "hookvault:plugin/log": super::filter::hookvault::plugin::log,
            "hookvault:plugin/config": super::filter::hookvault::plugin::config,
        },
    });
}

pub mod metadata {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.2.0",
        world: "metadata-backup",
        with: {
            "hookvault:plugin/types@0.1.0": super::filter::hookvault::plugin::types,
            "hookvault:plugin/log@0.1.0": super::filter::hookvault::plugin::log,
            "hookvault:plugin/config@0.1.0": super::filter::hookvault::plugin::config,
        },
    });
}

pub mod alerts {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.3.0",
        world: "filter",
        with: {
            "hookvault:plugin/types@0.1.0": super::filter::hookvault::plugin::types,
            "hookvault:plugin/log@0.1.0": super::filter::hookvault::plugin::log,
            "hookvault:plugin/config@0.1.0": super::filter::hookvault::plugin::config,
        },
    });
}
