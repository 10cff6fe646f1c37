//! The host-file primitives on the Docker engine: every read and write of a host's files
//! goes through a short-lived helper container of an image already on that engine, so a
//! host reached only by its engine's API is served exactly like this one.
//!
//! Commands (mkdir, chown, mv, rm, stat) run as the helper's own command, as root, with
//! no network; file contents go through the engine's archive API on the helper (stopped:
//! the engine mounts its bind for the copy), which keeps owners, modes and mtimes. A
//! helper is removed with its anonymous volumes (the GitLab image declares some) once
//! done, also on error, and by a spawned task when its future or stream is dropped
//! midway; a helper left by a killed process carries labels to find it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, UploadToContainerOptionsBuilder,
    WaitContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::super::host_files::{
    check_entry, check_relative, filter_import, image_absent, split_parent, HostEntry, HostKind,
    HostListing, HostRoot, ImportSummary, TarStream, HELPER_LABEL, HELPER_MOUNT, HELPER_ROOT_LABEL,
};
use super::super::ContainerRuntime;
use super::{docker_message, lift, status_code, DockerRuntime};
use crate::error::{Error, Result};

/// How long one archive upload may take (a restore of a large instance): bollard's
/// default of 2 minutes covers the whole request, body included.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Script exit codes the helpers use to say what went wrong.
const EXIT_NOT_FOUND: i64 = 10;
const EXIT_EXISTS: i64 = 11;
const EXIT_CONFLICT: i64 = 12;

/// The engine's archive stream.
type ArchiveStream =
    futures::stream::BoxStream<'static, std::result::Result<Bytes, bollard::errors::Error>>;

static HELPERS: AtomicU64 = AtomicU64::new(0);

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{what}-{}-{}-{nanos:x}",
        std::process::id(),
        HELPERS.fetch_add(1, Ordering::Relaxed)
    )
}

/// A helper container that is removed when dropped, unless removed already.
struct Helper {
    docker: Docker,
    name: String,
    armed: bool,
}

impl Helper {
    async fn remove(mut self) -> Result<()> {
        let removed = remove_helper(&self.docker, &self.name).await;
        // When the engine did not answer, the drop tries once more in the background.
        self.armed = removed.is_err();
        removed
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Dropped midway (a cancelled future, an export stream not read to its end).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (docker, name) = (self.docker.clone(), self.name.clone());
            handle.spawn(async move {
                let _ = remove_helper(&docker, &name).await;
            });
        }
    }
}

async fn remove_helper(docker: &Docker, name: &str) -> Result<()> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) if status_code(&e) == Some(409) && docker_message(&e).contains("in progress") => {
            Ok(())
        }
        Err(e) => Err(lift(e, &format!("remove helper container `{name}`"))),
    }
}

fn in_helper(path: &str) -> String {
    if path.is_empty() {
        HELPER_MOUNT.to_string()
    } else {
        format!("{HELPER_MOUNT}/{path}")
    }
}

/// Lifts a helper script's exit code: 0 is its output, the codes above say what failed.
fn script_result(code: i64, output: String, what: &str) -> Result<String> {
    let said = output.trim().to_string();
    match code {
        0 => Ok(output),
        EXIT_NOT_FOUND => Err(Error::not_found(what.to_string(), said)),
        EXIT_EXISTS => Err(Error::already_exists(
            what.to_string(),
            format!("{said}; remove it first or choose another path"),
        )),
        EXIT_CONFLICT => Err(Error::Conflict(format!("{what}: {said}"))),
        _ => Err(Error::backend(
            "Docker engine",
            format!("{what}: the helper container exited with {code}: {said}"),
        )),
    }
}

impl DockerRuntime {
    fn where_(&self, root: &HostRoot, path: &str) -> String {
        format!(
            "`{path}` under `{}` on the engine at {}",
            root.trimmed(),
            self.host()
        )
    }

    /// Creates (does not start) a helper of `root.image` bound to `root.path`, running
    /// `script` with `args` as `$1...` when started.
    async fn helper(&self, root: &HostRoot, script: &str, args: Vec<String>) -> Result<Helper> {
        root.check()?;
        if !self.image_present(&root.image).await? {
            return Err(image_absent(&root.image, self.host()));
        }
        let name = unique("girofle-helper");
        let body = ContainerCreateBody {
            image: Some(root.image.clone()),
            entrypoint: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                script.into(),
                "girofle-helper".into(),
            ]),
            cmd: Some(args),
            user: Some("0:0".into()),
            labels: Some(HashMap::from([
                (HELPER_LABEL.to_string(), "1".to_string()),
                (HELPER_ROOT_LABEL.to_string(), root.trimmed().to_string()),
            ])),
            network_disabled: Some(true),
            healthcheck: Some(HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{HELPER_MOUNT}", root.trimmed())]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(Helper {
                docker: self.docker.clone(),
                name,
                armed: true,
            }),
            Err(e) if status_code(&e) == Some(404) => Err(image_absent(&root.image, self.host())),
            Err(e) => Err(lift(e, "create a helper container")),
        }
    }

    /// Starts a created helper, waits for its script and returns its exit code and output.
    async fn run(&self, helper: &Helper) -> Result<(i64, String)> {
        let name = &helper.name;
        self.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| lift(e, &format!("start helper container `{name}`")))?;
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(lift(e, &format!("wait for helper container `{name}`"))),
            None => -1,
        };
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = self.docker.logs(name, Some(options));
        let mut output = String::new();
        while let Some(chunk) = logs.next().await {
            let chunk = chunk.map_err(|e| lift(e, &format!("logs of helper `{name}`")))?;
            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok((code, output))
    }

    /// Runs `script` in a helper and removes it, whatever happened.
    async fn run_script(
        &self,
        root: &HostRoot,
        script: &str,
        args: Vec<String>,
        what: &str,
    ) -> Result<String> {
        let helper = self.helper(root, script, args).await?;
        let ran = self.run(&helper).await;
        let removed = helper.remove().await;
        let (code, output) = ran?;
        removed?;
        script_result(code, output, what)
    }

    pub(super) async fn files_make_dirs(&self, root: &HostRoot, dirs: &[HostEntry]) -> Result<()> {
        root.check()?;
        let mut args = Vec::new();
        for d in dirs {
            check_entry("directory", d)?;
            args.extend([
                d.path.clone(),
                d.uid.to_string(),
                d.gid.to_string(),
                format!("{:o}", d.mode),
            ]);
        }
        if dirs.is_empty() {
            return Ok(());
        }
        let script = format!(
            r#"cd {HELPER_MOUNT} || exit 1
while [ $# -gt 0 ]; do
  if [ -L "$1" ] || {{ [ -e "$1" ] && [ ! -d "$1" ]; }}; then echo "\`$1\` exists and is not a directory" >&2; exit {EXIT_CONFLICT}; fi
  mkdir -p -- "$1" && chown -- "$2:$3" "$1" && chmod -- "$4" "$1" || exit 1
  shift 4
done"#
        );
        self.run_script(
            root,
            &script,
            args,
            &format!("directories under `{}`", root.trimmed()),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn files_write(
        &self,
        root: &HostRoot,
        file: &HostEntry,
        content: &[u8],
    ) -> Result<()> {
        root.check()?;
        check_entry("file", file)?;
        let (parent, name) = split_parent(&file.path);
        let tmp = format!(".{name}.{}", unique("girofle-tmp"));
        let script = format!(
            r#"cd "{HELPER_MOUNT}/$1" || exit {EXIT_NOT_FOUND}
trap 'rm -f -- "$2"' EXIT
if [ -d "$3" ] && [ ! -L "$3" ]; then echo "\`$3\` is a directory" >&2; exit {EXIT_CONFLICT}; fi
mv -fT -- "$2" "$3""#
        );
        let what = self.where_(root, &file.path);
        let helper = self
            .helper(
                root,
                &script,
                vec![parent.to_string(), tmp.clone(), name.to_string()],
            )
            .await?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(u64::from(file.uid));
        header.set_gid(u64::from(file.gid));
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        let mut tar = tar::Builder::new(Vec::with_capacity(content.len() + 2048));
        let built = tar
            .append_data(&mut header, &tmp, content)
            .and_then(|()| tar.into_inner());
        let result = async {
            let tar = built.map_err(|e| Error::backend("tar", format!("{what}: {e}")))?;
            let options = UploadToContainerOptionsBuilder::default()
                .path(&in_helper(parent))
                .build();
            self.docker
                .clone()
                .with_timeout(UPLOAD_TIMEOUT)
                .upload_to_container(&helper.name, Some(options), bollard::body_full(tar.into()))
                .await
                .map_err(|e| match status_code(&e) {
                    Some(404) => Error::not_found(
                        format!("the directory of {what}"),
                        "make it first (make_host_dirs)",
                    ),
                    _ => lift(e, &format!("write {what}")),
                })?;
            let (code, output) = self.run(&helper).await?;
            script_result(code, output, &what)
        }
        .await;
        let removed = helper.remove().await;
        result?;
        removed
    }

    pub(super) async fn files_make_private(&self, root: &HostRoot, paths: &[String]) -> Result<()> {
        root.check()?;
        for p in paths {
            check_relative("file", p)?;
        }
        if paths.is_empty() {
            return Ok(());
        }
        // A link swapped in between the test and the chmod resolves inside the helper,
        // not on the host: at worst the helper's own file changes.
        let script = format!(
            r#"cd {HELPER_MOUNT} || exit 1
for p in "$@"; do
  if [ -f "$p" ] && [ ! -L "$p" ]; then chmod go-rwx -- "$p" || exit 1; fi
done"#
        );
        self.run_script(
            root,
            &script,
            paths.to_vec(),
            &format!("files under `{}`", root.trimmed()),
        )
        .await
        .map(|_| ())
    }

    /// The first chunk of a `GET archive` of `path` in the helper; `None` on 404.
    async fn first_chunk(
        &self,
        helper: &Helper,
        path: &str,
    ) -> Result<Option<(Bytes, ArchiveStream)>> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut stream = self
            .docker
            .download_from_container(&helper.name, Some(options))
            .boxed();
        match stream.next().await {
            Some(Ok(first)) => Ok(Some((first, stream))),
            Some(Err(e)) if status_code(&e) == Some(404) => Ok(None),
            Some(Err(e)) => Err(lift(e, &format!("read `{path}` of a helper"))),
            None => Ok(Some((Bytes::new(), stream))),
        }
    }

    pub(super) async fn files_read(
        &self,
        root: &HostRoot,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>> {
        root.check()?;
        check_relative("file", path)?;
        let what = self.where_(root, path);
        let helper = self.helper(root, "exit 0", Vec::new()).await?;
        let result = async {
            let Some((first, mut stream)) = self.first_chunk(&helper, &in_helper(path)).await?
            else {
                return Ok(None);
            };
            let mut tar_bytes = first.to_vec();
            while let Some(chunk) = stream.next().await {
                tar_bytes.extend_from_slice(&chunk.map_err(|e| lift(e, &format!("read {what}")))?);
                if tar_bytes.len() > max_bytes + 64 * 1024 {
                    return Err(Error::backend(
                        "Docker engine",
                        format!("{what} is larger than {max_bytes} bytes"),
                    ));
                }
            }
            let bad =
                |e: std::io::Error| Error::backend("Docker engine", format!("read {what}: {e}"));
            let mut archive = tar::Archive::new(&tar_bytes[..]);
            let mut entries = archive.entries().map_err(bad)?;
            let Some(entry) = entries.next() else {
                return Ok(None);
            };
            let mut entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                return Err(Error::invalid(
                    "file",
                    format!("{what} is not a regular file"),
                ));
            }
            if entry.size() > max_bytes as u64 {
                return Err(Error::backend(
                    "Docker engine",
                    format!("{what} is larger than {max_bytes} bytes"),
                ));
            }
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out).map_err(bad)?;
            Ok(Some(out))
        }
        .await;
        let removed = helper.remove().await;
        let out = result?;
        removed?;
        Ok(out)
    }

    pub(super) async fn files_list(&self, root: &HostRoot, path: &str) -> Result<Vec<HostListing>> {
        root.check()?;
        if !path.is_empty() {
            check_relative("directory", path)?;
        }
        let what = format!("directory {}", self.where_(root, path));
        let script = format!(
            r#"cd {HELPER_MOUNT} || exit 1
if [ -L "$1" ] || [ ! -d "$1" ]; then echo "\`$1\` is not a directory" >&2; exit {EXIT_NOT_FOUND}; fi
find "$1" -mindepth 1 -maxdepth 1 -printf '%y %U %G %m %s %T@ %f\0'"#
        );
        let dir = if path.is_empty() { "." } else { path };
        let out = self
            .run_script(root, &script, vec![dir.to_string()], &what)
            .await?;
        let mut listing = Vec::new();
        for record in out.split('\0').filter(|r| !r.is_empty()) {
            let bad = || Error::backend("Docker engine", format!("{what}: `find` said {record:?}"));
            let mut f = record.splitn(7, ' ');
            let mut next = || f.next().ok_or_else(bad);
            let kind = match next()? {
                "f" => HostKind::File,
                "d" => HostKind::Dir,
                "l" => HostKind::Symlink,
                _ => HostKind::Other,
            };
            let uid = next()?.parse().map_err(|_| bad())?;
            let gid = next()?.parse().map_err(|_| bad())?;
            let mode = u32::from_str_radix(next()?, 8).map_err(|_| bad())?;
            let size = next()?.parse().map_err(|_| bad())?;
            let mtime = next()?
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?;
            let name = next()?.to_string();
            listing.push(HostListing {
                name,
                kind,
                uid,
                gid,
                mode,
                size,
                mtime,
            });
        }
        listing.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listing)
    }

    pub(super) async fn files_export(&self, root: &HostRoot, path: &str) -> Result<TarStream> {
        root.check()?;
        if !path.is_empty() {
            check_relative("directory", path)?;
        }
        let what = self.where_(root, path);
        let helper = self.helper(root, "exit 0", Vec::new()).await?;
        let first = match self
            .first_chunk(&helper, &format!("{}/.", in_helper(path)))
            .await
        {
            Ok(Some(f)) => f,
            Ok(None) => {
                helper.remove().await?;
                return Err(Error::not_found(
                    format!("directory {what}"),
                    "check the path, or list the host directory",
                ));
            }
            Err(e) => {
                let _ = helper.remove().await;
                return Err(e);
            }
        };
        struct State {
            first: Option<Bytes>,
            stream: ArchiveStream,
            helper: Option<Helper>,
            what: String,
        }
        let state = State {
            first: Some(first.0),
            stream: first.1,
            helper: Some(helper),
            what,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            if let Some(b) = st.first.take() {
                return Some((Ok(b), st));
            }
            st.helper.as_ref()?;
            match st.stream.next().await {
                Some(Ok(b)) => Some((Ok(b), st)),
                Some(Err(e)) => {
                    if let Some(h) = st.helper.take() {
                        let _ = h.remove().await;
                    }
                    let e = lift(e, &format!("export {}", st.what));
                    Some((Err(e), st))
                }
                None => {
                    let h = st.helper.take()?;
                    match h.remove().await {
                        Ok(()) => None,
                        Err(e) => Some((Err(e), st)),
                    }
                }
            }
        })
        .boxed())
    }

    pub(super) async fn files_import(
        &self,
        root: &HostRoot,
        path: &str,
        tar: TarStream,
    ) -> Result<ImportSummary> {
        root.check()?;
        check_relative("directory", path)?;
        let what = self.where_(root, path);
        let (parent, name) = split_parent(path);
        let tmp = format!(".{name}.{}", unique("girofle-import"));
        let script = format!(
            r#"cd "{HELPER_MOUNT}/$1" || exit {EXIT_NOT_FOUND}
if [ -e "$3" ] || [ -L "$3" ]; then rm -rf -- "$2"; echo "\`$3\` exists" >&2; exit {EXIT_EXISTS}; fi
mv -T -- "$2" "$3""#
        );
        let helper = self
            .helper(
                root,
                &script,
                vec![parent.to_string(), tmp.clone(), name.to_string()],
            )
            .await?;
        let result = self
            .import_with(&helper, path, parent, &tmp, &what, tar)
            .await;
        let result = match result {
            Ok(summary) => match self.run(&helper).await {
                Ok((code, output)) => script_result(code, output, &what).map(|_| summary),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let removed = helper.remove().await;
        if result.is_err() {
            // Whatever part of the tar the engine extracted goes: nothing is left.
            let rm = format!("{parent}/{tmp}");
            let _ = self
                .run_script(
                    root,
                    "rm -rf -- \"$1\"",
                    vec![in_helper(rm.trim_start_matches('/'))],
                    &what,
                )
                .await;
        }
        let summary = result?;
        removed?;
        Ok(summary)
    }

    async fn import_with(
        &self,
        helper: &Helper,
        path: &str,
        parent: &str,
        tmp: &str,
        what: &str,
        mut tar: TarStream,
    ) -> Result<ImportSummary> {
        if self.first_chunk(helper, &in_helper(path)).await?.is_some() {
            return Err(Error::already_exists(
                what.to_string(),
                "an import makes a new directory; remove it first or choose another path",
            ));
        }
        // Checked before the upload too: an engine refusing the upload early closes the
        // connection while the body is still sent, and over TLS or a proxy the client may
        // see that broken connection rather than the 404 (seen through a TLS proxy).
        if self
            .first_chunk(helper, &in_helper(parent))
            .await?
            .is_none()
        {
            return Err(Error::not_found(
                format!("the parent directory of {what}"),
                "make it first (make_host_dirs)",
            ));
        }
        let (in_tx, in_rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let (out_tx, mut out_rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let pump = tokio::spawn(async move {
            while let Some(chunk) = tar.next().await {
                let failed = chunk.is_err();
                let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
                if in_tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        let prefix = tmp.to_string();
        let filter = tokio::task::spawn_blocking(move || {
            let reader = girofle_archive::ChannelReader::new(in_rx);
            let writer = girofle_archive::ChannelWriter::new(out_tx.clone());
            match filter_import(reader, writer, &prefix) {
                Ok((summary, writer)) => match writer.finish() {
                    Ok(()) => Ok(summary),
                    Err(e) => Err(Error::backend("tar import", e)),
                },
                Err(e) => {
                    // The engine must not take a cut tar for a whole one.
                    let _ = out_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    Err(e)
                }
            }
        });
        let body = futures::stream::poll_fn(move |cx| out_rx.poll_recv(cx));
        let options = UploadToContainerOptionsBuilder::default()
            .path(&in_helper(parent))
            .build();
        let uploaded = self
            .docker
            .clone()
            .with_timeout(UPLOAD_TIMEOUT)
            .upload_to_container(&helper.name, Some(options), bollard::body_try_stream(body))
            .await;
        let filtered = filter
            .await
            .map_err(|e| Error::backend("tar import", format!("the filter task failed: {e}")))?;
        pump.abort();
        // A missing parent is refused by the engine before it reads the body, and the
        // filter then fails only because nobody reads it any more: say what matters.
        // Otherwise the filter's error (a refused entry, a failed source) comes first:
        // the engine only saw its tar cut.
        match uploaded {
            Err(e) if status_code(&e) == Some(404) => Err(Error::not_found(
                format!("the parent directory of {what}"),
                "make it first (make_host_dirs)",
            )),
            Err(e) => Err(filtered
                .err()
                .unwrap_or_else(|| lift(e, &format!("import {what}")))),
            Ok(()) => filtered,
        }
    }

    pub(super) async fn files_move(&self, root: &HostRoot, from: &str, to: &str) -> Result<()> {
        root.check()?;
        check_relative("source directory", from)?;
        check_relative("target directory", to)?;
        let script = format!(
            r#"cd {HELPER_MOUNT} || exit 1
if [ ! -e "$1" ] && [ ! -L "$1" ]; then echo "\`$1\` does not exist" >&2; exit {EXIT_NOT_FOUND}; fi
if [ -e "$2" ] || [ -L "$2" ]; then echo "\`$2\` exists" >&2; exit {EXIT_EXISTS}; fi
mkdir -p -- "$(dirname -- "$2")" && mv -T -- "$1" "$2""#
        );
        self.run_script(
            root,
            &script,
            vec![from.to_string(), to.to_string()],
            &format!("move of {}", self.where_(root, from)),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn files_remove(&self, root: &HostRoot, path: &str) -> Result<()> {
        root.check()?;
        check_relative("directory", path)?;
        self.run_script(
            root,
            "rm -rf -- \"$1\"",
            vec![in_helper(path)],
            &format!("removal of {}", self.where_(root, path)),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn files_free_space(&self, root: &HostRoot) -> Result<u64> {
        let out = self
            .run_script(
                root,
                &format!("stat -f -c '%a %S' {HELPER_MOUNT}"),
                Vec::new(),
                &format!("free space under `{}`", root.trimmed()),
            )
            .await?;
        let mut words = out.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(blocks)), Some(Ok(size))) => Ok(blocks.saturating_mul(size)),
            _ => Err(Error::backend(
                "Docker engine",
                format!(
                    "free space under `{}`: `stat -f` said {out:?}",
                    root.trimmed()
                ),
            )),
        }
    }

    pub(super) async fn files_remove_helpers(&self, root: &HostRoot) -> Result<usize> {
        root.check()?;
        let helpers = self
            .list(&[
                (HELPER_LABEL.to_string(), "1".to_string()),
                (HELPER_ROOT_LABEL.to_string(), root.trimmed().to_string()),
            ])
            .await?;
        for h in &helpers {
            remove_helper(&self.docker, &h.name).await?;
        }
        Ok(helpers.len())
    }
}
