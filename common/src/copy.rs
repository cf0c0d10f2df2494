//! Copying a bundle-sized stream in large chunks.

use std::io::{self, Read, Write};

/// Bytes read and written per call: a 40 MB bundle is ~160 reads, not the
/// ~5,000 of `std::io::copy`'s 8 KiB buffer. The agent's sync thread runs at
/// the lowest priority, and on a kernel without preemption every system call
/// it makes is a stretch that a lookup waiting for its core cannot cut short.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Copies `reader` to its end into `out` in [`CHUNK_BYTES`] chunks, returning
/// the byte count: fewer, larger system calls than [`std::io::copy`].
pub fn copy_chunked(reader: &mut dyn Read, out: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_across_chunk_boundaries() {
        let data: Vec<u8> = (0..CHUNK_BYTES * 2 + 17).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let n = copy_chunked(&mut data.as_slice(), &mut out).expect("copy");
        assert_eq!(n, data.len() as u64);
        assert_eq!(out, data);
    }
}
