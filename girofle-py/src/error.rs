//! Girofle's exception classes: `girofle.GirofleError` and one subclass per core error
//! kind (and `CancelledError` for a cancelled call), so Python code can catch exactly what
//! it can act on.
//!
//! The classes are made at import time with `type(...)` rather than pyo3's
//! `create_exception!`, because some need two bases (`NotFoundError` is also a
//! `LookupError`, `InvalidInputError` a `ValueError`, `FileSystemError` an `OSError`)
//! and `create_exception!` takes one. Mapping a core error to its class is all this
//! module does; the messages are core's own.

use girofle_core::Error;
use pyo3::exceptions::{PyException, PyLookupError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The base class, then one class per `Error::kind()`.
struct Class {
    kind: &'static str,
    name: &'static str,
    /// The Girofle class it derives from (`None`: `GirofleError`).
    parent: Option<&'static str>,
    /// The builtin exception it is also.
    builtin: Option<fn(Python<'_>) -> Bound<'_, PyType>>,
    doc: &'static str,
}

const CLASSES: &[Class] = &[
    Class {
        kind: "not_found",
        name: "NotFoundError",
        parent: None,
        builtin: Some(|py| py.get_type::<PyLookupError>()),
        doc: "The thing asked for does not exist (an instance, a backup, a store, an image).",
    },
    Class {
        kind: "conflict",
        name: "ConflictError",
        parent: None,
        builtin: None,
        doc:
            "The operation conflicts with the current state (an address in use, an instance busy).",
    },
    Class {
        kind: "already_exists",
        name: "AlreadyExistsError",
        parent: Some("ConflictError"),
        builtin: None,
        doc: "The thing to create exists already (a kind of conflict).",
    },
    Class {
        kind: "invalid_input",
        name: "InvalidInputError",
        parent: None,
        builtin: Some(|py| py.get_type::<PyValueError>()),
        doc: "An argument or a configuration value is wrong; the message names it.",
    },
    Class {
        kind: "unhealthy",
        name: "UnhealthyError",
        parent: None,
        builtin: None,
        doc: "An instance did not become healthy in time, or reported unhealthy.",
    },
    Class {
        kind: "corrupt",
        name: "CorruptError",
        parent: None,
        builtin: None,
        doc: "Data is damaged: a hash, a size or a checksum does not match.",
    },
    Class {
        kind: "version_mismatch",
        name: "VersionMismatchError",
        parent: None,
        builtin: None,
        doc: "A version does not match (the GitLab version of a backup and an image...).",
    },
    Class {
        kind: "command",
        name: "CommandError",
        parent: None,
        builtin: None,
        doc: "A command run inside a container failed.",
    },
    Class {
        kind: "io",
        name: "FileSystemError",
        parent: None,
        builtin: Some(|py| py.get_type::<PyOSError>()),
        doc: "A file system operation on the host failed.",
    },
    Class {
        kind: "backend",
        name: "BackendError",
        parent: None,
        builtin: None,
        doc: "A backend (Docker engine, inventory database, object store) failed.",
    },
    // Not a core error kind: raised by this module when a `Cancel` token stopped a call.
    Class {
        kind: CANCELLED,
        name: "CancelledError",
        parent: None,
        builtin: None,
        doc: "The call was cancelled with its `Cancel` token (core's recovery has run).",
    },
];

const CANCELLED: &str = "cancelled";

const BASE: &str = "GirofleError";

/// (kind, class) pairs; the base class has kind "".
static TYPES: PyOnceLock<Vec<(&'static str, Py<PyType>)>> = PyOnceLock::new();

fn new_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Vec<Bound<'py, PyType>>,
    kind: Option<&str>,
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "girofle")?;
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("kind", kind)?;
    let bases = PyTuple::new(py, bases)?;
    Ok(py
        .get_type::<PyType>()
        .call1((name, bases, namespace))?
        .cast_into::<PyType>()?)
}

/// Creates the classes and adds them to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    let base = new_class(
        py,
        BASE,
        vec![py.get_type::<PyException>()],
        None,
        "Base class of every error Girofle raises; `kind` is core's error kind.",
    )?;
    module.add(BASE, &base)?;
    // (name, kind, class); the base class has kind "".
    let mut made: Vec<(&'static str, &'static str, Bound<'_, PyType>)> =
        vec![(BASE, "", base.clone())];
    for c in CLASSES {
        let parent = match c.parent {
            Some(p) => made
                .iter()
                .find(|(name, _, _)| *name == p)
                .map(|(_, _, t)| t.clone())
                .ok_or_else(|| {
                    PyRuntimeError::new_err(format!("{p} must come before {}", c.name))
                })?,
            None => base.clone(),
        };
        let mut bases = vec![parent];
        if let Some(builtin) = c.builtin {
            bases.push(builtin(py));
        }
        let class = new_class(py, c.name, bases, Some(c.kind), c.doc)?;
        module.add(c.name, &class)?;
        made.push((c.name, c.kind, class));
    }
    let _ = TYPES.set(
        py,
        made.into_iter().map(|(_, k, t)| (k, t.unbind())).collect(),
    );
    Ok(())
}

/// `girofle.CancelledError` with `message`.
pub fn cancelled_err(py: Python<'_>, message: &str) -> PyErr {
    let class = TYPES
        .get(py)
        .and_then(|types| types.iter().find(|(k, _)| *k == CANCELLED))
        .map(|(_, t)| t.bind(py).clone());
    match class.map(|c| c.call1((message,))) {
        Some(Ok(exception)) => PyErr::from_value(exception),
        Some(Err(e)) => e,
        None => PyRuntimeError::new_err(message.to_string()),
    }
}

/// The Python exception for a core error: its kind's class, core's message.
pub fn to_py_err(py: Python<'_>, error: Error) -> PyErr {
    let Some(types) = TYPES.get(py) else {
        return PyRuntimeError::new_err(error.to_string());
    };
    let class = types
        .iter()
        .find(|(k, _)| *k == error.kind())
        .or_else(|| types.first())
        .map(|(_, t)| t.bind(py).clone());
    let Some(class) = class else {
        return PyRuntimeError::new_err(error.to_string());
    };
    let errno = match &error {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    };
    match class.call1((error.to_string(),)) {
        Ok(exception) => {
            if let Some(n) = errno {
                // OSError's own attribute, so `except OSError as e: e.errno` works.
                let _ = exception.setattr("errno", n);
            }
            PyErr::from_value(exception)
        }
        Err(e) => e,
    }
}
