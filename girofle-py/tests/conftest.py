"""Shared fixtures of girofle-py's tests: a fresh Girofle root per test with a port range
of its own, whose containers are removed even when the test fails; the GitLab stand-in
image; git helpers.

Like the Rust integration tests (tests/common/mod.rs), these run against the real Docker
engine; a missing engine or image fails loudly with how to get it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

import girofle

# As tests/gitlab-stand-in/build names them (two checkouts may use two prefixes).
_PREFIX = os.environ.get("GIROFLE_TEST_IMAGE_PREFIX", "girofle-test")
IMAGE = f"{_PREFIX}/gitlab-ce:17.5.1-ce.0"
OTHER_VERSION_IMAGE = f"{_PREFIX}/gitlab-ce:17.6.0-ce.0"

_counter = itertools.count()


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def image() -> str:
    """The stand-in image, or a failure saying how to build it."""
    for tag in (IMAGE, OTHER_VERSION_IMAGE):
        if _docker("image", "inspect", tag).returncode != 0:
            pytest.fail(
                f"the stand-in image {tag} is missing (or `docker` is not running): build it "
                "with `tests/gitlab-stand-in/build` (scripts/test does)"
            )
    return IMAGE


def containers_of(root: Path) -> list[str]:
    """Ids of every container Girofle made for `root`."""
    out = _docker("ps", "-aq", "--filter", f"label=io.girofle.root={root}")
    return out.stdout.split()


def write_config(root: Path, image: str, extra: str = "") -> tuple[int, int]:
    """girofle.toml with a port range no other test of this run uses (Rust's tests use
    30000 and up); returns the range."""
    n = next(_counter)
    base = 10000 + ((os.getpid() * 7 + n * 13) % 300) * 32
    ports = (base, base + 31)
    root.mkdir(parents=True, exist_ok=True)
    (root / "girofle.toml").write_text(
        f"""[network]
ips = ["127.0.0.1"]
ports = ["{ports[0]}-{ports[1]}"]

[instances]
image = "{image}"
health_timeout_secs = 120
stop_grace_secs = 10
{extra}"""
    )
    return ports


@dataclass
class Root:
    path: Path
    ports: tuple[int, int]
    tmp: Path

    def open(self) -> girofle.Girofle:
        return girofle.Girofle(self.path)


def _cleanup(path: Path) -> None:
    ids = containers_of(path)
    if ids:
        _docker("rm", "-f", *ids)


@pytest.fixture
def make_root(tmp_path: Path, image: str, request: pytest.FixtureRequest):
    """Makes initialised roots under tmp_path (each with its own port range); their
    containers go when the test ends, pass or fail."""

    def make(name: str = "root", init: bool = True, extra: str = "") -> Root:
        path = tmp_path / name
        ports = write_config(path, image, extra)
        request.addfinalizer(lambda: _cleanup(path))
        if init:
            girofle.Girofle.init(path)
        return Root(path, ports, tmp_path)

    return make


@pytest.fixture
def root(make_root) -> Root:
    return make_root()


@pytest.fixture
def g(root: Root) -> girofle.Girofle:
    return root.open()


# --- git ----------------------------------------------------------------------------

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Girofle Test",
    "GIT_AUTHOR_EMAIL": "test@girofle.invalid",
    "GIT_COMMITTER_NAME": "Girofle Test",
    "GIT_COMMITTER_EMAIL": "test@girofle.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"git {' '.join(args)} failed: {out.stdout}{out.stderr}"
    return out.stdout


def root_password(root: Path, name: str) -> str:
    """Root's password on instance `name` of `root`: GitLab made it up at the first boot and
    wrote it to /etc/gitlab/initial_root_password (the host side is the instance's
    `config/`) when none was given. A restore brings back the password of the instance
    the backup came from."""
    path = root / "instances" / name / "config" / "initial_root_password"
    for line in path.read_text().splitlines():
        if line.startswith("Password: "):
            return line[len("Password: ") :].strip()
    raise AssertionError(f"no `Password:` line in {path}")


def project_url(external_url: str, password: str, project: str = "team/app.git") -> str:
    """The clone URL of `project` with root's credentials: git over HTTP needs an
    authenticated user, and every project is private. GitLab's random passwords hold
    `+`, `/` and `=`, hence the quoting."""
    scheme, rest = external_url.split("://", 1)
    return f"{scheme}://root:{urllib.parse.quote(password, safe='')}@{rest.rstrip('/')}/{project}"


def ls_remote(url: str) -> str:
    return "\n".join(sorted(git(Path("/"), "ls-remote", url).splitlines()))


def push_project(work: Path, url: str, commits: int = 2) -> str:
    """A repository with `commits` commits, a branch and a tag, pushed over smart HTTP to
    `url` (with credentials: see `project_url`); returns `git ls-remote` of the result."""
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    for i in range(commits):
        (work / f"file{i}.txt").write_text(f"content {i}\n" * 100)
        git(work, "add", ".")
        git(work, "commit", "-q", "-m", f"commit {i}")
    git(work, "branch", "feature")
    git(work, "tag", "v1.0")
    for what in ("--all", "--tags"):
        push_retrying(work, url, what)
    return ls_remote(url)


def push_retrying(work: Path, url: str, what: str) -> None:
    """`git push` once more after a pause when the first attempt's connection broke: on a
    loaded 2-core machine the stand-in's HTTP server sometimes resets a connection (a push
    is idempotent; the refs are checked by the callers)."""
    out = subprocess.run(
        ["git", "push", "-q", url, what], cwd=work, env=GIT_ENV, capture_output=True, text=True
    )
    if out.returncode != 0:
        time.sleep(2)
        git(work, "push", "-q", url, what)


def unique(tag: str) -> str:
    """An instance name no other test (of any process) uses: container names are global
    to the engine."""
    return f"{tag}-{os.getpid() % 0xFFFFF:x}{next(_counter)}"


def managed_block(gitlab_rb: Path) -> str:
    """The lines of gitlab.rb's Girofle-managed block ("" when there is none): the
    stand-in's template holds commented examples of the same settings, so only the block
    proves a setting is applied."""
    text = gitlab_rb.read_text()
    begin, end = "# BEGIN girofle managed settings", "# END girofle managed settings"
    if begin not in text:
        return ""
    return text.split(begin, 1)[1].split(end, 1)[0]
