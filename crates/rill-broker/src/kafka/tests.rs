use super::*;

#[tokio::test]
async fn frames_are_bounded_and_complete() {
    let mut ok: &[u8] = &[0, 0, 0, 3, 1, 2, 3, 0, 0];
    assert_eq!(
        read_frame(&mut ok, 10).await.unwrap().as_deref(),
        Some(&[1u8, 2, 3][..])
    );
    let mut empty: &[u8] = &[];
    assert!(read_frame(&mut empty, 10).await.unwrap().is_none());
    let mut big: &[u8] = &[0, 0, 1, 0];
    assert!(matches!(
        read_frame(&mut big, 10).await,
        Err(KafkaError::FrameTooLarge { size: 256, max: 10 })
    ));
    let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        read_frame(&mut negative, 10).await,
        Err(KafkaError::FrameTooLarge { .. })
    ));
    let mut truncated: &[u8] = &[0, 0, 0, 5, 1, 2];
    assert!(matches!(
        read_frame(&mut truncated, 10).await,
        Err(KafkaError::Malformed(_))
    ));
}

#[test]
fn headers_of_unknown_apis_and_short_frames_are_malformed() {
    assert!(matches!(
        decode_header(Bytes::from_static(&[0, 18, 0])),
        Err(KafkaError::Malformed(_))
    ));
    assert!(matches!(
        decode_header(Bytes::from_static(&[
            0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0xff, 0xff
        ])),
        Err(KafkaError::Malformed(_))
    ));
    // ApiVersions v0: key 18, version 0, correlation id 7, null client id.
    let d = decode_header(Bytes::from_static(&[0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff])).unwrap();
    assert_eq!(d.key, ApiKey::ApiVersions);
    assert_eq!(d.header.correlation_id, 7);
    assert!(d.body.is_empty());
}

#[test]
fn api_versions_answer_round_trips() {
    use kafka_protocol::messages::ApiVersionsResponse;
    for version in 0..=3 {
        let framed = encode(
            ApiKey::ApiVersions,
            version,
            42,
            &apis::api_versions(apis::UNSUPPORTED_VERSION),
        )
        .unwrap();
        let len = i32::from_be_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
        assert_eq!(len, framed.len() - 4);
        let mut body = framed.slice(4..);
        // ApiVersions answers always use header v0.
        let header = ResponseHeader::decode(&mut body, 0).unwrap();
        assert_eq!(header.correlation_id, 42);
        let r = ApiVersionsResponse::decode(&mut body, version).unwrap();
        assert_eq!(r.error_code, 35);
        assert!(
            r.api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::Fetch as i16 && k.max_version == 12)
        );
    }
}
