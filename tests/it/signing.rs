//! Signed backups (issue 13), on the real Docker engine with the stand-in GitLab image and
//! Debian's `minisign`: what Girofle signs, `minisign -V` checks with `girofle key show`'s
//! key; a manifest forged consistently but not re-signed, an unsigned backup, a backup of
//! another fleet are refused (exit 5, nothing created) until trusted; `backup sign`
//! checks before it signs; copies and state exports carry the signatures and the key.

use std::path::Path;
use std::process::{Command, Output};

use girofle_core::backup::Manifest;
use girofle_core::Girofle;
use girofle_tests::*;
use serde_json::Value;

/// Asserts exit code 5 and returns stderr.
fn refused(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(5), "{what}: {out:?}");
    err
}

fn minisign_bin() -> &'static str {
    let found = Command::new("minisign")
        .arg("-v")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "the `minisign` CLI is missing: `apt-get install minisign` (scripts/test does)"
    );
    "minisign"
}

/// `minisign -V` of a backup's manifest in a file store with the public key in `pub_file`.
fn minisign_verify(pub_file: &Path, store: &Path, id: &str) -> Output {
    let manifest = store.join(format!("{id}.manifest"));
    Command::new(minisign_bin())
        .arg("-V")
        .arg("-p")
        .arg(pub_file)
        .arg("-m")
        .arg(&manifest)
        .arg("-x")
        .arg(store.join(format!("{id}.manifest.minisig")))
        .output()
        .unwrap()
}

/// Nothing of instance `name` exists: no directory, no container, no inventory row.
async fn assert_nothing_of(g: &Girofle, root: &Path, name: &str, case: &str) {
    assert!(
        !root.join("instances").join(name).exists(),
        "{case}: the instance directory was created"
    );
    let container = docker(None)
        .args(["inspect", &format!("girofle-{name}")])
        .output()
        .unwrap();
    assert!(
        !container.status.success(),
        "{case}: a container was created"
    );
    assert!(
        g.show(name).await.is_err(),
        "{case}: the inventory has the instance"
    );
}

fn listed(root: &Path, name: &str, store: Option<&str>, id: &str) -> Value {
    let mut args = vec!["--json", "backup", "list", name];
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    let list = json_ok(&cli_on(root, &args), "--json output");
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_are_signed_checked_by_minisign_and_refused_when_forged_or_unsigned() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let WithProject {
        name, url, refs, ..
    } = commission_with_project(&g, &t, "sig", 2).await;
    let b = g.backup(&name, cold(None)).await.unwrap();
    let store = t.root.join("backups");
    let manifest_path = store.join(format!("{}.manifest", b.id));
    let signature_path = store.join(format!("{}.manifest.minisig", b.id));
    assert!(signature_path.exists(), "the backup has no signature");

    // 1. Debian's minisign checks it with the key `girofle key show` prints.
    let pub_file = t.dir.path().join("fleet.pub");
    std::fs::write(&pub_file, ok(t.cli(&["key", "show"]))).unwrap();
    let key = json_ok(&t.cli(&["--json", "key", "show"]), "--json output");
    let key_id = key["key_id"].as_str().unwrap().to_string();
    assert!(
        std::fs::read_to_string(&pub_file)
            .unwrap()
            .contains(&key_id),
        "the .pub does not name the key id"
    );
    let checked = minisign_verify(&pub_file, &store, &b.id);
    let said = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "minisign -V refused: {said}");
    assert!(said.contains(&format!("backup:{}", b.id)), "{said}");
    let entry = listed(&t.root, &name, None, &b.id);
    assert_eq!(entry["signed"], "trusted", "{entry}");
    assert_eq!(entry["key_id"], key_id.as_str(), "{entry}");
    // The key is the root's, private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.root.join("keys/signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // 2. A manifest forged consistently (fields changed, checksum recomputed), not
    //    re-signed: verify and restore refuse it (exit 5) naming the backup, the store and
    //    the key, and nothing is created. minisign agrees.
    let pristine = std::fs::read(&manifest_path).unwrap();
    let mut forged = Manifest::from_bytes("test", &pristine).unwrap();
    forged.header.host = "evil-host".into();
    forged.header.instance.settings.insert(
        "gitlab_rails['initial_root_password']".into(),
        "'owned'".into(),
    );
    std::fs::write(&manifest_path, forged.to_bytes().unwrap()).unwrap();
    assert!(
        !minisign_verify(&pub_file, &store, &b.id).status.success(),
        "minisign accepted the forged manifest"
    );
    let e = refused(
        t.cli(&["backup", "verify", &b.id]),
        "verify of a forged manifest",
    );
    assert!(
        e.contains(&format!("backup `{}` in store `local`", b.id)) && e.contains(&key_id),
        "{e}"
    );
    let as_name = unique("forged");
    let e = refused(
        t.cli(&["restore", &b.id, "--as", &as_name]),
        "restore of a forged manifest",
    );
    assert!(e.contains("does not match its manifest"), "{e}");
    assert_nothing_of(&g, &t.root, &as_name, "restore of a forged manifest").await;
    // In place too: the running instance is untouched.
    refused(
        t.cli(&["restore", &b.id]),
        "in-place restore of a forged manifest",
    );
    assert_eq!(ls_remote(&url), refs);
    let entry = listed(&t.root, &name, None, &b.id);
    assert_eq!(entry["signed"], "bad", "{entry}");
    std::fs::write(&manifest_path, &pristine).unwrap();
    ok(t.cli(&["backup", "verify", &b.id]));

    // 3. Unsigned (its signature deleted): listed as such, refused with the hint to sign.
    std::fs::remove_file(&signature_path).unwrap();
    assert_eq!(listed(&t.root, &name, None, &b.id)["signed"], "unsigned");
    let hint = format!(
        "girofle backup sign {} after checking where it came from",
        b.id
    );
    let e = refused(
        t.cli(&["backup", "verify", &b.id]),
        "verify of an unsigned backup",
    );
    assert!(e.contains(&hint) && e.contains("store `local`"), "{e}");
    let as_name = unique("unsigned");
    let e = refused(
        t.cli(&["restore", &b.id, "--as", &as_name]),
        "restore of an unsigned backup",
    );
    assert!(e.contains(&hint), "{e}");
    assert_nothing_of(&g, &t.root, &as_name, "restore of an unsigned backup").await;
    // Copy refuses it too, and leaves nothing at the destination.
    let shared = t.dir.path().join("shared");
    t.edit_config(|c| {
        c.stores.insert("shared".into(), file_store(&shared));
    });
    let e = refused(
        t.cli(&["backup", "copy", &b.id, "--to", "shared"]),
        "copy of an unsigned backup",
    );
    assert!(e.contains(&hint), "{e}");
    assert!(
        !shared.join(&name).exists() || std::fs::read_dir(shared.join(&name)).unwrap().count() == 0,
        "a refused copy wrote objects"
    );

    // `backup sign` checks every hash first: a damaged archive is not signed.
    let archive = store.join(format!("{}.tar.zst", b.id));
    let good = std::fs::read(&archive).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    std::fs::write(&archive, &bad).unwrap();
    refused(
        t.cli(&["backup", "sign", &b.id]),
        "sign of a damaged backup",
    );
    assert!(!signature_path.exists(), "a damaged backup was signed");
    std::fs::write(&archive, &good).unwrap();
    let r = json_ok(
        &t.cli(&["--json", "backup", "sign", &b.id]),
        "--json output",
    );
    assert_eq!(
        (r["signed_now"].as_bool(), r["was"].as_str()),
        (Some(true), Some("unsigned")),
        "{r}"
    );
    assert_eq!(r["key_id"], key_id.as_str());
    let signature = std::fs::read(&signature_path).unwrap();
    // Signing again changes nothing.
    let r = json_ok(
        &t.cli(&["--json", "backup", "sign", &b.id]),
        "--json output",
    );
    assert_eq!(r["signed_now"].as_bool(), Some(false), "{r}");
    assert_eq!(std::fs::read(&signature_path).unwrap(), signature);
    ok(t.cli(&["backup", "verify", &b.id]));
    assert!(minisign_verify(&pub_file, &store, &b.id).status.success());
    let journal = std::fs::read_to_string(t.root.join("journal.jsonl")).unwrap();
    assert!(
        journal.contains("\"backup-sign\""),
        "backup sign is not journaled"
    );

    // Copied, it carries its signature, byte for byte.
    ok(t.cli(&["backup", "copy", &b.id, "--to", "shared"]));
    assert_eq!(
        std::fs::read(shared.join(format!("{}.manifest.minisig", b.id))).unwrap(),
        signature
    );
    assert!(minisign_verify(&pub_file, &shared, &b.id).status.success());
    ok(t.cli(&["backup", "verify", &b.id, "--store", "shared"]));

    // And restores, now that it is signed.
    let as_name = unique("signed");
    ok(t.cli(&["restore", &b.id, "--as", &as_name]));
    assert_eq!(
        g.show(&as_name).await.unwrap().state,
        girofle_core::InstanceState::Running
    );

    // A root without the secret key (kept to verify only) lists and verifies, and
    // refuses to back up before touching GitLab, naming the key.
    let secret = t.root.join("keys/signing.key");
    let kept = std::fs::read(&secret).unwrap();
    std::fs::remove_file(&secret).unwrap();
    assert_eq!(listed(&t.root, &name, None, &b.id)["signed"], "trusted");
    ok(t.cli(&["backup", "verify", &b.id]));
    let out = t.cli(&["backup", "create", &name, "--strategy", "cold"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signing key"),
        "{out:?}"
    );
    assert!(
        !secret.exists(),
        "a new key was made behind the operator's back"
    );
    std::fs::write(&secret, kept).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_fleets_backups_are_trusted_only_when_its_key_is() {
    let image = stand_in("17.5.1");
    let a = TestRoot::new(&image);
    let b = TestRoot::new(&image);
    let shared = a.dir.path().join("shared");
    for t in [&a, &b] {
        t.edit_config(|c| {
            c.stores.insert("shared".into(), file_store(&shared));
        });
    }
    let ga = a.open().await;
    let name = unique("fleet");
    ga.commission(girofle_core::CommissionRequest {
        name: name.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let backup = ga.backup(&name, cold(Some("shared"))).await.unwrap();
    let a_key = json_ok(&a.cli(&["--json", "key", "show"]), "--json output");
    let a_id = a_key["key_id"].as_str().unwrap();
    let b_key = json_ok(&b.cli(&["--json", "key", "show"]), "--json output");
    assert_ne!(a_key["key_id"], b_key["key_id"], "two fleets, one key");

    // Fleet B: listed as untrusted, refused naming A's key, nothing created.
    let gb = b.open().await;
    let entry = listed(&b.root, &name, Some("shared"), &backup.id);
    assert_eq!(entry["signed"], "untrusted", "{entry}");
    let e = refused(
        b.cli(&["backup", "verify", &backup.id, "--store", "shared"]),
        "verify of another fleet's backup",
    );
    assert!(
        e.contains(a_id) && e.contains("store `shared`") && e.contains("[trust] keys"),
        "{e}"
    );
    let as_name = unique("foreign");
    refused(
        b.cli(&["restore", &backup.id, "--store", "shared", "--as", &as_name]),
        "restore of another fleet's backup",
    );
    assert_nothing_of(&gb, &b.root, &as_name, "restore of another fleet's backup").await;

    // A bad key in [trust] keys is a configuration error naming the field.
    let config = b.root.join("girofle.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("[trust]\nkeys = []"), "{text}");
    std::fs::write(
        &config,
        text.replacen("keys = []", "keys = [\"RWQnotakey\"]", 1),
    )
    .unwrap();
    let out = b.cli(&["backup", "list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("`trust.keys`") && e.contains("RWQnotakey"),
        "{e}"
    );
    std::fs::write(&config, &text).unwrap();

    // Trusted once A's public key is in [trust] keys: verifies and restores.
    b.edit_config(|c| c.trust.keys = vec![a_key["public_key"].as_str().unwrap().to_string()]);
    assert_eq!(
        listed(&b.root, &name, Some("shared"), &backup.id)["signed"],
        "trusted"
    );
    ok(b.cli(&["backup", "verify", &backup.id, "--store", "shared"]));
    let gb = b.open().await;
    let as_name = unique("trusted");
    gb.restore(girofle_core::restore::RestoreRequest {
        id: backup.id.clone(),
        store: Some("shared".into()),
        as_name: Some(as_name.clone()),
        ..Default::default()
    })
    .await
    .expect("a trusted fleet's backup restores");

    // State export carries the key: a fresh root takes it as its own; a root with a key of
    // its own keeps it and trusts the imported one.
    let file = a.dir.path().join("a.girofle-state");
    ok(a.cli(&["state", "export", file.to_str().unwrap()]));
    let fresh = a.dir.path().join("fresh");
    let r = json_ok(
        &cli_on(
            &fresh,
            &["--json", "state", "import", file.to_str().unwrap()],
        ),
        "--json output",
    );
    assert_eq!(r["signing_key"], a_key["key_id"], "{r}");
    assert_eq!(
        json_ok(&cli_on(&fresh, &["--json", "key", "show"]), "--json output")["public_key"],
        a_key["public_key"]
    );
    let c = TestRoot::new(&image);
    let c_key = json_ok(&c.cli(&["--json", "key", "show"]), "--json output");
    let r = json_ok(
        &c.cli(&["--json", "state", "import", file.to_str().unwrap()]),
        "--json output",
    );
    assert_eq!(
        (&r["signing_key"], &r["trusted_imported_key"]),
        (&c_key["key_id"], &a_key["key_id"]),
        "{r}"
    );
    // The imported girofle.toml has no [trust] keys: A's key is trusted through keys/trusted.
    ok(c.cli(&["backup", "verify", &backup.id, "--store", "shared"]));
    let trusted = json_ok(&c.cli(&["--json", "key", "show"]), "--json output");
    assert_eq!(trusted["key_id"], c_key["key_id"], "the root's key changed");
    assert!(
        trusted["trusted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == a_key["key_id"]),
        "{trusted}"
    );
}
