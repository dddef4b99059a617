//! Kafka's zig-zag varints (the protobuf encoding Kafka borrowed for record fields).
//!
//! Readers take a cursor (`&mut &[u8]`) and never read past it: a truncated or over-long varint is
//! an error, never a panic.

use super::BatchError;

/// Reads a zig-zag varint that must fit an `i32` (at most 5 bytes).
#[inline]
pub fn read_varint(buf: &mut &[u8]) -> Result<i32, BatchError> {
    let raw = read_unsigned(buf, 5)?;
    let raw = u32::try_from(raw).map_err(|_| BatchError::VarintOverflow)?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zig-zag varlong (at most 10 bytes).
#[inline]
pub fn read_varlong(buf: &mut &[u8]) -> Result<i64, BatchError> {
    let raw = read_unsigned(buf, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[inline]
fn read_unsigned(buf: &mut &[u8], max_bytes: usize) -> Result<u64, BatchError> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(BatchError::TruncatedVarint);
        };
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(BatchError::VarintOverflow)
}

/// Appends `value` as a zig-zag varint.
#[inline]
pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned(out, ((value << 1) ^ (value >> 31)) as u32 as u64);
}

/// Appends `value` as a zig-zag varlong.
#[inline]
pub fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

#[inline]
fn write_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Encoded size of `value` as a zig-zag varint.
#[inline]
pub fn varint_size(value: i32) -> usize {
    let v = ((value << 1) ^ (value >> 31)) as u32;
    (32 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Encoded size of `value` as a zig-zag varlong.
#[inline]
pub fn varlong_size(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // Values from Kafka's ByteUtilsTest.
        let mut out = Vec::new();
        write_varint(&mut out, 0);
        write_varint(&mut out, -1);
        write_varint(&mut out, 1);
        write_varint(&mut out, 63);
        write_varint(&mut out, -64);
        write_varint(&mut out, 64);
        assert_eq!(out, [0x00, 0x01, 0x02, 0x7e, 0x7f, 0x80, 0x01]);
    }

    #[test]
    fn truncated_and_overlong() {
        let mut b: &[u8] = &[0x80, 0x80];
        assert!(matches!(
            read_varint(&mut b),
            Err(BatchError::TruncatedVarint)
        ));
        let mut b: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(
            read_varint(&mut b),
            Err(BatchError::VarintOverflow)
        ));
        // Five bytes whose value exceeds u32.
        let mut b: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            read_varint(&mut b),
            Err(BatchError::VarintOverflow)
        ));
    }

    proptest! {
        #[test]
        fn varint_round_trip(v: i32) {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_size(v));
            let mut cur = out.as_slice();
            prop_assert_eq!(read_varint(&mut cur).unwrap(), v);
            prop_assert!(cur.is_empty());
        }

        #[test]
        fn varlong_round_trip(v: i64) {
            let mut out = Vec::new();
            write_varlong(&mut out, v);
            prop_assert_eq!(out.len(), varlong_size(v));
            let mut cur = out.as_slice();
            prop_assert_eq!(read_varlong(&mut cur).unwrap(), v);
            prop_assert!(cur.is_empty());
        }
    }
}
