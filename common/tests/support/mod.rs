//! What the format 3 tests share: compiling a generated source, opening
//! its root over the built objects, and a channel's snapshot as an
//! incremental compile sees it.
#![allow(dead_code)]

use std::path::Path;

use strata_common::bundle::tree::read::ObjectSource;
use strata_common::bundle::tree::{Held, Objects, TreeError, TreeFrames};
use strata_common::bundle::{self, Contents, Limits, Manifest, Provenance, SignatureCheck};
use strata_common::compile::{self, CompileOptions, Compiled};
use strata_common::source::Source;
use strata_common::{channel, generate, time};

pub fn compile(dir: &Path, format: u32, dictionary: Option<Vec<u8>>) -> Compiled {
    let source = Source::open(dir).expect("source");
    compile::compile(
        &source,
        CompileOptions {
            format,
            dictionary,
            ..CompileOptions::default()
        },
    )
    .expect("compile")
}

/// `compiled` in an unsigned bundle, verified as an inspection would.
pub fn verified(
    compiled: &Compiled,
) -> (Manifest, bundle::VerifiedBundle<std::io::Cursor<Vec<u8>>>) {
    let manifest = channel::manifest(
        compiled,
        1,
        time::now(),
        std::time::Duration::from_secs(3600),
        &Provenance::default(),
    );
    let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, &[]).expect("bundle");
    let verified = bundle::verify(
        std::io::Cursor::new(bytes),
        SignatureCheck::SkipForInspection,
        &Limits::default(),
    )
    .expect("verify");
    (manifest, verified)
}

/// The manifest and decompressed root of `compiled`.
pub fn root_of(compiled: &Compiled) -> (Manifest, Vec<u8>) {
    let (manifest, verified) = verified(compiled);
    (manifest, verified.root().expect("root"))
}

pub fn open<'a>(
    objects: &'a Objects,
    manifest: &Manifest,
    raw: &[u8],
    held: &Held<'a>,
    limits: &Limits,
) -> Result<TreeFrames<'a>, TreeError> {
    TreeFrames::open(
        ObjectSource::Built(objects, None),
        manifest,
        raw,
        held,
        limits,
    )
}

/// [`open`] for a reader that holds nothing, with the default limits.
pub fn open_all<'a>(
    objects: &'a Objects,
    manifest: &Manifest,
    raw: &[u8],
) -> Result<TreeFrames<'a>, TreeError> {
    open(objects, manifest, raw, &Held::nothing(), &Limits::default())
}

pub fn contents(
    objects: &Objects,
    manifest: &Manifest,
    raw: &[u8],
) -> Result<Contents, bundle::BundleError> {
    let mut frames = open(objects, manifest, raw, &Held::nothing(), &Limits::default())?;
    Contents::from_frames(&mut frames)
}

pub fn source(tenants: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    generate::generate(dir.path(), tenants).expect("generate");
    dir
}

/// The tenant files of the source in `dir`, sorted.
pub fn tenant_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("tenants"))
        .expect("tenants")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// A published channel as an incremental compile over it sees it.
pub struct Served {
    pub dictionary: Option<Vec<u8>>,
    pub reuse: std::sync::Arc<compile::Reuse>,
    pub owners: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// Its records.
    pub contents: std::sync::Arc<Contents>,
    /// How many chunks it has.
    pub chunks: usize,
}

impl Served {
    /// The format 3 snapshot of the source in `dir`.
    pub fn of(dir: &Path) -> Self {
        let a = compile(dir, 3, None);
        let (m, r) = root_of(&a);
        let frames = open(&a.objects, &m, &r, &Held::nothing(), &Limits::default()).expect("open");
        let all = contents(&a.objects, &m, &r).expect("contents");
        Self {
            dictionary: frames.dictionary().map(<[u8]>::to_vec),
            reuse: std::sync::Arc::new(compile::Reuse {
                layer1: bundle::Frames::layer1(&frames).to_vec(),
                chunks: frames.chunks().to_vec(),
            }),
            owners: std::sync::Arc::new(all.routes.clone()),
            contents: std::sync::Arc::new(all),
            chunks: frames.chunks().len(),
        }
    }

    /// Compiles the source in `dir` over it.
    pub fn compile(&self, dir: &Path) -> Result<Compiled, strata_common::source::SourceError> {
        self.compile_with(dir, true, None)
    }

    /// Compiles the source in `dir` over it: reusing its chunks
    /// (`incremental`) or not (a full build), quarantining with
    /// `quarantine`.
    pub fn compile_with(
        &self,
        dir: &Path,
        incremental: bool,
        quarantine: Option<compile::LastPublished>,
    ) -> Result<Compiled, strata_common::source::SourceError> {
        compile::compile(
            &Source::open(dir).expect("source"),
            CompileOptions {
                format: 3,
                dictionary: self.dictionary.clone(),
                served_owners: Some(self.owners.clone()),
                reuse: incremental.then(|| self.reuse.clone()),
                quarantine,
                ..CompileOptions::default()
            },
        )
    }

    /// One of the numbers it routes to `tenant`.
    pub fn a_number_of(&self, tenant: &str) -> String {
        self.owners
            .iter()
            .find(|(_, t)| *t == tenant)
            .map(|(n, _)| n.clone())
            .expect("the tenant routes a number")
    }

    /// Each tenant's record as it holds it: what quarantine keeps.
    pub fn last_published(&self) -> compile::LastPublished {
        let c = self.contents.clone();
        compile::LastPublished(std::sync::Arc::new(move |t: &str| {
            let config = c.configs.get(t)?.clone();
            let json: serde_json::Value = serde_json::from_slice(&config).ok()?;
            Some(compile::KeptRecord {
                config_hash: json["config_hash"].as_str()?.to_owned(),
                phones: serde_json::from_value(json["phone_numbers"].clone()).ok()?,
                prompt: c.prompts.get(t)?.clone(),
                config,
            })
        }))
    }
}
