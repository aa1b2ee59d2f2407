//! A deterministic byte pattern for large transfers: produced chunk by chunk
//! (never held whole in memory), with a SHA-256 either side can compute.
//!
//! Every chunk starts with its own index, so a lost, repeated or reordered
//! chunk changes the checksum even though the rest of the block repeats.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// Size of one chunk of the pattern.
pub const CHUNK: usize = 64 * 1024;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        // xorshift: cheap, fixed, and not a run of equal bytes.
        let mut x: u32 = 0x9E37_79B9;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

/// Chunk number `index` of the pattern, cut to `len` bytes.
pub fn chunk(index: u64, len: usize) -> Bytes {
    let mut buf = BytesMut::from(&block()[..len]);
    let tag = index.to_be_bytes();
    let n = tag.len().min(len);
    buf[..n].copy_from_slice(&tag[..n]);
    buf.freeze()
}

/// The first `total` bytes of the pattern, as a stream of chunks.
pub fn stream(total: u64) -> impl Stream<Item = Bytes> + Send + Sync + 'static {
    futures_util::stream::iter(chunks(total))
}

/// The first `total` bytes of the pattern, as an iterator of chunks.
pub fn chunks(total: u64) -> impl Iterator<Item = Bytes> + Send + Sync + 'static {
    let count = total.div_ceil(CHUNK as u64);
    (0..count).map(move |i| {
        let len = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        chunk(i, len)
    })
}

/// Hex SHA-256 of the first `total` bytes of the pattern.
pub fn sha256(total: u64) -> String {
    let mut hasher = Sha256::new();
    for c in chunks(total) {
        hasher.update(&c);
    }
    hasher.finish()
}

/// Incremental SHA-256 that also counts bytes.
pub struct Sha256 {
    ctx: ring::digest::Context,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// An empty digest.
    pub fn new() -> Self {
        Sha256 {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.ctx.finish().as_ref())
    }
}

/// Hex SHA-256 of `data`.
pub fn sha256_of(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_add_up_and_differ() {
        let total = 3 * CHUNK as u64 + 10;
        let all: Vec<Bytes> = chunks(total).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all.iter().map(|c| c.len() as u64).sum::<u64>(), total);
        assert_ne!(all[0], all[1]);
        let mut joined = Vec::new();
        for c in &all {
            joined.extend_from_slice(c);
        }
        assert_eq!(sha256_of(&joined), sha256(total));
        assert_eq!(
            sha256_of(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
