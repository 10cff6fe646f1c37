//! `girofle recover`

use girofle_core::recovery::Recovery;
use girofle_core::{Error, Result};

use crate::output::{print, with_spinner};
use crate::Ctx;

pub async fn run(ctx: &Ctx) -> Result<()> {
    let g = ctx.open().await?;
    let done = with_spinner("recovering interrupted operations", g.recover()).await?;
    print(ctx, &done, || {
        if done.is_empty() {
            return "nothing to recover".into();
        }
        done.iter()
            .map(|r| {
                let mut line = format!(
                    "{}: {}{} -> {}",
                    r.instance,
                    r.operation,
                    r.phase
                        .as_deref()
                        .map(|p| format!(" (interrupted while {p})"))
                        .unwrap_or_default(),
                    serde_json::to_value(r.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
                for a in &r.actions {
                    line.push_str(&format!("\n  - {a}"));
                }
                if let Some(e) = &r.error {
                    line.push_str(&format!("\n  error: {e}"));
                }
                line
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    if let Some(failure) = done.iter().find_map(Recovery::failure) {
        return Err(Error::Conflict(failure));
    }
    Ok(())
}
