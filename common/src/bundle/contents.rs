//! Decoding a whole payload at once, for inspection, diffs and tests (the
//! agent streams it into redb instead, through [`PayloadReader`]).

use std::io::{Read, Seek};

use super::record::{Record, RecordKind};
use super::{BundleError, PayloadReader};

enum Stage {
    Layer1,
    Frames,
    Routes,
    Done,
}

/// Every record of a verified payload, in logical order.
pub struct Records<R: Read + Seek> {
    payload: PayloadReader<R>,
    queue: std::collections::VecDeque<Record>,
    stage: Stage,
}

impl<R: Read + Seek> Records<R> {
    pub(super) fn new(payload: PayloadReader<R>) -> Self {
        Self {
            payload,
            queue: std::collections::VecDeque::new(),
            stage: Stage::Layer1,
        }
    }

    fn advance(&mut self) -> Result<Option<Record>, BundleError> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Ok(Some(r));
            }
            match self.stage {
                Stage::Layer1 => {
                    self.stage = Stage::Frames;
                    return Ok(Some(Record {
                        kind: RecordKind::Layer1,
                        key: "layer1".into(),
                        value: self.payload.layer1().to_vec(),
                    }));
                }
                Stage::Frames => match self.payload.next_frame()? {
                    Some(frame) => {
                        let bodies = self.payload.read_frame(&frame)?;
                        for (i, entry) in frame.tenants.iter().enumerate() {
                            self.queue.push_back(Record {
                                kind: RecordKind::Config,
                                key: entry.tenant.clone(),
                                value: bodies.config(i)?.to_vec(),
                            });
                            self.queue.push_back(Record {
                                kind: RecordKind::Prompt,
                                key: entry.tenant.clone(),
                                value: bodies.prompt(i)?.to_vec(),
                            });
                        }
                    }
                    None => self.stage = Stage::Routes,
                },
                Stage::Routes => {
                    return Ok(self.payload.next_route()?.map(|(number, tenant)| Record {
                        kind: RecordKind::Route,
                        key: number.to_owned(),
                        value: tenant.as_bytes().to_vec(),
                    }));
                }
                Stage::Done => return Ok(None),
            }
        }
    }
}

impl<R: Read + Seek> Iterator for Records<R> {
    type Item = Result<Record, BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.advance().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.stage = Stage::Done;
            self.queue.clear();
        }
        item
    }
}

/// A whole payload decoded into maps, for inspection, diffs and tests.
/// (The agent streams records into redb instead.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// Layer 1 as JSON.
    pub layer1: Vec<u8>,
    /// Tenant id → effective config JSON.
    pub configs: std::collections::BTreeMap<String, Vec<u8>>,
    /// Tenant id → combined system prompt.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// E.164 number → tenant id.
    pub routes: std::collections::BTreeMap<String, String>,
}

impl Contents {
    /// Reads every tenant and route of a snapshot of either format (every
    /// record checked as it is taken).
    pub fn from_frames(frames: &mut dyn super::Frames) -> Result<Self, BundleError> {
        let mut c = Self {
            layer1: frames.layer1().to_vec(),
            ..Self::default()
        };
        while let Some(frame) = frames.next_listed()? {
            let bodies = frames.bodies(&frame)?;
            for (i, t) in frame.tenants.iter().enumerate() {
                c.configs
                    .insert(t.tenant.clone(), bodies.config(i)?.to_vec());
                let prompt = String::from_utf8(bodies.prompt(i)?.to_vec()).map_err(|_| {
                    BundleError::BadRecord {
                        frame: frame.number,
                        offset: 0,
                        reason: format!("the prompt of {} is not UTF-8", t.tenant),
                    }
                })?;
                c.prompts.insert(t.tenant.clone(), prompt);
            }
        }
        while let Some((number, tenant)) = frames.next_route()? {
            c.routes.insert(number.to_owned(), tenant.to_owned());
        }
        Ok(c)
    }

    /// Collects every record.
    pub fn collect<I: Iterator<Item = Result<Record, BundleError>>>(
        records: I,
    ) -> Result<Self, BundleError> {
        let mut c = Self::default();
        for r in records {
            let r = r?;
            let utf8 = |v: Vec<u8>, key: &str| {
                String::from_utf8(v).map_err(|_| BundleError::BadRecord {
                    frame: 0,
                    offset: 0,
                    reason: format!("the {:?} of {key} is not UTF-8", r.kind),
                })
            };
            match r.kind {
                RecordKind::Layer1 => c.layer1 = r.value,
                RecordKind::Config => {
                    c.configs.insert(r.key, r.value);
                }
                RecordKind::Prompt => {
                    let prompt = utf8(r.value, &r.key)?;
                    c.prompts.insert(r.key, prompt);
                }
                RecordKind::Route => {
                    let tenant = utf8(r.value, &r.key)?;
                    c.routes.insert(r.key, tenant);
                }
                // Index structure, never yielded by `records()`.
                RecordKind::Frame
                | RecordKind::Tenant
                | RecordKind::Object
                | RecordKind::Page
                | RecordKind::RoutePage
                | RecordKind::Chunk => {}
            }
        }
        Ok(c)
    }
}
