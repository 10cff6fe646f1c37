//! Text as people read it: what replaces a secret and how secrets are scrubbed from
//! messages, ages and sizes. The ground floor: every other module may use it.

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Whether a key names a secret (`initial_root_password`, `secret_access_key`,
/// `gitlab_rails['smtp_password']`, `token`...).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "private_key",
        "api_key",
        "credential",
        "passphrase",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Removes the password of URLs (`https://user:pw@host` -> `https://user:[REDACTED]@host`)
/// and values after `password=`/`token=`-like words in free text.
pub fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(&format!("{user}:{REDACTED}{}", &authority[at..]));
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Removes every known secret value from a text (used for error messages).
pub fn scrub_known(text: &str, secrets: &[String]) -> String {
    let mut out = scrub_text(text);
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// A duration in seconds as people read it: `42s`, `17m`, `5h12m`, `3d4h`.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A size as people read it: `512 B`, `3.4 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
