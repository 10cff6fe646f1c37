//! `girofle._girofle`: the Python module of Girofle. Like the CLI it only parses, calls
//! `girofle-core` and returns: every result is plain Python data (dicts, lists, strings,
//! numbers) made from core's serde results — the same data as the CLI's `--json` — and
//! every core error is raised as its `girofle.GirofleError` subclass (see `error`).
//!
//! Each call releases the GIL and blocks on one multi-threaded tokio runtime shared by
//! the whole process, so other Python threads run while GitLab boots or a backup streams.

mod error;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use girofle_core::address::AddressRequest;
use girofle_core::archive::Progress;
use girofle_core::backup::{BackupOptions, ProgressFn, Retention, Strategy};
use girofle_core::restore::RestoreRequest;
use girofle_core::{CommissionRequest, DecommissionOptions, Error, OpenOptions};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use serde::Serialize;

use crate::error::to_py_err;

static RUNTIME: PyOnceLock<tokio::runtime::Runtime> = PyOnceLock::new();

/// The process's tokio runtime, made on first use.
fn runtime(py: Python<'_>) -> PyResult<&'static tokio::runtime::Runtime> {
    RUNTIME.get_or_try_init(py, || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("girofle")
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the async runtime: {e}")))
    })
}

/// Runs core work to completion with the GIL released; errors become Girofle exceptions.
fn run<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: Future<Output = girofle_core::Result<T>> + Send,
    T: Send,
{
    let rt = runtime(py)?;
    py.detach(|| rt.block_on(work))
        .map_err(|e| to_py_err(py, e))
}

/// Core's serializable result as plain Python data.
fn to_py<T: Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    Ok(pythonize::pythonize(py, value)?.unbind())
}

fn invalid(py: Python<'_>, field: &str, message: impl Into<String>) -> PyErr {
    to_py_err(py, Error::invalid(field, message))
}

/// `KEY=VALUE` settings from a list of strings, or from a dict whose values are Ruby
/// literals or plain strings (`True`/`False`/`None` and numbers become Ruby's).
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

/// A core progress callback calling `callback(files, bytes)`; an exception it raises is
/// reported as unraisable and does not stop the work.
fn progress_arg(callback: Option<Py<PyAny>>) -> Option<ProgressFn> {
    let callback = Arc::new(callback?);
    Some(Arc::new(move |p: Progress| {
        Python::attach(|py| {
            if let Err(e) = callback.call1(py, (p.files, p.bytes)) {
                e.write_unraisable(py, None);
            }
        })
    }))
}

/// Girofle opened on a root directory (see `Girofle.init` to prepare one).
#[pyclass(frozen, module = "girofle", name = "Girofle")]
struct PyGirofle {
    inner: girofle_core::Girofle,
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
        let written = py
            .detach(|| girofle_core::Girofle::init(&root))
            .map_err(|e| to_py_err(py, e))?;
        #[derive(Serialize)]
        struct Init {
            root: PathBuf,
            config_written: bool,
        }
        to_py(
            py,
            &Init {
                root,
                config_written: written,
            },
        )
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
        hostname=None, settings=None, labels=None, timeout=None
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
    ) -> PyResult<Py<PyAny>> {
        let request = CommissionRequest {
            name,
            image,
            addresses: addresses_arg(py, ip, http_port, https_port, ssh_port)?,
            hostname,
            settings: settings_arg(py, settings.as_ref())?,
            labels: labels.unwrap_or_default(),
            timeout: timeout_arg(py, timeout)?,
        };
        let g = &self.inner;
        let record = run(py, g.commission(request))?;
        to_py(py, &record)
    }

    /// The instances of this root with their state, reconciled with the engine.
    fn list(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let list = run(py, self.inner.list())?;
        to_py(py, &list)
    }

    /// One instance with its state.
    fn show(&self, py: Python<'_>, name: String) -> PyResult<Py<PyAny>> {
        let status = run(py, self.inner.show(&name))?;
        to_py(py, &status)
    }

    /// Starts an instance (re-creating a removed container) and waits healthy.
    fn start(&self, py: Python<'_>, name: String) -> PyResult<Py<PyAny>> {
        let record = run(py, self.inner.start(&name))?;
        to_py(py, &record)
    }

    /// Stops an instance.
    fn stop(&self, py: Python<'_>, name: String) -> PyResult<Py<PyAny>> {
        let record = run(py, self.inner.stop(&name))?;
        to_py(py, &record)
    }

    /// Stops then starts an instance and waits healthy.
    fn restart(&self, py: Python<'_>, name: String) -> PyResult<Py<PyAny>> {
        let record = run(py, self.inner.restart(&name))?;
        to_py(py, &record)
    }

    /// Sets and unsets managed gitlab.rb settings, runs `gitlab-ctl reconfigure`.
    #[pyo3(signature = (name, set=None, unset=None))]
    fn reconfigure(
        &self,
        py: Python<'_>,
        name: String,
        set: Option<Bound<'_, PyAny>>,
        unset: Option<Vec<String>>,
    ) -> PyResult<Py<PyAny>> {
        let set = settings_arg(py, set.as_ref())?;
        let unset = unset.unwrap_or_default();
        let record = run(py, self.inner.reconfigure(&name, &set, &unset))?;
        to_py(py, &record)
    }

    /// Decommissions an instance: a final backup unless `final_backup=False`, the
    /// container removed, the data moved to `decommissioned/` (or deleted with `purge`).
    #[pyo3(signature = (name, purge=false, final_backup=true))]
    fn remove(
        &self,
        py: Python<'_>,
        name: String,
        purge: bool,
        final_backup: bool,
    ) -> PyResult<Py<PyAny>> {
        let options = DecommissionOptions {
            purge,
            no_backup: !final_backup,
        };
        let done = run(py, self.inner.decommission(&name, options))?;
        to_py(py, &done)
    }

    /// Takes a backup (`strategy` "online" or "cold") into a store (default "local").
    /// `progress(files, bytes)` is called as the archive grows.
    #[pyo3(signature = (name, strategy="online", store=None, no_logs=false, progress=None))]
    fn backup(
        &self,
        py: Python<'_>,
        name: String,
        strategy: &str,
        store: Option<String>,
        no_logs: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let strategy: Strategy = strategy.parse().map_err(|e| to_py_err(py, e))?;
        let options = BackupOptions {
            strategy,
            store,
            no_logs,
            progress: progress_arg(progress),
        };
        let report = run(py, self.inner.backup(&name, options))?;
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
        let list = run(
            py,
            self.inner.list_backups(name.as_deref(), store.as_deref()),
        )?;
        to_py(py, &list)
    }

    /// Checks a backup end to end without restoring it; with `drill=True`, restores it
    /// into a throw-away instance and checks repositories and secrets.
    #[pyo3(signature = (id, store=None, drill=false))]
    fn verify(
        &self,
        py: Python<'_>,
        id: String,
        store: Option<String>,
        drill: bool,
    ) -> PyResult<Py<PyAny>> {
        if drill {
            let report = run(py, self.inner.drill(&id, store.as_deref()))?;
            return to_py(py, &report);
        }
        let manifest = run(py, self.inner.verify(&id, store.as_deref()))?;
        #[derive(Serialize)]
        struct Verified {
            id: String,
            ok: bool,
            files: u64,
            bytes: u64,
        }
        to_py(
            py,
            &Verified {
                id,
                ok: true,
                files: manifest.index.files,
                bytes: manifest.index.bytes,
            },
        )
    }

    /// Copies a backup from `store` (default "local") to store `to`, hash checked.
    #[pyo3(signature = (id, to, store=None))]
    fn copy_backup(
        &self,
        py: Python<'_>,
        id: String,
        to: String,
        store: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let manifest = run(py, self.inner.copy_backup(&id, store.as_deref(), &to))?;
        #[derive(Serialize)]
        struct Copied {
            id: String,
            to: String,
            size: u64,
        }
        to_py(
            py,
            &Copied {
                id,
                to,
                size: manifest.archive.size,
            },
        )
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
        let deleted = run(
            py,
            self.inner.prune(name.as_deref(), store.as_deref(), policy),
        )?;
        to_py(py, &deleted)
    }

    /// Restores a backup, in place or as a new instance (`as_name`).
    #[pyo3(signature = (
        id, store=None, as_name=None, image=None, ip=None, http_port=None,
        https_port=None, ssh_port=None, timeout=None, progress=None
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
    ) -> PyResult<Py<PyAny>> {
        let request = RestoreRequest {
            id,
            store,
            as_name,
            image,
            addresses: addresses_arg(py, ip, http_port, https_port, ssh_port)?,
            timeout: timeout_arg(py, timeout)?,
            progress: progress_arg(progress),
        };
        let report = run(py, self.inner.restore(request))?;
        to_py(py, &report)
    }
}

/// Parses `KEY=VALUE` as Girofle does for `settings`: returns `(key, ruby_literal)`, the
/// form stored in an instance's record (`"gitlab_rails['time_zone']=UTC"` ->
/// `("gitlab_rails['time_zone']", "'UTC'")`).
#[pyfunction]
fn parse_setting(py: Python<'_>, text: &str) -> PyResult<(String, String)> {
    girofle_core::instance::parse_setting(text).map_err(|e| to_py_err(py, e))
}

/// Whether Girofle treats a setting key as secret (recorded and journaled redacted).
#[pyfunction]
fn is_secret_key(key: &str) -> bool {
    girofle_core::journal::is_secret_key(key)
}

#[pymodule]
fn _girofle(module: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(module)?;
    module.add_class::<PyGirofle>()?;
    module.add_function(wrap_pyfunction!(parse_setting, module)?)?;
    module.add_function(wrap_pyfunction!(is_secret_key, module)?)?;
    module.add("__version__", girofle_core::VERSION)?;
    module.add("REDACTED", girofle_core::journal::REDACTED)?;
    Ok(())
}
