//! Decompressing a format 3 object: exactly one zstd frame with its
//! content checksum, never more than its declared size (a chunk with the
//! snapshot's dictionary).

use super::read::check_object;
use super::{ObjectRef, TreeError};
use crate::bundle::Limits;

/// Decompresses objects, with the snapshot's dictionary for chunks.
pub struct Unpacker {
    plain: zstd::bulk::Decompressor<'static>,
    with_dict: Option<zstd::bulk::Decompressor<'static>>,
    max_raw: u64,
}

/// The first 4 bytes of a zstd dictionary.
const DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

impl Unpacker {
    /// An unpacker for objects up to `limits.max_frame_bytes` decompressed,
    /// with `dictionary` (checked against its reference) for chunks.
    pub fn new(
        dictionary: Option<(&ObjectRef, &[u8])>,
        limits: &Limits,
    ) -> Result<Self, TreeError> {
        let decompressor = |dict: Option<&[u8]>| {
            let mut d = match dict {
                Some(d) => zstd::bulk::Decompressor::with_dictionary(d),
                None => zstd::bulk::Decompressor::new(),
            }?;
            d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                crate::bundle::MAX_WINDOW_LOG,
            ))?;
            Ok::<_, std::io::Error>(d)
        };
        let with_dict = match dictionary {
            Some((obj, bytes)) => {
                check_object(obj, bytes)?;
                let bad_dict = |reason: String| TreeError::BadDictionary {
                    key: obj.key(),
                    reason,
                };
                if bytes.get(..4) != Some(&DICT_MAGIC[..]) {
                    return Err(bad_dict(
                        "it does not start with the dictionary magic".into(),
                    ));
                }
                Some(decompressor(Some(bytes)).map_err(|e| bad_dict(e.to_string()))?)
            }
            None => None,
        };
        let plain = decompressor(None).map_err(|e| TreeError::Decompress {
            key: "-".into(),
            declared: 0,
            reason: e.to_string(),
        })?;
        Ok(Self {
            plain,
            with_dict,
            max_raw: limits.max_frame_bytes,
        })
    }

    /// Decompresses the checked object `obj` into `out` (replacing it):
    /// exactly one zstd frame with its content checksum, never more than
    /// its declared size, and exactly that. A chunk (`chunk`) uses the
    /// dictionary if the snapshot has one.
    pub fn unpack(
        &mut self,
        obj: &ObjectRef,
        bytes: &[u8],
        chunk: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TreeError> {
        if obj.raw_size > self.max_raw {
            return Err(TreeError::ObjectTooLarge {
                key: obj.key(),
                raw_size: obj.raw_size,
                limit: self.max_raw,
            });
        }
        const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
        let not_one = |reason| TreeError::NotOneFrame {
            key: obj.key(),
            reason,
        };
        match bytes {
            [m0, m1, m2, m3, descriptor, ..] if [*m0, *m1, *m2, *m3] == ZSTD_MAGIC => {
                if descriptor & 0x04 == 0 {
                    return Err(not_one("was written without its zstd content checksum"));
                }
            }
            _ => return Err(not_one("does not start with a zstd frame header")),
        }
        if zstd::zstd_safe::find_frame_compressed_size(bytes) != Ok(bytes.len()) {
            return Err(not_one("is not exactly one zstd frame"));
        }
        let d = match (&mut self.with_dict, chunk) {
            (Some(d), true) => d,
            _ => &mut self.plain,
        };
        let past = |reason: String| TreeError::Decompress {
            key: obj.key(),
            declared: obj.raw_size,
            reason,
        };
        // The buffer's capacity bounds the output: a frame that would
        // write past it fails, never allocating more than declared.
        out.clear();
        out.reserve_exact(obj.raw_size as usize);
        d.decompress_to_buffer(bytes, out)
            .map_err(|e| past(e.to_string()))?;
        if out.len() as u64 != obj.raw_size {
            return Err(past(format!("it decompresses to {} bytes", out.len())));
        }
        Ok(())
    }
}
