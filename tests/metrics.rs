//! `/metrics` and `/readyz` on the real binary: webhooks good and bad, a
//! backup, then the scraped text read back by metric name and value.
//! (`/readyz` failing on a full disk is in `tests/full_disk.rs`.)

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use hookvault::bitbucket::signature::sign;
use support::*;

const REPO: &str = "acme-eng/ledger";

/// A GET to `path` on the service, with the admin token when `token`;
/// its status, `Content-Type` and body.
fn get(service: &Service, path: &str, token: bool) -> (u16, String, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut request = client.get(format!("http://{}{path}", service.addr));
    if token {
        request = request.bearer_auth(ADMIN);
    }
    let response = request.send().expect("GET");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.text().unwrap_or_default())
}

/// The samples of an OpenMetrics text: `name{labels}` (as printed) → value.
/// Panics on a line that is neither a comment nor `name value`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(
            out.insert(name.to_string(), value).is_none(),
            "{name} twice"
        );
    }
    out
}

/// The value of sample `name`; panics naming the text when it is missing.
fn value(samples: &BTreeMap<String, f64>, name: &str, text: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
fn metrics_count_webhooks_backups_and_tell_each_repository_s_latest_snapshot() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");

    // Ready as soon as it listens; /healthz stays a bare liveness probe.
    let (status, _, body) = get(&service, "/readyz", false);
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, body) = get(&service, "/healthz", false);
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // The metrics name every repository: the admin token is required.
    let (status, _, body) = get(&service, "/metrics", false);
    assert_eq!(status, 401, "{body}");

    let good = branch_push(REPO, "main", None, &head);
    let before_ms = now_ms();
    service.push("m-good", &good);

    let (status, reply) = service.deliver(
        "repo:push",
        "m-bad-signature",
        &good,
        Some(&sign(b"not the secret", &good)),
    );
    assert_eq!(status, 401, "{reply}");
    let malformed = b"{\"push\": [";
    let (status, reply) = service.deliver(
        "repo:push",
        "m-malformed",
        malformed,
        Some(&sign(SECRET.as_bytes(), malformed)),
    );
    assert_eq!(status, 400, "{reply}");
    let mut huge = good.clone();
    huge.extend(std::iter::repeat_n(b' ', 300 * 1024));
    let (status, reply) = service.deliver(
        "repo:push",
        "m-huge",
        &huge,
        Some(&sign(SECRET.as_bytes(), &huge)),
    );
    assert_eq!(status, 413, "{reply}");

    let done = service.outcome("m-good");
    assert_eq!(done["status"], "done", "{done}\n{}", service.log());
    let after_ms = now_ms();
    let (status, reply) = service.deliver(
        "repo:push",
        "m-good",
        &good,
        Some(&sign(SECRET.as_bytes(), &good)),
    );
    assert_eq!(status, 200, "a duplicate: {reply}");

    let (status, content_type, text) = get(&service, "/metrics", true);
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = samples(&text);
    let at = |name: &str| value(&samples, name, &text);

    for (reason, count) in [
        ("bad_signature", 1.0),
        ("malformed", 1.0),
        ("too_large", 1.0),
        ("not_allowed", 0.0),
        ("cannot_record", 0.0),
    ] {
        assert_eq!(
            at(&format!(
                "hookvault_webhook_rejections_total{{reason=\"{reason}\"}}"
            )),
            count,
            "{reason}"
        );
    }
    assert_eq!(
        at("hookvault_webhooks_accepted_total{answer=\"queued\"}"),
        1.0
    );
    assert_eq!(
        at("hookvault_webhooks_accepted_total{answer=\"duplicate\"}"),
        1.0
    );

    assert_eq!(at("hookvault_backups_total{outcome=\"done\"}"), 1.0);
    assert_eq!(
        at("hookvault_backups_total{outcome=\"failed_transient\"}"),
        0.0
    );
    assert_eq!(at("hookvault_backup_duration_seconds_count"), 1.0);
    let took = at("hookvault_backup_duration_seconds_sum");
    assert!(
        took > 0.0 && took <= (after_ms - before_ms) as f64 / 1000.0,
        "{took}"
    );
    assert_eq!(
        at("hookvault_backup_duration_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );

    assert_eq!(at("hookvault_deliveries{status=\"done\"}"), 1.0);
    assert_eq!(at("hookvault_deliveries{status=\"queued\"}"), 0.0);
    assert_eq!(at("hookvault_deliveries{status=\"failed\"}"), 0.0);
    assert_eq!(at("hookvault_queue_depth"), 0.0);

    let snapshot = &service.snapshots(REPO)[0];
    let snapshot_ms = snapshot["time_ms"].as_u64().expect("time_ms");
    assert!((before_ms..=after_ms).contains(&snapshot_ms), "{snapshot}");
    assert_eq!(
        at(&format!(
            "hookvault_repository_last_snapshot_timestamp_seconds{{repository=\"{REPO}\"}}"
        )),
        snapshot_ms as f64 / 1000.0
    );
    assert_eq!(
        at(&format!(
            "hookvault_repository_backup_lag_seconds{{repository=\"{REPO}\"}}"
        )),
        0.0,
        "nothing waits"
    );
    service.stop();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}
