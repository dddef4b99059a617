//! Kafka's v2 RecordBatch (magic 2): the unit rill stores on disk and sends on the wire.
//!
//! A batch is a 61-byte header followed by the records section (compressed as a whole when the
//! codec is not `none`). The CRC-32C covers everything from `attributes` to the end, so the two
//! fields a broker must set, `base_offset` and `partition_leader_epoch`, are patched in place
//! without touching the CRC or re-encoding a record. `docs/record-batch.md` is the full layout.
//!
//! Readers never trust a length field: every slice is bounds-checked against the buffer, and
//! decompression is capped, so malformed input is an error and never a panic or a huge allocation.

mod builder;
mod compression;
mod record;
pub mod varint;

pub use builder::RecordBatchBuilder;
pub use compression::{Compression, compress, decompress};
pub use record::{Record, RecordHeader, RecordHeaderIter, RecordIter, Records};

use crate::ErrorCode;

/// Size of the fixed batch header.
pub const RECORD_BATCH_OVERHEAD: usize = 61;
/// `base_offset` + `batch_length`: the bytes not counted in `batch_length`.
pub const LOG_OVERHEAD: usize = 12;
/// The only magic value rill accepts.
pub const MAGIC_V2: i8 = 2;
/// Producer id of a non-idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
/// Producer epoch of a non-idempotent producer.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// Base sequence of a non-idempotent producer.
pub const NO_SEQUENCE: i32 = -1;
/// Partition leader epoch before the broker sets it.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const MAX_TIMESTAMP_AT: usize = 35;

const COMPRESSION_MASK: u16 = 0x07;
const TIMESTAMP_TYPE_BIT: u16 = 0x08;
const TRANSACTIONAL_BIT: u16 = 0x10;
const CONTROL_BIT: u16 = 0x20;
const DELETE_HORIZON_BIT: u16 = 0x40;

/// Why a batch was rejected. Each variant names the rule that failed and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The buffer ends before the batch does.
    #[error("record batch truncated: needs {needed} bytes, only {available} available")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes the buffer holds from the batch's start.
        available: usize,
    },
    /// Only magic 2 is supported.
    #[error("unsupported record batch magic {0}: rill accepts only Kafka v2 batches (magic 2)")]
    BadMagic(i8),
    /// `batch_length` outside [49, limit].
    #[error("record batch length {length} out of range (must be {min}..={max})")]
    LengthOutOfRange {
        /// The batch_length field.
        length: i64,
        /// Smallest legal value.
        min: usize,
        /// Largest value allowed by the configured limit.
        max: usize,
    },
    /// The stored CRC does not match the bytes.
    #[error("record batch CRC mismatch: header says {expected:#010x}, bytes give {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        expected: u32,
        /// CRC-32C of the bytes.
        computed: u32,
    },
    /// The header's record count disagrees with the records present.
    #[error("record count mismatch: header says {header}, batch holds {actual}")]
    RecordCountMismatch {
        /// Count in the header.
        header: i32,
        /// Records actually parsed (or a lower bound when the section ended early).
        actual: i64,
    },
    /// Offset deltas must increase strictly and stay within `last_offset_delta`.
    #[error("offset delta {delta} after {previous} is not increasing (last offset delta {last})")]
    OffsetDeltaNotIncreasing {
        /// The previous record's delta (-1 before the first record).
        previous: i32,
        /// The offending delta.
        delta: i32,
        /// The header's last_offset_delta.
        last: i32,
    },
    /// A producer's batch must number its records 0, 1, 2, ...
    #[error(
        "offset deltas must be 0..{count} in a produced batch, found {delta} at record {index}"
    )]
    OffsetDeltaNotContiguous {
        /// Position of the record in the batch, from 0.
        index: i32,
        /// The offset delta it has (it should equal `index`).
        delta: i32,
        /// Records in the batch.
        count: i32,
    },
    /// The header's last_offset_delta disagrees with the records.
    #[error("last offset delta {header} in header, but the last record has delta {actual}")]
    LastOffsetDeltaMismatch {
        /// The header's `last_offset_delta`.
        header: i32,
        /// Last record's delta.
        actual: i32,
    },
    /// The header's max timestamp is below a record's timestamp.
    #[error("max timestamp {header} in header, but records reach {actual}")]
    MaxTimestampMismatch {
        /// The header's `max_timestamp`.
        header: i64,
        /// Largest record timestamp.
        actual: i64,
    },
    /// A varint ran past the end of its record.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint was longer than its type allows.
    #[error("varint too long for its type")]
    VarintOverflow,
    /// A record's framing is inconsistent.
    #[error("invalid record {index}: {reason}")]
    InvalidRecord {
        /// Record position within the batch.
        index: i64,
        /// What is wrong.
        reason: String,
    },
    /// A batch with no records where one is required.
    #[error("record batch holds no records")]
    Empty,
    /// A control batch (transaction marker) sent by a client: only brokers write those.
    #[error("clients may not write control batches (transaction markers)")]
    ControlBatchFromClient,
    /// Compression codec id outside 0..=4.
    #[error(
        "unsupported compression codec id {0}: use none(0), gzip(1), snappy(2), lz4(3) or zstd(4)"
    )]
    UnsupportedCompression(u8),
    /// The compressed records section could not be decoded.
    #[error("{codec} decompression failed: {reason}")]
    Decompression {
        /// The codec named by the batch's attributes.
        codec: Compression,
        /// The codec's error.
        reason: String,
    },
    /// Compressing failed (only on an internal error).
    #[error("{codec} compression failed: {reason}")]
    Compression {
        /// The codec named by the batch's attributes.
        codec: Compression,
        /// The codec's error.
        reason: String,
    },
    /// The uncompressed records exceed the allowed size (a decompression bomb, or too big).
    #[error("records section exceeds {limit} bytes once decompressed")]
    DecompressedTooLarge {
        /// The configured limit.
        limit: usize,
    },
}

impl BatchError {
    /// The Kafka error code a produce of this batch is answered with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            BatchError::LengthOutOfRange { .. } | BatchError::DecompressedTooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            BatchError::UnsupportedCompression(_) => ErrorCode::UnsupportedCompressionType,
            BatchError::Empty
            | BatchError::ControlBatchFromClient
            | BatchError::OffsetDeltaNotContiguous { .. }
            | BatchError::MaxTimestampMismatch { .. } => ErrorCode::InvalidRecord,
            _ => ErrorCode::CorruptMessage,
        }
    }
}

/// How a record's timestamp was set (attributes bit 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Set by the producer.
    #[default]
    CreateTime,
    /// Set by the broker on append (the batch's max timestamp applies to every record).
    LogAppendTime,
}

/// The decoded 61-byte batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (set by the broker).
    pub base_offset: i64,
    /// Bytes after this field: total size is `batch_length + 12`.
    pub batch_length: i32,
    /// Leader epoch of the leader that appended it (set by the broker).
    pub partition_leader_epoch: i32,
    /// Always 2.
    pub magic: i8,
    /// CRC-32C from `attributes` to the end.
    pub crc: u32,
    /// Codec, timestamp type, transactional and control bits.
    pub attributes: u16,
    /// Offset delta of the last record.
    pub last_offset_delta: i32,
    /// Timestamp of the first record; others are deltas from it.
    pub base_timestamp: i64,
    /// Largest record timestamp (or the append time under LogAppendTime).
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Decodes a header from at least 61 bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < RECORD_BATCH_OVERHEAD {
            return Err(BatchError::Truncated {
                needed: RECORD_BATCH_OVERHEAD,
                available: buf.len(),
            });
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET_AT),
            batch_length: i32_at(buf, BATCH_LENGTH_AT),
            partition_leader_epoch: i32_at(buf, LEADER_EPOCH_AT),
            magic: buf[MAGIC_AT] as i8,
            crc: u32::from_be_bytes(array_at(buf, CRC_AT)),
            attributes: u16::from_be_bytes(array_at(buf, ATTRIBUTES_AT)),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP_AT),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16::from_be_bytes(array_at(buf, 51)),
            base_sequence: i32_at(buf, 53),
            record_count: i32_at(buf, 57),
        })
    }

    /// The codec from the attributes.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_id((self.attributes & COMPRESSION_MASK) as u8)
    }

    /// CreateTime or LogAppendTime.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// A control batch (transaction markers), not user data.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// When the log cleaner may drop this batch's tombstones (KIP-534): set by the cleaner on the
    /// first pass that keeps a tombstone, stored in `base_timestamp`.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & DELETE_HORIZON_BIT != 0).then_some(self.base_timestamp)
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Total bytes of the batch including the 12-byte log overhead.
    pub fn total_size(&self) -> usize {
        self.batch_length.max(0) as usize + LOG_OVERHEAD
    }
}

/// Limits and rules applied by [`RecordBatch::validate`].
#[derive(Clone, Debug)]
pub struct ValidationOptions {
    /// Largest record section once decompressed (bounds decompression bombs).
    pub max_uncompressed_bytes: usize,
    /// Require the shape a producer sends: at least one record, offset deltas exactly 0..n-1,
    /// and a header max timestamp equal to the largest record timestamp (CreateTime).
    pub producer_batch: bool,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions {
            max_uncompressed_bytes: 64 << 20,
            producer_batch: false,
        }
    }
}

/// What a full validation learned about a batch, so the caller need not parse it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records parsed (equal to the header's count, which validation checks).
    pub record_count: i32,
    /// Largest record timestamp seen (i64::MIN for an empty batch).
    pub max_record_timestamp: i64,
    /// Smallest record timestamp seen (i64::MAX for an empty batch).
    pub min_record_timestamp: i64,
    /// True when some record has a null key (not allowed in compacted topics).
    pub has_null_key: bool,
    /// Size of the records section after decompression.
    pub uncompressed_bytes: usize,
}

/// A bounds-checked view of one batch inside a larger buffer. The header's framing (magic and
/// length) is checked on creation; the CRC and the records are checked by [`validate`].
///
/// [`validate`]: RecordBatch::validate
#[derive(Clone, Copy, Debug)]
pub struct RecordBatch<'a> {
    bytes: &'a [u8],
    header: BatchHeader,
}

impl<'a> RecordBatch<'a> {
    /// Reads the batch at the start of `buf`, checking magic and length; `buf` may hold more.
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        if buf.len() < LOG_OVERHEAD + 5 {
            return Err(BatchError::Truncated {
                needed: LOG_OVERHEAD + 5,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let length = i32_at(buf, BATCH_LENGTH_AT);
        let min = RECORD_BATCH_OVERHEAD - LOG_OVERHEAD;
        if length < min as i32 {
            return Err(BatchError::LengthOutOfRange {
                length: length.into(),
                min,
                max: i32::MAX as usize,
            });
        }
        let total = length as usize + LOG_OVERHEAD;
        if buf.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                available: buf.len(),
            });
        }
        let bytes = &buf[..total];
        Ok(RecordBatch {
            header: BatchHeader::decode(bytes)?,
            bytes,
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly as stored.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Checks the CRC-32C.
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let computed = crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..]);
        if computed != self.header.crc {
            return Err(BatchError::CrcMismatch {
                expected: self.header.crc,
                computed,
            });
        }
        Ok(())
    }

    /// Full validation: CRC, header fields, codec, and the framing of every record.
    pub fn validate(&self, opts: &ValidationOptions) -> Result<BatchSummary, BatchError> {
        self.verify_crc()?;
        let h = &self.header;
        if h.record_count < 0 {
            return Err(BatchError::RecordCountMismatch {
                header: h.record_count,
                actual: 0,
            });
        }
        if opts.producer_batch && h.record_count == 0 {
            return Err(BatchError::Empty);
        }
        // Kafka's `LogValidator`: "Clients are not allowed to write control records".
        if opts.producer_batch && h.is_control() {
            return Err(BatchError::ControlBatchFromClient);
        }
        let records = self.records(opts.max_uncompressed_bytes)?;
        let (mut summary, last_delta) =
            match record::scan(records.data(), h.record_count, opts.producer_batch) {
                Some(scan) if scan.last_delta <= h.last_offset_delta => (
                    BatchSummary {
                        record_count: scan.count,
                        max_record_timestamp: if scan.count == 0 {
                            i64::MIN
                        } else {
                            h.base_timestamp.wrapping_add(scan.max_timestamp_delta)
                        },
                        min_record_timestamp: if scan.count == 0 {
                            i64::MAX
                        } else {
                            h.base_timestamp.wrapping_add(scan.min_timestamp_delta)
                        },
                        has_null_key: scan.has_null_key,
                        uncompressed_bytes: records.data().len(),
                    },
                    scan.last_delta,
                ),
                // The fast scan found a problem: walk again slowly to say precisely what it is.
                _ => return Err(self.explain_invalid_records(&records, opts)),
            };
        if h.timestamp_type() == TimestampType::LogAppendTime {
            summary.max_record_timestamp = h.max_timestamp;
            summary.min_record_timestamp = h.max_timestamp;
        }
        if opts.producer_batch && last_delta != h.last_offset_delta {
            return Err(BatchError::LastOffsetDeltaMismatch {
                header: h.last_offset_delta,
                actual: last_delta,
            });
        }
        if h.timestamp_type() == TimestampType::CreateTime
            && summary.record_count > 0
            && (summary.max_record_timestamp > h.max_timestamp
                || (opts.producer_batch && summary.max_record_timestamp != h.max_timestamp))
        {
            return Err(BatchError::MaxTimestampMismatch {
                header: h.max_timestamp,
                actual: summary.max_record_timestamp,
            });
        }
        Ok(summary)
    }

    /// Finds the first framing error in `records` for an error message.
    fn explain_invalid_records(
        &self,
        records: &Records<'_>,
        opts: &ValidationOptions,
    ) -> BatchError {
        let h = &self.header;
        let mut previous = -1i32;
        for (index, record) in records.iter().enumerate() {
            let record = match record {
                Ok(r) => r,
                Err(e) => return e,
            };
            let delta = record.offset_delta;
            if opts.producer_batch && i64::from(delta) != index as i64 {
                return BatchError::OffsetDeltaNotContiguous {
                    index: index as i32,
                    delta,
                    count: h.record_count,
                };
            }
            if delta <= previous || delta > h.last_offset_delta {
                return BatchError::OffsetDeltaNotIncreasing {
                    previous,
                    delta,
                    last: h.last_offset_delta,
                };
            }
            previous = delta;
        }
        BatchError::InvalidRecord {
            index: -1,
            reason: "records section is malformed".into(),
        }
    }

    /// The records section, decompressed (bounded by `max_uncompressed_bytes`) when needed.
    /// Uncompressed batches are borrowed, not copied.
    pub fn records(&self, max_uncompressed_bytes: usize) -> Result<Records<'a>, BatchError> {
        let section = &self.bytes[RECORD_BATCH_OVERHEAD.min(self.bytes.len())..];
        let data = match self.header.compression()? {
            Compression::None => std::borrow::Cow::Borrowed(section),
            codec => std::borrow::Cow::Owned(decompress(codec, section, max_uncompressed_bytes)?),
        };
        Ok(Records::new(data, self.header))
    }
}

/// Iterates the batches concatenated in `buf` (a log read or a Fetch response's `records`).
/// A trailing partial batch yields [`BatchError::Truncated`] and ends the iteration.
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter { rest: buf }
}

/// See [`batches`].
#[derive(Clone, Debug)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<RecordBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match RecordBatch::parse(self.rest) {
            Ok(batch) => {
                self.rest = &self.rest[batch.as_bytes().len()..];
                Some(Ok(batch))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Sets `base_offset` in place. It is outside the CRC, so the CRC stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    if let Some(field) = batch.get_mut(BASE_OFFSET_AT..BASE_OFFSET_AT + 8) {
        field.copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// Sets `partition_leader_epoch` in place. It is outside the CRC, so the CRC stays valid.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    if let Some(field) = batch.get_mut(LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4) {
        field.copy_from_slice(&epoch.to_be_bytes());
    }
}

/// Marks a batch as LogAppendTime with `timestamp` and recomputes its CRC. Only the header
/// changes; records are untouched (Kafka does the same for `message.timestamp.type=LogAppendTime`).
pub fn set_log_append_time(batch: &mut [u8], timestamp: i64) {
    if batch.len() < RECORD_BATCH_OVERHEAD {
        return;
    }
    let attributes = u16::from_be_bytes(array_at(batch, ATTRIBUTES_AT)) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Stamps an idempotent producer's id, epoch and base sequence into a built batch and
/// recomputes its CRC (the fields are inside it). The producer does this when a batch is first
/// sent, and again when an epoch bump (KIP-360) renumbers batches not yet acknowledged — Kafka's
/// `ProducerBatch.resetProducerState`. Only the header changes; records are untouched.
pub fn set_producer_state(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) {
    if batch.len() < RECORD_BATCH_OVERHEAD {
        return;
    }
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(array_at(buf, at))
}

fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array_at(buf, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `LogValidator`: clients may not write control batches (transaction markers);
    /// a broker's own checks (not producer rules) still read them.
    #[test]
    fn a_control_batch_from_a_client_is_an_invalid_record() {
        let mut b = RecordBatchBuilder::new(Compression::None);
        b.append(1_000, None, Some(b"marker"), &[]);
        let mut bytes = b.build().unwrap().to_vec();
        let attributes = u16::from_be_bytes(array_at(&bytes, ATTRIBUTES_AT)) | CONTROL_BIT;
        bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_AT..]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let batch = RecordBatch::parse(&bytes).unwrap();
        let producer = ValidationOptions {
            producer_batch: true,
            ..Default::default()
        };
        let e = batch.validate(&producer).unwrap_err();
        assert_eq!(e, BatchError::ControlBatchFromClient);
        assert_eq!(e.error_code(), ErrorCode::InvalidRecord);
        batch.validate(&ValidationOptions::default()).unwrap();
    }
}
