//! The S3 backend against a real S3 protocol server: moto's `moto_server`,
//! found through `HOOKVAULT_MOTO_SERVER`. Install it and set the variable with
//!
//! ```sh
//! export HOOKVAULT_MOTO_SERVER="$(bash .ci/moto.sh)"
//! ```
//!
//! Each test starts its own server on a free port and stops it when done.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use hookvault::vault::backend::{Backend, BackendError, FileName, FileType, S3Backend, S3Settings};
use support::{
    ADMIN, SECRET as WEBHOOK_SECRET, Service, TOKEN, assert_fsck_clean, branch_push,
    one_commit_repo, refs_of, restore, wait_until,
};

/// How long moto may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a call to a stopped server may take to fail: the backend's
/// retry window (30 s) plus one backoff and one connection timeout.
const STOPPED_SERVER_DEADLINE: Duration = Duration::from_secs(45);
const SECRET: &str = "moto-secret-access-key-do-not-print";

/// A running `moto_server`, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
    http: reqwest::blocking::Client,
}

impl Moto {
    fn start() -> Self {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            listener.local_addr().expect("local address").port()
        };
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let Some(server) = std::env::var_os("HOOKVAULT_MOTO_SERVER") else {
            panic!(
                "HOOKVAULT_MOTO_SERVER is not set: these tests need moto's S3 server. \
                 Run `export HOOKVAULT_MOTO_SERVER=\"$(bash .ci/moto.sh)\"` first."
            );
        };
        let log = tempfile::NamedTempFile::new().expect("log file");
        let stdout = log.reopen().expect("log for stdout");
        let stderr = log.reopen().expect("log for stderr");
        let child = Command::new(&server)
            .args(["-p", &port.to_string(), "-H", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", server.to_string_lossy()));
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut moto = Self {
            child,
            port,
            log,
            http,
        };
        moto.wait_until_ready();
        moto
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll moto") {
                panic!("moto_server exited ({status}):\n{}", self.log_text());
            }
            if let Ok(response) = self.http.get(self.endpoint()).send()
                && response.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {} within {START_DEADLINE:?}:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Buckets cannot be made through the backend; moto takes unsigned
    /// requests.
    fn create_bucket(&self, bucket: &str) {
        let response = self
            .http
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .expect("create bucket");
        assert!(
            response.status().is_success(),
            "create bucket {bucket}: {}",
            response.status()
        );
    }

    /// Put an object behind the backend's back.
    fn put_raw(&self, bucket: &str, key: &str, body: &[u8]) {
        let response = self
            .http
            .put(format!("{}/{bucket}/{key}", self.endpoint()))
            .body(body.to_vec())
            .send()
            .expect("put object");
        assert!(
            response.status().is_success(),
            "put {key}: {}",
            response.status()
        );
    }

    /// The keys and sizes under `prefix`, as the server lists them (objects
    /// the backend wrote are private to its account, but the listing is
    /// open).
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        assert!(
            prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'/'),
            "{prefix} would need escaping"
        );
        let response = self
            .http
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.endpoint()
            ))
            .send()
            .expect("list objects");
        assert!(
            response.status().is_success(),
            "list {prefix}: {}",
            response.status()
        );
        let xml = response.text().expect("listing");
        assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "{xml}");
        let field = |entry: &str, tag: &str| -> String {
            let open = format!("<{tag}>");
            let start = entry.find(&open).expect("field") + open.len();
            let end = entry[start..].find('<').expect("field end") + start;
            entry[start..end].to_string()
        };
        let mut keys: Vec<(String, u64)> = xml
            .split("<Contents>")
            .skip(1)
            .map(|entry| {
                let size = field(entry, "Size").parse().expect("size");
                (field(entry, "Key"), size)
            })
            .collect();
        keys.sort();
        keys
    }

    fn settings(&self) -> S3Settings {
        S3Settings {
            access_key_id: Some("moto-access-key".to_string()),
            secret_access_key: Some(SECRET.to_string()),
            region: Some("us-east-1".to_string()),
            endpoint: Some(self.endpoint()),
            allow_http: Some(true),
        }
    }

    fn backend(&self, url: &str) -> S3Backend {
        S3Backend::from_url(url, self.settings()).expect("backend")
    }

    fn stop(&mut self) {
        self.child.kill().expect("kill moto");
        self.child.wait().expect("reap moto");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service config with its vault at `url` on `moto`, `store` lines
/// added to `[store]` and `tables` before the source.
fn bucket_config(
    dir: &std::path::Path,
    moto: &Moto,
    server: &support::GitServer,
    url: &str,
    store: &str,
    tables: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN}"

[store]
path = "{path}"
url = "{url}"
{store}
[store.s3]
access_key_id = "moto-access-key"
secret_access_key = "{SECRET}"
region = "us-east-1"
endpoint = "{endpoint}"
allow_http = true

{tables}
[[sources]]
name = "cloud"
kind = "cloud"
secrets = ["{WEBHOOK_SECRET}"]
git_url = "http://{addr}/{{repo}}.git"
credentials = {{ kind = "access-token", token = "{TOKEN}" }}
"#,
        path = dir.join("data").display(),
        endpoint = moto.endpoint(),
        addr = server.addr,
    )
}

fn name(byte: u8) -> FileName {
    FileName::from_hash(&[byte; 32])
}

/// `len` bytes that differ from offset to offset.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

#[test]
fn files_are_written_listed_and_read_back_under_their_keys() {
    let moto = Moto::start();
    moto.create_bucket("vaults");
    let vault = moto.backend("s3://vaults/backups/one/");
    assert_eq!(vault.location(), "s3://vaults/backups/one");

    let files = [
        (FileType::Data, name(0xab), content(5000, 1)),
        (FileType::Data, name(0x01), content(70, 2)),
        (FileType::Index, name(0x02), content(300, 3)),
        (FileType::Snapshot, name(0x03), content(20, 4)),
        (FileType::Document, name(0x04), content(0, 5)),
        (FileType::Config, FileName::config(), content(64, 6)),
    ];
    for (file_type, file_name, data) in &files {
        vault.write(*file_type, file_name, data).expect("write");
    }

    // The keys are the prefix and the file type's path.
    let mut expected: Vec<(String, u64)> = [
        (format!("data/ab/{}", name(0xab)), 5000),
        (format!("data/01/{}", name(0x01)), 70),
        (format!("index/{}", name(0x02)), 300),
        (format!("snapshots/{}", name(0x03)), 20),
        (format!("documents/{}", name(0x04)), 0),
        ("config".to_string(), 64),
    ]
    .into_iter()
    .map(|(key, size)| (format!("backups/one/{key}"), size))
    .collect();
    expected.sort();
    assert_eq!(moto.keys("vaults", "backups/"), expected);

    assert_eq!(
        vault.list(FileType::Data).expect("list data"),
        vec![(name(0x01), 70), (name(0xab), 5000)]
    );
    assert_eq!(
        vault.list(FileType::Index).expect("list index"),
        vec![(name(0x02), 300)]
    );
    assert_eq!(
        vault.list(FileType::Snapshot).expect("list snapshots"),
        vec![(name(0x03), 20)]
    );
    assert_eq!(
        vault.list(FileType::Document).expect("list documents"),
        vec![(name(0x04), 0)]
    );
    assert_eq!(
        vault.list(FileType::Config).expect("list config"),
        vec![(FileName::config(), 64)]
    );
    for (file_type, file_name, data) in &files {
        assert_eq!(&vault.read(*file_type, file_name).expect("read"), data);
    }

    // Writing a name again leaves one complete file.
    vault
        .write(FileType::Data, &name(0xab), &content(5000, 1))
        .expect("rewrite");
    assert_eq!(vault.list(FileType::Data).expect("list data").len(), 2);
    assert_eq!(
        vault.read(FileType::Data, &name(0xab)).expect("read"),
        content(5000, 1)
    );

    // A vault at the bucket's root, beside the other, sees only its own.
    let root = moto.backend("s3://vaults");
    assert_eq!(root.location(), "s3://vaults");
    for file_type in FileType::ALL {
        assert_eq!(root.list(file_type).expect("list root"), vec![]);
    }
    root.write(FileType::Index, &name(0x09), b"root index")
        .expect("write at root");
    assert_eq!(
        moto.keys("vaults", "index/"),
        vec![(format!("index/{}", name(0x09)), 10)]
    );
    assert_eq!(
        root.list(FileType::Index).expect("list root"),
        vec![(name(0x09), 10)]
    );
    assert_eq!(
        vault.list(FileType::Index).expect("list index"),
        vec![(name(0x02), 300)]
    );
}

#[test]
fn ranges_are_read_and_short_files_are_refused() {
    let moto = Moto::start();
    moto.create_bucket("ranges");
    let vault = moto.backend("s3://ranges/v");
    let data = content(1000, 7);
    vault
        .write(FileType::Data, &name(0xcd), &data)
        .expect("write");

    let range = |offset: u64, len: u64| vault.read_range(FileType::Data, &name(0xcd), offset, len);
    assert_eq!(range(0, 10).expect("head"), data[..10]);
    assert_eq!(range(123, 456).expect("middle"), data[123..579]);
    assert_eq!(range(990, 10).expect("tail"), data[990..]);
    assert_eq!(range(0, 1000).expect("all"), data);
    assert_eq!(range(500, 0).expect("empty"), Vec::<u8>::new());

    let path = format!("data/cd/{}", name(0xcd));
    // Past the end, partly (the server answers with fewer bytes) and wholly
    // (the server refuses the range).
    for (offset, len, end) in [(995, 10, 1005), (1000, 1, 1001), (5000, 10, 5010)] {
        let err = range(offset, len).expect_err("short read");
        let text = err.to_string();
        match &err {
            BackendError::Io { source, .. } => {
                assert_eq!(source.kind(), ErrorKind::UnexpectedEof, "{text}")
            }
            other => panic!("expected an end-of-file error, got {other:?}"),
        }
        assert!(text.contains(&path), "{text}");
        assert!(text.contains("s3://ranges/v"), "{text}");
        assert!(
            text.contains(&format!("ends before byte {end} (it has 1000 bytes)")),
            "{text}"
        );
    }

    let missing = vault
        .read_range(FileType::Data, &name(0xce), 0, 10)
        .expect_err("missing file");
    assert!(missing.is_not_found(), "{missing:?}");
    let missing_empty = vault
        .read_range(FileType::Data, &name(0xce), 0, 0)
        .expect_err("missing file, empty range");
    assert!(missing_empty.is_not_found(), "{missing_empty:?}");
}

#[test]
fn missing_files_are_not_found_and_removal_is_idempotent() {
    let moto = Moto::start();
    moto.create_bucket("removal");
    let vault = moto.backend("s3://removal/v");
    for file_type in FileType::ALL {
        assert_eq!(vault.list(file_type).expect("list empty vault"), vec![]);
    }

    let err = vault
        .read(FileType::Snapshot, &name(0x11))
        .expect_err("missing");
    assert!(err.is_not_found(), "{err:?}");
    let text = err.to_string();
    assert_eq!(
        text,
        format!("s3://removal/v: snapshots/{} does not exist", name(0x11))
    );
    let err = vault
        .read(FileType::Config, &FileName::config())
        .expect_err("no config");
    assert!(err.is_not_found(), "{err:?}");

    vault
        .remove(FileType::Snapshot, &name(0x11))
        .expect("removing a missing file");

    vault
        .write(FileType::Snapshot, &name(0x11), b"snapshot")
        .expect("write");
    vault
        .write(FileType::Snapshot, &name(0x12), b"another")
        .expect("write");
    vault
        .remove(FileType::Snapshot, &name(0x11))
        .expect("remove");
    assert!(
        vault
            .read(FileType::Snapshot, &name(0x11))
            .expect_err("removed")
            .is_not_found()
    );
    assert_eq!(
        moto.keys("removal", ""),
        vec![(format!("v/snapshots/{}", name(0x12)), 7)]
    );
    assert_eq!(
        vault.list(FileType::Snapshot).expect("list"),
        vec![(name(0x12), 7)]
    );
    vault
        .remove(FileType::Snapshot, &name(0x11))
        .expect("removing twice");

    // A missing bucket is a misconfiguration, not a missing file.
    let nowhere = moto.backend("s3://no-such-bucket/v");
    let failures = [
        nowhere
            .read(FileType::Snapshot, &name(0x11))
            .expect_err("read"),
        nowhere
            .read_range(FileType::Data, &name(0x11), 0, 4)
            .expect_err("read range"),
        nowhere
            .write(FileType::Snapshot, &name(0x11), b"x")
            .expect_err("write"),
        nowhere.list(FileType::Snapshot).expect_err("list"),
    ];
    for err in failures {
        let text = err.to_string();
        assert!(matches!(err, BackendError::Remote { .. }), "{err:?}");
        assert!(text.contains("the bucket does not exist"), "{text}");
        assert!(!text.contains("<?xml"), "{text}");
    }
}

#[test]
fn listings_skip_what_is_not_a_vault_file() {
    let moto = Moto::start();
    moto.create_bucket("strangers");
    let vault = moto.backend("s3://strangers/v");
    let hash = name(0xab).to_string();
    let wrong_dir = name(0xcd).to_string();
    for key in [
        "v/data/ab/not-a-hash".to_string(),
        format!("v/data/ab/{wrong_dir}"),
        format!("v/data/{hash}"),
        format!("v/data/ab/{hash}.tmp"),
        format!("v/data/ab/x/{hash}"),
        format!("v/index/{}", hash.to_uppercase()),
        format!("v/index/{hash}.tmp"),
        format!("v/index/sub/{hash}"),
        format!("v/indexes/{hash}"),
        format!("v/{hash}"),
        format!("other/index/{hash}"),
        format!("vv/index/{hash}"),
        "v/config.tmp".to_string(),
        "v/configs/config".to_string(),
        format!("v/snapshots/{}", &hash[..63]),
    ] {
        moto.put_raw("strangers", &key, b"stranger");
    }
    for file_type in FileType::ALL {
        assert_eq!(
            vault.list(file_type).expect("list"),
            vec![],
            "{file_type:?}"
        );
    }

    vault
        .write(FileType::Index, &name(0xab), b"the index")
        .expect("write");
    vault
        .write(FileType::Data, &name(0xab), b"the data")
        .expect("write");
    assert_eq!(
        vault.list(FileType::Index).expect("list index"),
        vec![(name(0xab), 9)]
    );
    assert_eq!(
        vault.list(FileType::Data).expect("list data"),
        vec![(name(0xab), 8)]
    );
}

#[test]
fn settings_and_urls_never_show_secrets() {
    let settings = S3Settings {
        access_key_id: Some("AKIDEXAMPLE".to_string()),
        secret_access_key: Some(SECRET.to_string()),
        region: Some("eu-west-1".to_string()),
        endpoint: Some("https://storage.example.invalid".to_string()),
        allow_http: None,
    };
    assert!(!format!("{settings:?}").contains(SECRET));

    let backend =
        S3Backend::from_url("s3://bucket/some/prefix", settings.clone()).expect("backend");
    assert_eq!(backend.location(), "s3://bucket/some/prefix");
    let debug = format!("{backend:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("s3://bucket/some/prefix"), "{debug}");

    for url in [
        "https://bucket/prefix".to_string(),
        "s3://".to_string(),
        format!("s3://AKIDEXAMPLE:{SECRET}@bucket/prefix"),
        "s3://bucket/a/../b".to_string(),
    ] {
        let err = S3Backend::from_url(&url, settings.clone()).expect_err(&url);
        let text = err.to_string();
        assert!(text.starts_with("S3 URL: "), "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }

    let plain_http = S3Settings {
        endpoint: Some("http://127.0.0.1:9".to_string()),
        allow_http: Some(false),
        ..settings
    };
    let err = S3Backend::from_url("s3://bucket/p", plain_http).expect_err("plain http");
    let text = err.to_string();
    assert!(
        text.starts_with("s3://bucket/p: endpoint: the endpoint is plain http://"),
        "{text}"
    );
    assert!(text.contains("allow_http"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[test]
fn a_stopped_server_fails_calls_promptly_and_a_restarted_one_serves_again() {
    let mut moto = Moto::start();
    moto.create_bucket("stops");
    let vault = moto.backend("s3://stops/v");
    vault
        .write(FileType::Data, &name(0xab), b"before the stop")
        .expect("write");
    moto.stop();

    let path = format!("data/ab/{}", name(0xab));
    let started = Instant::now();
    let err = vault
        .read(FileType::Data, &name(0xab))
        .expect_err("read from a stopped server");
    let read_took = started.elapsed();
    let started = Instant::now();
    let write_err = vault
        .write(FileType::Data, &name(0xab), b"during the stop")
        .expect_err("write to a stopped server");
    let write_took = started.elapsed();
    eprintln!("stopped server: read failed in {read_took:?}, write in {write_took:?}");

    for (err, took) in [(&err, read_took), (&write_err, write_took)] {
        let text = err.to_string();
        assert!(
            matches!(err, BackendError::Remote { .. }),
            "expected a remote failure, got {err:?}"
        );
        assert!(text.starts_with("s3://stops/v: "), "{text}");
        assert!(text.contains(&path), "{text}");
        assert!(text.contains("cannot connect"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(
            took < STOPPED_SERVER_DEADLINE,
            "took {took:?} to fail: {text}"
        );
    }

    // The same backend works again once a server answers (the caller's
    // later retry): moto keeps nothing, so the bucket is made anew.
    let moto = Moto::start_on(moto.port);
    moto.create_bucket("stops");
    vault
        .write(FileType::Data, &name(0xab), b"after the restart")
        .expect("write after restart");
    assert_eq!(
        vault.read(FileType::Data, &name(0xab)).expect("read"),
        b"after the restart"
    );
}

/// The whole spine with the vault in a bucket: push → snapshot → restore
/// (while the service runs) → fsck; then the object store stops answering
/// (moto paused) and comes back: the delivery fails, is retried and ends in a
/// snapshot, and both snapshots restore.
#[test]
fn the_spine_runs_with_the_vault_in_a_bucket_and_survives_a_stalled_store() {
    const REPO: &str = "acme/bucketed";
    let moto = Moto::start();
    moto.create_bucket("hookvault");
    let support::OneCommitRepo {
        tmp,
        server,
        upstream,
        work,
        head: first,
    } = one_commit_repo(REPO);
    let dir = tmp.path().join("hv");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = bucket_config(
        &dir,
        &moto,
        &server,
        "s3://hookvault/vaults/main",
        "",
        "[worker]\nmax_attempts = 6\nretry_base_ms = 200\n",
    );
    let service = Service::start_config(&dir, &config);
    service.push("s3-1", &branch_push(REPO, "main", None, &first));
    let outcome = service.outcome("s3-1");
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());

    let keys = moto.keys("hookvault", "vaults/main/");
    for prefix in [
        "vaults/main/config",
        "vaults/main/data/",
        "vaults/main/index/",
        "vaults/main/snapshots/",
    ] {
        assert!(
            keys.iter().any(|(k, _)| k.starts_with(prefix)),
            "no {prefix} in {keys:?}"
        );
    }
    assert!(
        !dir.join("data/vault").exists(),
        "the vault must not be on local disk"
    );
    assert!(
        !service.log().contains(SECRET),
        "the secret key reached the log"
    );

    let restored = tmp.path().join("first.git");
    let out = restore(&service.config, REPO, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(refs_of(&restored), refs_of(&upstream));
    assert_fsck_clean(&restored);

    // The object store stalls: every call times out until it is resumed.
    let second = work.commit("b.txt", "b\n", "B");
    work.git(&["push", "-q", "origin", "main"]);
    let pid = moto.child.id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    service.push("s3-2", &branch_push(REPO, "main", Some(&first), &second));
    let failed_once = wait_until("a failed attempt", Duration::from_secs(120), || {
        let (_, d) = service.api("deliveries/s3-2");
        d["last_error"].as_str().map(str::to_string)
    });
    signal("-CONT");
    assert!(
        failed_once.contains("s3://hookvault/vaults/main"),
        "{failed_once}"
    );
    let outcome = wait_until("the retried delivery", Duration::from_secs(180), || {
        let (_, d) = service.api("deliveries/s3-2");
        (d["status"] == "done" || d["status"] == "failed").then_some(d)
    });
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    assert!(outcome["attempts"].as_u64() >= Some(2), "{outcome}");

    let snapshots = service.snapshots(REPO);
    let last = snapshots.last().expect("snapshots");
    assert_eq!(last["refs"]["refs/heads/main"], second.as_str());
    for (i, snapshot) in snapshots.iter().enumerate() {
        let id = snapshot["id"].as_str().expect("id");
        let to = tmp.path().join(format!("restored-{i}.git"));
        let out = restore(&service.config, REPO, Some(id), &to);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_fsck_clean(&to);
    }
    service.stop();
}

#[test]
fn an_encrypted_vault_in_a_bucket_keeps_its_keys_there_and_restores() {
    const REPO: &str = "acme/sealed-bucket";
    let moto = Moto::start();
    moto.create_bucket("hookvault");
    let support::OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let dir = tmp.path().join("hv");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = bucket_config(
        &dir,
        &moto,
        &server,
        "s3://hookvault/vaults/sealed",
        "passphrase = \"a passphrase for the bucket\"\n",
        "",
    );
    let service = Service::start_config(&dir, &config);
    service.push("sealed-1", &branch_push(REPO, "main", None, &head));
    let outcome = service.outcome("sealed-1");
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    let keys = moto.keys("hookvault", "vaults/sealed/");
    assert_eq!(
        keys.iter()
            .filter(|(k, _)| k.starts_with("vaults/sealed/keys/"))
            .count(),
        1,
        "{keys:?}"
    );
    assert!(
        !service.log().contains("a passphrase for the bucket"),
        "the passphrase reached the log"
    );
    let restored = tmp.path().join("restored.git");
    let out = restore(&service.config, REPO, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);
    assert_eq!(refs_of(&restored)["refs/heads/main"], head);
    service.stop();
    // Another passphrase: one line, nothing changed in the bucket.
    let wrong = dir.join("wrong.toml");
    std::fs::write(
        &wrong,
        config.replace("a passphrase for the bucket", "not the passphrase"),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(&wrong)
        .args(["snapshots", "--repo", REPO])
        .output()
        .expect("cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert_eq!(moto.keys("hookvault", "vaults/sealed/"), keys);
}
