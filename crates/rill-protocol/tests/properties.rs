//! Property tests: what the batch format must guarantee for any input.

use proptest::prelude::*;
use rill_protocol::record_batch::{
    BatchError, Compression, RecordBatch, RecordBatchBuilder, RecordHeader, ValidationOptions,
    batches, set_base_offset, set_partition_leader_epoch,
};

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn bytes_opt(max: usize) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..max))
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        // Timestamps spread far apart, including negative deltas from the first record.
        -1_000_000_000_000i64..4_000_000_000_000i64,
        bytes_opt(40),
        bytes_opt(300),
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..12), bytes_opt(20)),
            0..4,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| Rec {
            timestamp,
            key,
            value,
            headers,
        })
}

fn codec() -> impl Strategy<Value = Compression> {
    prop::sample::select(Compression::ALL.to_vec())
}

fn build(codec: Compression, recs: &[Rec]) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(codec).producer(7, 1, 100);
    for r in recs {
        let headers: Vec<RecordHeader<'_>> = r
            .headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: k,
                value: v.as_deref(),
            })
            .collect();
        b.append(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
    }
    b.build().unwrap().to_vec()
}

fn producer_opts() -> ValidationOptions {
    ValidationOptions {
        producer_batch: true,
        ..Default::default()
    }
}

fn decode(bytes: &[u8]) -> Result<Vec<Rec>, BatchError> {
    let batch = RecordBatch::parse(bytes)?;
    batch.validate(&producer_opts())?;
    let records = batch.records(1 << 24)?;
    records
        .iter()
        .map(|r| {
            let r = r?;
            Ok(Rec {
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r
                    .headers()
                    .map(|h| (h.key.to_vec(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn build_then_decode_round_trips(codec in codec(), recs in prop::collection::vec(rec(), 1..30)) {
        let bytes = build(codec, &recs);
        prop_assert_eq!(decode(&bytes)?, recs.clone());
        let header = *RecordBatch::parse(&bytes)?.header();
        prop_assert_eq!(header.compression()?, codec);
        prop_assert_eq!(header.record_count as usize, recs.len());
        prop_assert_eq!(header.last_offset_delta as usize, recs.len() - 1);
        prop_assert_eq!(header.max_timestamp, recs.iter().map(|r| r.timestamp).max().unwrap());
        prop_assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (7, 1, 100));
    }

    #[test]
    fn patching_offset_and_epoch_keeps_the_crc_valid(
        codec in codec(),
        recs in prop::collection::vec(rec(), 1..5),
        base in 0i64..i64::MAX / 2,
        epoch in 0i32..i32::MAX,
    ) {
        let mut bytes = build(codec, &recs);
        set_base_offset(&mut bytes, base);
        set_partition_leader_epoch(&mut bytes, epoch);
        let batch = RecordBatch::parse(&bytes)?;
        batch.validate(&producer_opts())?;
        prop_assert_eq!(batch.header().base_offset, base);
        prop_assert_eq!(batch.header().partition_leader_epoch, epoch);
        let first = batch.records(1 << 24)?.iter().next().unwrap()?.offset;
        prop_assert_eq!(first, base);
    }

    #[test]
    fn any_flipped_bit_in_the_crc_range_is_detected(
        codec in codec(),
        recs in prop::collection::vec(rec(), 1..8),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = build(codec, &recs);
        // The CRC field itself and everything it covers (attributes to the end).
        let i = 17 + pos.index(bytes.len() - 17);
        bytes[i] ^= 1 << bit;
        let result = RecordBatch::parse(&bytes).and_then(|b| b.validate(&producer_opts()));
        prop_assert!(result.is_err(), "flip at byte {} bit {} went unnoticed", i, bit);
    }

    #[test]
    fn any_truncation_is_an_error(
        codec in codec(),
        recs in prop::collection::vec(rec(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = build(codec, &recs);
        let cut = cut.index(bytes.len());
        let is_truncated = matches!(RecordBatch::parse(&bytes[..cut]), Err(BatchError::Truncated { .. }));
        prop_assert!(is_truncated);
        let all: Vec<_> = batches(&bytes[..cut]).collect();
        prop_assert!(cut == 0 || all.last().is_some_and(|r| r.is_err()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..600), big_len: bool) {
        if bytes.len() > 17 {
            bytes[16] = 2; // get past the magic check more often
            if big_len {
                bytes[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
            }
        }
        for batch in batches(&bytes).flatten() {
            let _ = batch.validate(&ValidationOptions::default());
            if let Ok(records) = batch.records(1 << 20) {
                for r in records.iter().flatten() {
                    let _ = r.headers().count();
                }
            }
        }
    }
}

#[test]
fn a_huge_length_field_is_an_error_not_an_allocation() {
    let mut bytes = build(
        Compression::None,
        &[Rec {
            timestamp: 1,
            key: None,
            value: Some(vec![1; 10]),
            headers: vec![],
        }],
    );
    bytes[8..12].copy_from_slice(&(2_000_000_000i32).to_be_bytes());
    assert!(matches!(
        RecordBatch::parse(&bytes),
        Err(BatchError::Truncated {
            needed: 2_000_000_012,
            ..
        })
    ));
}

#[test]
fn a_record_length_past_the_batch_is_rejected() {
    // Forge a record claiming 1 GiB, then fix the CRC so only the record check can catch it.
    let mut bytes = build(
        Compression::None,
        &[Rec {
            timestamp: 1,
            key: None,
            value: Some(vec![1; 10]),
            headers: vec![],
        }],
    );
    bytes[61..66].copy_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x08]);
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    let err = RecordBatch::parse(&bytes)
        .unwrap()
        .validate(&ValidationOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, BatchError::InvalidRecord { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn producer_batches_must_number_records_from_zero() {
    let mut b = RecordBatchBuilder::new(Compression::None);
    b.append_with_offset_delta(0, 1, Some(b"k"), Some(b"v"), &[])
        .unwrap();
    b.append_with_offset_delta(5, 2, Some(b"k"), Some(b"v"), &[])
        .unwrap();
    let bytes = b.build().unwrap();
    let batch = RecordBatch::parse(&bytes).unwrap();
    // A compacted batch with gaps is fine in general ...
    batch.validate(&ValidationOptions::default()).unwrap();
    // ... but not from a producer.
    assert!(matches!(
        batch.validate(&producer_opts()),
        Err(BatchError::OffsetDeltaNotContiguous {
            index: 1,
            delta: 5,
            ..
        })
    ));
}

#[test]
fn record_count_mismatch_is_reported() {
    let mut bytes = build(
        Compression::None,
        &vec![
            Rec {
                timestamp: 1,
                key: None,
                value: None,
                headers: vec![]
            };
            3
        ],
    );
    bytes[57..61].copy_from_slice(&2i32.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    let err = RecordBatch::parse(&bytes)
        .unwrap()
        .validate(&ValidationOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, BatchError::RecordCountMismatch { header: 2, .. }),
        "{err}"
    );
}

#[test]
fn bad_magic_is_reported() {
    let mut bytes = build(
        Compression::None,
        &[Rec {
            timestamp: 1,
            key: None,
            value: None,
            headers: vec![],
        }],
    );
    bytes[16] = 1;
    assert_eq!(
        RecordBatch::parse(&bytes).unwrap_err(),
        BatchError::BadMagic(1)
    );
}

#[test]
fn producer_state_stamped_after_build_is_covered_by_the_crc() {
    use rill_protocol::record_batch::{RecordBatch, set_producer_state};
    let mut b = rill_protocol::record_batch::RecordBatchBuilder::new(Compression::Lz4);
    b.append(1, Some(b"k"), Some(b"v"), &[]);
    b.append(2, None, Some(b"w"), &[]);
    let mut bytes = b.build().unwrap().to_vec();
    set_producer_state(&mut bytes, 42, 3, 1000);
    let batch = RecordBatch::parse(&bytes).unwrap();
    batch.verify_crc().unwrap();
    let h = batch.header();
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (42, 3, 1000)
    );
    bytes[44] ^= 1; // the producer id is inside the CRC
    assert!(RecordBatch::parse(&bytes).unwrap().verify_crc().is_err());
}
