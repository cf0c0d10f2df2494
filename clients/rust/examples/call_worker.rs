//! An example call worker: one incoming call, start to model request.
//!
//! ```text
//! cargo run -p strata-client --example call_worker -- [--socket PATH] DIALLED_NUMBER CALL_ID [CALLER_NAME]
//! ```
//!
//! It routes the dialled number to its tenant, takes the tenant's config
//! and system prompt for the call's session (one snapshot and one canary
//! arm for the whole call), fills the placeholders only a call knows
//! (`{caller_name}`, `{call_time}`: written `{{caller_name}}` in the
//! tenant's prompt template, so publishing leaves them for us), and prints
//! the request it would send to the model. Nothing is sent.

use serde::Deserialize;
use strata_client::{Client, DEFAULT_SOCKET, Error};

/// The part of the effective config this worker reads (the rest of it is
/// there too: deserialise what you need).
#[derive(Deserialize)]
struct Config {
    model: Model,
    generation: Generation,
    limits: Limits,
    plan: Option<String>,
}

#[derive(Deserialize)]
struct Model {
    primary: String,
    fallbacks: Vec<String>,
    key_ref: String,
}

#[derive(Deserialize)]
struct Generation {
    temperature: f64,
    max_tokens: u64,
}

#[derive(Deserialize)]
struct Limits {
    max_concurrent_calls: u64,
}

/// Replaces each call-time placeholder with its value.
fn fill(prompt: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(prompt.to_owned(), |p, (name, value)| {
        p.replace(&format!("{{{name}}}"), value)
    })
}

/// The time of day, UTC, as `HH:MM`.
fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = DEFAULT_SOCKET.to_owned();
    if let Some(at) = args.iter().position(|a| a == "--socket") {
        args.remove(at);
        socket = (at < args.len())
            .then(|| args.remove(at))
            .ok_or_else(|| anyhow::anyhow!("--socket needs a path"))?;
    }
    let (number, call_id) = match (args.first(), args.get(1)) {
        (Some(n), Some(c)) => (n.clone(), c.clone()),
        _ => {
            anyhow::bail!("usage: call_worker [--socket PATH] DIALLED_NUMBER CALL_ID [CALLER_NAME]")
        }
    };
    let caller = args.get(2).cloned().unwrap_or_else(|| "there".into());

    let client = Client::new(socket);
    let mut call = client.session(call_id);
    let tenant = match call.route(&number).await {
        Ok(t) => t,
        Err(Error::NotFound(_)) => {
            println!(
                "{}",
                serde_json::json!({ "reject": format!("no tenant owns {number}") })
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let config = Config::deserialize(&*call.tenant(&tenant).await?)?;
    let prompt = fill(
        &call.prompt(&tenant).await?,
        &[("caller_name", &caller), ("call_time", &now())],
    );
    let request = serde_json::json!({
        "tenant": &*tenant,
        "snapshot": call.snapshot(),
        "model": config.model.primary,
        "fallbacks": config.model.fallbacks,
        "key_ref": config.model.key_ref,
        "temperature": config.generation.temperature,
        "max_tokens": config.generation.max_tokens,
        "max_concurrent_calls": config.limits.max_concurrent_calls,
        "plan": config.plan,
        "system": prompt,
    });
    println!("{}", serde_json::to_string_pretty(&request)?);
    Ok(())
}
