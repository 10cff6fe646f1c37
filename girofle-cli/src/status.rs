//! `girofle status`: the fleet on one screen.

use std::io::IsTerminal;

use girofle_core::status::human_age;
use girofle_core::Result;

use crate::output::print;
use crate::Ctx;

pub async fn run(ctx: &Ctx) -> Result<()> {
    let g = ctx.open().await?;
    let status = g.status().await?;
    let colour = std::io::stdout().is_terminal();
    print(ctx, &status, || {
        let red = |s: &str| {
            if colour {
                format!("\x1b[31m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        if !status.engine_reachable {
            out.push_str(&red("the Docker engine did not answer: states unknown\n"));
        }
        let stores: Vec<&str> = status.stores.iter().map(|s| s.name.as_str()).collect();
        out.push_str(&format!("{:<24} {:<13}", "INSTANCE", "STATE"));
        for s in &stores {
            out.push_str(&format!(" {:<18}", format!("{s} AGE")));
        }
        for i in &status.instances {
            let state = i.state.map(|s| s.to_string()).unwrap_or("?".into());
            let state = if state == "running" {
                format!("{state:<13}")
            } else {
                red(&format!("{state:<13}"))
            };
            out.push_str(&format!("\n{:<24} {state}", i.name));
            for b in &i.backups {
                let text = match (b.reachable, b.age_secs) {
                    (false, _) => "unreachable".to_string(),
                    (true, None) => "none".to_string(),
                    (true, Some(a)) => human_age(a),
                };
                let cell = if b.overdue {
                    format!("{text} OVERDUE")
                } else {
                    text
                };
                let cell = format!("{cell:<18}");
                out.push(' ');
                out.push_str(&if b.overdue || !b.reachable {
                    red(&cell)
                } else {
                    cell
                });
            }
        }
        if status.instances.is_empty() {
            out.push_str("\n(no instances)");
        }
        for s in status.stores.iter().filter(|s| !s.reachable) {
            out.push('\n');
            out.push_str(&red(&format!(
                "store `{}` unreachable: {}",
                s.name,
                s.error.as_deref().unwrap_or("?")
            )));
        }
        out.trim_end().to_string()
    });
    Ok(())
}
