//! Encryption at rest through the real binary: a vault created with
//! `store.passphrase` holds nothing readable (neither the content, nor git
//! ids, nor repository names: checked against a plain vault of the same
//! pushes, where they are found), restores clean, still deduplicates, opens
//! only with one of its keys (a wrong or missing passphrase is one clear
//! line, and changes no file), and `hookvault key add|list|remove` manage
//! several passphrases.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const REPO: &str = "acme-eng/hush-hush";
const PASSPHRASE: &str = "correct horse battery staple";

/// The config of a service on `git` whose store is `dir/data`, with
/// `store.passphrase` set to the file `passphrase` when given.
fn config_with(dir: &Path, git: &GitServer, passphrase: Option<&Path>) -> String {
    let text = config_text(&dir.join("data"), git, 2, 50, "");
    match passphrase {
        Some(file) => text.replacen(
            "[store]\n",
            &format!(
                "[store]\npassphrase = {{ file = \"{}\" }}\n",
                file.display()
            ),
            1,
        ),
        None => text,
    }
}

fn write_file(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write");
    path.to_path_buf()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The vault files whose bytes contain `needle`.
fn holding(vault: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(vault)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| contains(&b, needle)))
        .collect()
}

fn failure(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn an_encrypted_vault_reveals_nothing_and_opens_only_with_its_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    let pass_file = write_file(&tmp.path().join("passphrase"), PASSPHRASE);
    let plain = Service::start_config(
        &tmp.path().join("plain"),
        &config_with(&tmp.path().join("plain"), &server, None),
    );
    let sealed = Service::start_config(
        &tmp.path().join("sealed"),
        &config_with(&tmp.path().join("sealed"), &server, Some(&pass_file)),
    );
    // Content zstd leaves as it is: random bytes.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let marker: Vec<u8> = (0..512)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(work.dir.join("secret.bin"), &marker).expect("write");
    let tip = work.commit("notes/readme.txt", "nothing here\n", "Secret");
    work.git(&["push", "-q", "origin", "main"]);
    for (n, service) in [&plain, &sealed].into_iter().enumerate() {
        let id = format!("{{77777777-aaaa-4bbb-8ccc-00000000000{n}}}");
        service.push(&id, &branch_push(REPO, "main", None, &tip));
        assert_eq!(service.outcome(&id)["status"], "done", "{}", service.log());
    }
    let tip_bytes = hex_bytes(&tip);
    let plain_vault = plain.dir.join("data/vault");
    let sealed_vault = sealed.dir.join("data/vault");
    // The content and the git ids (raw, as index files hold them) are in
    // the plain vault's bytes, and in none of the encrypted vault's; nor
    // are the commit's hex id or the repository's name.
    let marker_part = &marker[100..164];
    for needle in [marker_part, &tip_bytes] {
        assert!(
            !holding(&plain_vault, needle).is_empty(),
            "the plain vault shows it (so the check can fail)"
        );
    }
    for needle in [marker_part, &tip_bytes, tip.as_bytes(), b"hush-hush"] {
        let found = holding(&sealed_vault, needle);
        assert!(
            found.is_empty(),
            "readable in the encrypted vault: {found:?}"
        );
    }

    // It restores, and a second ref to the same commit adds only a ref
    // table and a snapshot.
    let restored = tmp.path().join("restored");
    let out = restore(&sealed.config, REPO, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);
    assert_eq!(refs_of(&restored)["refs/heads/main"], tip);
    let size = |dir: &Path| -> u64 {
        files(dir)
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let before = size(&sealed_vault.join("data"));
    work.git(&["push", "-q", "origin", "main:refs/heads/copy"]);
    let id = "{77777777-aaaa-4bbb-8ccc-000000000009}";
    sealed.push(id, &branch_push(REPO, "copy", None, &tip));
    assert_eq!(sealed.outcome(id)["status"], "done", "{}", sealed.log());
    let grown = size(&sealed_vault.join("data")) - before;
    assert!(
        grown < 1024,
        "a ref to a held commit stores no object again: {grown} bytes"
    );
    let (ok, report) = verify(&sealed.config, &["--read-data"]);
    assert!(ok, "{report}");
    let config = sealed.config.clone();
    plain.stop();
    sealed.stop();

    // Wrong, missing, or needless passphrases: one clear line, no change.
    let everything = files(&sealed_vault);
    let wrong_file = write_file(&tmp.path().join("wrong"), "tr0ub4dor&3");
    let cases = [
        (Some(wrong_file.as_path()), "wrong passphrase"),
        (None, "is encrypted: set store.passphrase"),
    ];
    for (passphrase, says) in cases {
        let text = config_with(&tmp.path().join("sealed"), &server, passphrase);
        let other = write_file(&tmp.path().join("other.toml"), &text);
        for args in [&["snapshots", "--repo", REPO][..], &["verify"], &["prune"]] {
            let stderr = failure(&run(&other, args));
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                !stderr.contains(PASSPHRASE) && !stderr.contains("tr0ub4dor"),
                "{stderr}"
            );
        }
    }
    assert_eq!(files(&sealed_vault), everything);
    let text = config_with(&tmp.path().join("plain"), &server, Some(&pass_file));
    let needless = write_file(&tmp.path().join("needless.toml"), &text);
    let stderr = failure(&run(&needless, &["snapshots", "--repo", REPO]));
    assert!(stderr.contains("is not encrypted"), "{stderr}");

    // A second passphrase; the first removed; the last never.
    let keys = |config: &Path| -> Vec<serde_json::Value> {
        let out = run(config, &["key", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let first = keys(&config);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["in_use"], true);
    let out = Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(&config)
        .args([
            "key",
            "add",
            "--label",
            "ops",
            "--new-passphrase-env",
            "HV_NEW_PASS",
        ])
        .env("HV_NEW_PASS", "a second, longer passphrase")
        .output()
        .expect("key add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(keys(&config).len(), 2);
    let second_file = write_file(&tmp.path().join("second"), "a second, longer passphrase");
    let text = config_with(&tmp.path().join("sealed"), &server, Some(&second_file));
    let second = write_file(&tmp.path().join("second.toml"), &text);
    let listed = keys(&second);
    let in_use: Vec<&serde_json::Value> = listed.iter().filter(|k| k["in_use"] == true).collect();
    assert_eq!(in_use.len(), 1);
    assert_eq!(in_use[0]["label"], "ops");
    let first_id = first[0]["id"].as_str().expect("id");
    let stderr = failure(&run(&config, &["key", "remove", first_id]));
    assert!(
        stderr.contains("is the one store.passphrase opens"),
        "{stderr}"
    );
    let out = run(&second, &["key", "remove", &first_id[..12]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = failure(&run(&config, &["snapshots", "--repo", REPO]));
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    let out = run(&second, &["snapshots", "--repo", REPO, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = keys(&second)[0]["id"].as_str().expect("id").to_string();
    let stderr = failure(&run(&second, &["key", "remove", &last]));
    assert!(
        stderr.contains("is the one store.passphrase opens"),
        "{stderr}"
    );

    // A key change waits its turn: while another holds the lock, remove
    // refuses, naming it.
    {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(sealed_vault.parent().expect("store").join("keys.lock"))
            .expect("lock file");
        lock.try_lock().expect("lock");
        let stderr = failure(&run(&second, &["key", "remove", &last]));
        assert!(stderr.contains("another key change holds"), "{stderr}");
    }

    // A damaged key file, and one whose name is not its hash, are left out:
    // the vault still opens. A key file that the passphrase opens to
    // another master key (another vault's, or one planted by someone who
    // can write the vault) is never used.
    let keys_dir = sealed_vault.join("keys");
    let junk = b"{ not a key file".to_vec();
    std::fs::write(keys_dir.join(blake3::hash(&junk).to_hex().as_str()), &junk).expect("junk");
    std::fs::write(keys_dir.join("0".repeat(64)), b"{}").expect("misnamed");
    let out = run(&second, &["snapshots", "--repo", REPO, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = tmp.path().join("other-vault");
    hookvault::vault::Vault::open_local(
        &other,
        hookvault::vault::Create::IfMissing,
        hookvault::vault::WriteOptions {
            passphrase: Some(hookvault::vault::crypto::Passphrase::new(
                "a second, longer passphrase".as_bytes().to_vec(),
            )),
            ..Default::default()
        },
    )
    .expect("another vault with the same passphrase");
    let foreign = files(&other.join("keys")).remove(0);
    let own = keys_dir.join(&last);
    let aside = tmp.path().join("own-key");
    std::fs::rename(&own, &aside).expect("set the own key aside");
    std::fs::copy(&foreign, keys_dir.join(foreign.file_name().expect("name"))).expect("plant");
    let stderr = failure(&run(&second, &["snapshots", "--repo", REPO]));
    assert!(
        stderr.contains("to a master key the vault's config does not name"),
        "{stderr}"
    );
    std::fs::rename(&aside, &own).expect("the own key back");
    let out = run(&second, &["snapshots", "--repo", REPO, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Forget and prune work on sealed records as on plain ones (the
    // first snapshot's ref table goes; records are copied sealed).
    let out = run(&second, &["forget", "--keep-last", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&second, &["prune", "--max-unused-percent", "0", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        pruned["report"]["data_files_rewritten"]
            .as_u64()
            .expect("n")
            + pruned["report"]["data_files_removed"].as_u64().expect("n")
            > 0,
        "{pruned}"
    );
    let (ok, report) = verify(&second, &["--read-data"]);
    assert!(ok, "{report}");
    let restored = tmp.path().join("after-prune");
    let out = restore(&second, REPO, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);
    assert_eq!(refs_of(&restored)["refs/heads/copy"], tip);

    // A flipped byte in an encrypted record fails its authentication, and
    // verify names it.
    let data = files(&sealed_vault.join("data"));
    let largest = data
        .iter()
        .max_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .expect("data file");
    let mut bytes = std::fs::read(largest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(largest, &bytes).expect("write");
    let (ok, report) = verify(&second, &["--read-data"]);
    assert!(!ok, "{report}");
    assert!(
        report.to_string().contains("does not authenticate"),
        "{report}"
    );

    // `init` creates a vault before any push: encrypted with a passphrase,
    // plain without; never over one that is there.
    for (name, pass) in [
        ("init-sealed", Some(pass_file.as_path())),
        ("init-plain", None),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = write_file(
            &dir.join("hookvault.toml"),
            &config_with(&dir, &server, pass),
        );
        let out = run(&config, &["init", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(created["encrypted"], pass.is_some(), "{created}");
        assert!(dir.join("data/vault/config").is_file());
        let stderr = failure(&run(&config, &["init"]));
        assert!(stderr.contains("a vault is already at"), "{stderr}");
        let out = run(&config, &["stats", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
