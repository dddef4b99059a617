//! Building batches: append records, then seal (compress, fill the header, compute the CRC).

use bytes::Bytes;

use super::varint::{varint_size, varlong_size, write_varint, write_varlong};
use super::{
    BatchError, Compression, MAGIC_V2, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID, NO_SEQUENCE, RECORD_BATCH_OVERHEAD, RecordHeader, TimestampType, compress,
};

/// Accumulates records into one v2 batch. Records are encoded as they are appended, so
/// [`estimated_size`](Self::estimated_size) is exact for uncompressed batches and `build` only
/// compresses and writes the header.
#[derive(Clone, Debug)]
pub struct RecordBatchBuilder {
    compression: Compression,
    timestamp_type: TimestampType,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    control: bool,
    delete_horizon: bool,
    min_last_offset_delta: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    /// Base and max timestamps written when no record is appended.
    empty_timestamps: Option<(i64, i64)>,
    last_offset_delta: i32,
    count: i32,
    records: Vec<u8>,
}

impl RecordBatchBuilder {
    /// A builder for a batch compressed with `compression`.
    pub fn new(compression: Compression) -> Self {
        RecordBatchBuilder {
            compression,
            timestamp_type: TimestampType::CreateTime,
            base_offset: 0,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            transactional: false,
            control: false,
            delete_horizon: false,
            min_last_offset_delta: 0,
            base_timestamp: None,
            max_timestamp: -1,
            empty_timestamps: None,
            last_offset_delta: -1,
            count: 0,
            records: vec![0; RECORD_BATCH_OVERHEAD],
        }
    }

    /// Base offset written into the header (brokers overwrite it; the log cleaner keeps it).
    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    /// Partition leader epoch written into the header.
    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Idempotent producer identity and the sequence of the first record.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Timestamp type bit.
    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.timestamp_type = timestamp_type;
        self
    }

    /// Sets the transactional attribute bit (rill has no transactions yet; for tests and tools).
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// Control-batch bit.
    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    /// Marks the batch with a delete horizon (KIP-534): its tombstones may be dropped by the log
    /// cleaner after `horizon_ms`. The horizon is stored as the base timestamp, so it must be set
    /// before the first record is appended; record timestamps stay exact (deltas adapt).
    pub fn delete_horizon_ms(mut self, horizon_ms: i64) -> Self {
        self.delete_horizon = true;
        self.base_timestamp = Some(horizon_ms);
        self
    }

    /// For a batch left without records (the log cleaner keeping an emptied batch): the base
    /// and max timestamps of the batch it stands for, so time-based rolls and producer state
    /// read the same times from it. Unused once a record is appended.
    pub fn empty_timestamps(mut self, base_timestamp: i64, max_timestamp: i64) -> Self {
        self.empty_timestamps = Some((base_timestamp, max_timestamp));
        self
    }

    /// Keeps the header's `last_offset_delta` at least `delta` even if later records are absent:
    /// the log cleaner preserves each batch's offset span when it removes records.
    pub fn last_offset_delta(mut self, delta: i32) -> Self {
        self.min_last_offset_delta = delta;
        self
    }

    /// Appends a record with the next offset delta.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader<'_>],
    ) {
        let delta = self.last_offset_delta.saturating_add(1);
        self.push(delta, timestamp, key, value, headers);
    }

    /// Appends a record with an explicit offset delta, which must exceed the previous one
    /// (compaction keeps original offsets, leaving gaps).
    pub fn append_with_offset_delta(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader<'_>],
    ) -> Result<(), BatchError> {
        if offset_delta <= self.last_offset_delta {
            return Err(BatchError::OffsetDeltaNotIncreasing {
                previous: self.last_offset_delta,
                delta: offset_delta,
                last: self.last_offset_delta,
            });
        }
        self.push(offset_delta, timestamp, key, value, headers);
        Ok(())
    }

    fn push(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader<'_>],
    ) {
        let base = *self.base_timestamp.get_or_insert(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(base);
        let body = 1
            + varlong_size(timestamp_delta)
            + varint_size(offset_delta)
            + bytes_size(key)
            + bytes_size(value)
            + varint_size(headers.len() as i32)
            + headers
                .iter()
                .map(|h| bytes_size(Some(h.key)) + bytes_size(h.value))
                .sum::<usize>();
        let out = &mut self.records;
        out.reserve(body + 5);
        write_varint(out, body as i32);
        out.push(0); // record attributes: unused in v2
        write_varlong(out, timestamp_delta);
        write_varint(out, offset_delta);
        write_bytes(out, key);
        write_bytes(out, value);
        write_varint(out, headers.len() as i32);
        for h in headers {
            write_bytes(out, Some(h.key));
            write_bytes(out, h.value);
        }
        self.max_timestamp = if self.count == 0 {
            timestamp
        } else {
            self.max_timestamp.max(timestamp)
        };
        self.last_offset_delta = offset_delta;
        self.count += 1;
    }

    /// Records appended so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch if built uncompressed; an upper estimate for compressed batches.
    pub fn estimated_size(&self) -> usize {
        self.records.len()
    }

    /// Encoded size a record would add, for callers that keep batches under a size limit.
    pub fn record_size(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader<'_>],
    ) -> usize {
        // Timestamp and offset deltas are bounded by their maximum varint sizes.
        let body = 1
            + 10
            + 5
            + bytes_size(key)
            + bytes_size(value)
            + varint_size(headers.len() as i32)
            + headers
                .iter()
                .map(|h| bytes_size(Some(h.key)) + bytes_size(h.value))
                .sum::<usize>();
        body + varint_size(body as i32)
    }

    /// Compresses the records, writes the header and CRC, and returns the batch bytes.
    pub fn build(self) -> Result<Bytes, BatchError> {
        // `records` starts with room for the header: uncompressed batches are built in place.
        let mut out = if self.compression == Compression::None {
            self.records
        } else {
            let mut out = Vec::with_capacity(self.records.len() / 2 + RECORD_BATCH_OVERHEAD);
            out.resize(RECORD_BATCH_OVERHEAD, 0);
            compress(
                self.compression,
                &self.records[RECORD_BATCH_OVERHEAD..],
                &mut out,
            )?;
            out
        };
        let batch_length = i32::try_from(out.len() - super::LOG_OVERHEAD).map_err(|_| {
            BatchError::LengthOutOfRange {
                length: (out.len() - super::LOG_OVERHEAD) as i64,
                min: RECORD_BATCH_OVERHEAD - super::LOG_OVERHEAD,
                max: i32::MAX as usize,
            }
        })?;
        let mut attributes = u16::from(self.compression.id());
        if self.timestamp_type == TimestampType::LogAppendTime {
            attributes |= super::TIMESTAMP_TYPE_BIT;
        }
        if self.transactional {
            attributes |= super::TRANSACTIONAL_BIT;
        }
        if self.control {
            attributes |= super::CONTROL_BIT;
        }
        if self.delete_horizon {
            attributes |= super::DELETE_HORIZON_BIT;
        }
        let (base_timestamp, max_timestamp) = match self.empty_timestamps {
            Some(empty) if self.count == 0 => empty,
            _ => (self.base_timestamp.unwrap_or(-1), self.max_timestamp),
        };
        let h = &mut out[..RECORD_BATCH_OVERHEAD];
        h[0..8].copy_from_slice(&self.base_offset.to_be_bytes());
        h[8..12].copy_from_slice(&batch_length.to_be_bytes());
        h[12..16].copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        h[16] = MAGIC_V2 as u8;
        h[21..23].copy_from_slice(&attributes.to_be_bytes());
        h[23..27].copy_from_slice(
            &self
                .last_offset_delta
                .max(self.min_last_offset_delta)
                .max(0)
                .to_be_bytes(),
        );
        h[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
        h[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
        h[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        h[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        h[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        h[57..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&out[super::ATTRIBUTES_AT..]);
        out[super::CRC_AT..super::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(Bytes::from(out))
    }
}

fn bytes_size(b: Option<&[u8]>) -> usize {
    match b {
        None => 1,
        Some(b) => varint_size(b.len() as i32) + b.len(),
    }
}

fn write_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => write_varint(out, -1),
        Some(b) => {
            write_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_horizon_keeps_record_timestamps() {
        let mut b = RecordBatchBuilder::new(Compression::None).delete_horizon_ms(5_000);
        b.append(1_000, Some(b"k"), None, &[]);
        b.append(9_000, Some(b"k2"), Some(b"v"), &[]);
        let bytes = b.build().unwrap();
        let batch = super::super::RecordBatch::parse(&bytes).unwrap();
        batch.validate(&Default::default()).unwrap();
        assert_eq!(batch.header().delete_horizon_ms(), Some(5_000));
        let ts: Vec<i64> = batch
            .records(1 << 20)
            .unwrap()
            .iter()
            .map(|r| r.unwrap().timestamp)
            .collect();
        assert_eq!(ts, [1_000, 9_000]);
    }

    /// The worked example in docs/record-batch.md, byte for byte.
    #[test]
    fn documented_example_is_exact() {
        let mut b = RecordBatchBuilder::new(Compression::None);
        b.append(1_700_000_000_000, Some(b"k"), Some(b"v"), &[]);
        let bytes = b.build().unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "0000000000000000",
                "0000003a",
                "ffffffff",
                "02",
                "e99b8dd8",
                "0000",
                "00000000",
                "0000018bcfe56800",
                "0000018bcfe56800",
                "ffffffffffffffff",
                "ffff",
                "ffffffff",
                "00000001",
                "10",
                "00",
                "00",
                "00",
                "026b",
                "0276",
                "00",
            )
        );
    }
}
