//! `girofle._girofle`: the native half of the Python module. Like the CLI it only parses,
//! calls `girofle-core` and returns: every result is plain Python data (dicts, lists,
//! strings, numbers) made from core's serde results — the same data as the CLI's
//! `--json` — which `girofle` (python/girofle) turns into typed, read-only objects; every
//! core error is raised as its `girofle.GirofleError` subclass (see `error`).
//!
//! Each call runs core's future as a task on one multi-threaded tokio runtime shared by
//! the whole process, and waits for it with the GIL released, in short slices: between
//! two it runs Python's signal handlers and looks at the call's `Cancel` token and at
//! whether a progress callback raised. Any of those aborts the task, waits until it is
//! dropped, then runs core's `recover` (a cold backup's instance restarted, an in-place
//! restore rolled back, staging removed) before the exception (a `KeyboardInterrupt`,
//! `girofle.CancelledError`, the callback's) reaches the caller.

mod error;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use girofle_core::address::AddressRequest;
use girofle_core::archive::Progress;
use girofle_core::backup::{BackupOptions, ProgressFn, Retention, Strategy};
use girofle_core::restore::RestoreRequest;
use girofle_core::schedule::ScheduleOverrides;
use girofle_core::{CommissionRequest, DecommissionOptions, Error, OpenOptions};
use pyo3::exceptions::{PyRuntimeError, PyUserWarning};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use serde::Serialize;

use crate::error::{cancelled_err, to_py_err};

static RUNTIME: PyOnceLock<tokio::runtime::Runtime> = PyOnceLock::new();

/// How long the calling thread waits on core before it looks at signals and tokens again:
/// the worst delay between Ctrl-C and the abort.
const SLICE: Duration = Duration::from_millis(50);

/// Stack size of the runtime's threads (address space, committed only as used).
const WORKER_STACK: usize = 16 << 20;

/// The process's tokio runtime, made on first use.
fn runtime(py: Python<'_>) -> PyResult<&'static tokio::runtime::Runtime> {
    RUNTIME.get_or_try_init(py, || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("girofle")
            // Core's futures run on these workers (not on the caller's 8 MiB main stack as
            // in the CLI): some, a decommission's, are deep enough to overflow tokio's
            // default 2 MiB.
            .thread_stack_size(WORKER_STACK)
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the async runtime: {e}")))
    })
}

/// Runs core work that cannot be cancelled (opening a root) with the GIL released.
fn run<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: Future<Output = girofle_core::Result<T>> + Send,
    T: Send,
{
    let rt = runtime(py)?;
    py.detach(|| rt.block_on(work))
        .map_err(|e| to_py_err(py, e))
}

/// A cancellation token: `cancel()` from any thread stops the operations it was given to
/// (they raise `girofle.CancelledError` after core's recovery ran). Once cancelled it
/// stays so: an operation given a cancelled token stops at once.
#[pyclass(frozen, skip_from_py_object, module = "girofle", name = "Cancel")]
#[derive(Clone, Default)]
struct Cancel {
    state: Arc<AtomicBool>,
}

#[pymethods]
impl Cancel {
    #[new]
    fn new() -> Self {
        Cancel::default()
    }

    /// Asks the operations holding this token to stop.
    fn cancel(&self) {
        self.state.store(true, Ordering::SeqCst);
    }

    /// Whether `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.state.load(Ordering::SeqCst)
    }

    fn __repr__(&self) -> String {
        format!(
            "Cancel(cancelled={})",
            if self.cancelled() { "True" } else { "False" }
        )
    }
}

/// One call in progress: its token, the first exception its progress callback raised,
/// and how many of its progress callbacks are running.
#[derive(Clone, Default)]
struct Call {
    cancel: Cancel,
    failure: Arc<Mutex<Option<PyErr>>>,
    in_callback: Arc<AtomicUsize>,
}

impl Call {
    fn new(cancel: Option<&Bound<'_, Cancel>>) -> Self {
        Call {
            cancel: cancel.map(|c| c.get().clone()).unwrap_or_default(),
            failure: Arc::default(),
            in_callback: Arc::default(),
        }
    }

    /// A core progress callback calling `callback(files, bytes)`. An exception it raises
    /// (a `KeyboardInterrupt` too) cancels the call and is what the call raises.
    fn progress(&self, callback: Option<Py<PyAny>>) -> Option<ProgressFn> {
        let callback = Arc::new(callback?);
        let call = self.clone();
        Some(Arc::new(move |p: Progress| {
            // Counted before the token is read: see `run`, which waits for the count to
            // drop to zero after cancelling.
            call.in_callback.fetch_add(1, Ordering::SeqCst);
            if !call.cancel.cancelled() {
                Python::attach(|py| {
                    if let Err(e) = callback.call1(py, (p.files, p.bytes)) {
                        let mut failure = call.failure.lock().unwrap_or_else(|e| e.into_inner());
                        failure.get_or_insert(e);
                        call.cancel.cancel();
                    }
                })
            }
            call.in_callback.fetch_sub(1, Ordering::SeqCst);
        }))
    }

    /// Why the call must stop, if it must: a signal handler's exception (Ctrl-C), the
    /// progress callback's, or the token.
    fn interruption(&self, py: Python<'_>) -> Option<PyErr> {
        if let Err(e) = py.check_signals() {
            return Some(e);
        }
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if failure.is_some() {
            return failure;
        }
        self.cancel
            .cancelled()
            .then(|| cancelled_err(py, "the operation was cancelled"))
    }

    /// Runs `work` as a task and waits for it with the GIL released, stopping it when the
    /// call is interrupted (see the module's documentation).
    fn run<T, F>(&self, py: Python<'_>, g: &girofle_core::Girofle, work: F) -> PyResult<T>
    where
        F: Future<Output = girofle_core::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let rt = runtime(py)?;
        // A token cancelled before the call: do not start at all.
        if let Some(e) = self.interruption(py) {
            return Err(e);
        }
        let mut task = rt.spawn(work);
        loop {
            let done = py.detach(|| {
                rt.block_on(async { tokio::time::timeout(SLICE, &mut task).await.ok() })
            });
            if let Some(joined) = done {
                return match joined {
                    Ok(result) => result.map_err(|e| to_py_err(py, e)),
                    Err(e) => Err(PyRuntimeError::new_err(format!(
                        "girofle's task failed: {e}"
                    ))),
                };
            }
            if let Some(e) = self.interruption(py) {
                self.cancel.cancel();
                task.abort();
                // Returns once the task's future is dropped: its guards (the instance
                // lock...) are released and nothing of it runs any more but blocking
                // work core hands to its own threads.
                let _ = py.detach(|| rt.block_on(&mut task));
                // Core's blocking work (tar, zstd) may outlive the task until its next
                // chunk; no callback of ours may run in it once the caller has moved on
                // (or the interpreter is finalizing).
                while self.in_callback.load(Ordering::SeqCst) > 0 {
                    py.detach(|| std::thread::sleep(Duration::from_millis(5)));
                }
                return Err(recover_after(py, g, e));
            }
        }
    }
}

/// Runs core's recovery after an aborted call: what it did becomes the `recovered`
/// attribute of `interrupt` (a list of `girofle.Recovery`), its failure a note (the
/// interrupt stays the exception the caller sees).
fn recover_after(py: Python<'_>, g: &girofle_core::Girofle, interrupt: PyErr) -> PyErr {
    let Ok(rt) = runtime(py) else {
        return interrupt;
    };
    let g = g.clone();
    match py.detach(|| rt.block_on(async move { g.recover().await })) {
        Ok(recovered) => {
            if let Ok(value) = typed_recoveries(py, &recovered) {
                let _ = interrupt.value(py).setattr("recovered", value);
            }
        }
        Err(e) => {
            let note = format!("girofle: recovery after the interruption failed: {e}");
            let _ = interrupt.value(py).call_method1("add_note", (note,));
        }
    }
    interrupt
}

/// `[girofle.Recovery, ...]`, as `Girofle.recover()` returns them.
fn typed_recoveries(
    py: Python<'_>,
    recovered: &[girofle_core::recovery::Recovery],
) -> PyResult<Py<PyAny>> {
    let class = py.import("girofle._results")?.getattr("Recovery")?;
    let list = pyo3::types::PyList::empty(py);
    for r in recovered {
        list.append(class.call_method1("from_dict", (to_py(py, r)?,))?)?;
    }
    Ok(list.into_any().unbind())
}

/// Core's serializable result as plain Python data.
fn to_py<T: Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    Ok(pythonize::pythonize(py, value)?.unbind())
}

/// A `UserWarning` at the caller of the `girofle.Girofle` method (two frames up: the
/// public wrapper, then its caller).
fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    PyErr::warn(py, py.get_type::<PyUserWarning>().as_any(), &message, 2)
}

/// Each of core's warnings as a `UserWarning`, in core's words for Python.
fn warn_all(py: Python<'_>, warnings: &[girofle_core::warning::Warning]) -> PyResult<()> {
    for w in warnings {
        warn(py, &w.text(girofle_core::warning::Front::Python))?;
    }
    Ok(())
}

fn invalid(py: Python<'_>, field: &str, message: impl Into<String>) -> PyErr {
    to_py_err(py, Error::invalid(field, message))
}

/// `KEY=VALUE` settings from a list of strings, or from a dict whose values are Ruby
/// literals or bare words (`True`/`False`/`None` and numbers become Ruby's); core
/// refuses anything else, as for `--set`.
fn settings_arg(py: Python<'_>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut out = Vec::new();
        for (k, v) in dict.iter() {
            let key: String = k.extract()?;
            let literal = if v.is_none() {
                "nil".to_string()
            } else if let Ok(b) = v.extract::<bool>() {
                b.to_string()
            } else {
                v.str()?.to_string()
            };
            out.push(format!("{key}={literal}"));
        }
        return Ok(out);
    }
    if value.is_instance_of::<PyString>() {
        return Err(invalid(
            py,
            "settings",
            "give a list of \"KEY=VALUE\" strings or a dict, not one string",
        ));
    }
    value.extract()
}

fn port_arg(py: Python<'_>, field: &str, value: Option<i64>) -> PyResult<Option<u16>> {
    value
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(py, field, format!("{p} is not a TCP port (1-65535)")))
        })
        .transpose()
}

fn addresses_arg(
    py: Python<'_>,
    ip: Option<String>,
    http_port: Option<i64>,
    https_port: Option<i64>,
    ssh_port: Option<i64>,
) -> PyResult<AddressRequest> {
    let ip = ip
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| invalid(py, "ip", format!("`{s}` is not an IP address")))
        })
        .transpose()?;
    Ok(AddressRequest {
        ip,
        http_port: port_arg(py, "http_port", http_port)?,
        https_port: port_arg(py, "https_port", https_port)?,
        ssh_port: port_arg(py, "ssh_port", ssh_port)?,
    })
}

fn timeout_arg(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| {
            Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        py,
                        "timeout",
                        format!("{t} is not a positive number of seconds"),
                    )
                })
        })
        .transpose()
}

fn count_arg(py: Python<'_>, field: &str, n: i64) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| invalid(py, field, format!("{n} is negative")))
}

/// Girofle opened on a root directory (see `Girofle.init` to prepare one). The native
/// half of `girofle.Girofle`: the same methods, returning plain data.
#[pyclass(frozen, module = "girofle._girofle", name = "Girofle")]
struct PyGirofle {
    inner: girofle_core::Girofle,
}

impl PyGirofle {
    /// Runs `work` on a clone of this Girofle as one interruptible call.
    fn call<T, F, W>(&self, py: Python<'_>, call: &Call, work: W) -> PyResult<T>
    where
        W: FnOnce(girofle_core::Girofle) -> F,
        F: Future<Output = girofle_core::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        call.run(py, &self.inner, work(self.inner.clone()))
    }

    /// As `call`, with a fresh token (Ctrl-C still interrupts), returning Python data.
    fn data<T, F, W>(&self, py: Python<'_>, work: W) -> PyResult<Py<PyAny>>
    where
        W: FnOnce(girofle_core::Girofle) -> F,
        F: Future<Output = girofle_core::Result<T>> + Send + 'static,
        T: Serialize + Send + 'static,
    {
        let value = self.call(py, &Call::default(), work)?;
        to_py(py, &value)
    }
}

#[pymethods]
impl PyGirofle {
    /// Opens an initialised root, connecting to the Docker engine (`docker_host`, else
    /// `[docker] host` of girofle.toml, else `$DOCKER_HOST`).
    #[new]
    #[pyo3(signature = (root, docker_host=None))]
    fn new(py: Python<'_>, root: PathBuf, docker_host: Option<String>) -> PyResult<Self> {
        let inner = run(py, async move {
            girofle_core::Girofle::open(&root, OpenOptions { docker_host }).await
        })?;
        Ok(PyGirofle { inner })
    }

    /// Prepares a root (directories, default girofle.toml unless present, inventory).
    /// Idempotent. Returns `{"root": str, "config_written": bool}`.
    #[staticmethod]
    fn init(py: Python<'_>, root: PathBuf) -> PyResult<Py<PyAny>> {
        let initialised = py
            .detach(|| girofle_core::Girofle::init(&root))
            .map_err(|e| to_py_err(py, e))?;
        to_py(py, &initialised)
    }

    /// The root directory (absolute).
    #[getter]
    fn root(&self) -> String {
        self.inner.root().display().to_string()
    }

    fn __repr__(&self) -> String {
        format!("Girofle({:?})", self.inner.root().display().to_string())
    }

    /// Commissions a new instance and waits until it is healthy; returns its record.
    #[pyo3(signature = (
        name, image=None, ip=None, http_port=None, https_port=None, ssh_port=None,
        hostname=None, settings=None, labels=None, timeout=None, cancel=None, host=None,
        host_labels=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        py: Python<'_>,
        name: String,
        image: Option<String>,
        ip: Option<String>,
        http_port: Option<i64>,
        https_port: Option<i64>,
        ssh_port: Option<i64>,
        hostname: Option<String>,
        settings: Option<Bound<'_, PyAny>>,
        labels: Option<BTreeMap<String, String>>,
        timeout: Option<f64>,
        cancel: Option<Bound<'_, Cancel>>,
        host: Option<String>,
        host_labels: Option<BTreeMap<String, String>>,
    ) -> PyResult<Py<PyAny>> {
        let request = CommissionRequest {
            name,
            image,
            addresses: addresses_arg(py, ip, http_port, https_port, ssh_port)?,
            hostname,
            settings: settings_arg(py, settings.as_ref())?,
            labels: labels.unwrap_or_default(),
            timeout: timeout_arg(py, timeout)?,
            host,
            host_labels: host_labels.unwrap_or_default(),
        };
        let call = Call::new(cancel.as_ref());
        let record = self.call(py, &call, |g| async move { g.commission(request).await })?;
        to_py(py, &record)
    }

    /// The instances of this root with their state, reconciled with the engine.
    fn list(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let listing = self.call(py, &Call::default(), |g| async move {
            g.list_with_recoveries().await
        })?;
        warn_all(py, &listing.warnings())?;
        to_py(py, &listing.instances)
    }

    /// One instance with its state; setting values are `REDACTED` unless `reveal=True`
    /// (journaled as `reveal`).
    #[pyo3(signature = (name, reveal=false))]
    fn show(&self, py: Python<'_>, name: String, reveal: bool) -> PyResult<Py<PyAny>> {
        self.data(py, |g| async move {
            if reveal {
                g.show_revealed(&name).await
            } else {
                g.show(&name).await
            }
        })
    }

    /// Starts an instance (re-creating a removed container) and waits healthy.
    #[pyo3(signature = (name, cancel=None))]
    fn start(
        &self,
        py: Python<'_>,
        name: String,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let call = Call::new(cancel.as_ref());
        let record = self.call(py, &call, |g| async move { g.start(&name).await })?;
        to_py(py, &record)
    }

    /// Stops an instance.
    #[pyo3(signature = (name, cancel=None))]
    fn stop(
        &self,
        py: Python<'_>,
        name: String,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let call = Call::new(cancel.as_ref());
        let record = self.call(py, &call, |g| async move { g.stop(&name).await })?;
        to_py(py, &record)
    }

    /// Stops then starts an instance and waits healthy.
    #[pyo3(signature = (name, cancel=None))]
    fn restart(
        &self,
        py: Python<'_>,
        name: String,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let call = Call::new(cancel.as_ref());
        let record = self.call(py, &call, |g| async move { g.restart(&name).await })?;
        to_py(py, &record)
    }

    /// Sets and unsets managed gitlab.rb settings, runs `gitlab-ctl reconfigure`.
    #[pyo3(signature = (name, set=None, unset=None, cancel=None))]
    fn reconfigure(
        &self,
        py: Python<'_>,
        name: String,
        set: Option<Bound<'_, PyAny>>,
        unset: Option<Vec<String>>,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let set = settings_arg(py, set.as_ref())?;
        let unset = unset.unwrap_or_default();
        let call = Call::new(cancel.as_ref());
        let record = self.call(py, &call, |g| async move {
            g.reconfigure(&name, &set, &unset).await
        })?;
        to_py(py, &record)
    }

    /// Decommissions an instance: a final backup unless `final_backup=False`, the
    /// container removed, the data moved to `decommissioned/` (or deleted with `purge`).
    #[pyo3(signature = (name, purge=false, final_backup=true, cancel=None))]
    fn remove(
        &self,
        py: Python<'_>,
        name: String,
        purge: bool,
        final_backup: bool,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let options = DecommissionOptions {
            purge,
            no_backup: !final_backup,
        };
        let call = Call::new(cancel.as_ref());
        let done = self.call(py, &call, |g| async move {
            g.decommission(&name, options).await
        })?;
        to_py(py, &done)
    }

    /// Moves an instance to host `to`: its data streamed engine to engine, GitLab's
    /// checks run there, the old data kept aside on the old host unless `purge`. Returns
    /// what was done, with the downtime in seconds.
    #[pyo3(signature = (name, to, purge=false, timeout=None, cancel=None))]
    fn move_instance(
        &self,
        py: Python<'_>,
        name: String,
        to: String,
        purge: bool,
        timeout: Option<f64>,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let request = girofle_core::moving::MoveRequest {
            name,
            to,
            purge,
            timeout: timeout_arg(py, timeout)?,
        };
        let call = Call::new(cancel.as_ref());
        let moved = self.call(py, &call, |g| async move { g.move_instance(request).await })?;
        to_py(py, &moved)
    }

    /// Takes a backup (`strategy` "online" or "cold") into a store (default "local").
    /// `progress(files, bytes)` is called as the archive grows.
    #[pyo3(signature = (
        name, strategy="online", store=None, no_logs=false, progress=None, cancel=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn backup(
        &self,
        py: Python<'_>,
        name: String,
        strategy: &str,
        store: Option<String>,
        no_logs: bool,
        progress: Option<Py<PyAny>>,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let strategy: Strategy = strategy.parse().map_err(|e| to_py_err(py, e))?;
        let call = Call::new(cancel.as_ref());
        let options = BackupOptions {
            strategy,
            store,
            no_logs,
            progress: call.progress(progress),
        };
        let report = self.call(py, &call, |g| async move { g.backup(&name, options).await })?;
        to_py(py, &report)
    }

    /// The complete backups in a store (of one instance, or all), oldest first.
    #[pyo3(signature = (name=None, store=None))]
    fn list_backups(
        &self,
        py: Python<'_>,
        name: Option<String>,
        store: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let scan = self.call(py, &Call::default(), |g| async move {
            g.scan_backups(name.as_deref(), store.as_deref()).await
        })?;
        // Left out because they cannot be restored: whoever counts on them must know, as
        // the CLI says on stderr.
        warn_all(py, &scan.warnings())?;
        to_py(py, &scan.backups)
    }

    /// Checks a backup end to end without restoring it; with `drill=True`, restores it
    /// into a throw-away instance and checks repositories and secrets.
    #[pyo3(signature = (id, store=None, drill=false, cancel=None))]
    fn verify(
        &self,
        py: Python<'_>,
        id: String,
        store: Option<String>,
        drill: bool,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let call = Call::new(cancel.as_ref());
        if drill {
            let report = self.call(py, &call, |g| async move {
                g.drill(&id, store.as_deref()).await
            })?;
            return to_py(py, &report);
        }
        let verified = self.call(py, &call, |g| async move {
            g.verify(&id, store.as_deref()).await
        })?;
        to_py(py, &verified)
    }

    /// Copies a backup from `store` (default "local") to store `to`, hash checked.
    #[pyo3(signature = (id, to, store=None, cancel=None))]
    fn copy_backup(
        &self,
        py: Python<'_>,
        id: String,
        to: String,
        store: Option<String>,
        cancel: Option<Bound<'_, Cancel>>,
    ) -> PyResult<Py<PyAny>> {
        let call = Call::new(cancel.as_ref());
        let copied = self.call(py, &call, |g| async move {
            g.copy_backup(&id, store.as_deref(), &to).await
        })?;
        to_py(py, &copied)
    }

    /// Signs a backup with the fleet's key (`girofle backup sign`): one made before
    /// backups were signed, or by a fleet this one does not trust, once checked end to
    /// end; a damaged one raises `CorruptError`. A backup a trusted key signed already is
    /// left as it is. Check where it came from first.
    #[pyo3(signature = (id, store=None))]
    fn sign_backup(
        &self,
        py: Python<'_>,
        id: String,
        store: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        self.data(
            py,
            |g| async move { g.sign_backup(&id, store.as_deref()).await },
        )
    }

    /// The fleet's public key (`girofle key show`): its key id, the base64 line another
    /// fleet's `[trust] keys` takes, minisign's `.pub` text, and the keys this fleet
    /// trusts.
    fn public_key(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data(py, |g| async move { g.public_key() })
    }

    /// Deletes the backups a retention policy does not keep; returns their ids.
    #[pyo3(signature = (name=None, store=None, keep_last=0, keep_daily=0, keep_weekly=0))]
    fn prune(
        &self,
        py: Python<'_>,
        name: Option<String>,
        store: Option<String>,
        keep_last: i64,
        keep_daily: i64,
        keep_weekly: i64,
    ) -> PyResult<Py<PyAny>> {
        let policy = Retention {
            keep_last: count_arg(py, "keep_last", keep_last)?,
            keep_daily: count_arg(py, "keep_daily", keep_daily)?,
            keep_weekly: count_arg(py, "keep_weekly", keep_weekly)?,
        };
        self.data(py, |g| async move {
            g.prune(name.as_deref(), store.as_deref(), policy).await
        })
    }

    /// Restores a backup, in place or as a new instance (`as_name`).
    #[pyo3(signature = (
        id, store=None, as_name=None, image=None, ip=None, http_port=None,
        https_port=None, ssh_port=None, timeout=None, progress=None, cancel=None,
        replace=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &self,
        py: Python<'_>,
        id: String,
        store: Option<String>,
        as_name: Option<String>,
        image: Option<String>,
        ip: Option<String>,
        http_port: Option<i64>,
        https_port: Option<i64>,
        ssh_port: Option<i64>,
        timeout: Option<f64>,
        progress: Option<Py<PyAny>>,
        cancel: Option<Bound<'_, Cancel>>,
        replace: bool,
    ) -> PyResult<Py<PyAny>> {
        let call = Call::new(cancel.as_ref());
        let request = RestoreRequest {
            id,
            store,
            as_name,
            replace,
            image,
            addresses: addresses_arg(py, ip, http_port, https_port, ssh_port)?,
            timeout: timeout_arg(py, timeout)?,
            progress: call.progress(progress),
        };
        let report = self.call(py, &call, |g| async move { g.restore(request).await })?;
        to_py(py, &report)
    }

    /// Every instance's schedule, last runs and next runs (`girofle schedule list`).
    fn schedules(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data(py, |g| async move { g.schedules().await })
    }

    /// The effective schedule of one instance.
    fn schedule(&self, py: Python<'_>, name: String) -> PyResult<Py<PyAny>> {
        self.data(py, |g| async move { g.schedule_of(&name).await })
    }

    /// Changes an instance's schedule (`girofle schedule set`): the arguments given
    /// change, the others keep their value. `copy` and `store` take "off" for no copies.
    /// Returns the effective schedule.
    #[pyo3(signature = (
        name, backup=None, copy=None, store=None, timezone=None, strategy=None,
        keep_last=None, keep_daily=None, keep_weekly=None, enabled=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn set_schedule(
        &self,
        py: Python<'_>,
        name: String,
        backup: Option<String>,
        copy: Option<String>,
        store: Option<String>,
        timezone: Option<String>,
        strategy: Option<String>,
        keep_last: Option<i64>,
        keep_daily: Option<i64>,
        keep_weekly: Option<i64>,
        enabled: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let strategy = strategy
            .map(|s| s.parse::<Strategy>())
            .transpose()
            .map_err(|e| to_py_err(py, e))?;
        let count = |field: &str, n: Option<i64>| n.map(|n| count_arg(py, field, n)).transpose();
        let change = ScheduleOverrides {
            backup,
            copy,
            timezone,
            store,
            strategy,
            keep_last: count("keep_last", keep_last)?,
            keep_daily: count("keep_daily", keep_daily)?,
            keep_weekly: count("keep_weekly", keep_weekly)?,
            enabled,
        };
        self.data(py, |g| async move { g.set_schedule(&name, change).await })
    }

    /// Writes girofle.toml, the inventory (schedules included) and the journal into
    /// `file` (zstd tar, mode 0600: it holds the stores' credentials).
    fn export_state(&self, py: Python<'_>, file: PathBuf) -> PyResult<Py<PyAny>> {
        self.data(py, |g| async move {
            girofle_core::Girofle::export_state(g.root(), &file).await
        })
    }

    /// Takes over the state in `file` into `root` (which may be uninitialised): refused
    /// (`ConflictError`) when the root's inventory has other instances, unless `force`.
    /// Importing twice changes nothing more. Open the root afterwards.
    #[staticmethod]
    #[pyo3(signature = (root, file, force=false))]
    fn import_state(
        py: Python<'_>,
        root: PathBuf,
        file: PathBuf,
        force: bool,
    ) -> PyResult<Py<PyAny>> {
        let report = run(py, async move {
            girofle_core::Girofle::import_state(&root, &file, force).await
        })?;
        to_py(py, &report)
    }

    /// Repairs what interrupted operations left behind (an instance a cold backup
    /// stopped, an in-place restore half done, staging files); returns what it did.
    /// Interrupted calls of this module run it themselves.
    fn recover(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data(py, |g| async move { g.recover().await })
    }
}

/// Parses `KEY=VALUE` as Girofle does for `settings`: returns `(key, ruby_literal)`, the
/// form stored in an instance's record (`"gitlab_rails['time_zone']=UTC"` ->
/// `("gitlab_rails['time_zone']", "'UTC'")`).
#[pyfunction]
fn parse_setting(py: Python<'_>, text: &str) -> PyResult<(String, String)> {
    girofle_core::instance::parse_setting(text).map_err(|e| to_py_err(py, e))
}

/// Whether a key looks secret (`password`, `token`...). Every setting's value is shown
/// redacted whatever its key; this only tells which keys the journal redacted before.
#[pyfunction]
fn is_secret_key(key: &str) -> bool {
    girofle_core::journal::is_secret_key(key)
}

#[pymodule]
fn _girofle(module: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(module)?;
    module.add_class::<PyGirofle>()?;
    module.add_class::<Cancel>()?;
    module.add_function(wrap_pyfunction!(parse_setting, module)?)?;
    module.add_function(wrap_pyfunction!(is_secret_key, module)?)?;
    module.add("__version__", girofle_core::VERSION)?;
    module.add("REDACTED", girofle_core::journal::REDACTED)?;
    Ok(())
}
