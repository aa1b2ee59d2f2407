//! Secrets at rest, one implementation for the gateway and the agent.
//!
//! - [`Kek`]: the key-encryption key, 32 bytes written as base64, from an
//!   environment variable or a file ([`Kek::load`]); a missing file is
//!   created only when the caller says so ([`IfMissing`]). A file that group
//!   or others may write is refused. The text the key came from and every
//!   buffer it passed through are wiped; `Debug` never shows it.
//! - Sealing under it ([`Kek::seal`], [`Kek::open`]): AES-256-GCM or
//!   ChaCha20-Poly1305 with a random 12-byte nonce and the caller's
//!   associated data. What the associated data and the stored layout are is
//!   the caller's format (`gateway/src/store/kek.rs`, `agent/src/keystore.rs`);
//!   this crate adds no byte of its own, so what was sealed before this
//!   crate existed still opens.
//! - Private files ([`private_file`]): read with the permission check on
//!   the opened file, written 0600 through a temporary file in the same
//!   folder that is synced, renamed over the target and followed by a sync
//!   of the folder, so a crash or a failed write leaves the old content.
//!
//! Errors name the file or the variable and say what is wrong; they never
//! quote the key, its base64 or any part of a file's content.

mod kek;
pub mod private_file;

pub use kek::{Cipher, IfMissing, Kek, KekError, KekSource, SealError, KEK_LEN, NONCE_LEN};
pub use private_file::{
    read_private, refuse_writable_by_others, write_private, write_private_new, WritableByOthers,
};
