//! Secrets, on the real Docker engine, the stand-in GitLab image, a real S3-compatible
//! server and Debian's `age` tools: backups encrypted at rest with age (the `age` command
//! decrypts what Girofle wrote, Girofle restores what `age` encrypted, a missing or wrong
//! key fails clearly and touches nothing); no planted secret in any output, journal, log,
//! metric, webhook or state export of a realistic CLI session, setting values nested in
//! Ruby hashes or under innocent keys included; secret-holding files are 0600 and the
//! root 0700.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use girofle_core::backup::{BackupOptions, Retention};
use girofle_core::restore::RestoreRequest;
use girofle_core::store::{open_store, StoreConfig};
use girofle_core::Error;
use girofle_tests::*;

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// `age-keygen -o DIR/NAME`; returns (key file, public key). Fails with how to install
/// `age` when it is missing.
fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap_or_else(|e| {
            panic!("`age-keygen` cannot run ({e}): install Debian's `age` (apt-get install age; scripts/test does)")
        });
    assert!(out.status.success(), "{out:?}");
    let public = run(Command::new("age-keygen").arg("-y").arg(&key))
        .trim()
        .to_string();
    assert!(public.starts_with("age1"), "{public}");
    (key, public)
}

/// Runs a shell pipeline, failing the test with its stderr; returns stdout.
fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn starts_with(path: &Path, magic: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.starts_with(magic)
}

/// The names `age -d -i KEY FILE | zstd -d | tar -t` lists.
fn age_tar_listing(key: &Path, file: &Path) -> String {
    sh(&format!(
        "age -d -i '{}' '{}' | zstd -d -q | tar -t",
        key.display(),
        file.display()
    ))
}

fn assert_invalid_identity(e: &Error, store: &str) {
    let text = e.to_string();
    assert!(
        matches!(e, Error::InvalidInput { field, .. } if field == "age_identity_file"),
        "not an invalid age_identity_file: {e:?}"
    );
    assert!(
        text.contains(&format!("[stores.{store}]")),
        "the error does not say where to set the key: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn age_reads_what_girofle_encrypted_and_girofle_restores_what_age_encrypted() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let keys = t.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, public) = age_keygen(&keys, "key.txt");
    let (other_key, _) = age_keygen(&keys, "other.txt");
    let nas_dir = t.dir.path().join("nas");
    let plain_dir = t.dir.path().join("plain");
    let by_age_dir = t.dir.path().join("by-age");
    let prefix = unique("age");
    t.edit_config(|c| {
        // The backup host holds only the public key of `nas`.
        c.stores.insert(
            "nas".into(),
            StoreConfig {
                age_recipients: Some(vec![public.clone()]),
                ..file_store(&nas_dir)
            },
        );
        c.stores.insert(
            "offsite".into(),
            StoreConfig {
                age_identity_file: Some(key.clone()),
                ..s3_store(&prefix)
            },
        );
        c.stores.insert("plain".into(), file_store(&plain_dir));
    });
    let g = t.open().await;
    let WithProject {
        name,
        password,
        url,
        refs,
        ..
    } = commission_with_project(&g, &t, "age", 3).await;
    let to = |store: &str| BackupOptions {
        store: Some(store.into()),
        ..Default::default()
    };

    // 1. Two backups to `nas`: archive and index are age files that `age` decrypts; the
    //    manifest is in clear; list (size checks) and prune work without the private key.
    let first = g.backup(&name, to("nas")).await.unwrap();
    let second = g.backup(&name, to("nas")).await.unwrap();
    let object = |dir: &Path, id: &str, ext: &str| dir.join(format!("{id}.{ext}"));
    let archive = object(&nas_dir, &second.id, "tar.zst");
    assert!(
        starts_with(&archive, AGE_MAGIC),
        "the archive is not an age file"
    );
    assert!(starts_with(
        &object(&nas_dir, &second.id, "index"),
        AGE_MAGIC
    ));
    let manifest = std::fs::read_to_string(object(&nas_dir, &second.id, "manifest")).unwrap();
    // Its signature stays in clear too: `minisign -V` checks it without the age key.
    let signature =
        std::fs::read_to_string(object(&nas_dir, &second.id, "manifest.minisig")).unwrap();
    assert!(
        signature.starts_with("untrusted comment: "),
        "the signature is not in clear"
    );
    assert!(
        manifest.contains(&second.id),
        "the manifest is not in clear"
    );
    let listing = age_tar_listing(&key, &archive);
    assert!(
        listing.contains("config/gitlab-secrets.json"),
        "`age -d | zstd -d | tar -t` does not list the secrets: {listing}"
    );
    let index = sh(&format!(
        "age -d -i '{}' '{}'",
        key.display(),
        object(&nas_dir, &second.id, "index").display()
    ));
    assert!(index.contains("gitlab-secrets.json"), "{index}");
    let listed = g.list_backups(Some(&name), Some("nas")).await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        vec![first.id.as_str(), second.id.as_str()],
        "the encrypted backups do not list (size checks)"
    );

    // 2. Without the private key: verify and restore fail saying what is missing and
    //    where to set it; nothing is created.
    let e = g.verify(&second.id, Some("nas")).await.unwrap_err();
    assert_invalid_identity(&e, "nas");
    let copy_name = unique("agecopy");
    let e = g
        .restore(RestoreRequest {
            id: second.id.clone(),
            store: Some("nas".into()),
            as_name: Some(copy_name.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_identity(&e, "nas");
    assert!(
        g.show(&copy_name).await.is_err(),
        "a failed restore left an instance"
    );
    assert!(!t.root.join("instances").join(&copy_name).exists());
    let out = t.cli(&["backup", "verify", &second.id, "--store", "nas"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("age_identity_file"), "{stderr}");

    // Prune needs no key either.
    let pruned = g
        .prune(
            Some(&name),
            Some("nas"),
            Retention {
                keep_last: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pruned, vec![first.id.clone()]);
    assert!(!object(&nas_dir, &first.id, "tar.zst").exists());

    // 3. With the key: verify; copy encrypted -> encrypted (S3) and -> clear, and back.
    t.edit_config(|c| c.stores.get_mut("nas").unwrap().age_identity_file = Some(key.clone()));
    let g = t.open().await;
    g.verify(&second.id, Some("nas")).await.unwrap();
    g.copy_backup(&second.id, Some("nas"), "offsite")
        .await
        .unwrap();
    g.verify(&second.id, Some("offsite")).await.unwrap();
    g.copy_backup(&second.id, Some("nas"), "plain")
        .await
        .unwrap();
    assert!(
        starts_with(&object(&plain_dir, &second.id, "tar.zst"), ZSTD_MAGIC),
        "a copy to a clear store is not the clear archive"
    );
    g.verify(&second.id, Some("plain")).await.unwrap();
    g.prune(
        Some(&name),
        Some("nas"),
        Retention {
            keep_last: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    g.backup(&name, to("plain")).await.unwrap();
    let clear = g.list_backups(Some(&name), Some("plain")).await.unwrap();
    let newest = clear.last().unwrap().id.clone();
    g.copy_backup(&newest, Some("plain"), "nas").await.unwrap();
    assert!(starts_with(
        &object(&nas_dir, &newest, "tar.zst"),
        AGE_MAGIC
    ));
    g.verify(&newest, Some("nas")).await.unwrap();

    // 4. What Girofle wrote to S3, read raw through the real server, is an age file the
    //    `age` tool decrypts.
    let raw = open_store("raw", &s3_store(&prefix)).unwrap();
    let bytes = raw
        .get_bytes(&format!("{}.tar.zst", second.id))
        .await
        .unwrap();
    assert!(bytes.starts_with(AGE_MAGIC), "the S3 archive is in clear");
    let fetched = t.dir.path().join("from-s3.age");
    std::fs::write(&fetched, &bytes).unwrap();
    let listing = age_tar_listing(&key, &fetched);
    assert!(listing.contains("config/gitlab-secrets.json"), "{listing}");

    // 5. Girofle restores a backup that `age` encrypted (the clear copy, encrypted by the
    //    command line tool), as a new instance: the commits are there, fsck is clean.
    std::fs::create_dir_all(by_age_dir.join(&name)).unwrap();
    for ext in ["tar.zst", "index"] {
        sh(&format!(
            "age -r '{public}' -o '{}' '{}'",
            object(&by_age_dir, &second.id, ext).display(),
            object(&plain_dir, &second.id, ext).display()
        ));
    }
    for ext in ["manifest.minisig", "manifest"] {
        std::fs::copy(
            object(&plain_dir, &second.id, ext),
            object(&by_age_dir, &second.id, ext),
        )
        .unwrap();
    }
    t.edit_config(|c| {
        c.stores.insert(
            "by-age".into(),
            StoreConfig {
                age_identity_file: Some(key.clone()),
                ..file_store(&by_age_dir)
            },
        );
        c.stores.insert(
            "wrong-key".into(),
            StoreConfig {
                age_identity_file: Some(other_key.clone()),
                ..file_store(&by_age_dir)
            },
        );
    });
    let g = t.open().await;
    // A wrong key: a clear error, nothing created.
    let e = g
        .restore(RestoreRequest {
            id: second.id.clone(),
            store: Some("wrong-key".into()),
            as_name: Some(copy_name.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_identity(&e, "wrong-key");
    assert!(e.to_string().contains("other age recipients"), "{e}");
    assert!(g.show(&copy_name).await.is_err());
    let restored = g
        .restore(RestoreRequest {
            id: second.id.clone(),
            store: Some("by-age".into()),
            as_name: Some(copy_name.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    // The restored database has the source's root, with the source's password.
    let copy_url = project_url(&restored.url, &password, "team/app.git");
    assert_ne!(copy_url, url);
    assert_eq!(ls_remote(&copy_url), refs, "the restored commits differ");
    clone_and_fsck(&copy_url, &t.dir.path().join("fsck"));

    // 6. A tampered encrypted archive is refused.
    let target = object(&by_age_dir, &second.id, "tar.zst");
    let mut bytes = std::fs::read(&target).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&target, bytes).unwrap();
    let e = g.verify(&second.id, Some("by-age")).await.unwrap_err();
    // Corrupt is what the CLI turns into exit code 5 ("the backup is damaged").
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
}

/// An age-encrypted store is a store like any other: the whole conformance battery
/// (sizes, listings, aborted and dropped uploads, copies) against a file:// store with
/// recipients, and its objects really are age files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = age_keygen(dir.path(), "key.txt");
    let data = dir.path().join("data");
    let other = dir.path().join("other");
    let config = StoreConfig {
        age_recipients: Some(vec![public]),
        age_identity_file: Some(key),
        ..file_store(&data)
    };
    let store = open_store("sealed", &config).unwrap();
    girofle_core::store::conformance::run_all(
        store.clone(),
        open_store("other", &file_store(&other)).unwrap(),
    )
    .await;
    store
        .put_bytes("probe/x.tar.zst", "hello".into())
        .await
        .unwrap();
    assert!(starts_with(&data.join("probe/x.tar.zst"), AGE_MAGIC));
    assert_eq!(store.head("probe/x.tar.zst").await.unwrap().size, 5);
}

// ---------------------------------------------------------------------------------------
// No leaks, and modes.

/// Everything a session printed, with what produced it.
#[derive(Default)]
struct Outputs {
    texts: Vec<(String, String)>,
}

impl Outputs {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    /// Runs the CLI (with and without --json), records both streams; returns the run.
    fn cli(&mut self, t: &TestRoot, args: &[&str]) -> Output {
        let mut last = None;
        for json in [false, true] {
            let mut all: Vec<&str> = args.to_vec();
            if json {
                all.insert(0, "--json");
            }
            let out = t.cli(&all);
            self.add(
                format!("stdout of {all:?}"),
                String::from_utf8_lossy(&out.stdout),
            );
            self.add(
                format!("stderr of {all:?}"),
                String::from_utf8_lossy(&out.stderr),
            );
            last = Some(out);
        }
        last.unwrap()
    }

    /// Like [`Outputs::cli`], failing the test when the command fails.
    fn ok(&mut self, t: &TestRoot, args: &[&str]) -> String {
        let out = self.cli(t, args);
        assert!(
            out.status.success(),
            "girofle {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI once (commands that change something), recording both streams.
    fn once(&mut self, t: &TestRoot, args: &[&str]) -> Output {
        let out = t.cli(args);
        self.add(
            format!("stdout of {args:?}"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.add(
            format!("stderr of {args:?}"),
            String::from_utf8_lossy(&out.stderr),
        );
        out
    }

    fn once_ok(&mut self, t: &TestRoot, args: &[&str]) -> String {
        let out = self.once(t, args);
        assert!(
            out.status.success(),
            "girofle {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Every regular file under `dir` (not following symlinks).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Decompresses a zstd file into text (the state export), lossily.
fn zstd_text(path: &Path) -> String {
    let out = Command::new("zstd")
        .args(["-d", "-q", "-c"])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "zstd -d {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A webhook receiver on loopback: every request it gets (head and body) lands in the
/// list, answered 200.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let list = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            list.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&data).into_owned());
        }
    });
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_leaks_and_secret_files_are_private() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let keys = t.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, public) = age_keygen(&keys, "key.txt");
    let identity = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let prefix = unique("leak");
    let root_password = "RootPw-planted-7c1e9a33";
    let token = "glpat-PlantedToken4d2f8b";
    let offsite = s3_store(&prefix);
    let access_key = offsite.access_key_id.clone().unwrap();
    let secret_key = offsite.secret_access_key.clone().unwrap();
    let (hook_port, webhooks) = webhook_receiver();
    t.edit_config(|c| {
        c.notify.webhook_url = Some(format!("http://127.0.0.1:{hook_port}/hooks/girofle"));
        c.notify.on_success = true;
        c.stores.insert(
            "offsite".into(),
            StoreConfig {
                age_recipients: Some(vec![public.clone()]),
                age_identity_file: Some(key.clone()),
                ..offsite.clone()
            },
        );
        // The same server with a wrong secret: every command on it fails.
        c.stores.insert(
            "badcreds".into(),
            StoreConfig {
                secret_access_key: Some("Wrong-planted-secret-55aa".into()),
                ..offsite.clone()
            },
        );
    });
    let mut outputs = Outputs::default();
    let name = unique("leak");
    let copy = unique("leakcopy");
    let set_password = format!("gitlab_rails['initial_root_password']={root_password}");
    let set_token = format!("gitlab_rails['initial_shared_runners_registration_token']={token}");
    // Secrets whose key does not look secret: nested in a Ruby hash, in a hash in a hash
    // beside an array, under innocent keys; given to create and to reconfigure.
    let smtp = "PLANTED-smtp-5b0c1e77";
    let aws = "PLANTED-aws-8d2a90f1";
    let ldap = "PLANTED-ldap-3e7f6a12";
    let otp = "PLANTED-otp-c4d9e0b3";
    let display = "PLANTED-display-71fa28ce";
    let refused = "PLANTED-refused-0a9b8c7d";
    let refused_by_gitlab = "PLANTED-gitlabrefused-6e5d4c3b";
    let set_smtp = format!("gitlab_rails['smtp_password']={smtp}");
    let set_aws = format!(
        "gitlab_rails['object_store']['connection']={{'provider' => 'AWS', 'aws_secret_access_key' => '{aws}'}}"
    );
    let set_ldap = format!(
        "gitlab_rails['ldap_servers']={{'main' => {{'password' => '{ldap}', 'hosts' => ['a', 'b']}}}}"
    );
    outputs.once_ok(
        &t,
        &[
            "--json",
            "instance",
            "create",
            &name,
            "--set",
            &set_password,
            "--set",
            &set_token,
            "--set",
            &set_smtp,
            "--set",
            &set_aws,
            "--set",
            &set_ldap,
        ],
    );
    let secrets_json = std::fs::read_to_string(
        t.root
            .join("instances")
            .join(&name)
            .join("config/gitlab-secrets.json"),
    )
    .unwrap();
    // Values of gitlab-secrets.json long enough to be meaningful secrets.
    let mut planted: Vec<(String, String)> = vec![
        ("root password".into(), root_password.into()),
        ("token".into(), token.into()),
        ("setting smtp_password".into(), smtp.into()),
        ("setting nested in object_store".into(), aws.into()),
        ("setting nested in ldap_servers".into(), ldap.into()),
        ("setting otp_key_base".into(), otp.into()),
        ("setting under an innocent key".into(), display.into()),
        ("value refused by Girofle".into(), refused.into()),
        ("value refused by GitLab".into(), refused_by_gitlab.into()),
        ("S3 secret key".into(), secret_key.clone()),
        ("wrong S3 secret".into(), "Wrong-planted-secret-55aa".into()),
        ("age identity".into(), identity.clone()),
        (
            "signing key".into(),
            std::fs::read_to_string(t.root.join("keys/signing.key"))
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
                .to_string(),
        ),
    ];
    let parsed: serde_json::Value = serde_json::from_str(&secrets_json).unwrap();
    let mut stack = vec![parsed];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => stack.extend(m.into_values()),
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::String(s) if s.len() >= 16 => planted.push((
                "gitlab-secrets.json value".into(),
                s.lines().nth(1).unwrap_or(&s).to_string(),
            )),
            _ => {}
        }
    }
    assert!(
        planted.len() > 6,
        "gitlab-secrets.json holds no secret value: {secrets_json}"
    );
    let _ = access_key;

    outputs.ok(&t, &["instance", "list"]);
    outputs.ok(&t, &["instance", "show", &name]);
    outputs.once_ok(
        &t,
        &[
            "instance",
            "reconfigure",
            &name,
            "--set",
            &format!("gitlab_rails['smtp_password']={root_password}"),
        ],
    );
    outputs.once_ok(
        &t,
        &[
            "--json",
            "instance",
            "reconfigure",
            &name,
            "--set",
            &format!("gitlab_rails['otp_key_base']='{otp}'"),
            "--set",
            &format!("gitlab_rails['gitlab_email_display_name']=\"{display}\""),
        ],
    );

    // Values that are not one Ruby literal are refused (exit 2) saying where, without
    // echoing the value, and gitlab.rb is untouched; so is a value GitLab refuses, whose
    // output repeats it.
    let rb_path = t
        .root
        .join("instances")
        .join(&name)
        .join("config/gitlab.rb");
    let rb_before = std::fs::read(&rb_path).unwrap();
    for value in [
        format!("'{refused}'; system('touch /tmp/girofle-pwned')"),
        format!("'{refused}' + `id`"),
        format!("\"#{{`id`}}{refused}\""),
        format!("[1, {refused}]"),
        format!("{{'k' => '{refused}'"),
        format!("'{refused}' # comment"),
        format!("'{refused}'\n__END__"),
        format!("%x(id {refused})"),
    ] {
        let set = format!("gitlab_rails['time_zone']={value}");
        let out = outputs.once(&t, &["instance", "reconfigure", &name, "--set", &set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value:?}: {stderr}");
        assert!(stderr.contains("at character"), "{value:?}: {stderr}");
        assert_eq!(std::fs::read(&rb_path).unwrap(), rb_before, "{value:?}");
    }
    let refused_name = unique("refused");
    let out = outputs.once(
        &t,
        &[
            "instance",
            "create",
            &refused_name,
            "--set",
            &format!("gitlab_rails['time_zone']='{refused}'; exit"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!t.root.join("instances").join(&refused_name).exists());
    let out = outputs.once(
        &t,
        &[
            "instance",
            "reconfigure",
            &name,
            "--set",
            &format!("gitlab_rails['x']['y']['z']='{refused_by_gitlab}'"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("GitLab refused"), "{stderr}");
    assert_eq!(std::fs::read(&rb_path).unwrap(), rb_before);
    let made = outputs.once_ok(
        &t,
        &["--json", "backup", "create", &name, "--store", "offsite"],
    );
    let id = serde_json::from_str::<serde_json::Value>(&made).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    outputs.once_ok(&t, &["backup", "create", &name]);
    outputs.ok(&t, &["backup", "list", &name, "--store", "offsite"]);
    outputs.ok(&t, &["backup", "list", &name]);
    outputs.ok(&t, &["backup", "verify", &id, "--store", "offsite"]);
    outputs.once_ok(
        &t,
        &[
            "--json", "backup", "copy", &id, "--store", "offsite", "--to", "local",
        ],
    );
    outputs.once_ok(
        &t,
        &[
            "--json", "restore", &id, "--store", "offsite", "--as", &copy,
        ],
    );
    outputs.once_ok(
        &t,
        &[
            "schedule",
            "set",
            &name,
            "--backup",
            "0 */6 * * *",
            "--keep-last",
            "3",
        ],
    );
    outputs.ok(&t, &["schedule", "list"]);
    outputs.ok(&t, &["status"]);
    outputs.ok(&t, &["key", "show"]);
    outputs.ok(&t, &["metrics"]);
    let textfile = t.dir.path().join("girofle.prom");
    outputs.once_ok(&t, &["metrics", "--textfile", textfile.to_str().unwrap()]);
    outputs.add(
        "metrics textfile",
        std::fs::read_to_string(&textfile).unwrap(),
    );
    let state = t.dir.path().join("girofle.state");
    outputs.once_ok(&t, &["state", "export", state.to_str().unwrap()]);
    outputs.add("state export", zstd_text(&state));
    for entry in ["journal.jsonl", "state.json"] {
        outputs.add(
            format!("state export's {entry}"),
            sh(&format!(
                "zstd -d -q -c '{}' | tar -xO {entry}",
                state.display()
            )),
        );
    }
    // Failures: the wrong credentials, a store that does not exist.
    for args in [
        vec!["backup", "list", name.as_str(), "--store", "badcreds"],
        vec!["backup", "create", name.as_str(), "--store", "badcreds"],
        vec![
            "backup",
            "copy",
            id.as_str(),
            "--store",
            "offsite",
            "--to",
            "badcreds",
        ],
    ] {
        let out = outputs.cli(&t, &args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded with wrong credentials"
        );
    }

    // Everything Girofle wrote in its root but the instances' own files and the backups
    // (the journal, logs, locks, intents, staging leftovers), and the daemon-less run's
    // outputs: none holds a planted secret.
    let root = &t.root;
    for path in files_under(root) {
        let rel = path.strip_prefix(root).unwrap();
        if rel.starts_with("instances")
            || rel.starts_with("backups")
            || rel.starts_with("decommissioned")
        {
            continue;
        }
        if rel == Path::new("keys/signing.key") {
            // The fleet's signing key itself (0600, checked below).
            continue;
        }
        if rel == Path::new("girofle.toml") || rel.starts_with("inventory.db") {
            // The configuration holds the S3 keys by design; the inventory holds the
            // instances' settings (the source of gitlab.rb). Both are 0600, checked below.
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        outputs.add(format!("file {}", rel.display()), text);
    }
    // The backups' manifests and indexes (local store, and the S3 one's manifest read
    // raw): keys and fingerprints, paths and hashes, never a value.
    for path in files_under(&root.join("backups")) {
        if path
            .extension()
            .is_some_and(|e| e == "manifest" || e == "index")
        {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            outputs.add(format!("file {}", path.display()), text);
        }
    }
    let raw = open_store("raw", &s3_store(&prefix)).unwrap();
    let manifest = raw.get_bytes(&format!("{id}.manifest")).await.unwrap();
    let manifest = String::from_utf8_lossy(&manifest).into_owned();
    assert!(
        manifest.contains("gitlab_rails['otp_key_base']") && manifest.contains("\"blake3-keyed:"),
        "the manifest does not keep the settings' keys and fingerprints: {manifest}"
    );
    outputs.add("S3 manifest", manifest);
    // The engine's view of the containers (GITLAB_OMNIBUS_CONFIG, labels) and their logs.
    for instance in [&name, &copy] {
        let container = format!("girofle-{instance}");
        let inspect = Command::new("docker")
            .args(["inspect", &container])
            .output()
            .unwrap();
        assert!(inspect.status.success(), "docker inspect {container}");
        outputs.add(
            format!("docker inspect {container}"),
            String::from_utf8_lossy(&inspect.stdout),
        );
        let logs = Command::new("docker")
            .args(["logs", &container])
            .output()
            .unwrap();
        outputs.add(
            format!("docker logs {container}"),
            format!(
                "{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ),
        );
    }

    // Every webhook document (successes too).
    let sent = webhooks.lock().unwrap().clone();
    assert!(
        sent.iter().any(|w| w.contains("\"operation\":\"backup\""))
            && sent.iter().any(|w| w.contains("\"outcome\":\"error\"")),
        "the webhook got no backup or no failure: {sent:?}"
    );
    for (i, w) in sent.into_iter().enumerate() {
        outputs.add(format!("webhook {i}"), w);
    }

    // The journal keeps each setting's key and a fingerprint of its value.
    let journal = std::fs::read_to_string(root.join("journal.jsonl")).unwrap();
    assert!(
        journal.contains("gitlab_rails['otp_key_base']=blake3-keyed:")
            && journal.contains("gitlab_rails['object_store']['connection']=blake3-keyed:"),
        "the journal lacks the keys and fingerprints: {journal}"
    );

    let mut leaks = Vec::new();
    for (what, text) in &outputs.texts {
        for (kind, secret) in &planted {
            // The state export carries girofle.toml (the S3 keys), the inventory (the
            // settings) and the signing key by design, as a 0600 file; never the age key
            // or GitLab's secrets, and its journal holds no setting's value.
            let by_design = what == "state export"
                && ([
                    "S3 secret key",
                    "wrong S3 secret",
                    "root password",
                    "token",
                    "signing key",
                ]
                .contains(&kind.as_str())
                    || kind.starts_with("setting "));
            if !by_design && text.contains(secret.as_str()) {
                leaks.push(format!("{kind} in {what}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    eprintln!(
        "{} outputs and files checked for {} planted secrets",
        outputs.texts.len(),
        planted.len()
    );

    // `show --reveal` shows the values (the copy's come from its archive's gitlab.rb, not
    // from the manifest's fingerprints), and is journaled without them.
    let revealed = |instance: &str| {
        let out = t.cli(&["--json", "instance", "show", instance, "--reveal"]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["record"]["settings"].clone()
    };
    let settings = revealed(&name);
    let text = settings.to_string();
    for value in [root_password, token, aws, ldap, otp, display] {
        assert!(
            text.contains(value),
            "--reveal does not show {value}: {text}"
        );
    }
    assert_eq!(
        revealed(&copy),
        settings,
        "the restored copy's settings differ"
    );
    let human = t.cli(&["instance", "show", &name, "--reveal"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains(otp));
    let hidden = t.cli(&["instance", "show", &name]);
    let hidden = String::from_utf8_lossy(&hidden.stdout).into_owned();
    assert!(
        hidden.contains("gitlab_rails['otp_key_base'] = [REDACTED]"),
        "{hidden}"
    );
    let records = girofle_core::journal::Journal::new(root)
        .read_all()
        .unwrap();
    let reveals: Vec<_> = records.iter().filter(|r| r.operation == "reveal").collect();
    assert_eq!(reveals.len(), 3, "each --reveal is journaled");
    let journal = std::fs::read_to_string(root.join("journal.jsonl")).unwrap();
    for (kind, secret) in &planted {
        assert!(
            !journal.contains(secret.as_str()),
            "{kind} in the journal after --reveal"
        );
    }

    // Modes: the root is 0700 (and opening it tightens it again); every file that holds
    // secrets is 0600, GitLab's gitlab.rb and gitlab-secrets.json included.
    assert_eq!(mode(root), 0o700, "the root is not private");
    assert_eq!(mode(&root.join("keys")), 0o700);
    let mut private = vec![
        root.join("girofle.toml"),
        root.join("inventory.db"),
        root.join("journal.jsonl"),
    ];
    private.extend(files_under(&root.join("keys")));
    for suffix in ["-wal", "-shm"] {
        let p = root.join(format!("inventory.db{suffix}"));
        if p.exists() {
            private.push(p);
        }
    }
    for instance in [&name, &copy] {
        for file in ["gitlab.rb", "gitlab-secrets.json"] {
            private.push(
                root.join("instances")
                    .join(instance)
                    .join("config")
                    .join(file),
            );
        }
    }
    for path in &private {
        assert_eq!(mode(path), 0o600, "{} is {:o}", path.display(), mode(path));
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(t.cli(&["instance", "list"]).status.success());
    assert_eq!(mode(root), 0o700, "opening the root did not tighten it");

    // Modes: every file that holds secrets is 0600.
    let mut wrong = Vec::new();
    let mut checked = 0;
    for path in files_under(root)
        .into_iter()
        .chain([state.clone(), textfile.clone()])
    {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if rel.starts_with("instances") || rel.starts_with("decommissioned") || path == textfile {
            // GitLab's own files keep GitLab's modes; the metrics hold no secret.
            continue;
        }
        checked += 1;
        if mode(&path) & 0o077 != 0 {
            wrong.push(format!("{} is {:o}", rel.display(), mode(&path)));
        }
    }
    assert!(checked >= 8, "only {checked} files checked");
    assert!(
        wrong.is_empty(),
        "files readable by others:\n{}",
        wrong.join("\n")
    );
}
