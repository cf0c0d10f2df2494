//! What several commands read: a source tree, signing keys, durations, and
//! the CI environment's provenance.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use strata_common::bundle::Provenance;
use strata_common::compile::{self, CompileOptions};
use strata_common::sign;
use strata_common::source::{Source, SourceError};
use strata_common::validate::Problem;

/// The keys a command signs with: `--key` files and `--key-env` variables.
#[derive(clap::Args)]
pub struct SigningKeys {
    /// Private key file to sign with (repeat for several).
    #[arg(long = "key", required_unless_present = "key_env")]
    keys: Vec<PathBuf>,
    /// Environment variable holding a private key's PEM text, for a CI
    /// secret that is never written to disk (repeat for several).
    #[arg(long = "key-env", value_name = "NAME")]
    key_env: Vec<String>,
}

impl SigningKeys {
    /// Loads every key, refusing a file readable by group or others.
    pub fn load(&self) -> Result<Vec<sign::SigningKey>> {
        let mut keys = load_keys(&self.keys)?;
        for name in &self.key_env {
            keys.push(sign::signing_key_from_env(name)?);
        }
        Ok(keys)
    }
}

/// Public keys given with `--trusted-key`.
/// What a read-only command (`diff`, `history`) checks of each bundle:
/// signatures by the `--trusted-key`s given, or only integrity without.
pub struct ReadTrust {
    keys: sign::TrustedKeys,
    checked: bool,
}

impl ReadTrust {
    /// Loads the `--trusted-key` files.
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        let trusted = load_public_keys(paths)?;
        Ok(Self {
            keys: sign::TrustedKeys::for_publisher(&[], &trusted),
            checked: !trusted.is_empty(),
        })
    }

    /// The check to verify bundles with.
    pub fn check(&self) -> strata_common::bundle::SignatureCheck<'_> {
        if self.checked {
            strata_common::bundle::SignatureCheck::Trusted(&self.keys)
        } else {
            strata_common::bundle::SignatureCheck::SkipForInspection
        }
    }
}

pub fn load_public_keys(paths: &[PathBuf]) -> Result<Vec<sign::VerifyingKey>> {
    paths
        .iter()
        .map(|p| sign::load_verifying_key(p).map_err(anyhow::Error::new))
        .collect()
}

/// Parses `--expires-in`: a signature's lifetime, from one minute (a
/// pointer that expires at once would be refused by every agent) to ten
/// years (a timestamp past year 9999 cannot be written).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const MIN: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
    let d = strata_common::time::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as 14d, 12h or 30m"))?;
    if d < MIN || d > MAX {
        return Err(format!(
            "{s} is outside 1m to 10y: a signature must outlive its upload, and expire within ten years"
        ));
    }
    Ok(d)
}

/// Validates and compiles a source, printing every problem (and warning)
/// of an invalid one.
pub fn compile_source(src: &Source, opts: CompileOptions) -> Result<compile::Compiled> {
    let compiled = compile::compile(src, opts).map_err(|e| report(&src.dir, e))?;
    print_warnings(&compiled.warnings);
    Ok(compiled)
}

/// Prints every problem of an invalid source, one per line, and turns the
/// error into a one-line summary.
pub fn report(dir: &Path, e: SourceError) -> anyhow::Error {
    match e {
        SourceError::Invalid { problems, warnings } => {
            print_warnings(&warnings);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for p in &problems {
                let _ = writeln!(out, "{p}");
            }
            anyhow!(
                "{}: {} problem(s); nothing was written. Fix them and run again",
                dir.display(),
                problems.len()
            )
        }
        other => anyhow::Error::new(other),
    }
}

/// Prints warnings to stderr.
pub fn print_warnings(warnings: &[Problem]) {
    for w in warnings {
        note!("warning: {w}");
    }
}

/// Loads every `--key`, refusing any readable by group or others.
fn load_keys(paths: &[PathBuf]) -> Result<Vec<sign::SigningKey>> {
    paths
        .iter()
        .map(|p| sign::load_signing_key(p).map_err(anyhow::Error::new))
        .collect()
}

/// Where a bundle comes from: the usual CI variables (GitHub Actions,
/// GitLab, Jenkins, Buildkite), with `STRATA_GIT_COMMIT` /
/// `STRATA_CI_RUN_ID` winning.
pub fn provenance_from_env() -> Provenance {
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
            .unwrap_or_default()
    };
    Provenance {
        git_commit: first(&[
            "STRATA_GIT_COMMIT",
            "GITHUB_SHA",
            "CI_COMMIT_SHA",
            "GIT_COMMIT",
            "BUILDKITE_COMMIT",
        ]),
        ci_run_id: first(&[
            "STRATA_CI_RUN_ID",
            "GITHUB_RUN_ID",
            "CI_PIPELINE_ID",
            "BUILD_ID",
            "BUILDKITE_BUILD_ID",
        ]),
    }
}

/// Refuses signing keys none of which signed the channel's current pointer
/// (`head`, signed by `signers`): agents trust the keys that signed what
/// they serve, so a publish by other keys alone is a wrong `--key` (an
/// operator's, another fleet's) or a rotation that skipped its "sign with
/// both" step, and every agent would refuse it.
pub(crate) fn check_signers(
    keys: &[strata_common::sign::SigningKey],
    head: &strata_common::pointer::Pointer,
    signers: &[strata_common::sign::KeyId],
) -> anyhow::Result<()> {
    let ours: Vec<_> = keys
        .iter()
        .map(|k| strata_common::sign::KeyId::of(&k.verifying_key()))
        .collect();
    if ours.iter().any(|id| signers.contains(id)) {
        return Ok(());
    }
    let list = |ids: &[strata_common::sign::KeyId]| {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    anyhow::bail!(
        "none of the signing keys ({}) signed channel {}'s current pointer (version {}, signed by {}); nothing was published. \
         Agents would refuse a snapshot signed only by keys they may not trust yet. Check that --key is this channel's publisher key (not an operator's); \
         to rotate the publisher key, sign with the old and the new key together first (OPERATIONS: \"Rotating keys without restarts\"). \
         If every agent already trusts these keys, pass --new-signer",
        list(&ours),
        head.name,
        head.version,
        list(signers)
    )
}
