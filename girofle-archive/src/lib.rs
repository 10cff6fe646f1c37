//! The backup archive format: one tar stream compressed with zstd, written, verified and
//! extracted in a streaming way with memory flat in the size of the data and in the number
//! of files.
//!
//! An archive holds `girofle/header.json` (an opaque JSON document chosen by the caller),
//! then the trees of the [`Source`]s in the order of their prefixes, each under its prefix
//! with numeric owners, modes and mtimes, depth first with the children of a directory in
//! byte order of their names, then `girofle/index.jsonl`: the index, as JSON lines (see
//! [`IndexRecord`]): every entry with its BLAKE3 hash, what was skipped and why, the files
//! that changed while read, and a last line with the totals. The writer spools the index to
//! a temporary file and hands it back, so the caller can store it beside the archive too.
//!
//! Readers check an archive in lockstep with an index streamed beside it, relying on the
//! deterministic order: no reader holds a list of all paths, only the stack of open
//! directories (and the symlinks, to resolve their chains).
//!
//! This module owns the walk of the source trees, the archive layout, integrity checks and
//! the safe extraction of a possibly hostile archive into an empty directory, and the same
//! writing and extraction from and to the tar streams of a container engine
//! ([`tar_stream`]), for hosts reached only through their engine. It does not
//! know where the archive is stored (the store does, through [`ChannelWriter`] and
//! [`ChannelReader`]), what the header means (the backup module does), nor how GitLab is
//! stopped or restarted around a backup.

mod error;
pub mod extract;
pub mod index;
pub mod manifest;
pub mod pipe;
pub mod read;
pub mod signature;
pub mod tar_stream;
#[cfg(test)]
mod tar_stream_tests;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod write;

pub use error::{Error, Result};
pub use extract::extract_archive;
pub use index::*;
pub use pipe::{ChannelReader, ChannelWriter, HashingReader, HashingWriter};
pub use read::{read_header, verify_archive};
pub use tar_stream::{
    extract_archive_to_tars, write_archive_from_tars, Reopen, TarSource, TarTarget,
};
pub use write::{write_archive, ArchiveSummary, CompressionOptions, Source};

/// Path of the first entry: the caller's header document.
pub const HEADER_PATH: &str = "girofle/header.json";
/// Path of the last entry: the index, as JSON lines of [`IndexRecord`].
pub const INDEX_PATH: &str = "girofle/index.jsonl";
/// Top-level directory reserved for Girofle's own entries; no source may use it.
pub(crate) const RESERVED_PREFIX: &str = "girofle";

/// Size of the read and write buffers: zstd and BLAKE3 both go faster on large blocks.
pub(crate) const BUF_SIZE: usize = 1 << 20;
/// Buffer in front of the zstd encoder: small tar headers and small files are gathered
/// here; content chunks of [`CHUNK_SIZE`] go straight through.
pub(crate) const TAR_BUF_SIZE: usize = 256 << 10;
/// File content travels from the reading thread to the tar thread in chunks of this size.
pub(crate) const CHUNK_SIZE: usize = 1 << 20;
/// The reading thread sends its work in batches of about this many bytes...
pub(crate) const BATCH_BYTES: usize = 1 << 20;
/// ...or this many items...
pub(crate) const BATCH_ITEMS: usize = 512;
/// ...with at most this many batches waiting: it reads ahead by a few MiB, no more.
pub(crate) const BATCHES_IN_FLIGHT: usize = 4;
/// Decompressed data travels to the tar reader in chunks of this size...
pub(crate) const DECODED_CHUNK: usize = 256 << 10;
/// ...with at most this many waiting.
pub(crate) const DECODED_IN_FLIGHT: usize = 8;
/// Progress is reported at least every this many bytes...
pub(crate) const PROGRESS_BYTES: u64 = 64 << 20;
/// ...or every this many entries.
pub(crate) const PROGRESS_FILES: u64 = 1000;
/// zstd window, pinned so that readers can check the frame header byte that holds it: a
/// damaged window descriptor that happens to give a larger window would otherwise decode
/// to the very same data and go unnoticed. 2 MiB is zstd's own choice for level 3 (the
/// default) and what `zstd -3` uses; each worker job re-reads an eighth of the window
/// before it starts, so a larger one costs compression time (8 MiB did: ~5%) and memory
/// for little gain in ratio.
pub(crate) const WINDOW_LOG: u32 = 21;
/// Bytes per zstd worker job.
pub(crate) const JOB_SIZE: u32 = 4 << 20;
/// The header is small; anything bigger is a damaged or hostile archive.
pub(crate) const MAX_HEADER_SIZE: u64 = 64 << 20;
/// No index line is longer (paths and link targets are at most 4 KiB on Linux); a longer
/// one is damage, and is not read into memory.
pub(crate) const MAX_INDEX_LINE: usize = 64 << 10;
/// Bound on a GNU long name / long link or PAX entry, for the same reason: the tar crate
/// would read one of any size (a few KiB of zstd can claim gigabytes) into memory.
pub(crate) const MAX_LONG_NAME: u64 = 64 << 10;

/// Running totals reported while an archive is written or extracted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub files: u64,
    pub bytes: u64,
}
