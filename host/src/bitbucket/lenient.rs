//! Leniency where Bitbucket is inconsistent: timestamps as epoch
//! milliseconds or ISO strings, offsets without a colon (`+1000`), numbers
//! as strings, fields that come and go.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A Bitbucket timestamp as RFC 3339 UTC with milliseconds
/// (`2026-03-04T16:41:27.000Z`), from epoch milliseconds (number or numeric
/// string) or an ISO 8601 string with any offset spelling.
pub fn time(value: &Value) -> Option<String> {
    let parsed = match value {
        Value::Number(n) => from_millis(n.as_i64()?),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(ms) => from_millis(ms),
            Err(_) => parse_iso(s.trim()),
        },
        _ => None,
    }?;
    // Fixed width (milliseconds, `Z`): still RFC 3339, and two normalised
    // times compare correctly as text.
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    parsed.to_offset(UtcOffset::UTC).format(&format).ok()
}

fn from_millis(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn parse_iso(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // `+1000` / `-0530` → `+10:00` / `-05:30`. Slicing by bytes only
    // where the tail is ASCII (never panics on other input).
    if let Some(split) = s.len().checked_sub(5)
        && let (Some(head), Some(tail)) = (s.get(..split), s.get(split..))
    {
        let sign = tail.as_bytes()[0];
        if (sign == b'+' || sign == b'-') && tail[1..].bytes().all(|b| b.is_ascii_digit()) {
            let fixed = format!("{head}{}:{}", &tail[..3], &tail[3..]);
            if let Ok(t) = OffsetDateTime::parse(&fixed, &Rfc3339) {
                return Some(t);
            }
        }
    }
    // No offset at all: take it as UTC.
    OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339).ok()
}

/// A string field, looked up through a path of keys.
pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    (!v.is_null()).then_some(v)
}

/// An id that may be a number or a numeric string.
pub fn id_at(value: &Value, path: &[&str]) -> Option<u64> {
    match at(value, path)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The first present key among several spellings.
pub fn first<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| value.get(k).filter(|v| !v.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_every_bitbucket_time_spelling() {
        let utc = "2026-03-04T16:41:27.000Z";
        for v in [
            json!("2026-03-04T17:41:27+0100"),
            json!("2026-03-04T17:41:27+01:00"),
            json!("2026-03-04T16:41:27Z"),
            json!("2026-03-04T16:41:27"),
            json!("2026-03-05T02:41:27+1000"),
            json!(1772642487000u64),
            json!("1772642487000"),
        ] {
            assert_eq!(time(&v).as_deref(), Some(utc), "{v}");
        }
        assert_eq!(
            time(&json!("2026-03-04T16:45:03.118204+00:00")).as_deref(),
            Some("2026-03-04T16:45:03.118Z")
        );
        // Fixed width: text order is time order.
        let a = time(&json!("2026-03-04T16:45:03Z")).expect("a");
        let b = time(&json!("2026-03-04T16:45:03.5Z")).expect("b");
        assert!(a < b, "{a} < {b}");
        assert_eq!(time(&json!("yesterday")), None);
        // Multi-byte characters where an offset would be must not panic.
        assert_eq!(time(&json!("x€€")), None);
        assert_eq!(time(&json!("2026-03-04T17:41:27€")), None);
        assert_eq!(time(&json!(null)), None);
    }

    #[test]
    fn ids_as_numbers_or_strings() {
        assert_eq!(id_at(&json!({"id": 42}), &["id"]), Some(42));
        assert_eq!(id_at(&json!({"id": "42"}), &["id"]), Some(42));
        assert_eq!(id_at(&json!({"id": "x"}), &["id"]), None);
    }
}
