//! Kafka's default partitioning: keyed records by murmur2(key) (so the same key lands on the same
//! partition number as with Kafka's Java client), keyless records by the sticky partitioner
//! (KIP-794, in the producer's `sticky_partition`): keyless records go to one partition for
//! about `batch.size` bytes, then move to another at a batch boundary.

/// Kafka's murmur2 hash (the variant in `org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors produced by an independent implementation (kafka-python's murmur2 and default
    /// partitioner), in testdata/murmur2.tsv.
    #[test]
    fn matches_kafka_for_every_reference_key() {
        let tsv = include_str!("../testdata/murmur2.tsv");
        let mut checked = 0;
        for line in tsv.lines().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            let key = hex::decode(cols[0]).unwrap();
            assert_eq!(
                murmur2(&key),
                cols[1].parse::<i32>().unwrap(),
                "key {}",
                cols[0]
            );
            assert_eq!(partition_for_key(&key, 6), cols[2].parse::<i32>().unwrap());
            assert_eq!(partition_for_key(&key, 12), cols[3].parse::<i32>().unwrap());
            assert_eq!(
                partition_for_key(&key, 100),
                cols[4].parse::<i32>().unwrap()
            );
            checked += 1;
        }
        assert_eq!(checked, 100);
    }
}
