//! Alerts end to end: the real service, a real plugin raising them, the
//! service raising its own, and a real HTTP receiver on loopback that
//! refuses its first POST (so the retry is exercised).

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const REPO: &str = "acme/guarded";

/// A loopback HTTP endpoint that records every POST body by path and
/// answers 500 to the first request on `/flaky`, 200 to everything else.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let bodies: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let seen = bodies.clone();
        let app = axum::Router::new().route(
            "/{hook}",
            axum::routing::post(
                move |axum::extract::Path(hook): axum::extract::Path<String>,
                      body: axum::body::Bytes| {
                    let seen = seen.clone();
                    async move {
                        let value =
                            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        let mut seen = seen.lock().expect("lock");
                        let first = !seen.iter().any(|(h, _)| *h == hook);
                        seen.push((hook.clone(), value));
                        if hook == "flaky" && first {
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            axum::http::StatusCode::OK
                        }
                    }
                },
            ),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}"),
            bodies,
            _runtime: runtime,
        }
    }

    /// Wait until `hook` has received `count` requests; their bodies.
    fn wait_for(&self, hook: &str, count: usize) -> Vec<serde_json::Value> {
        wait_until(
            &format!("{count} POSTs to /{hook}"),
            Duration::from_secs(60),
            || {
                let seen = self.bodies.lock().expect("lock");
                let got: Vec<_> = seen
                    .iter()
                    .filter(|(h, _)| h == hook)
                    .map(|(_, b)| b.clone())
                    .collect();
                (got.len() >= count).then_some(got)
            },
        )
    }
}

#[test]
fn a_force_push_of_a_protected_branch_alerts_with_the_command_that_puts_it_back() {
    let OneCommitRepo {
        tmp,
        server,
        work,
        head: first,
        ..
    } = one_commit_repo(REPO);
    let receiver = Receiver::start();
    let guard = Path::new(env!("HOOKVAULT_PLUGIN_ARTIFACTS")).join("force_push_guard.wasm");
    let extra = format!(
        r#"
[[plugins]]
name = "force-push-guard"
kind = "filter"
path = "{guard}"
config = {{ protected = ["refs/heads/main"] }}

[[alerts.webhooks]]
url = "{url}/flaky"
format = "slack"

[[alerts.webhooks]]
url = "{url}/json"
min_severity = "critical"
"#,
        guard = guard.display(),
        url = receiver.url,
    );
    let service = Service::start(&tmp.path().join("hv"), &server, &extra);
    service.push("g-1", &branch_push(REPO, "main", None, &first));
    assert_eq!(service.outcome("g-1")["status"], "done");

    // Rewrite main.
    work.git(&["commit", "-q", "--amend", "-m", "A, rewritten"]);
    let rewritten = work.head();
    work.git(&["push", "-q", "-f", "origin", "main"]);
    let body = cloud_push(
        REPO,
        &[Change {
            branch: "main",
            kind: "branch",
            old: Some(&first),
            new: Some(&rewritten),
            forced: true,
        }],
    );
    service.push("g-2", &body);
    let outcome = service.outcome("g-2");
    assert_eq!(
        outcome["status"], "done",
        "the guard never holds a backup back: {outcome}"
    );

    // Slack format, after one refused POST (a retry), and plain JSON.
    let slack = receiver.wait_for("flaky", 2);
    assert_eq!(slack[0], slack[1], "the retry sends the same alert");
    let text = slack[1]["text"].as_str().expect("slack text");
    assert!(
        text.starts_with(&format!("*[critical] main was force-pushed in {REPO}*")),
        "{text}"
    );
    assert!(text.contains(&format!("(it was at {first})")), "{text}");
    let json = receiver.wait_for("json", 1);
    let alert = &json[0];
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["source"], "force-push-guard", "{alert}");
    assert_eq!(alert["repository"], REPO, "{alert}");
    assert_eq!(alert["delivery_id"], "g-2", "{alert}");
    assert_eq!(alert["labels"]["previous"], first.as_str(), "{alert}");

    // The command in the alert finds the tip the force-push replaced.
    let message = alert["message"].as_str().expect("message");
    let command = message
        .split('`')
        .nth(1)
        .expect("a command between backticks");
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&args[..2], ["hookvault", "undo"], "{command}");
    let mut with_json: Vec<&str> = args[1..].to_vec();
    with_json.push("--json");
    let out = service.cli(&with_json);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let undo: serde_json::Value = serde_json::from_slice(&out.stdout).expect("undo json");
    assert_eq!(undo["target"], first.as_str(), "{undo}");

    // A delivery that fails for good: the service's own critical alert.
    service.push(
        "g-3",
        &branch_push("acme/no-such-repo", "main", None, &first),
    );
    assert_eq!(service.outcome("g-3")["status"], "failed");
    let json = receiver.wait_for("json", 2);
    let failed = &json[1];
    assert_eq!(failed["source"], "hookvault", "{failed}");
    assert_eq!(
        failed["title"], "backup of acme/no-such-repo failed for good",
        "{failed}"
    );
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("hookvault events retry g-3")),
        "{failed}"
    );
    let log = service.log();
    assert!(log.contains("alert: "), "alerts are logged too:\n{log}");
    service.stop();
}
