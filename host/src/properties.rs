//! Property tests over everything that parses untrusted bytes: webhook
//! payloads (signed, so from Bitbucket or from someone holding a secret)
//! and the vault's files (from a disk or a bucket that may be damaged or
//! tampered with). Each property runs a fixed number of generated cases,
//! so CI spends a bounded few seconds; `PROPTEST_CASES` raises it for a
//! longer hunt.
//!
//! The rule checked everywhere: bad input gives an error, never a panic, an
//! abort or a result that breaks the types' promises.

use proptest::prelude::*;
use serde_json::Value;

use crate::bitbucket::normalize::{Envelope, Parsed, parse};
use crate::config::SourceKind;
use crate::event::Event;
use crate::vault::{format, index, refs, snapshot};

/// The example payloads with the source and event key each belongs to.
const PAYLOADS: &[(SourceKind, &str, &[u8])] = &[
    (
        SourceKind::Cloud,
        "repo:push",
        include_bytes!("../../examples/payloads/cloud-repo-push.json"),
    ),
    (
        SourceKind::Cloud,
        "pullrequest:created",
        include_bytes!("../../examples/payloads/cloud-pullrequest-created.json"),
    ),
    (
        SourceKind::Cloud,
        "pullrequest:comment_created",
        include_bytes!("../../examples/payloads/cloud-pullrequest-comment-created.json"),
    ),
    (
        SourceKind::DataCenter,
        "repo:refs_changed",
        include_bytes!("../../examples/payloads/dc-repo-refs-changed.json"),
    ),
    (
        SourceKind::DataCenter,
        "pr:opened",
        include_bytes!("../../examples/payloads/dc-pr-opened.json"),
    ),
    (
        SourceKind::DataCenter,
        "diagnostics:ping",
        include_bytes!("../../examples/payloads/dc-diagnostics-ping.json"),
    ),
];

/// Strings an attacker or a broken sender would try.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("../../etc/passwd".to_string()),
        Just("refs/heads/../../x".to_string()),
        Just("refs/heads/a\u{1b}[31mred\nforged".to_string()),
        Just("refs/heads/nul\0byte".to_string()),
        Just("acme/..".to_string()),
        Just("x".repeat(5000)),
        Just("0123456789abcdef0123456789abcdef01234567".to_string()),
        Just("0123456789ABCDEF0123456789ABCDEF01234567".to_string()),
        "[ -~]{0,40}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((hostile_string(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// One edit of a JSON document: at the node reached by following `path`
/// (each step picks a child by index, modulo the number of children),
/// replace the value, or remove it from its parent.
#[derive(Debug, Clone)]
struct Edit {
    path: Vec<usize>,
    replacement: Option<Value>,
}

fn edit() -> impl Strategy<Value = Edit> {
    (
        prop::collection::vec(any::<usize>(), 0..8),
        prop::option::weighted(0.85, json_value()),
    )
        .prop_map(|(path, replacement)| Edit { path, replacement })
}

fn apply(doc: &mut Value, edit: &Edit) {
    let mut node = doc;
    for (depth, step) in edit.path.iter().enumerate() {
        let last = depth + 1 == edit.path.len();
        let len = match node {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if len == 0 {
            break;
        }
        let at = step % len;
        if last && edit.replacement.is_none() {
            match node {
                Value::Object(map) => {
                    if let Some(key) = map.keys().nth(at).cloned() {
                        map.remove(&key);
                    }
                }
                Value::Array(items) => {
                    items.remove(at);
                }
                _ => {}
            }
            return;
        }
        node = match node {
            Value::Object(map) => match map.values_mut().nth(at) {
                Some(child) => child,
                None => return,
            },
            Value::Array(items) => &mut items[at],
            _ => return,
        };
    }
    if let Some(value) = &edit.replacement {
        *node = value.clone();
    }
}

/// What every accepted event must satisfy: targets are 40 lowercase hex
/// digits, and the event survives the queue's JSON round trip unchanged.
fn check_event(event: &Event) -> Result<(), TestCaseError> {
    for change in &event.changes {
        for target in [&change.old_target, &change.new_target]
            .into_iter()
            .flatten()
        {
            prop_assert!(
                target.len() == 40
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "target {target:?} accepted"
            );
        }
    }
    let json = serde_json::to_vec(event).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Event = serde_json::from_slice(&json)
        .map_err(|e| TestCaseError::fail(format!("queued event does not read back: {e}")))?;
    prop_assert_eq!(&back, event);
    Ok(())
}

fn run_parse(kind: SourceKind, key: &str, body: &[u8]) -> Result<(), TestCaseError> {
    let envelope = Envelope {
        source: "s",
        source_kind: kind,
        event_key: key,
        delivery_id: "d",
        received_at_ms: 0,
    };
    if let Ok(Parsed::Event(event)) = parse(&envelope, body) {
        check_event(&event)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]

    /// Real payloads with up to three structural edits each.
    #[test]
    fn edited_payloads_parse_or_fail_cleanly(
        which in 0..PAYLOADS.len(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let (kind, key, body) = PAYLOADS[which];
        let mut doc: Value = serde_json::from_slice(body).expect("example payload is JSON");
        for e in &edits {
            apply(&mut doc, e);
        }
        let bytes = serde_json::to_vec(&doc).expect("serialize");
        run_parse(kind, key, &bytes)?;
    }

    /// Real payloads cut, spliced or with bytes flipped, under every key.
    #[test]
    fn mangled_payload_bytes_parse_or_fail_cleanly(
        which in 0..PAYLOADS.len(),
        key_of in 0..PAYLOADS.len(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let (kind, _, body) = PAYLOADS[which];
        let (_, key, _) = PAYLOADS[key_of];
        let mut bytes = body.to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        run_parse(kind, key, &bytes)?;
    }

    /// Record headers: any bytes decode or fail; what encodes decodes back.
    #[test]
    fn record_headers_round_trip_and_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..24),
        code in 1u8..=6,
        delta in any::<bool>(),
        raw_size in any::<u64>(),
    ) {
        let _ = format::RecordHeader::decode(&bytes);
        let kind = crate::ids::ObjectKind::from_code(code).expect("kind");
        let header = format::RecordHeader { kind, delta, raw_size };
        let mut out = Vec::new();
        header.encode(&mut out);
        let (back, len) = format::RecordHeader::decode(&out).expect("decodes");
        prop_assert_eq!(len, out.len());
        prop_assert_eq!(back, header);
    }

    /// Frames with any claimed size, any base and any damage: the content
    /// back, or an error; never a panic or an allocation of the claim.
    #[test]
    fn record_frames_decode_or_fail_cleanly(
        content in prop::collection::vec(any::<u8>(), 0..2048),
        base in prop::option::of(prop::collection::vec(any::<u8>(), 0..2048)),
        claimed in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let frame = format::compress(&content, base.as_deref(), 3).expect("compress");
        let size = claimed.unwrap_or(content.len() as u64);
        let mut damaged = frame.clone();
        for (at, byte) in &flips {
            let i = at.index(damaged.len());
            damaged[i] = *byte;
        }
        if let Ok(back) = format::decompress(&damaged, base.as_deref(), size) {
            // A damaged frame may still decode to something; the record id
            // check after decoding is what catches it. An intact one with
            // the right size is exact.
            prop_assert_eq!(back.len() as u64, size);
        }
        if claimed.is_none() {
            prop_assert_eq!(
                format::decompress(&frame, base.as_deref(), size).expect("intact"),
                content
            );
        }
    }

    /// Index, snapshot and ref-chunk bytes from a damaged file.
    #[test]
    fn vault_files_decode_or_fail_cleanly(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = index::decode_index_file(&bytes, None);
        let _ = refs::decode_chunk(&bytes, &mut std::collections::BTreeMap::new());
        let name = crate::vault::backend::FileName::from_hash(blake3::hash(&bytes).as_bytes());
        let _ = snapshot::Snapshot::open(&name, &bytes, None);
        // A well-formed envelope around any body.
        let sealed = format::seal(format::INDEX_MAGIC, &body, 3).expect("seal");
        prop_assert_eq!(format::open_envelope(format::INDEX_MAGIC, &sealed).expect("open"), body.clone());
        let _ = index::decode_index_file(&sealed, None);
        let _ = snapshot::Snapshot::open(&name, &sealed, None);
    }
}
