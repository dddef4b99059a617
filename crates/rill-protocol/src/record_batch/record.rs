//! Records inside a batch: parsed lazily and without copying from the (decompressed) section.

use std::borrow::Cow;

use bytes::Bytes;

use super::varint::{read_varint, read_varlong};
use super::{BatchError, BatchHeader, TimestampType};

/// A batch's records section, borrowed from the batch or owned after decompression.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    data: Cow<'a, [u8]>,
    header: BatchHeader,
}

impl<'a> Records<'a> {
    pub(super) fn new(data: Cow<'a, [u8]>, header: BatchHeader) -> Self {
        Records { data, header }
    }

    /// The uncompressed records section.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The records section as shared bytes, so keys and values can be handed out as
    /// [`Bytes::slice_ref`]s instead of copies (as librdkafka's messages point into their fetch
    /// buffer): a slice of `source`, the buffer the batch was parsed from, when uncompressed;
    /// the decompressed buffer, moved, otherwise. Iterate the result with [`Records::over`].
    ///
    /// # Panics
    /// When the batch is uncompressed and was not parsed from `source`.
    pub fn into_shared(self, source: &Bytes) -> Bytes {
        match self.data {
            Cow::Borrowed(section) => source.slice_ref(section),
            Cow::Owned(section) => Bytes::from(section),
        }
    }

    /// The records of `section` (from [`Records::into_shared`]) under `header`, the batch's.
    pub fn over(section: &'a [u8], header: BatchHeader) -> Records<'a> {
        Records::new(Cow::Borrowed(section), header)
    }

    /// Iterates the records; each item is checked as it is parsed, and the iteration fails if
    /// the count in the header does not match the records present.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.data,
            header: self.header,
            index: 0,
            done: false,
        }
    }
}

/// One record, borrowing key, value and headers from the records section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'b> {
    /// Absolute offset (batch base offset + delta).
    pub offset: i64,
    /// Offset delta within the batch.
    pub offset_delta: i32,
    /// Absolute timestamp (the batch max timestamp under LogAppendTime).
    pub timestamp: i64,
    /// Key; `None` is a null key, distinct from an empty one.
    pub key: Option<&'b [u8]>,
    /// Value; `None` is a tombstone.
    pub value: Option<&'b [u8]>,
    headers: &'b [u8],
    header_count: usize,
}

impl<'b> Record<'b> {
    /// The record headers in order.
    pub fn headers(&self) -> RecordHeaderIter<'b> {
        RecordHeaderIter {
            rest: self.headers,
            remaining: self.header_count,
        }
    }

    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.header_count
    }
}

/// A record header: a key (UTF-8 text by Kafka's convention) and a nullable value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader<'b> {
    /// Header key bytes.
    pub key: &'b [u8],
    /// Header value; `None` is null.
    pub value: Option<&'b [u8]>,
}

/// Iterator over a record's headers (already checked when the record was parsed).
#[derive(Clone, Debug)]
pub struct RecordHeaderIter<'b> {
    rest: &'b [u8],
    remaining: usize,
}

impl<'b> Iterator for RecordHeaderIter<'b> {
    type Item = RecordHeader<'b>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let key = read_bytes(&mut self.rest).ok()??;
        let value = read_bytes(&mut self.rest).ok()?;
        Some(RecordHeader { key, value })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// Iterator over the records of a batch.
#[derive(Clone, Debug)]
pub struct RecordIter<'b> {
    rest: &'b [u8],
    header: BatchHeader,
    index: i64,
    done: bool,
}

impl<'b> Iterator for RecordIter<'b> {
    type Item = Result<Record<'b>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index >= i64::from(self.header.record_count) {
            self.done = true;
            if self.rest.is_empty() {
                return None;
            }
            return Some(Err(BatchError::RecordCountMismatch {
                header: self.header.record_count,
                actual: self.index + 1,
            }));
        }
        if self.rest.is_empty() {
            self.done = true;
            return Some(Err(BatchError::RecordCountMismatch {
                header: self.header.record_count,
                actual: self.index,
            }));
        }
        let result = self.parse_one();
        if result.is_err() {
            self.done = true;
        }
        self.index += 1;
        Some(result)
    }
}

impl<'b> RecordIter<'b> {
    fn parse_one(&mut self) -> Result<Record<'b>, BatchError> {
        let index = self.index;
        let invalid = |reason: String| BatchError::InvalidRecord { index, reason };
        let length = read_varint(&mut self.rest)?;
        let length = usize::try_from(length)
            .map_err(|_| invalid(format!("negative record length {length}")))?;
        if length > self.rest.len() {
            return Err(invalid(format!(
                "record length {length} exceeds the {} bytes left in the batch",
                self.rest.len()
            )));
        }
        let (mut body, rest) = self.rest.split_at(length);
        self.rest = rest;
        let cur = &mut body;
        // Record attributes: unused in v2, skipped.
        *cur = cur
            .split_first()
            .map(|(_, tail)| tail)
            .ok_or_else(|| invalid("missing attributes".into()))?;
        let timestamp_delta = read_varlong(cur)?;
        let offset_delta = read_varint(cur)?;
        let key = read_bytes(cur).map_err(|e| invalid(format!("key: {e}")))?;
        let value = read_bytes(cur).map_err(|e| invalid(format!("value: {e}")))?;
        let header_count = read_varint(cur)?;
        let header_count = usize::try_from(header_count)
            .map_err(|_| invalid(format!("negative header count {header_count}")))?;
        let headers = *cur;
        for i in 0..header_count {
            match read_bytes(cur).map_err(|e| invalid(format!("header {i} key: {e}")))? {
                Some(_) => {}
                None => return Err(invalid(format!("header {i} has a null key"))),
            }
            read_bytes(cur).map_err(|e| invalid(format!("header {i} value: {e}")))?;
        }
        if !cur.is_empty() {
            return Err(invalid(format!(
                "{} bytes left after the last header",
                cur.len()
            )));
        }
        let timestamp = match self.header.timestamp_type() {
            TimestampType::LogAppendTime => self.header.max_timestamp,
            TimestampType::CreateTime => self.header.base_timestamp.wrapping_add(timestamp_delta),
        };
        Ok(Record {
            offset: self
                .header
                .base_offset
                .wrapping_add(i64::from(offset_delta)),
            offset_delta,
            timestamp,
            key,
            value,
            headers,
            header_count,
        })
    }
}

/// Reads a varint-length-prefixed byte string; length -1 is null.
fn read_bytes<'b>(cur: &mut &'b [u8]) -> Result<Option<&'b [u8]>, String> {
    let len = read_varint(cur).map_err(|e| e.to_string())?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
    if len > cur.len() {
        return Err(format!("length {len} exceeds the {} bytes left", cur.len()));
    }
    let (bytes, rest) = cur.split_at(len);
    *cur = rest;
    Ok(Some(bytes))
}

/// What [`scan`] learned from a well-formed records section.
pub(super) struct Scan {
    pub count: i32,
    pub last_delta: i32,
    pub max_timestamp_delta: i64,
    pub min_timestamp_delta: i64,
    pub has_null_key: bool,
}

/// Checks the framing of every record in one tight pass, without building `Record`s: record
/// lengths, varints, key/value/header bounds, strictly increasing offset deltas (exactly 0..n-1
/// when `contiguous`), and the record count. Returns `None` on any violation; the caller then
/// re-parses with [`RecordIter`] to report the precise error, so the common (valid) case pays
/// only for the walk.
pub(super) fn scan(data: &[u8], record_count: i32, contiguous: bool) -> Option<Scan> {
    let mut pos = 0usize;
    let mut out = Scan {
        count: 0,
        last_delta: -1,
        max_timestamp_delta: i64::MIN,
        min_timestamp_delta: i64::MAX,
        has_null_key: false,
    };
    while pos < data.len() {
        if out.count >= record_count {
            return None;
        }
        let len = usize::try_from(fast_varint(data, &mut pos)?).ok()?;
        let end = pos.checked_add(len).filter(|&e| e <= data.len())?;
        let rec = &data[..end];
        pos += 1; // attributes
        let ts = fast_varlong(rec, &mut pos)?;
        let delta = fast_varint(rec, &mut pos)?;
        if delta <= out.last_delta || (contiguous && delta != out.count) {
            return None;
        }
        let key_len = fast_varint(rec, &mut pos)?;
        out.has_null_key |= key_len == -1;
        skip_bytes(rec, &mut pos, key_len)?;
        let value_len = fast_varint(rec, &mut pos)?;
        skip_bytes(rec, &mut pos, value_len)?;
        let headers = fast_varint(rec, &mut pos)?;
        if headers < 0 {
            return None;
        }
        for _ in 0..headers {
            let k = fast_varint(rec, &mut pos)?;
            if k < 0 {
                return None;
            }
            skip_bytes(rec, &mut pos, k)?;
            let v = fast_varint(rec, &mut pos)?;
            skip_bytes(rec, &mut pos, v)?;
        }
        if pos != end {
            return None;
        }
        out.max_timestamp_delta = out.max_timestamp_delta.max(ts);
        out.min_timestamp_delta = out.min_timestamp_delta.min(ts);
        out.last_delta = delta;
        out.count += 1;
    }
    (out.count == record_count).then_some(out)
}

#[inline(always)]
fn skip_bytes(buf: &[u8], pos: &mut usize, len: i32) -> Option<()> {
    if len == -1 {
        return Some(());
    }
    let len = usize::try_from(len).ok()?;
    let end = pos.checked_add(len).filter(|&e| e <= buf.len())?;
    *pos = end;
    Some(())
}

#[inline(always)]
fn fast_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(((first >> 1) as i32) ^ -((first & 1) as i32));
    }
    // Two bytes cover lengths up to 8 KiB, the common case for keys and values.
    if let Some(&second) = buf.get(*pos + 1)
        && second < 0x80
    {
        *pos += 2;
        let raw = u32::from(first & 0x7f) | (u32::from(second) << 7);
        return Some(((raw >> 1) as i32) ^ -((raw & 1) as i32));
    }
    let mut cur = buf.get(*pos..)?;
    let before = cur.len();
    let v = read_varint(&mut cur).ok()?;
    *pos += before - cur.len();
    Some(v)
}

#[inline(always)]
fn fast_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(((first >> 1) as i64) ^ -((first & 1) as i64));
    }
    if let Some(&second) = buf.get(*pos + 1)
        && second < 0x80
    {
        *pos += 2;
        let raw = u64::from(first & 0x7f) | (u64::from(second) << 7);
        return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
    }
    let mut cur = buf.get(*pos..)?;
    let before = cur.len();
    let v = read_varlong(&mut cur).ok()?;
    *pos += before - cur.len();
    Some(v)
}
