//! The intake, driving the real `hookvault` binary over loopback TCP: what
//! it acknowledges, and that hostile connections cannot stop it.

mod support;

use hookvault::bitbucket::signature::sign;
use support::*;

/// An unknown event key is acknowledged, recorded and ignored whatever its
/// body, as the README says; a key hookvault acts on still needs JSON.
#[test]
fn unknown_event_keys_are_ignored_whatever_the_body() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    for (delivery, body) in [
        ("unknown-empty", &b""[..]),
        ("unknown-not-json", b"not json"),
    ] {
        let signature = sign(SECRET.as_bytes(), body);
        let (status, reply) = service.deliver("issue:created", delivery, body, Some(&signature));
        assert_eq!(
            (status, reply["status"].as_str()),
            (202, Some("ignored")),
            "{delivery}: {reply}"
        );
        let (status, record) = service.api(&format!("deliveries/{delivery}"));
        assert_eq!((status, record["status"].as_str()), (200, Some("ignored")));
    }
    let signature = sign(SECRET.as_bytes(), b"");
    let (status, reply) = service.deliver("repo:push", "push-empty", b"", Some(&signature));
    assert_eq!(status, 400, "{reply}");
    let (status, _) = service.api("deliveries/push-empty");
    assert_eq!(status, 404, "a malformed delivery is not recorded");
    service.stop();
}
