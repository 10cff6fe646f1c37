#!/usr/bin/python3
"""GitLab TEST STAND-IN (Girofle test infrastructure). NOT GitLab.

Keeps the container contract of gitlab/gitlab-ce:<version>-ce.0 closely enough for
Girofle's tests: volumes, users/ids, first-boot files, health endpoints, git smart HTTP,
gitlab-ctl / gitlab-backup / gitlab-rake commands. Python 3 stdlib + git only.

Entry points (see /opt/gitlab/bin/*):
    standin.py wrapper          PID 1 (/assets/wrapper)
    standin.py service NAME     one supervised "service" (nginx, puma, gitaly, ...)
    standin.py ctl ARGS         gitlab-ctl
    standin.py backup ARGS      gitlab-backup
    standin.py rake ARGS        gitlab-rake
    standin.py healthcheck ARGS gitlab-healthcheck
"""
import base64
import datetime
import fcntl
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ETC = "/etc/gitlab"
DATA = "/var/opt/gitlab"
LOGS = "/var/log/gitlab"
RUN = "/run/gitlab-standin"
GITLAB_RB = ETC + "/gitlab.rb"
SECRETS = ETC + "/gitlab-secrets.json"
INITIAL_ROOT_PASSWORD = ETC + "/initial_root_password"
REPOS = DATA + "/git-data/repositories"
PGDATA = DATA + "/postgresql/data"
DB = PGDATA + "/db.json"
SETTINGS = DATA + "/etc/effective-settings.json"
BACKUPS = DATA + "/backups"
UPLOADS = DATA + "/gitlab-rails/uploads"
SHARED = DATA + "/gitlab-rails/shared"
VERSION_FILE = "/opt/gitlab/embedded/service/gitlab-rails/VERSION"
BACKUP_PID = "/opt/gitlab/embedded/service/gitlab-rails/tmp/backup_restore.pid"

GIT_UID = GIT_GID = 998
REDIS_UID = REDIS_GID = 997
PSQL_UID = PSQL_GID = 996

SOCKETS = {
    "gitaly": (DATA + "/gitaly/gitaly.socket", GIT_UID, GIT_GID),
    "postgresql": (DATA + "/postgresql/.s.PGSQL.5432", PSQL_UID, PSQL_GID),
    "redis": (DATA + "/redis/redis.socket", REDIS_UID, REDIS_GID),
    "puma": (DATA + "/gitlab-rails/sockets/gitlab.socket", GIT_UID, GIT_GID),
}
SERVICE_USERS = {
    "gitaly": (GIT_UID, GIT_GID), "puma": (GIT_UID, GIT_GID), "sidekiq": (GIT_UID, GIT_GID),
    "postgresql": (PSQL_UID, PSQL_GID), "redis": (REDIS_UID, REDIS_GID), "nginx": (0, 0),
}
SERVICES = sorted(SERVICE_USERS)  # gitlab-ctl status lists services alphabetically
# `gitlab-ctl stop` stops the front first and the data stores last.
STOP_ORDER = ["nginx", "puma", "sidekiq", "gitaly", "redis", "postgresql"]


def stop_secs_for(services):
    """How long stopping `services` takes: STANDIN_STOP_SECS (container environment,
    default 1; real GitLab: tens of seconds) for all of them, a share for fewer."""
    try:
        total = max(0.0, float(os.environ.get("STANDIN_STOP_SECS", "1")))
    except ValueError:
        total = 1.0
    return total * len(services) / len(SERVICES)

# (dir, uid, gid, mode): created / fixed (top level only, like Chef) at every boot.
DATA_DIRS = [
    (DATA, 0, 0, 0o755),
    (DATA + "/etc", 0, 0, 0o755),
    (DATA + "/git-data", GIT_UID, 0, 0o700),
    (REPOS, GIT_UID, GIT_GID, 0o2770),
    (DATA + "/gitaly", GIT_UID, 0, 0o700),
    (DATA + "/postgresql", PSQL_UID, PSQL_GID, 0o755),
    (PGDATA, PSQL_UID, PSQL_GID, 0o700),
    (DATA + "/redis", REDIS_UID, GIT_GID, 0o750),
    (DATA + "/gitlab-rails", GIT_UID, GIT_GID, 0o755),
    (DATA + "/gitlab-rails/sockets", GIT_UID, GIT_GID, 0o750),
    (UPLOADS, GIT_UID, GIT_GID, 0o700),
    (SHARED, GIT_UID, GIT_GID, 0o751),
    (SHARED + "/artifacts", GIT_UID, GIT_GID, 0o700),
    (SHARED + "/lfs-objects", GIT_UID, GIT_GID, 0o700),
    (SHARED + "/packages", GIT_UID, GIT_GID, 0o700),
    (SHARED + "/pages", GIT_UID, GIT_GID, 0o750),
    (SHARED + "/terraform_state", GIT_UID, GIT_GID, 0o700),
    (SHARED + "/ci_secure_files", GIT_UID, GIT_GID, 0o700),
    (DATA + "/gitlab-ci", GIT_UID, GIT_GID, 0o755),
    (DATA + "/gitlab-ci/builds", GIT_UID, GIT_GID, 0o700),
    (BACKUPS, GIT_UID, 0, 0o700),
]
LOG_SERVICES = SERVICES + ["reconfigure", "gitlab-rails"]

# --------------------------------------------------------------------------- helpers

def version():
    with open(VERSION_FILE) as f:
        return f.read().strip()


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def log(service, msg, stdout=True):
    line = "%s %s" % (now_utc().strftime("%Y-%m-%d_%H:%M:%S.%f"), msg)
    if stdout:
        try:
            print(msg if service is None else "[%s] %s" % (service, msg), flush=True)
        except (BrokenPipeError, OSError):
            pass
    if service:
        try:
            os.makedirs(os.path.join(LOGS, service), exist_ok=True)
            with open(os.path.join(LOGS, service, "current"), "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def write_atomic(path, data, uid=0, gid=0, mode=0o644):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_dir(path, uid=0, gid=0, mode=0o755):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def demote(uid, gid):
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def run_as_git(args, **kw):
    env = dict(os.environ, HOME=DATA)
    env.update(kw.pop("env", {}))
    return subprocess.run(args, user=GIT_UID, group=GIT_GID, extra_groups=[], env=env, **kw)


class FileLock:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


# --------------------------------------------------------------------------- secrets / db

def new_secrets():
    h = lambda n=64: secrets.token_hex(n)
    return {
        "gitlab_workhorse": {"secret_token": secrets.token_urlsafe(32)},
        "gitlab_shell": {"secret_token": h()},
        "gitlab_rails": {
            "secret_key_base": h(), "db_key_base": h(), "otp_key_base": h(),
            "encrypted_settings_key_base": h(),
        },
        "gitlab_pages": {},
        "gitlab_kas": {"api_secret_key": secrets.token_urlsafe(32)},
    }


def db_key_base():
    with open(SECRETS) as f:
        return json.load(f)["gitlab_rails"]["db_key_base"]


def seal(record, key):
    body = {k: v for k, v in record.items() if k != "sealed"}
    msg = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def db_lock():
    return FileLock(RUN + "/db.lock")


def db_load():
    with open(DB) as f:
        return json.load(f)


def db_save(db):
    write_atomic(DB, json.dumps(db, indent=2, sort_keys=True) + "\n", PSQL_UID, PSQL_GID, 0o600)


def db_add(db, record):
    record["id"] = db["next_id"]
    db["next_id"] += 1
    record["created_at"] = now_utc().isoformat()
    record["sealed"] = seal(record, db_key_base())
    db["records"].append(record)
    return record


# What gitlab-rails writes next to gitlab.rb when it made up root's password at the first
# seeding (the text of GitLab's own file; a reconfigure deletes it after 24 hours).
INITIAL_ROOT_PASSWORD_TEXT = """\
# WARNING: This value is valid only in the following conditions
#          1. If provided manually (either via `GITLAB_ROOT_PASSWORD` environment variable or via `gitlab_rails['initial_root_password']` setting in `gitlab.rb`, it was provided before database was seeded for the first time (usually, the first reconfigure run).
#          2. Password hasn't been changed manually, either via UI or via command line.
#
#          If the password shown here doesn't work, you must reset the admin password following https://docs.gitlab.com/ee/security/reset_user_password.html#reset-your-root-password.

Password: %s

# NOTE: This file will be automatically deleted in the first reconfigure run after 24 hours.
"""
INITIAL_ROOT_PASSWORD_TTL = 24 * 3600
PASSWORD_ITERATIONS = 20000


def hash_password(password):
    """Stands for Devise's bcrypt: a salted, slow hash in users.encrypted_password."""
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), PASSWORD_ITERATIONS)
    return "pbkdf2-sha256$%d$%s$%s" % (PASSWORD_ITERATIONS, salt, digest.hex())


def password_matches(password, stored):
    try:
        _, iterations, salt, want = stored.split("$")
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    except (AttributeError, ValueError):
        return False
    return hmac.compare_digest(got.hex(), want)


def initial_root_password(settings):
    """(password, store it in /etc/gitlab/initial_root_password?), as Omnibus decides at
    every Chef run: GITLAB_ROOT_PASSWORD wins over gitlab_rails['initial_root_password'];
    with neither, a random one that is stored unless store_initial_root_password is false.
    A given one shorter than 8 characters fails the run (ConfigError)."""
    rails = settings.get("gitlab_rails") if isinstance(settings.get("gitlab_rails"), dict) else {}
    store = rails.get("store_initial_root_password")
    given = os.environ.get("GITLAB_ROOT_PASSWORD") or rails.get("initial_root_password")
    if given is None:
        return base64.b64encode(secrets.token_bytes(32)).decode(), store is None or bool(store)
    if not isinstance(given, str) or len(given) < 8:
        raise ConfigError(("RuntimeError", "initial_root_password: Length is too short, minimum is 8 characters"))
    return given, bool(store)


def db_init(settings):
    """Creates and seeds the database when there is none: the first boot's seeding, the
    only moment the initial_* settings act (gitlab-contract.md, "First boot")."""
    with db_lock():
        if os.path.exists(DB):
            return False
        password, store = initial_root_password(settings)
        rails = settings.get("gitlab_rails") if isinstance(settings.get("gitlab_rails"), dict) else {}
        token = rails.get("initial_shared_runners_registration_token")
        db = {"database": "gitlabhq_production", "schema_version": "20241010000000",
              "next_id": 1, "records": []}
        db_add(db, {"type": "user", "username": "root", "name": "Administrator",
                    "email": "gitlab_admin_%s@example.com" % secrets.token_hex(3), "admin": True,
                    "otp_required_for_login": False, "encrypted_password": hash_password(password)})
        db_add(db, {"type": "ci_variable", "key": "DEPLOY_PASSWORD",
                    "encrypted_value": secrets.token_hex(24)})
        db_add(db, {"type": "application_setting", "key": "runners_registration_token",
                    "encrypted_value": token if isinstance(token, str) and token else secrets.token_hex(16)})
        db_save(db)
        if store:
            write_atomic(INITIAL_ROOT_PASSWORD, INITIAL_ROOT_PASSWORD_TEXT % password, 0, 0, 0o600)
        return True


def find_user(username):
    try:
        db = db_load()
    except (OSError, ValueError):
        return None
    return next((r for r in db.get("records", []) if r.get("type") == "user"
                 and r.get("username") == username), None)


def db_add_repo(relpath, creator):
    rel = relpath[:-4] if relpath.endswith(".git") else relpath
    kind = "project_wiki" if rel.endswith(".wiki") else "project"
    with db_lock():
        db = db_load()
        # Push-to-create makes a private project (visibility level 0).
        db_add(db, {"type": kind, "path": rel[:-5] if kind == "project_wiki" else rel,
                    "repository": rel + ".git", "visibility_level": 0, "creator_id": creator["id"],
                    "runners_token_encrypted": secrets.token_hex(16)})
        db_save(db)


# --------------------------------------------------------------------------- gitlab.rb

class ConfigError(Exception):
    pass


def split_statements(text):
    """Yield (lineno, statement) of a Ruby-ish config: ';' / newline separated, '#' comments,
    brackets continue over lines."""
    stmt, depth, quote, esc, line, start = [], 0, None, False, 1, None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            stmt.append(c)
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == quote:
                quote = None
            if c == "\n":
                line += 1
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c in "'\"":
            quote = c
            stmt.append(c)
            start = start or line
        elif c in "[{(":
            depth += 1
            stmt.append(c)
            start = start or line
        elif c in "]})":
            depth -= 1
            stmt.append(c)
        elif c == ";" or (c == "\n" and depth <= 0):
            s = "".join(stmt).strip()
            if s:
                yield start or line, s
            stmt, start, depth = [], None, 0
            if c == "\n":
                line += 1
        else:
            if c == "\n":
                line += 1
            elif not c.isspace():
                start = start or line
            stmt.append(c)
        i += 1
    if quote:
        raise ConfigError((start or line, "unterminated string meets end of file"))
    s = "".join(stmt).strip()
    if s:
        yield start or line, s


class LiteralParser:
    def __init__(self, s):
        self.s, self.i = s, 0

    def ws(self):
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def fail(self, what="unexpected input"):
        raise ValueError("%s at %r" % (what, self.s[self.i:self.i + 20]))

    def parse_all(self):
        v = self.value()
        self.ws()
        if self.i != len(self.s):
            self.fail("unexpected tIDENTIFIER, expecting end-of-input")
        return v

    def string(self):
        q = self.s[self.i]
        self.i += 1
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                n = self.s[self.i + 1]
                if q == '"':
                    out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(n, n))
                else:
                    out.append(n if n in "\\'" else "\\" + n)
                self.i += 2
                continue
            if c == q:
                self.i += 1
                return "".join(out)
            out.append(c)
            self.i += 1
        self.fail("unterminated string")

    def value(self):
        self.ws()
        if self.i >= len(self.s):
            self.fail("unexpected end-of-input")
        c = self.s[self.i]
        if c in "'\"":
            return self.string()
        if c == "[":
            self.i += 1
            out = []
            while True:
                self.ws()
                if self.s[self.i:self.i + 1] == "]":
                    self.i += 1
                    return out
                out.append(self.value())
                self.ws()
                if self.s[self.i:self.i + 1] == ",":
                    self.i += 1
                elif self.s[self.i:self.i + 1] != "]":
                    self.fail("expected ',' or ']'")
        if c == "{":
            self.i += 1
            out = {}
            while True:
                self.ws()
                if self.s[self.i:self.i + 1] == "}":
                    self.i += 1
                    return out
                m = re.match(r"([A-Za-z_]\w*):(?!:)", self.s[self.i:])
                if m:
                    k = m.group(1)
                    self.i += m.end()
                else:
                    k = self.value()
                    self.ws()
                    if self.s[self.i:self.i + 2] != "=>":
                        self.fail("expected '=>'")
                    self.i += 2
                out[str(k)] = self.value()
                self.ws()
                if self.s[self.i:self.i + 1] == ",":
                    self.i += 1
                elif self.s[self.i:self.i + 1] != "}":
                    self.fail("expected ',' or '}'")
        m = re.match(r"-?\d[\d_]*(\.\d+)?", self.s[self.i:])
        if m:
            self.i += m.end()
            t = m.group(0).replace("_", "")
            return float(t) if m.group(1) else int(t)
        m = re.match(r"(true|false|nil)\b", self.s[self.i:])
        if m:
            self.i += m.end()
            return {"true": True, "false": False, "nil": None}[m.group(1)]
        m = re.match(r":([A-Za-z_]\w*[?!]?)", self.s[self.i:])
        if m:
            self.i += m.end()
            return m.group(1)
        self.fail("syntax error, unexpected tIDENTIFIER")


TOP_RE = re.compile(r"^([a-z_][a-z0-9_]*)\s*\(?\s*(['\"].*?)\s*\)?$", re.S)
# `name = value` with no brackets is, in Ruby, a local variable assignment: accepted, and
# it sets nothing (gitlab-contract.md: top-level settings are method calls).
ASSIGN_RE = re.compile(r"^([a-z_][a-z0-9_]*)\s*=(?!=)\s*(.+)$", re.S)
KEY_RE = re.compile(r"^([a-z_][a-z0-9_]*)((?:\[\s*(?:'[^']*'|\"[^\"]*\"|:[A-Za-z_]\w*)\s*\]){1,2})\s*=(?!=)\s*(.+)$", re.S)


# The settings hashes gitlab.rb may assign into (omnibus-gitlab's configurables); any
# other `name[...] = ...` fails the Chef run as in Omnibus ("Reading unsupported config
# value name."): there is no `foo` hash to put `foo['bar']` in.
SETTING_HASHES = frozenset(
    "alertmanager consul crond geo_logcursor geo_postgresql geo_secondary gitaly "
    "gitlab_backup_cli gitlab_ci gitlab_exporter gitlab_kas gitlab_kas_nginx gitlab_pages "
    "gitlab_rails gitlab_shell gitlab_sshd gitlab_workhorse high_availability letsencrypt "
    "logging logrotate manage_accounts manage_storage_directories mattermost mattermost_nginx "
    "nginx node_exporter package pages_nginx patroni pgbouncer pgbouncer_exporter "
    "postgres_exporter postgresql praefect prometheus prometheus_monitoring puma redis "
    "redis_exporter registry registry_nginx sentinel sidekiq spamcheck storage_check user "
    "web_server".split())
# Keys whose default value is itself a hash, so `hash['key']['sub'] = v` works on them;
# any other second level is `nil['sub'] = v` in Ruby and fails the run (NoMethodError).
NESTED_DEFAULTS = {
    "gitlab_rails": {"env", "object_store", "rack_attack_git_basic_auth"},
    "gitaly": {"configuration", "env"}, "praefect": {"configuration", "env"},
    "gitlab_workhorse": {"env"}, "gitlab_pages": {"env"}, "gitlab_kas": {"env"},
    "gitlab_exporter": {"env"}, "registry": {"env"}, "mattermost": {"env"},
    "nginx": {"proxy_set_headers"}, "postgresql": {"custom_pg_hba_entries"},
}


def parse_config(text, source, settings):
    for lineno, stmt in split_statements(text):
        m = KEY_RE.match(stmt)
        try:
            if m:
                keys = [k.strip(" '\":") for k in re.findall(r"\[([^\]]*)\]", m.group(2))]
                value = LiteralParser(m.group(3)).parse_all()
                if m.group(1) not in SETTING_HASHES:
                    raise ConfigError((source, lineno, stmt, "Reading unsupported config value %s."
                                       % m.group(1), "Mixlib::Config::UnknownConfigOptionError"))
                node = settings.setdefault(m.group(1), {})
                if not isinstance(node, dict):
                    raise ValueError("undefined method `[]=' for %r" % node)
                for k in keys[:-1]:
                    if k not in node and k in NESTED_DEFAULTS.get(m.group(1), ()):
                        node[k] = {}
                    node = node.get(k)
                    if not isinstance(node, dict):
                        raise ConfigError((source, lineno, stmt, "undefined method `[]=' for %s"
                                           % ("nil:NilClass" if node is None else repr(node)),
                                           "NoMethodError"))
                node[keys[-1]] = value
                continue
            m = ASSIGN_RE.match(stmt)
            if m:
                LiteralParser(m.group(2)).parse_all()
                continue
            m = TOP_RE.match(stmt)
            if m:
                value = LiteralParser(m.group(2)).parse_all()
                if not isinstance(value, str):
                    raise ValueError("expected a string")
                settings[m.group(1)] = value
                continue
            raise ValueError("syntax error, unexpected tIDENTIFIER, expecting end-of-input")
        except ValueError as e:
            raise ConfigError((source, lineno, stmt, str(e)))
    return settings


def compute_settings():
    # As the official image: GITLAB_OMNIBUS_CONFIG is evaluated first, then gitlab.rb,
    # whose values win (gitlab-contract.md, "Configuration order").
    settings, sources = {}, []
    env = os.environ.get("GITLAB_OMNIBUS_CONFIG", "")
    if env.strip():
        parse_config(env, "GITLAB_OMNIBUS_CONFIG", settings)
        sources.append("GITLAB_OMNIBUS_CONFIG")
    if os.path.exists(GITLAB_RB):
        with open(GITLAB_RB) as f:
            parse_config(f.read(), GITLAB_RB, settings)
        sources.append(GITLAB_RB)
    return settings, sources


def listen_ports(settings):
    ports = {80}
    nginx = settings.get("nginx", {})
    if isinstance(nginx, dict) and isinstance(nginx.get("listen_port"), int):
        ports = {80, nginx["listen_port"]}
    else:
        u = settings.get("external_url")
        if u:
            try:
                p = urllib.parse.urlsplit(u)
                ports.add(p.port or (443 if p.scheme == "https" else 80))
            except ValueError:
                pass
    ports.discard(443)  # no TLS in the stand-in
    return sorted(ports)


class ChefResourceError(ConfigError):
    """A resource of the Chef run failed (gitlab.rb itself was fine): `args[0]` is what
    Chef prints after "There was an error running gitlab-ctl reconfigure:"."""


# Rails' own time zone names (ActiveSupport::TimeZone::MAPPING keys); besides them Rails
# accepts every tz database identifier (/usr/share/zoneinfo).
RAILS_ZONES = frozenset(
    "International Date Line West|Midway Island|American Samoa|Hawaii|Alaska|"
    "Pacific Time (US & Canada)|Tijuana|Mountain Time (US & Canada)|Arizona|Chihuahua|"
    "Mazatlan|Central Time (US & Canada)|Saskatchewan|Guadalajara|Mexico City|Monterrey|"
    "Central America|Eastern Time (US & Canada)|Indiana (East)|Bogota|Lima|Quito|"
    "Atlantic Time (Canada)|Caracas|La Paz|Santiago|Newfoundland|Brasilia|Buenos Aires|"
    "Montevideo|Georgetown|Puerto Rico|Greenland|Mid-Atlantic|Azores|Cape Verde Is.|Dublin|"
    "Edinburgh|Lisbon|London|Casablanca|Monrovia|UTC|Belgrade|Bratislava|Budapest|Ljubljana|"
    "Prague|Sarajevo|Skopje|Warsaw|Zagreb|Brussels|Copenhagen|Madrid|Paris|Amsterdam|Berlin|"
    "Bern|Zurich|Rome|Stockholm|Vienna|West Central Africa|Bucharest|Cairo|Helsinki|Kyiv|"
    "Riga|Sofia|Tallinn|Vilnius|Athens|Istanbul|Minsk|Jerusalem|Harare|Pretoria|Kaliningrad|"
    "Moscow|St. Petersburg|Volgograd|Samara|Kuwait|Riyadh|Nairobi|Baghdad|Tehran|Abu Dhabi|"
    "Muscat|Baku|Tbilisi|Yerevan|Kabul|Ekaterinburg|Islamabad|Karachi|Tashkent|Chennai|"
    "Kolkata|Mumbai|New Delhi|Kathmandu|Astana|Dhaka|Sri Jayawardenepura|Almaty|Novosibirsk|"
    "Rangoon|Bangkok|Hanoi|Jakarta|Krasnoyarsk|Beijing|Chongqing|Hong Kong|Urumqi|"
    "Kuala Lumpur|Singapore|Taipei|Perth|Irkutsk|Ulaanbaatar|Seoul|Osaka|Sapporo|Tokyo|"
    "Yakutsk|Darwin|Adelaide|Canberra|Melbourne|Sydney|Brisbane|Hobart|Vladivostok|Guam|"
    "Port Moresby|Magadan|Srednekolymsk|Solomon Is.|New Caledonia|Fiji|Kamchatka|"
    "Marshall Is.|Auckland|Wellington|Nuku'alofa|Tokelau Is.|Chatham Is.|Samoa".split("|"))


def valid_time_zone(name):
    if name in RAILS_ZONES:
        return True
    if not re.match(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$", name):
        return False
    path = os.path.join("/usr/share/zoneinfo", name)
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"TZif"
    except OSError:
        return False


def check_rails_settings(settings):
    """What Rails refuses when the Chef run boots it (database migrations): an unknown
    time zone (ActiveSupport: "Invalid Timezone: <name>"). gitlab.rb parsed fine, so this
    fails a resource, not the parse."""
    rails = settings.get("gitlab_rails")
    tz = rails.get("time_zone") if isinstance(rails, dict) else None
    if tz is not None and not (isinstance(tz, str) and valid_time_zone(tz)):
        raise ChefResourceError(
            "rails_migration[gitlab-rails] (gitlab::database_migrations line 51) had an error: "
            "Mixlib::ShellOut::ShellCommandFailed: bash_hide_env[migrate gitlab-rails database] "
            "(gitlab::database_migrations line 20) had an error: Mixlib::ShellOut::ShellCommandFailed: "
            "Expected process to exit with [0], but received '1'\n"
            "---- Begin output of \"bash\"  ----\n"
            "STDOUT: rake aborted!\n"
            "ArgumentError: Invalid Timezone: %s\n"
            "/opt/gitlab/embedded/lib/ruby/gems/3.2.0/gems/activesupport-7.0.8.4/lib/active_support/core_ext/time/zones.rb:88:in `find_zone!'\n"
            "STDERR: \n"
            "---- End output of \"bash\"  ----\n"
            "Ran \"bash\"  returned 1" % tz)


def reconfigure(quiet=False):
    """Apply gitlab.rb + GITLAB_OMNIBUS_CONFIG. Raises ConfigError."""
    out = (lambda m: None) if quiet else (lambda m: log("reconfigure", m))
    out("[%s] INFO: Started Cinc Zero at chefzero://localhost:1 with repository at /opt/gitlab/embedded (One version per cookbook)" % now_utc().strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    out("Cinc Client, version 18.3.0")
    out("resolving cookbooks for run list: [\"gitlab\"]")
    settings, sources = compute_settings()
    check_rails_settings(settings)
    ensure_dir(DATA + "/etc", 0, 0, 0o755)
    # Omnibus checks the initial root password at every run, seeded or not.
    initial_root_password(settings)
    eff = {"gitlab_version": version(), "applied_at": now_utc().isoformat(),
           "sources": sources, "listen_ports": listen_ports(settings), "settings": settings}
    write_atomic(SETTINGS, json.dumps(eff, indent=2, sort_keys=True) + "\n", 0, 0, 0o644)
    out("Recipe: gitlab::default")
    try:
        if time.time() - os.path.getmtime(INITIAL_ROOT_PASSWORD) > INITIAL_ROOT_PASSWORD_TTL:
            os.unlink(INITIAL_ROOT_PASSWORD)
            out("  * file[%s] action delete (older than 24 hours)" % INITIAL_ROOT_PASSWORD)
    except FileNotFoundError:
        pass
    out("Running handlers:")
    out("Running handlers complete")
    out("Infra Phase complete, 0/%d resources updated in 01 seconds" % (len(DATA_DIRS) + 6))
    return eff


def rails_settings(settings):
    """What Rails (Puma) reads at its boot: gitlab_rails[...], puma[...] and the top-level
    settings (external_url, registry_external_url, ...: they all end up in gitlab.yml).
    A reconfigure that changes any of them restarts Puma; one that changes only other
    services' settings (nginx[...], postgresql[...], ...) does not."""
    return {k: v for k, v in settings.items()
            if k in ("gitlab_rails", "puma") or not isinstance(v, dict)}


PUMA_RESTART_FILE = RUN + "/puma-restart.json"
PUMA_LOADED = RUN + "/puma-rails.json"


def request_puma_restart():
    """Like Omnibus: reconfigure only sends Puma a restart and exits 0; the supervisor
    carries it out a little later (STANDIN_PUMA_RESTART_DELAY, default 0.5 s, so a probe
    right after reconfigure still reaches the old Puma), and the new Puma boots for
    STANDIN_PUMA_RESTART_SECS (default 2 s; real GitLab: tens of seconds) before it
    answers; meanwhile every request gets 502."""
    delay = float(os.environ.get("STANDIN_PUMA_RESTART_DELAY", "0.5"))
    boot = float(os.environ.get("STANDIN_PUMA_RESTART_SECS", "2"))
    with FileLock(RUN + "/desired.lock"):
        serial = (read_json(PUMA_RESTART_FILE, {}) or {}).get("serial", 0) + 1
        write_atomic(PUMA_RESTART_FILE, json.dumps({"serial": serial, "at": time.time() + delay,
                                                    "boot_secs": boot}))
    log("reconfigure", "Recipe: gitlab::puma: restarting puma in the background (settings changed)")


def chef_failure(err):
    ts = now_utc().strftime("%Y-%m-%dT%H:%M:%S+00:00")
    if isinstance(err, ChefResourceError):
        print("[%s] FATAL: Stacktrace dumped to /opt/gitlab/embedded/cookbooks/cache/cinc-stacktrace.out" % ts, file=sys.stderr)
        print("[%s] FATAL: Please provide the contents of the stacktrace.out file if you file a bug report" % ts, file=sys.stderr)
        print("[%s] FATAL: %s" % (ts, err.args[0].splitlines()[0]), file=sys.stderr)
        print("\nThere was an error running gitlab-ctl reconfigure:\n\n%s\n" % err.args[0], file=sys.stderr)
        return
    if err.args[0][0] == "RuntimeError":
        # Raised by Omnibus' own checks of a value, not by Ruby's parser.
        msg = err.args[0][1]
        print("[%s] FATAL: RuntimeError: %s" % (now_utc().strftime("%Y-%m-%dT%H:%M:%S+00:00"), msg), file=sys.stderr)
        print("", file=sys.stderr)
        print("There was an error running gitlab-ctl reconfigure:", file=sys.stderr)
        print("", file=sys.stderr)
        print(msg, file=sys.stderr)
        print("", file=sys.stderr)
        return
    a = err.args[0]
    if len(a) == 2:
        a = ("gitlab.rb", a[0], "", a[1])
    source, lineno, stmt, msg = a[:4]
    kind = a[4] if len(a) > 4 else "SyntaxError"
    print("[%s] FATAL: Stacktrace dumped to /opt/gitlab/embedded/cookbooks/cache/cinc-stacktrace.out" % now_utc().strftime("%Y-%m-%dT%H:%M:%S+00:00"), file=sys.stderr)
    print("[%s] FATAL: Please provide the contents of the stacktrace.out file if you file a bug report" % now_utc().strftime("%Y-%m-%dT%H:%M:%S+00:00"), file=sys.stderr)
    print("[%s] FATAL: %s: %s:%s: %s" % (now_utc().strftime("%Y-%m-%dT%H:%M:%S+00:00"), kind, source, lineno, msg), file=sys.stderr)
    print("", file=sys.stderr)
    print("There was an error running gitlab-ctl reconfigure:", file=sys.stderr)
    print("", file=sys.stderr)
    print("%s:%s: %s" % (source, lineno, msg), file=sys.stderr)
    print("  %s" % stmt.splitlines()[0] if stmt else "", file=sys.stderr)
    print("", file=sys.stderr)


# The template the wrapper copies to /etc/gitlab/gitlab.rb when there is none, where the
# official image keeps its own (a manager may read it from the image before the first boot).
GITLAB_RB_TEMPLATE_PATH = "/opt/gitlab/etc/gitlab.rb.template"
with open(GITLAB_RB_TEMPLATE_PATH) as _f:
    GITLAB_RB_TEMPLATE = _f.read()


# --------------------------------------------------------------------------- first boot

def fake_ssh_key(kind):
    body = secrets.token_bytes(300 if kind != "rsa" else 1600)
    import base64
    b = base64.b64encode(body).decode()
    priv = "-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n-----END OPENSSH PRIVATE KEY-----\n" % "\n".join(
        b[i:i + 70] for i in range(0, len(b), 70))
    algo = {"ed25519": "ssh-ed25519", "rsa": "ssh-rsa", "ecdsa": "ecdsa-sha2-nistp256"}[kind]
    pub = "%s %s root@gitlab\n" % (algo, base64.b64encode(secrets.token_bytes(51)).decode())
    return priv, pub


def first_boot_files():
    if not os.path.exists(GITLAB_RB):
        write_atomic(GITLAB_RB, GITLAB_RB_TEMPLATE, 0, 0, 0o600)
        log("reconfigure", "Wrote template %s" % GITLAB_RB)
    if not os.path.exists(SECRETS):
        write_atomic(SECRETS, json.dumps(new_secrets(), indent=2) + "\n", 0, 0, 0o600)
        log("reconfigure", "Wrote %s" % SECRETS)
    for kind in ("rsa", "ecdsa", "ed25519"):
        key = "%s/ssh_host_%s_key" % (ETC, kind)
        if not os.path.exists(key):
            priv, pub = fake_ssh_key(kind)
            write_atomic(key, priv, 0, 0, 0o600)
            write_atomic(key + ".pub", pub, 0, 0, 0o644)
    for d in ("trusted-certs", "ssl"):
        os.makedirs(os.path.join(ETC, d), exist_ok=True)


def setup_data_dirs():
    for path, uid, gid, mode in DATA_DIRS:
        ensure_dir(path, uid, gid, mode)
    ensure_backup_path()


# --------------------------------------------------------------------------- supervisor

STATUS_FILE = RUN + "/status.json"
DESIRED_FILE = RUN + "/desired.json"


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def set_desired(services, state):
    with FileLock(RUN + "/desired.lock"):
        desired = read_json(DESIRED_FILE, {})
        for s in services:
            desired[s] = state
        desired["_serial"] = desired.get("_serial", 0) + 1
        write_atomic(DESIRED_FILE, json.dumps(desired))


def wrapper():
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    boot_time = time.time()
    log(None, "Thank you for using GitLab Docker Image!")
    log(None, "Current version: gitlab-ce=%s-ce.0 (GitLab TEST STAND-IN, not GitLab)" % version())
    log(None, "")
    log(None, "Configure GitLab for your system by editing /etc/gitlab/gitlab.rb file")
    log(None, "And restart this container to reload settings.")
    log(None, "To do it use docker exec:")
    log(None, "")
    log(None, "  docker exec -it gitlab editor /etc/gitlab/gitlab.rb")
    log(None, "  docker restart gitlab")
    log(None, "")
    os.makedirs(RUN, exist_ok=True)
    for p in (STATUS_FILE, DESIRED_FILE):
        if os.path.exists(p):
            os.unlink(p)
    os.makedirs(ETC, exist_ok=True)
    os.makedirs(DATA, exist_ok=True)
    for s in LOG_SERVICES:
        os.makedirs(os.path.join(LOGS, s), exist_ok=True)
    os.makedirs(os.path.dirname(BACKUP_PID), exist_ok=True)
    if os.path.exists(BACKUP_PID):
        os.unlink(BACKUP_PID)

    # Simulated (short) boot; the real image needs minutes.
    delay = float(os.environ.get("STANDIN_BOOT_SECS", "2.5"))
    log(None, "Preparing services...")
    end = time.time() + delay
    while time.time() < end:
        if stop["flag"]:
            return 0
        time.sleep(0.05)

    log(None, "Configuring GitLab...")
    first_boot_files()
    try:
        eff = reconfigure()
    except ConfigError as e:
        chef_failure(e)
        return 1
    setup_data_dirs()
    if db_init(eff["settings"]):
        log("postgresql", "Database gitlabhq_production created and seeded")
    log(None, "gitlab Reconfigured!")

    procs = {}     # service -> (Popen, started_at)
    down_since = {s: time.time() for s in SERVICES}
    restart_at = {}
    set_desired(SERVICES, "up")
    last_written = None
    # A Puma restart requested by a reconfigure before this boot is moot: this boot's
    # Puma reads the settings as they are now.
    handled_restart = (read_json(PUMA_RESTART_FILE, {}) or {}).get("serial")

    def spawn(svc, env=None):
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "service", svc],
                             stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
        procs[svc] = (p, time.time())

    def stop_service(svc):
        p, _ = procs[svc]
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        end = time.time() + 5
        while svc in procs and time.time() < end:
            reap()
            time.sleep(0.02)
        if svc in procs:
            p.kill()
            time.sleep(0.05)
            reap()

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for svc, (p, _) in list(procs.items()):
                if p.pid == pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    del procs[svc]
                    down_since[svc] = time.time()
                    log(svc, "%s exited (status %s)" % (svc, p.returncode), stdout=False)

    def kill_all(timeout=1.0):
        for svc, (p, _) in procs.items():
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + timeout
        while procs and time.time() < end:
            reap()
            time.sleep(0.02)
        for svc, (p, _) in list(procs.items()):
            try:
                p.kill()
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        reap()

    while not stop["flag"]:
        reap()
        desired = read_json(DESIRED_FILE, {})
        restart = read_json(PUMA_RESTART_FILE, {}) or {}
        if restart.get("serial") != handled_restart and time.time() >= restart.get("at", 0):
            handled_restart = restart.get("serial")
            # A stopped Puma (a backup, a restore) stays stopped; it reads the new
            # settings when it starts.
            if desired.get("puma", "up") == "up":
                log("puma", "Restarting puma (settings changed by reconfigure)")
                if "puma" in procs:
                    stop_service("puma")
                restart_at["puma"] = time.time() + 1.0
                spawn("puma", {"STANDIN_PUMA_BOOT_SECS": str(restart.get("boot_secs", 0))})
        for svc in SERVICES:
            want = desired.get(svc, "up")
            if want == "up" and svc not in procs:
                if svc in restart_at and time.time() < restart_at[svc]:
                    continue
                restart_at[svc] = time.time() + 1.0
                spawn(svc)
            elif want == "down" and svc in procs:
                stop_service(svc)
        status = {"wrapper_pid": os.getpid(), "boot_time": boot_time, "serial": desired.get("_serial"),
                  "services": {s: {"want": desired.get(s, "up"),
                                   "pid": procs[s][0].pid if s in procs else None,
                                   "since": procs[s][1] if s in procs else down_since[s]}
                               for s in SERVICES}}
        key = json.dumps(status, sort_keys=True)
        if key != last_written:
            write_atomic(STATUS_FILE, key)
            last_written = key
        time.sleep(0.1)

    # `docker stop`: the image's wrapper runs `gitlab-ctl stop`, one service after the
    # other, which takes tens of seconds on real GitLab (STANDIN_STOP_SECS in all); a stop
    # timeout shorter than that kills the rest mid-shutdown.
    log(None, "Received SIGTERM, stopping services...")
    for svc in STOP_ORDER:
        wait = stop_secs_for([svc])
        end = time.time() + wait
        while time.time() < end:
            reap()
            time.sleep(min(0.05, max(0.0, end - time.time())))
        if svc in procs:
            stop_service(svc)
        log(None, "ok: down: %s: 0s, normally up" % svc)
    kill_all()
    return 0


# --------------------------------------------------------------------------- services

def socket_alive(path, timeout=0.5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def serve_unix_socket(svc):
    path, uid, gid = SOCKETS[svc]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path) or os.path.islink(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chown(path, uid, gid)
    os.chmod(path, 0o770 if svc != "postgresql" else 0o777)
    srv.listen(16)

    # Like a killed daemon, leave the socket file behind: volumes copied from a stopped
    # container still contain socket files that backup tools must skip.
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    log(svc, "%s listening on %s" % (svc, path))
    demote(uid, gid)
    while True:
        conn, _ = srv.accept()
        conn.close()


def puma_main():
    """Puma: boots "Rails" with the settings as they are now (after a restart requested by
    reconfigure this takes STANDIN_PUMA_BOOT_SECS), binds its TCP listener
    (puma['listen']:puma['port'], default 127.0.0.1:8080) and its UNIX socket. The Rails
    settings it booted with are what the HTTP side uses (PUMA_LOADED): a changed
    gitlab_rails[...] setting acts only once Puma has restarted, as in GitLab. A listener
    it cannot bind (e.g. puma['listen'] = an address the container does not have) makes
    it exit, as real Puma does; the supervisor starts it again, again and again, and every
    request gets 502 meanwhile, while reconfigure itself had exited 0."""
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    boot = float(os.environ.get("STANDIN_PUMA_BOOT_SECS") or 0)
    if boot > 0:
        log("puma", "puma booting Rails (%.1f s)" % boot)
        time.sleep(boot)
    settings = (read_json(SETTINGS, {}) or {}).get("settings") or {}
    conf = settings.get("puma") if isinstance(settings.get("puma"), dict) else {}
    host, port = conf.get("listen", "127.0.0.1"), conf.get("port", 8080)
    tcp = socket.socket(socket.AF_INET6 if ":" in str(host) else socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        tcp.bind((str(host), int(port)))
        tcp.listen(16)
    except (OSError, ValueError, OverflowError) as e:
        log("puma", "! Unable to start puma: bind(2) for \"%s\" port %s: %s" % (host, port, e))
        return 1
    write_atomic(PUMA_LOADED, json.dumps({"started_at": time.time(), "settings": rails_settings(settings)}))
    return serve_unix_socket("puma")


def service_main(svc):
    if svc == "puma":
        return puma_main()
    if svc in SOCKETS:
        return serve_unix_socket(svc)
    if svc == "nginx":
        return nginx_main()
    # sidekiq: an idle worker
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    uid, gid = SERVICE_USERS[svc]
    log(svc, "%s started" % svc)
    demote(uid, gid)
    while True:
        time.sleep(3600)


def puma_up():
    return socket_alive(SOCKETS["puma"][0])


REPO_RE = re.compile(r"^/((?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)+[A-Za-z0-9_][A-Za-z0-9_.-]*?\.git)(/.*)?$")
repo_create_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "nginx"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        try:
            with open(LOGS + "/nginx/gitlab_access.log", "a") as f:
                f.write("%s - - [%s] %s\n" % (self.client_address[0] if isinstance(self.client_address, tuple) else "-",
                                             self.log_date_time_string(), fmt % args))
        except OSError:
            pass

    def send_simple(self, code, body, ctype="text/plain; charset=utf-8", extra=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.close_connection = True

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_HEAD(self):
        self.route()

    def read_body(self):
        """Request body into a temp file (handles Content-Length and chunked)."""
        f = tempfile.TemporaryFile(dir="/tmp")
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ValueError("truncated chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        raise ValueError("truncated chunk")
                    f.write(chunk)
                    remaining -= len(chunk)
                self.rfile.readline(3)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    raise ValueError("truncated body")
                f.write(chunk)
                remaining -= len(chunk)
        length = f.tell()
        f.seek(0)
        return f, length

    def route(self):
        u = urllib.parse.urlsplit(self.path)
        path, qs = urllib.parse.unquote(u.path), u.query
        if not puma_up():
            return self.send_simple(502, "<html><body><h1>502</h1><p>Whoops, GitLab is taking too much time to respond.</p></body></html>\n", "text/html")
        if path in ("/-/health", "/-/liveness", "/-/readiness", "/-/metrics") and not self.monitoring_allowed():
            return self.send_simple(404, "The page could not be found or you don't have permission to view it.\n")
        if path == "/-/health":
            return self.send_simple(200, "GitLab OK")
        if path == "/-/liveness":
            return self.send_simple(200, json.dumps({"status": "ok"}), "application/json")
        if path == "/-/readiness":
            return self.readiness("all=1" in qs or "all=true" in qs)
        m = REPO_RE.match(path)
        if m and ".." not in path:
            return self.git(m.group(1), m.group(2) or "", qs)
        if path == "/":
            return self.send_simple(302, "", extra={"Location": "/users/sign_in"})
        if path == "/help":
            # A full Rails page, open to everyone: what the image's health check requests.
            return self.send_simple(200, "<html><head><title>Help · GitLab</title></head><body>GitLab TEST STAND-IN</body></html>\n", "text/html")
        if path == "/users/sign_in":
            return self.send_simple(200, "<html><head><title>Sign in · GitLab</title></head><body>GitLab TEST STAND-IN</body></html>\n", "text/html")
        return self.send_simple(404, "<html><body><h1>404</h1><p>Page Not Found</p></body></html>\n", "text/html")

    def monitoring_allowed(self):
        """gitlab_rails['monitoring_whitelist'] (default: localhost only), like GitLab."""
        allow = ["127.0.0.0/8", "::1/128"]
        # What Rails booted with, not what the last reconfigure wrote: a changed setting
        # acts only once Puma has restarted.
        rails = ((read_json(PUMA_LOADED, {}) or {}).get("settings") or {}).get("gitlab_rails") or {}
        if isinstance(rails.get("monitoring_whitelist"), list):
            allow = rails["monitoring_whitelist"]
        try:
            ip = ipaddress.ip_address(self.client_address[0])
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
        except (ValueError, TypeError, IndexError):
            return False
        for net in allow:
            try:
                if ip in ipaddress.ip_network(str(net), strict=False):
                    return True
            except ValueError:
                pass
        return False

    def readiness(self, all_checks):
        result = {"status": "ok", "master_check": [{"status": "ok"}]}
        if all_checks:
            checks = {"db_check": "postgresql", "redis_check": "redis", "cache_check": "redis",
                      "queues_check": "redis", "rate_limiting_check": "redis",
                      "sessions_check": "redis", "gitaly_check": "gitaly"}
            for name, svc in checks.items():
                if socket_alive(SOCKETS[svc][0]):
                    entry = {"status": "ok"}
                else:
                    entry = {"status": "failed", "message": "%s unavailable" % svc}
                    result["status"] = "failed"
                if svc == "gitaly":
                    entry["labels"] = {"shard": "default"}
                result[name] = [entry]
        self.send_simple(200 if result["status"] == "ok" else 503, json.dumps(result), "application/json")

    def authenticated_user(self):
        """The user of the request's HTTP Basic credentials, None without any, False when
        they are wrong. As GitLab: a password works for accounts without 2FA (root)."""
        header = self.headers.get("Authorization") or ""
        if not header[:6].lower() == "basic ":
            return None
        try:
            username, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        user = find_user(username)
        if user is None or user.get("otp_required_for_login") \
                or not password_matches(password, user.get("encrypted_password")):
            return False
        return user

    def git(self, repo, rest, qs):
        # Every project is private (push-to-create makes private ones) and GitLab does not
        # tell a missing project from one the client may not see: no user, no answer.
        user = self.authenticated_user()
        if not user:
            if user is None:
                body = "HTTP Basic: Access denied\n"
            else:
                host = self.headers.get("Host") or "localhost"
                body = ("HTTP Basic: Access denied. The provided password or token is incorrect or your "
                        "account has 2FA enabled and you must use a personal access token instead of a "
                        "password. See http://%s/help/topics/git/troubleshooting_git#error-on-git-fetch-"
                        "http-basic-access-denied\n" % host)
            return self.send_simple(401, body, extra={"WWW-Authenticate": 'Basic realm="GitLab"'})
        repo_dir = os.path.join(REPOS, repo)
        params = urllib.parse.parse_qs(qs)
        if not os.path.isdir(repo_dir):
            if rest == "/info/refs" and params.get("service") == ["git-receive-pack"]:
                with repo_create_lock:
                    if not os.path.isdir(repo_dir):
                        r = run_as_git(["git", "init", "--bare", "--quiet", repo_dir],
                                       capture_output=True, text=True)
                        if r.returncode != 0:
                            log("puma", "git init %s failed: %s" % (repo, r.stderr.strip()))
                            return self.send_simple(500, "could not create repository\n")
                        # Make the namespace dirs group-accessible like the repositories root.
                        run_as_git(["git", "-C", repo_dir, "config", "http.receivepack", "true"])
                        db_add_repo(repo, user)
                        log("puma", "Created project repository %s" % repo)
            else:
                return self.send_simple(404, "The project you were looking for could not be found or you don't have permission to view it.\n")
        if rest not in ("/info/refs", "/git-upload-pack", "/git-receive-pack", "/HEAD") \
                and not rest.startswith("/objects/"):
            return self.send_simple(404, "Not Found\n")
        try:
            body, length = self.read_body() if self.command == "POST" else (None, 0)
        except ValueError as e:
            return self.send_simple(400, "bad request body: %s\n" % e)
        env = {
            "PATH": "/usr/bin:/bin", "HOME": DATA, "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_SOFTWARE": "gitlab-standin",
            "REQUEST_METHOD": self.command, "PATH_INFO": "/" + repo + rest, "QUERY_STRING": qs,
            "GIT_PROJECT_ROOT": REPOS, "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": user["username"],
            "REMOTE_ADDR": self.client_address[0] if isinstance(self.client_address, tuple) else "127.0.0.1",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length) if body is not None else "",
        }
        for h, e in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "HTTP_GIT_PROTOCOL")):
            if self.headers.get(h):
                env[e] = self.headers[h]
        errlog = open(LOGS + "/gitaly/http-backend.log", "ab")
        try:
            p = subprocess.Popen(["git", "http-backend"], env=env, cwd=REPOS,
                                 stdin=body if body is not None else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=errlog,
                                 user=GIT_UID, group=GIT_GID, extra_groups=[])
            code, headers = 200, []
            while True:
                line = p.stdout.readline()
                if not line or line in (b"\r\n", b"\n"):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                k, v = k.strip(), v.strip()
                if k.lower() == "status":
                    code = int(v.split()[0])
                else:
                    headers.append((k, v))
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while True:
                chunk = p.stdout.read1(1 << 16) if hasattr(p.stdout, "read1") else p.stdout.read(1 << 16)
                if not chunk:
                    break
                if self.command != "HEAD":
                    self.wfile.write(chunk)
            p.wait()
        finally:
            errlog.close()
            if body is not None:
                body.close()
        if rest == "/git-receive-pack":
            fix_head(repo_dir)


def fix_head(repo_dir):
    """Like GitLab: the first pushed branch becomes the default branch."""
    r = run_as_git(["git", "-C", repo_dir, "symbolic-ref", "HEAD"], capture_output=True, text=True)
    head = r.stdout.strip()
    refs = run_as_git(["git", "-C", repo_dir, "for-each-ref", "--format=%(refname)", "refs/heads/"],
                      capture_output=True, text=True).stdout.split()
    if refs and head not in refs:
        pick = next((b for b in ("refs/heads/main", "refs/heads/master") if b in refs), refs[0])
        run_as_git(["git", "-C", repo_dir, "symbolic-ref", "HEAD", pick])


class DualStackServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def nginx_main():
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    eff = read_json(SETTINGS, {}) or {}
    ports = eff.get("listen_ports") or [80]
    servers = []
    for port in ports:
        srv = DualStackServer(("0.0.0.0", port), Handler)
        servers.append(srv)
        log("nginx", "nginx listening on 0.0.0.0:%d" % port)
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    servers[0].serve_forever()


# --------------------------------------------------------------------------- gitlab-ctl

def fmt_age(ts):
    return "%ds" % max(0, int(time.time() - ts))


def ctl_status(services=None):
    st = read_json(STATUS_FILE)
    if not st:
        print("fail: runsv not running (the container's /assets/wrapper is not up yet)")
        return 1
    rc = 0
    for svc in services or SERVICES:
        s = st["services"].get(svc)
        if s is None:
            print("fail: %s: unable to find service" % svc)
            rc = 1
            continue
        logpart = "run: log: (pid %d) %s" % (st["wrapper_pid"], fmt_age(st["boot_time"]))
        if s["pid"]:
            print("run: %s: (pid %d) %s; %s" % (svc, s["pid"], fmt_age(s["since"]), logpart))
        else:
            rc = 3
            print("down: %s: %s, normally up; %s" % (svc, fmt_age(s["since"]), logpart))
    return rc


def ctl_change(action, services):
    st = read_json(STATUS_FILE)
    if not st:
        print("fail: runsv not running (the container's /assets/wrapper is not up yet)")
        return 1
    services = services or SERVICES
    for svc in services:
        if svc not in SERVICES:
            print("fail: %s: unable to find service" % svc)
            return 1
    if action in ("stop", "restart"):
        # One after the other, each taking its share of STANDIN_STOP_SECS.
        timed_out = []
        for svc in [x for x in STOP_ORDER if x in services]:
            time.sleep(stop_secs_for([svc]))
            set_desired([svc], "down")
            if not wait_state([svc], False):
                timed_out.append(svc)
        if action == "stop":
            st = read_json(STATUS_FILE)
            for svc in services:
                s = st["services"][svc]
                if svc in timed_out:
                    # As runit's sv: the service did not go down in time.
                    print("timeout: run: %s: (pid %s) %s, normally up, want down"
                          % (svc, s["pid"], fmt_age(s["since"])))
                else:
                    print("ok: down: %s: %s, normally up" % (svc, fmt_age(s["since"])))
            if timed_out:
                return 1
    if action in ("start", "restart"):
        set_desired(services, "up")
        wait_state(services, True)
        st = read_json(STATUS_FILE)
        for svc in services:
            s = st["services"][svc]
            if s["pid"]:
                print("ok: run: %s: (pid %d) %s" % (svc, s["pid"], fmt_age(s["since"])))
            else:
                print("fail: %s: not running" % svc)
    return 0


def wait_state(services, running, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        st = read_json(STATUS_FILE) or {"services": {}}
        ok = all(bool(st["services"].get(s, {}).get("pid")) == running for s in services)
        if ok and running:
            # service processes are up; wait until their sockets answer
            ok = all(socket_alive(SOCKETS[s][0]) for s in services if s in SOCKETS)
            if ok and "nginx" in services:
                ok = port_open(80)
        if ok:
            return True
        time.sleep(0.05)
    return False


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def ctl_backup_etc(args):
    dest = ETC + "/config_backup"
    i = 0
    while i < len(args):
        if args[i] in ("-p", "--backup-path") and i + 1 < len(args):
            dest = args[i + 1]
            i += 2
        elif args[i].startswith("--backup-path="):
            dest = args[i].split("=", 1)[1]
            i += 1
        else:
            i += 1
    print("Running configuration backup")
    os.makedirs(dest, exist_ok=True)
    os.chmod(dest, 0o700)
    ts = int(time.time())
    name = "gitlab_config_%d_%s.tar" % (ts, time.strftime("%Y_%m_%d", time.gmtime(ts)))
    out = os.path.join(dest, name)
    print("Creating configuration backup archive: %s" % name)
    r = subprocess.run(["tar", "--absolute-names", "--exclude", ETC + "/config_backup",
                        "--verbose", "--create", "--file", out, ETC], capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode not in (0,):
        sys.stderr.write(r.stderr)
        print("Failed to create configuration backup archive")
        return 1
    os.chmod(out, 0o600)
    print("Configuration backup archive complete: %s" % out)
    print("Keeping all older configuration backups")
    return 0


def ctl_main(args):
    if not args:
        print("Usage: gitlab-ctl COMMAND [SERVICE]\n  reconfigure status start stop restart backup-etc")
        return 1
    cmd, rest = args[0], args[1:]
    os.makedirs(RUN, exist_ok=True)
    if cmd == "reconfigure":
        before = read_json(SETTINGS, {}) or {}
        try:
            eff = reconfigure()
        except ConfigError as e:
            chef_failure(e)
            return 1
        if rails_settings(before.get("settings") or {}) != rails_settings(eff["settings"]):
            request_puma_restart()
        print("gitlab Reconfigured!")
        return 0
    if cmd == "status":
        return ctl_status(rest)
    if cmd in ("start", "stop", "restart"):
        return ctl_change(cmd, rest)
    if cmd == "backup-etc":
        return ctl_backup_etc(rest)
    if cmd in ("service-list",):
        for s in SERVICES:
            print(s + "*")
        return 0
    print("I don't know that command: %s (GitLab TEST STAND-IN supports reconfigure, status, "
          "start, stop, restart, backup-etc, service-list)" % cmd, file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- gitlab-backup

# Where gitlab-backup writes its progress and its errors as JSON lines (under CRON=1,
# only there: gitlab-contract.md).
BACKUP_LOG = LOGS + "/gitlab-rails/backup_json.log"
# Test knob: seconds a `gitlab-backup create` spends dumping repositories (a real backup
# takes minutes to hours). From the environment, else from this file in the container.
BACKUP_SECS_FILE = RUN + "/backup-secs"


def bk_out(msg, cron=False):
    if not cron:
        print("%s -- %s" % (now_utc().strftime("%Y-%m-%d %H:%M:%S UTC"), msg), flush=True)


def configured_backup_path():
    """gitlab_rails['backup_path'] of the settings GitLab runs with (default BACKUPS)."""
    rails = ((read_json(SETTINGS, {}) or {}).get("settings") or {}).get("gitlab_rails") or {}
    p = rails.get("backup_path") if isinstance(rails, dict) else None
    return os.path.normpath(p) if isinstance(p, str) and p.startswith("/") else BACKUPS


def ensure_backup_path():
    # As Chef does (manage_backup_path): the backup path exists, git-owned, 0700.
    path = configured_backup_path()
    if not os.path.isdir(path):
        ensure_dir(path, GIT_UID, 0, 0o700)
    return path


class BackupLogger:
    """gitlab-backup's progress: JSON lines in backup_json.log, and the terminal too
    unless CRON=1 (then nothing at all is printed, errors included)."""

    def __init__(self, cron):
        self.cron = cron

    def _write(self, severity, msg):
        t = now_utc()
        line = json.dumps({"severity": severity,
                           "time": t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000),
                           "correlation_id": None, "message": msg}, separators=(",", ":"))
        try:
            with open(BACKUP_LOG, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def info(self, msg):
        self._write("INFO", msg)
        bk_out(msg, self.cron)

    def warn(self, msg):
        self._write("WARN", msg)
        bk_out(msg, self.cron)

    def error(self, msg):
        self._write("ERROR", msg)
        if not self.cron:
            print("%s -- %s" % (now_utc().strftime("%Y-%m-%d %H:%M:%S UTC"), msg), file=sys.stderr, flush=True)


def backup_delay():
    v = os.environ.get("STANDIN_BACKUP_SECS")
    if v is None:
        try:
            with open(BACKUP_SECS_FILE) as f:
                v = f.read().strip()
        except OSError:
            v = ""
    try:
        return max(0.0, float(v or 0))
    except ValueError:
        return 0.0


def list_repos():
    out = []
    for root, dirs, files in os.walk(REPOS):
        for d in list(dirs):
            if d.endswith(".git"):
                out.append(os.path.relpath(os.path.join(root, d), REPOS))
                dirs.remove(d)
    return sorted(out)


class BackupLock:
    def __enter__(self):
        os.makedirs(os.path.dirname(BACKUP_PID), exist_ok=True)
        try:
            with open(BACKUP_PID) as f:
                pid = int(f.read().strip() or 0)
            if pid and pid != os.getpid() and os.path.exists("/proc/%d" % pid):
                print("Backup and restore in progress:\n  There is a backup and restore task in "
                      "progress (PID %d). Try to run the current task once the previous one ends." % pid,
                      file=sys.stderr)
                sys.exit(1)
        except (OSError, ValueError):
            pass
        with open(BACKUP_PID, "w") as f:
            f.write(str(os.getpid()))
        return self

    def __exit__(self, *a):
        try:
            os.unlink(BACKUP_PID)
        except OSError:
            pass


def parse_env_args(args):
    """gitlab-backup accepts VAR=value arguments like rake."""
    for a in args:
        if "=" in a and re.match(r"^[A-Z_]+=", a):
            k, v = a.split("=", 1)
            os.environ[k] = v


def to_boolean(value):
    """Gitlab::Utils.to_boolean: yes/true/1/on and no/false/0/off, else None."""
    if value is None:
        return None
    if re.match(r"^(true|t|yes|y|1|on)$", value, re.I):
        return True
    if re.match(r"^(false|f|no|n|0|off)$", value, re.I):
        return False
    return None


def env_skips(value):
    return {s for s in (value or "").split(",") if s}


def compress_cmd():
    """COMPRESS_CMD replaces `gzip -c -1` for the database dump and the file areas (not
    the repositories: Gitaly writes their bundles). It must be in the environment, not an
    argument after the command; `tee` stores the parts uncompressed (names still .gz)."""
    if os.environ.get("COMPRESS_CMD"):
        return os.environ["COMPRESS_CMD"]
    if to_boolean(os.environ.get("GZIP_RSYNCABLE")):
        return "gzip --rsyncable -c -1"
    return "gzip -c -1"


def decompress_cmd():
    return os.environ.get("DECOMPRESS_CMD") or "gzip -cd"


# File areas: task -> (human name, storage directory). Under STRATEGY=copy GitLab first
# copies the directory to <backup path>/<its base name> (rsync -a), then tars that copy.
BACKUP_FILE_TASKS = [
    ("uploads", "uploads", UPLOADS),
    ("builds", "builds", DATA + "/gitlab-ci/builds"),
    ("artifacts", "artifacts", SHARED + "/artifacts"),
    ("pages", "pages", SHARED + "/pages"),
    ("lfs", "lfs objects", SHARED + "/lfs-objects"),
    ("terraform_state", "terraform states", SHARED + "/terraform_state"),
    ("packages", "packages", SHARED + "/packages"),
    ("ci_secure_files", "ci secure files", SHARED + "/ci_secure_files"),
]
# Every task's destination in the staging directory, in GitLab's order.
BACKUP_TASK_PATHS = [("db", "db"), ("repositories", "repositories")] + [
    (t, t + ".tar.gz") for t, _, _ in BACKUP_FILE_TASKS]
INFO_NAME = "backup_information.yml"
TAR_SUFFIX = "_gitlab_backup.tar"


class BackupError(Exception):
    """Backup::Error and friends: `rake aborted!` with the message, exit 1."""


class BackupExit(Exception):
    """`exit 1` in GitLab's backup code (after it logged why)."""


def read_info(path):
    """backup_information.yml of the staging directory, as a dict of strings."""
    info = {}
    try:
        with open(os.path.join(path, INFO_NAME)) as f:
            for line in f:
                m = re.match(r"^:([a-z_]+):\s*(.*)$", line.rstrip("\n"))
                if m:
                    info[m.group(1)] = m.group(2).strip().strip("'\"")
    except OSError as e:
        raise BackupError("%s: %s" % (INFO_NAME, e))
    return info


def write_info(path, info):
    with open(os.path.join(path, INFO_NAME), "w") as f:
        f.write("---\n")
        for k, v in info.items():
            f.write(":%s: %s\n" % (k, "''" if v == "" else v))


def version_mismatch(log, backup_ver):
    ver = version()
    log.error("GitLab version mismatch: your current GitLab version (%s) differs from the "
              "GitLab version in the backup (%s)" % (ver, backup_ver))
    log.error("  Please switch to the following version and try again:")
    log.error("  version: %s" % backup_ver)
    log.error("")
    log.error("  Hint: git checkout v%s" % backup_ver)


def unpack(path, source_id, log, incremental):
    """Backup::Manager#unpack: the untarred backup in the staging directory when no id is
    given, else the one tar there (or the named one), extracted in place (over whatever
    parts are there). Errors are logged and exit 1."""
    if not source_id and os.path.exists(os.path.join(path, INFO_NAME)):
        log.info("Non tarred backup found in %s, using that" % path)
        return
    tars = sorted(f for f in os.listdir(path) if f.endswith(TAR_SUFFIX))
    if not tars:
        log.error("No backups found in %s" % path)
        log.error("Please make sure that file name ends with %s" % TAR_SUFFIX)
        raise BackupExit()
    if len(tars) > 1 and not source_id:
        log.warn("Found more than one backup:")
        for t in tars:
            log.info(" " + t[:-len(TAR_SUFFIX)])
        if incremental:
            log.info("Please specify which one you want to create an incremental backup for:")
            log.info("rake gitlab:backup:create INCREMENTAL=true PREVIOUS_BACKUP=timestamp_of_backup")
        else:
            log.info("Please specify which one you want to restore:")
            log.info("rake gitlab:backup:restore BACKUP=timestamp_of_backup")
        raise BackupExit()
    tar_file = os.path.basename(source_id) + TAR_SUFFIX if source_id else tars[0]
    if not os.path.exists(os.path.join(path, tar_file)):
        log.error("The backup file %s does not exist!" % tar_file)
        raise BackupExit()
    log.info("Unpacking backup ... ")
    r = subprocess.run(["tar", "-xf", tar_file], cwd=path, capture_output=True, text=True)
    if r.stderr.strip():
        sys.stderr.write(r.stderr) if not log.cron else None
    if r.returncode != 0:
        log.error("Unpacking backup failed")
        raise BackupExit()
    log.info("Unpacking backup ... done")


def cleanup_staging(path, log):
    log.info("Deleting tar staging files ... ")
    for name in [INFO_NAME] + [dest for _, dest in BACKUP_TASK_PATHS]:
        full = os.path.join(path, name)
        if os.path.lexists(full):
            log.info("Cleaning up %s" % full)
            shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.unlink(full)
    log.info("Deleting tar staging files ... done")


def remove_tmp(path, log):
    log.info("Deleting backups/tmp ... ")
    shutil.rmtree(os.path.join(path, "tmp"), ignore_errors=True)
    log.info("Deleting backups/tmp ... done")


def run_pipeline(cmds, stdin=None, stdout=None):
    """Open3.pipeline: each command a shell string or an argv list; returns
    ([exit codes], stderr text of all of them)."""
    err_r, err_w = os.pipe()
    procs, prev = [], stdin
    for i, cmd in enumerate(cmds):
        last = i == len(cmds) - 1
        p = subprocess.Popen(cmd, shell=isinstance(cmd, str), stdin=prev,
                             stdout=stdout if last else subprocess.PIPE, stderr=err_w)
        if prev is not None and prev is not stdin:
            prev.close()
        prev = p.stdout
        procs.append(p)
    os.close(err_w)
    with os.fdopen(err_r, errors="replace") as f:
        err = f.read()
    return [p.wait() for p in procs], err


def backup_create():
    """As root: what only root (or another service) can do — the database is read by the
    root side, standing for PostgreSQL answering pg_dump — then the backup itself as
    `git`, as GitLab's does (gitlab-contract.md)."""
    skip = env_skips(os.environ.get("SKIP"))
    path = ensure_backup_path()
    prepare_backup_log()
    db = None
    if "db" not in skip:
        try:
            with db_lock():
                with open(DB, "rb") as f:
                    db = f.read()
        except OSError as e:
            db = "pg_dump: error: %s" % e
    return wait_child(as_git(lambda: backup_create_as_git(path, db)))


def prepare_backup_log():
    os.makedirs(os.path.dirname(BACKUP_LOG), exist_ok=True)
    with open(BACKUP_LOG, "a"):
        pass
    os.chown(BACKUP_LOG, GIT_UID, GIT_GID)


def as_git(fn, keep_fds=()):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            demote(GIT_UID, GIT_GID)
            os.environ["HOME"] = DATA
            os.umask(0o077)
            code = fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            print("rake aborted!\n%s: %s" % (type(e).__name__, e), file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_child(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def backup_create_as_git(path, db):
    # The backup path is GitLab's staging directory: its parts (backup_information.yml,
    # db/, repositories/, <part>.tar.gz) are written there, then packed into the tar and
    # deleted (SKIP=tar: left there, no tar). When a part fails the others and the tar are
    # still written, the staging parts deleted, and it exits 1; errors, like progress, go
    # only to backup_json.log under CRON=1.
    log = BackupLogger(os.environ.get("CRON") == "1")
    skip = env_skips(os.environ.get("SKIP"))
    strategy = os.environ.get("STRATEGY", "")
    backup_id_opt = os.environ.get("BACKUP") or None
    previous = os.environ.get("PREVIOUS_BACKUP") or None
    incremental = bool(to_boolean(os.environ.get("INCREMENTAL")))
    ver = version()
    prev_repos = None
    try:
        if incremental:
            # Deprecated since 15.0, still honoured: BACKUP names the previous backup when
            # PREVIOUS_BACKUP is not given (and then also names the new one).
            unpack(path, previous or backup_id_opt, log, incremental=True)
    except BackupExit:
        return 1
    failed = []
    archive = "tar" not in skip
    try:
        if incremental:
            prev_info = read_info(path)
            skip |= env_skips(prev_info.get("skipped"))
            archive = "tar" not in skip
            if prev_info.get("gitlab_version") != ver:
                version_mismatch(log, prev_info.get("gitlab_version", "unknown"))
                raise BackupExit()
            full_id = (prev_info.get("full_backup_id") or
                       (os.path.basename(previous) if previous else None) or
                       prev_info.get("backup_id") or "")
            prev_repos = True
        ts = int(time.time())
        bid = os.path.basename(backup_id_opt) if backup_id_opt else \
            "%d_%s_%s" % (ts, time.strftime("%Y_%m_%d", time.gmtime(ts)), ver)
        if not incremental:
            full_id = bid
        info = {"backup_id": bid, "db_version": "20241010000000",
                "backup_created_at": now_utc().strftime("%Y-%m-%d %H:%M:%S.%f +0000"),
                "gitlab_version": ver, "tar_version": "tar (GNU tar) 1.34",
                "installation_type": "gitlab-omnibus-docker (GitLab TEST STAND-IN)",
                "skipped": ",".join(s for s in ["tar", "remote", "db", "uploads", "builds",
                                                "artifacts", "lfs", "terraform_state", "registry",
                                                "pages", "repositories", "packages",
                                                "ci_secure_files", "external_diffs"] if s in skip),
                "repositories_storages": "", "repositories_paths": "",
                "skip_repositories_paths": "", "repositories_server_side": "false"}
        if incremental:
            info["full_backup_id"] = full_id
        # database
        if "db" in skip:
            log.info("Dumping database ... [SKIPPED]")
        else:
            log.info("Dumping database ... ")
            if not dump_database(path, db, log):
                failed.append("db")
            else:
                log.info("Dumping database ... done")
        # repositories
        if "repositories" in skip:
            log.info("Dumping repositories ... [SKIPPED]")
        else:
            log.info("Dumping repositories ... ")
            if dump_repositories(path, bid, log, incremental and prev_repos):
                log.info("Dumping repositories ... done")
            else:
                failed.append("repositories")
        # file areas
        for task, human, src in BACKUP_FILE_TASKS:
            if task in skip:
                log.info("Dumping %s ... [SKIPPED]" % human)
                continue
            log.info("Dumping %s ... " % human)
            if dump_files(path, task, human, src, strategy, log):
                log.info("Dumping %s ... done" % human)
            else:
                failed.append(task)
        write_info(path, info)
        if archive:
            name = bid + TAR_SUFFIX
            contents = [INFO_NAME] + [dest for task, dest in BACKUP_TASK_PATHS
                                      if task not in skip and os.path.exists(os.path.join(path, dest))]
            log.info("Creating backup archive: %s ... " % name)
            # Written in place (0600 from the start): a backup still running shows a
            # growing tar.
            fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                r = subprocess.run(["tar", "-cf", "-", "-C", path] + contents, stdout=out,
                                   stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                log.error("Creating archive %s failed" % name)
                raise BackupError("Backup failed")
            log.info("Creating backup archive: %s ... done" % name)
            log.info("Uploading backup archive to remote storage  ... [SKIPPED]")
            log.info("Deleting old backups ... [SKIPPED]")
    except BackupExit:
        return 1
    except BackupError as e:
        log.error(str(e))
        print("rake aborted!\n%s" % e, file=sys.stderr) if not log.cron else None
        return 1
    finally:
        if archive:
            cleanup_staging(path, log)
        remove_tmp(path, log)
    log.warn("Warning: Your gitlab.rb and gitlab-secrets.json files contain sensitive data \n"
             "and are not included in this backup. You will need these files to restore a backup.\n"
             "Please back them up manually.")
    log.info("Backup %s is done." % bid)
    return 1 if failed else 0


def dump_database(path, db, log):
    log.info("Dumping PostgreSQL database gitlabhq_production ... ")
    dest = os.path.join(path, "db", "database.sql.gz")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    ok = isinstance(db, bytes)
    if ok:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            p = subprocess.Popen(compress_cmd(), shell=True, stdin=subprocess.PIPE, stdout=out,
                                 stderr=subprocess.PIPE)
            try:
                _, err = p.communicate(db)
            except BrokenPipeError:
                _, err = p.communicate()
            ok = p.returncode == 0
            if err:
                log.error(err.decode(errors="replace").strip())
    else:
        log.error(db)
    if not ok:
        log.error("[FAILED]")
        log.error("Dumping database failed: Failed to create compressed file '%s' when trying to "
                  "backup the main database:\n - host: '/var/opt/gitlab/postgresql'\n - port: '5432'\n"
                  " - database: 'gitlabhq_production'" % dest)
        return False
    log.info("[DONE]")
    return True


# Gitaly's backup layout ("manifest" locator): per repository a directory named for its
# relative path (without .git) holding one directory per backup id with numbered steps
# (NNN.bundle + NNN.refs), and manifests/<storage>/<relative path>/<backup id>.toml plus
# +latest.toml listing the steps a restore applies in order. An incremental step bundles
# only what is not reachable from the previous step's refs.
def manifest_dir(path, rel):
    return os.path.join(path, "repositories", "manifests", "default", rel)


def read_manifest(file):
    steps, head = [], None
    try:
        with open(file) as f:
            for line in f:
                m = re.match(r"^(\w+) = '(.*)'$", line.strip())
                if not m:
                    if line.strip() == "[[steps]]":
                        steps.append({})
                    continue
                if steps:
                    steps[-1][m.group(1)] = m.group(2)
                elif m.group(1) == "head_reference":
                    head = m.group(2)
    except OSError:
        return None
    return {"head": head, "steps": steps}


def write_manifest(file, head, steps):
    os.makedirs(os.path.dirname(file), exist_ok=True)
    with open(file, "w") as f:
        f.write("object_format = 'sha1'\nhead_reference = '%s'\n" % (head or ""))
        for st in steps:
            f.write("\n[[steps]]\n")
            for k in ("bundle_path", "ref_path", "previous_ref_path", "custom_hooks_path"):
                f.write("%s = '%s'\n" % (k, st.get(k, "")))


def dump_repositories(path, bid, log, incremental):
    repos_dir = os.path.join(path, "repositories")
    if not incremental:
        # A full backup starts from an empty repositories/ (what an earlier SKIP=tar
        # backup left there is overwritten).
        shutil.rmtree(repos_dir, ignore_errors=True)
    os.makedirs(repos_dir, exist_ok=True)
    ok = True
    for rel in list_repos():
        src = os.path.join(REPOS, rel)
        name = rel[:-4]
        mdir = manifest_dir(path, rel)
        prev = read_manifest(os.path.join(mdir, "+latest.toml")) if incremental else None
        steps = list(prev["steps"]) if prev and prev["steps"] else []
        n = len(steps) + 1
        step_dir = os.path.join(repos_dir, name, bid)
        os.makedirs(step_dir, exist_ok=True)
        bundle_rel = "%s/%s/%03d.bundle" % (name, bid, n)
        refs_rel = "%s/%s/%03d.refs" % (name, bid, n)
        refs = subprocess.run(["git", "-C", src, "for-each-ref", "--format=%(objectname) %(refname)"],
                              capture_output=True, text=True)
        head = subprocess.run(["git", "-C", src, "symbolic-ref", "-q", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        if refs.returncode != 0:
            log.error("Dumping repository %s ... failed: %s" % (name, refs.stderr.strip()))
            ok = False
            continue
        with open(os.path.join(path, "repositories", refs_rel), "w") as f:
            f.write(refs.stdout)
            if head:
                f.write("ref: %s HEAD\n" % head)
        negatives = []
        if steps:
            prev_refs = os.path.join(path, "repositories", steps[-1].get("ref_path", ""))
            try:
                with open(prev_refs) as f:
                    for line in f:
                        oid = line.split(" ", 1)[0]
                        if re.match(r"^[0-9a-f]{40}$", oid):
                            negatives.append("^" + oid)
            except OSError:
                negatives = []
        bundle_path = ""
        if refs.stdout.strip():
            # Objects of the previous step that this repository no longer has cannot be
            # excluded: git refuses unknown negatives, so keep only those it knows.
            known = [n_ for n_ in negatives if subprocess.run(
                ["git", "-C", src, "cat-file", "-e", n_[1:]], capture_output=True).returncode == 0]
            r = subprocess.run(["git", "-C", src, "bundle", "create", "--quiet",
                                os.path.join(path, "repositories", bundle_rel), "--all"] + known,
                               capture_output=True, text=True)
            if r.returncode == 0:
                bundle_path = bundle_rel
            elif "empty bundle" not in r.stderr:
                log.error("Dumping repository %s ... failed: %s" % (name, r.stderr.strip()))
                ok = False
                continue
        steps.append({"bundle_path": bundle_path, "ref_path": refs_rel,
                      "previous_ref_path": steps[-1]["ref_path"] if steps else "",
                      "custom_hooks_path": ""})
        write_manifest(os.path.join(mdir, bid + ".toml"), head, steps)
        write_manifest(os.path.join(mdir, "+latest.toml"), head, steps)
        log.info("Dumping repository %s ... [DONE]%s" % (name, " (incremental)" if len(steps) > 1 else ""))
    # A real instance spends minutes to hours here (the test knob stands for that).
    end = time.time() + backup_delay()
    while time.time() < end:
        time.sleep(min(0.2, max(0.0, end - time.time())))
    if not ok:
        log.error("Dumping repositories failed: some repositories could not be backed up")
    return ok


def dump_files(path, task, human, src, strategy, log):
    tarball = os.path.join(path, task + ".tar.gz")
    if os.path.lexists(tarball):
        os.unlink(tarball)
    if not os.path.isdir(src):
        log.error("rsync: [sender] change_dir \"%s\" failed: No such file or directory (2)" % src)
        log.error("Dumping %s failed: Failed to create compressed file '%s' when trying to backup "
                  "the following paths: '%s'" % (human, tarball, src))
        return False
    tar_src = src
    if strategy == "copy":
        # GitLab: rsync -a --delete <storage> <backup path>/, then tar that copy. A failed
        # copy raises before the copy is removed: it stays in the backup path.
        tar_src = os.path.join(path, os.path.basename(src))
        problems = []
        try:
            shutil.copytree(src, tar_src, symlinks=True, dirs_exist_ok=True)
        except shutil.Error as e:
            for entry in e.args[0][:5]:
                why = str(entry[2]) if len(entry) > 2 else str(entry)
                m = re.match(r"\[Errno (\d+)\] ([^:]+)", why)
                why = "%s (%s)" % (m.group(2), m.group(1)) if m else why
                problems.append("rsync: [sender] send_files failed to open \"%s\": %s" % (entry[0], why))
            problems.append("rsync error: some files/attrs were not transferred (see previous errors) (code 23)")
        except OSError as e:
            problems.append("rsync: [sender] %s" % e)
        if problems:
            for p in problems:
                log.error(p)
            log.error("Dumping %s failed: Failed to create compressed file '%s' when trying to backup "
                      "the following paths: '%s'" % (human, tarball, src))
            return False
    fd = os.open(tarball, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        codes, err = run_pipeline([["tar", "--exclude=lost+found", "-C", tar_src, "-cf", "-", "."],
                                   compress_cmd()], stdout=out)
    if tar_src != src:
        shutil.rmtree(tar_src, ignore_errors=True)
    tar_ok = codes[0] == 0 or codes[0] == 1
    if codes[1] != 0 or not tar_ok:
        for line in err.strip().splitlines()[:5]:
            log.error(line)
        log.error("Dumping %s failed: Failed to create compressed file '%s' when trying to backup "
                  "the following paths: '%s'" % (human, tarball, src))
        return False
    return True


def ask_yes_no(question):
    if os.environ.get("GITLAB_ASSUME_YES") == "1":
        return True
    sys.stdout.write(question + " (yes/no)? ")
    sys.stdout.flush()
    ans = sys.stdin.readline()
    if ans.strip().lower() in ("yes", "y"):
        return True
    print("\nQuitting...")
    return False


def backup_restore():
    """As root: the root side only plays PostgreSQL (it drops and loads the database when
    asked, as psql's server would); everything else runs as `git`, as GitLab's restore
    does: the tar must be readable by git, the file areas are extracted as git."""
    path = ensure_backup_path()
    prepare_backup_log()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(req_r)
        os.close(rep_w)
        code = 1
        try:
            demote(GIT_UID, GIT_GID)
            os.environ["HOME"] = DATA
            os.umask(0o022)
            code = backup_restore_as_git(path, Postgres(req_w, rep_r))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:
            print("rake aborted!\n%s: %s" % (type(e).__name__, e), file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(req_w)
    os.close(rep_r)
    with os.fdopen(req_r, "rb") as requests, os.fdopen(rep_w, "w") as replies:
        while True:
            line = requests.readline()
            if not line:
                break
            req = json.loads(line)
            errors = []
            with db_lock():
                if req["op"] == "drop":
                    db = {"database": "gitlabhq_production", "schema_version": "20241010000000",
                          "next_id": 1, "records": []}
                    ensure_dir(PGDATA, PSQL_UID, PSQL_GID, 0o700)
                    db_save(db)
                elif req["op"] == "load":
                    data = requests.read(req["len"])
                    try:
                        db = json.loads(data.decode())
                        if not isinstance(db, dict) or not isinstance(db.get("records"), list):
                            raise ValueError("not a dump")
                        db_save(db)
                    except (ValueError, UnicodeDecodeError):
                        # What psql says when fed something that is not SQL; it goes on
                        # and exits 0 (no ON_ERROR_STOP), leaving the dropped database.
                        first = "".join(c if c.isprintable() else "\ufffd"
                                        for c in data[:16].decode("latin-1").split("\n")[0])
                        errors.append('ERROR:  syntax error at or near "%s"\n' % first.replace('"', ""))
                        errors.append("LINE 1: %s\n" % first)
            replies.write(json.dumps({"status": 0, "errors": errors}) + "\n")
            replies.flush()
    return wait_child(pid)


class Postgres:
    """The restore's line to the root side standing for PostgreSQL."""

    def __init__(self, req_fd, rep_fd):
        self.req = os.fdopen(req_fd, "wb")
        self.rep = os.fdopen(rep_fd, "r")

    def call(self, op, data=b""):
        self.req.write((json.dumps({"op": op, "len": len(data)}) + "\n").encode() + data)
        self.req.flush()
        return json.loads(self.rep.readline())


def backup_restore_as_git(path, pg):
    log = BackupLogger(os.environ.get("CRON") == "1")
    skip = env_skips(os.environ.get("SKIP"))
    bid_opt = os.environ.get("BACKUP") or None
    force = bool(to_boolean(os.environ.get("FORCE", os.environ.get("force"))))
    try:
        unpack(path, bid_opt, log, incremental=False)
    except BackupExit:
        return 1
    archive = "tar" not in skip
    try:
        info = read_info(path)
        skip |= env_skips(info.get("skipped"))
        archive = "tar" not in skip
        if info.get("gitlab_version") != version():
            version_mismatch(log, info.get("gitlab_version", "unknown"))
            raise BackupExit()
        bid = info.get("backup_id") or bid_opt or ""
        if "db" not in skip:
            restore_database(path, pg, log, force)
        if "repositories" not in skip:
            restore_repositories(path, bid, log)
        for task, human, dest in BACKUP_FILE_TASKS:
            if task in skip:
                continue
            restore_files(path, task, human, dest, log)
    except BackupExit:
        return 1
    except BackupError as e:
        log.error(str(e))
        print("rake aborted!\n%s" % e, file=sys.stderr) if not log.cron else None
        return 1
    finally:
        if archive:
            cleanup_staging(path, log)
        remove_tmp(path, log)
    log.warn("Warning: Your gitlab.rb and gitlab-secrets.json files contain sensitive data \n"
             "and are not included in this backup. You will need to restore these files manually.")
    log.info("Restore task is done.")
    return 0


def restore_database(path, pg, log, force):
    log.info("Restoring database ... ")
    if not ask_yes_no("Be sure to stop Puma, Sidekiq, and any other process that\n"
                      "connects to the database before proceeding. For Omnibus\n"
                      "installs, see the following link for more information:\n"
                      "https://docs.gitlab.com/ee/raketasks/backup_restore.html#restore-for-omnibus-gitlab-installations\n\n"
                      "Before restoring the database, we will remove all existing\n"
                      "tables to avoid future upgrade problems. Be aware that if you have\n"
                      "custom tables in the GitLab database these tables and all data will be\n"
                      "removed.\n\nDo you want to continue"):
        log.error("Quitting...")
        raise BackupExit()
    dump = os.path.join(path, "db", "database.sql.gz")
    if not os.path.exists(dump):
        raise BackupError("Source database file does not exist %s" % dump)
    if not force:
        log.info("Removing all tables. Press `Ctrl-C` within 5 seconds to abort")
        time.sleep(5)
    log.info("Cleaning the database ... ")
    pg.call("drop")
    log.info("done")
    log.info("Restoring PostgreSQL database gitlabhq_production ... ")
    with open(dump, "rb") as f:
        p = subprocess.run(decompress_cmd(), shell=True, stdin=f, capture_output=True)
    if p.stderr:
        sys.stderr.write(p.stderr.decode(errors="replace")) if not log.cron else None
    reply = pg.call("load", p.stdout)
    if reply["errors"]:
        log.error("------ BEGIN ERRORS -----\n")
        log.error("".join(reply["errors"]))
        log.error("------ END ERRORS -------\n")
    if p.returncode != 0 or reply["status"] != 0:
        log.error("[FAILED]")
        raise BackupError("Restore failed")
    log.info("[DONE]")
    log.info("Restoring database ... done")


def restore_repositories(path, bid, log):
    log.info("Restoring repositories ... ")
    manifests = os.path.join(path, "repositories", "manifests", "default")
    plans = []
    for root, dirs, files in os.walk(manifests):
        if root.endswith(".git") and (bid + ".toml") in files:
            plans.append((os.path.relpath(root, manifests), read_manifest(os.path.join(root, bid + ".toml"))))
            dirs[:] = []
    # Gitaly replaces every repository: what is not in the backup is gone afterwards.
    for entry in os.listdir(REPOS):
        p = os.path.join(REPOS, entry)
        try:
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        except OSError as e:
            raise BackupError("Restoring repositories failed: %s" % e)
    for rel, manifest in sorted(plans):
        dest = os.path.join(REPOS, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        r = subprocess.run(["git", "init", "--bare", "--quiet", dest], capture_output=True, text=True)
        if r.returncode == 0:
            subprocess.run(["git", "-C", dest, "config", "http.receivepack", "true"])
        for step in manifest["steps"]:
            if r.returncode != 0:
                break
            if step.get("bundle_path"):
                r = subprocess.run(["git", "-C", dest, "fetch", "--quiet", "--update-head-ok",
                                    os.path.join(path, "repositories", step["bundle_path"]),
                                    "+refs/*:refs/*"], capture_output=True, text=True)
        if r.returncode == 0 and manifest["steps"]:
            # The refs are exactly those of the last step (deleted branches go).
            want = {}
            try:
                with open(os.path.join(path, "repositories", manifest["steps"][-1]["ref_path"])) as f:
                    for line in f:
                        oid, _, ref = line.rstrip("\n").partition(" ")
                        if ref and ref != "HEAD":
                            want[ref] = oid
            except OSError as e:
                r = subprocess.CompletedProcess([], 1, "", str(e))
            have = subprocess.run(["git", "-C", dest, "for-each-ref", "--format=%(refname)"],
                                  capture_output=True, text=True).stdout.split()
            for ref in have:
                if ref not in want:
                    subprocess.run(["git", "-C", dest, "update-ref", "-d", ref])
            head = manifest["head"] or next((ref for ref in sorted(want) if ref.startswith("refs/heads/")), "")
            if head:
                subprocess.run(["git", "-C", dest, "symbolic-ref", "HEAD", head])
        if r.returncode != 0:
            raise BackupError("Restoring repository %s failed: %s" % (rel, r.stderr.strip()))
        log.info("Restoring repository %s ... [DONE]" % rel[:-4])
    log.info("Restoring repositories ... done")


def restore_files(path, task, human, dest, log):
    tarball = os.path.join(path, task + ".tar.gz")
    if not os.path.exists(tarball):
        return
    log.info("Restoring %s ... " % human)
    if os.path.exists(dest):
        # GitLab moves what is there aside (into backups/tmp, deleted at the end); what
        # git may not move stops the restore.
        aside = os.path.join(path, "tmp", "%s.%d" % (task, int(time.time())))
        try:
            os.makedirs(aside, mode=0o700, exist_ok=True)
            for entry in os.listdir(dest):
                shutil.move(os.path.join(dest, entry), os.path.join(aside, entry))
        except PermissionError:
            raise BackupError(
                "\n### NOTICE ###\nAs part of restore, the task tried to move existing content from %s.\n"
                "However, it seems that directory contains files/folders that are not owned\n"
                "by the user git. To proceed, please move the files\n"
                "or folders inside %s to a secure location so that %s is empty and\n"
                "run restore task again.\n" % (dest, dest, dest))
    os.makedirs(dest, exist_ok=True)
    with open(tarball, "rb") as f:
        codes, err = run_pipeline([decompress_cmd(), ["tar", "--unlink-first", "--recursive-unlink",
                                                      "-C", dest, "-xf", "-"]], stdin=f)
    if codes[0] != 0 or codes[1] != 0:
        raise BackupError("Restore operation failed: %s" % err)
    log.info("Restoring %s ... done" % human)


def backup_main(args):
    if not args or args[0] not in ("create", "restore"):
        print("Usage: gitlab-backup create|restore [BACKUP=<id>] [SKIP=a,b] [STRATEGY=copy] [CRON=1]",
              file=sys.stderr)
        return 1
    parse_env_args(args[1:])
    os.makedirs(RUN, exist_ok=True)
    with BackupLock():
        return backup_create() if args[0] == "create" else backup_restore()


# --------------------------------------------------------------------------- gitlab-rake

def rake_check(sanitize):
    failures = []

    # Like GitLab's SystemCheck: each check prints "yes"/"no", a failed one "Try fixing
    # it" and "Please fix the error above and rerun the checks."; the task reports and
    # exits 0 whatever it found (gitlab-contract.md: checks report, they do not fail).
    def check(label, ok, hint=None):
        print("%s ... %s" % (label, "yes" if ok else "no"))
        if not ok:
            failures.append(label)
            if hint:
                print("  Try fixing it:\n  %s" % hint)
            print("  For more information see:\n  doc/install/installation.md")
            print("  Please fix the error above and rerun the checks.")
        return ok

    print("Checking GitLab subtasks ...\n")
    print("Checking GitLab Shell ...\n")
    print("GitLab Shell: ... GitLab Shell version >= 14.39.0 ? ... OK (14.39.0)")
    print("Running /opt/gitlab/embedded/service/gitlab-shell/bin/check")
    check("Internal API available", puma_up(), "sudo gitlab-ctl start puma")
    print("\nChecking GitLab Shell ... Finished\n")
    print("Checking Gitaly ...\n")
    check("Gitaly: ... default", socket_alive(SOCKETS["gitaly"][0]), "sudo gitlab-ctl start gitaly")
    print("\nChecking Gitaly ... Finished\n")
    print("Checking Sidekiq ...\n")
    st = read_json(STATUS_FILE) or {"services": {}}
    check("Sidekiq: ... Running?", bool(st["services"].get("sidekiq", {}).get("pid")), "sudo gitlab-ctl start sidekiq")
    print("\nChecking Sidekiq ... Finished\n")
    print("Checking GitLab App ...\n")
    secrets_ok = False
    try:
        with open(SECRETS) as f:
            secrets_ok = bool(json.load(f)["gitlab_rails"]["db_key_base"])
    except (OSError, ValueError, KeyError):
        pass
    check("gitlab-secrets.json present and valid?", secrets_ok, "restore %s from your configuration backup" % SECRETS)
    db_ok = False
    try:
        st_pg = os.stat(PGDATA)
        db_ok = st_pg.st_uid == PSQL_UID and (st_pg.st_mode & 0o777) == 0o700
        if db_ok:
            with open(DB) as f:
                json.load(f)
            st_db = os.stat(DB)
            db_ok = st_db.st_uid == PSQL_UID
    except (OSError, ValueError):
        db_ok = False
    check("Database config exists? ... yes\nDatabase readable (owned by gitlab-psql, data dir 0700)?", db_ok,
          "chown -R gitlab-psql:gitlab-psql %s && chmod 0700 %s" % (PGDATA, PGDATA))
    check("Postgres service running?", socket_alive(SOCKETS["postgresql"][0]), "sudo gitlab-ctl start postgresql")
    repo_ok = False
    try:
        s = os.stat(REPOS)
        repo_ok = s.st_uid == GIT_UID and s.st_gid == GIT_GID
    except OSError:
        pass
    check("Repo base directory exists and is owned by git:git?", repo_ok,
          "sudo chown -R git:git %s" % REPOS)
    bad = []
    if repo_ok:
        for root, dirs, files in os.walk(REPOS):
            for n in dirs + files:
                p = os.path.join(root, n)
                try:
                    if os.lstat(p).st_uid != GIT_UID:
                        bad.append(os.path.relpath(p, REPOS))
                except OSError:
                    pass
    check("All repository files owned by git?", not bad,
          "sudo chown -R git:git %s%s" % (REPOS, "" if sanitize or not bad else "  (first bad: %s)" % bad[0]))
    up_ok = False
    try:
        s = os.stat(UPLOADS)
        up_ok = s.st_uid == GIT_UID and (s.st_mode & 0o777) == 0o700
    except OSError:
        pass
    check("Uploads directory exists and has correct permissions?", up_ok,
          "sudo chown -R git %s && sudo chmod 700 %s" % (UPLOADS, UPLOADS))
    projects = 0
    try:
        projects = sum(1 for r in db_load()["records"] if r.get("type") == "project")
    except (OSError, ValueError, KeyError):
        pass
    missing = []
    try:
        for r in db_load()["records"]:
            if r.get("type") in ("project", "project_wiki") and not os.path.isdir(os.path.join(REPOS, r["repository"])):
                missing.append(r["repository"])
    except (OSError, ValueError, KeyError):
        pass
    print("Projects have repositories? ... %s" % ("yes (%d projects)" % projects if not missing else "no"))
    if missing:
        failures.append("Projects have repositories?")
        if not sanitize:
            for m in missing:
                print("  missing: %s" % m)
        print("  Please fix the error above and rerun the checks.")
    print("\nChecking GitLab App ... Finished\n")
    print("Checking GitLab subtasks ... Finished")
    return 0


def rake_doctor_secrets():
    def info(msg):
        print("I, [%s #%d]  INFO -- : %s" % (now_utc().strftime("%Y-%m-%dT%H:%M:%S.%f"), os.getpid(), msg))
    info("Checking encrypted values in the database")
    try:
        key = db_key_base()
    except (OSError, ValueError, KeyError) as e:
        print("E, [%s]  ERROR -- : cannot read %s: %s" % (now_utc().isoformat(), SECRETS, e))
        return 1
    try:
        db = db_load()
    except (OSError, ValueError) as e:
        print("E, [%s]  ERROR -- : cannot read database: %s" % (now_utc().isoformat(), e))
        return 1
    by_type, bad = {}, []
    for r in db["records"]:
        t = r.get("type", "unknown")
        by_type.setdefault(t, 0)
        if not hmac.compare_digest(r.get("sealed", ""), seal(r, key)):
            by_type[t] += 1
            bad.append(r)
    names = {"user": "User", "ci_variable": "Ci::Variable", "application_setting": "ApplicationSetting",
             "project": "Project", "project_wiki": "ProjectWiki"}
    for t in sorted(by_type):
        info("- %s failures: %d" % (names.get(t, t), by_type[t]))
    for r in bad:
        print("E, [%s #%d] ERROR -- : > %s[%s] failed: ActiveSupport::MessageEncryptor::InvalidMessage"
              % (now_utc().strftime("%Y-%m-%dT%H:%M:%S.%f"), os.getpid(), names.get(r.get("type"), r.get("type")), r.get("id")))
    info("Total: %d row(s) affected" % len(bad))
    info("Done!")
    # GitLab's doctor reports and exits 0 whatever it found.
    return 0


def rake_main(args):
    parse_env_args(args)
    tasks = [a for a in args if not re.match(r"^[A-Z_]+=", a)]
    if not tasks:
        print("Usage: gitlab-rake gitlab:check [SANITIZE=true] | gitlab:doctor:secrets", file=sys.stderr)
        return 1
    rc = 0
    for t in tasks:
        if t == "gitlab:check":
            rc |= rake_check(os.environ.get("SANITIZE") == "true")
        elif t == "gitlab:doctor:secrets":
            rc |= rake_doctor_secrets()
        elif t in ("gitlab:backup:create", "gitlab:backup:restore"):
            rc |= backup_main([t.rsplit(":", 1)[1]] + args)
        elif t == "gitlab:env:info":
            print("System information\nGitLab information\nVersion:\t%s\nGitLab TEST STAND-IN" % version())
        else:
            print("rake aborted!\nDon't know how to build task '%s' (GitLab TEST STAND-IN)" % t, file=sys.stderr)
            return 1
    return rc


# --------------------------------------------------------------------------- healthcheck

def healthcheck_main(args):
    max_time = 10.0
    i = 0
    while i < len(args):
        if args[i] in ("--max-time", "-m") and i + 1 < len(args):
            max_time = float(args[i + 1])
            i += 2
        else:
            i += 1  # --fail, -s, ... are accepted and ignored
    try:
        # As the image's: a full Rails request (/help), which the monitoring whitelist
        # does not restrict, unlike /-/health.
        with urllib.request.urlopen("http://localhost/help", timeout=max_time) as r:
            body = r.read().decode(errors="replace")
            print(body)
            return 0 if r.status == 200 else 22
    except urllib.error.HTTPError as e:
        print("curl: (22) The requested URL returned error: %d" % e.code, file=sys.stderr)
        return 22
    except Exception as e:  # connection refused, timeout
        print("curl: (7) Failed to connect to localhost port 80: %s" % e, file=sys.stderr)
        return 7


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 1
    cmd, args = argv[1], argv[2:]
    if cmd == "wrapper":
        return wrapper()
    if cmd == "service":
        return service_main(args[0])
    if cmd == "ctl":
        return ctl_main(args)
    if cmd == "backup":
        return backup_main(args)
    if cmd == "rake":
        return rake_main(args)
    if cmd == "healthcheck":
        return healthcheck_main(args)
    print("unknown command %s" % cmd, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv) or 0)
