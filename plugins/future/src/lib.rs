//! A filter-shaped component built against `hookvault:plugin@9.0.0`, a
//! version this host does not serve: it must be refused at load, naming
//! the import, before anything runs.

wit_bindgen::generate!({
    inline: r#"
        package hookvault:plugin@9.0.0;

        interface log {
            log: func(message: string);
        }

        world filter {
            import log;
            export filter: func() -> bool;
        }
    "#,
    world: "filter",
});

struct Future;

impl Guest for Future {
    fn filter() -> bool {
        hookvault::plugin::log::log("from the future");
        true
    }
}

export!(Future);
