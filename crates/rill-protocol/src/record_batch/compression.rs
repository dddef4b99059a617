//! Compression of a batch's records section, in the framings Kafka clients use.
//!
//! - gzip: RFC 1952 gzip members (concatenated members are accepted).
//! - snappy: written in the xerial/snappy-java stream framing the Java client uses; on read both
//!   that framing and a bare snappy block (as librdkafka writes it) are accepted.
//! - lz4: the standard LZ4 frame format with independent 64 KiB blocks, as Kafka's
//!   `KafkaLZ4BlockOutputStream` writes it.
//! - zstd: a standard zstd frame.
//!
//! Decompression is always bounded: output beyond `limit` bytes is an error, so a small
//! compressed batch cannot make the broker or a consumer allocate without bound.

use std::io::{Read, Write};

use super::BatchError;

/// The compression codec of a batch (attributes bits 0-2), numbered as Kafka numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records stored as is.
    #[default]
    None,
    /// gzip (id 1).
    Gzip,
    /// snappy (id 2).
    Snappy,
    /// lz4 (id 3).
    Lz4,
    /// zstd (id 4).
    Zstd,
}

impl Compression {
    /// All codecs, for tests and tools.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Codec from the 3-bit attribute value.
    pub fn from_id(id: u8) -> Result<Self, BatchError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(BatchError::UnsupportedCompression(other)),
        })
    }

    /// The 3-bit attribute value.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's `compression.type` name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown compression type {s:?}: use none, gzip, snappy, lz4 or zstd")
            })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// snappy-java's stream header: magic, then version 1 and compatible version 1 (big-endian).
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
const XERIAL_MAGIC_LEN: usize = 8;
/// snappy-java's default block size.
const XERIAL_BLOCK: usize = 32 * 1024;

/// Compresses `input` with `codec`, appending to `out`.
pub fn compress(codec: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let io = |e: std::io::Error| BatchError::Compression {
        codec,
        reason: e.to_string(),
    };
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(io)?;
        }
        Compression::Snappy => {
            out.extend_from_slice(&XERIAL_HEADER);
            let mut enc = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK) {
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                out.resize(start + 4 + snap::raw::max_compress_len(block.len()), 0);
                let n = enc.compress(block, &mut out[start + 4..]).map_err(|e| {
                    BatchError::Compression {
                        codec,
                        reason: e.to_string(),
                    }
                })?;
                out.truncate(start + 4 + n);
                out[start..start + 4].copy_from_slice(&(n as u32).to_be_bytes());
            }
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(|e| BatchError::Compression {
                codec,
                reason: e.to_string(),
            })?;
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, 3).map_err(io)?;
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(io)?;
        }
    }
    Ok(())
}

/// Decompresses `input`, failing once the output would exceed `limit` bytes.
pub fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(BatchError::DecompressedTooLarge { limit });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(input), limit),
        Compression::Snappy => decompress_snappy(input, limit),
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), limit),
        Compression::Zstd => ZSTD_CONTEXT.with(|cell| {
            // One decompression context per thread: creating one per batch dominated the cost
            // of small zstd batches.
            let mut slot = cell.borrow_mut();
            let ctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
            // A previous batch may have failed mid-frame: start clean.
            let _ = ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
            read_bounded(
                codec,
                zstd::stream::read::Decoder::with_context(input, ctx),
                limit,
            )
        }),
    }
}

fn read_bounded(
    codec: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Decompression {
            codec,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(BatchError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

fn decompress_snappy(input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let err = |reason: String| BatchError::Decompression {
        codec: Compression::Snappy,
        reason,
    };
    let mut dec = snap::raw::Decoder::new();
    let mut out = Vec::new();
    let mut block = |data: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
        let len = snap::raw::decompress_len(data).map_err(|e| err(e.to_string()))?;
        if out.len().saturating_add(len) > limit {
            return Err(BatchError::DecompressedTooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        let n = dec
            .decompress(data, &mut out[start..])
            .map_err(|e| err(e.to_string()))?;
        out.truncate(start + n);
        Ok(())
    };
    if input.len() >= XERIAL_MAGIC_LEN
        && input[..XERIAL_MAGIC_LEN] == XERIAL_HEADER[..XERIAL_MAGIC_LEN]
    {
        if input.len() < XERIAL_HEADER.len() {
            return Err(err("truncated snappy-java stream header".into()));
        }
        let mut rest = &input[XERIAL_HEADER.len()..];
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(err("truncated snappy-java block length".into()));
            };
            let len = u32::from_be_bytes(*len) as usize;
            if tail.len() < len {
                return Err(err(format!(
                    "snappy-java block of {len} bytes but only {} remain",
                    tail.len()
                )));
            }
            block(&tail[..len], &mut out)?;
            rest = &tail[len..];
        }
    } else {
        block(input, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_codec() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for codec in Compression::ALL {
            let mut out = Vec::new();
            compress(codec, &data, &mut out).unwrap();
            assert_eq!(
                decompress(codec, &out, data.len()).unwrap(),
                data,
                "{codec}"
            );
            assert!(
                matches!(
                    decompress(codec, &out, data.len() - 1),
                    Err(BatchError::DecompressedTooLarge { .. })
                ),
                "{codec} must enforce the limit"
            );
        }
    }

    #[test]
    fn bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut out = Vec::new();
            compress(codec, &zeros, &mut out).unwrap();
            assert!(out.len() < zeros.len() / 10);
            assert!(matches!(
                decompress(codec, &out, 1 << 20),
                Err(BatchError::DecompressedTooLarge { limit }) if limit == 1 << 20
            ));
        }
    }

    #[test]
    fn the_reused_zstd_context_recovers_from_a_broken_frame() {
        let data = b"abcabcabc".repeat(1000);
        let mut good = Vec::new();
        compress(Compression::Zstd, &data, &mut good).unwrap();
        let torn = &good[..good.len() / 2];
        assert!(decompress(Compression::Zstd, torn, 1 << 20).is_err());
        assert!(
            decompress(Compression::Zstd, &good, 100).is_err(),
            "limit hit mid-frame"
        );
        assert_eq!(decompress(Compression::Zstd, &good, 1 << 20).unwrap(), data);
    }

    #[test]
    fn raw_snappy_block_is_accepted() {
        let data = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &raw, 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                decompress(codec, b"definitely not compressed", 1 << 20).is_err(),
                "{codec}"
            );
        }
    }
}
