//! InitProducerId with real processes: producer ids are unique and increasing across calls and
//! across the death of the active controller (blocks reserved through the metadata log), epochs
//! bump, and transactional ids are refused.

mod common;

use std::time::Duration;

use common::*;
use rill_protocol::ErrorCode;
use rill_protocol::proto::*;

async fn init(q: &Quorum, request: InitProducerIdRequest) -> InitProducerIdResponse {
    q.call(0, move |mut c| {
        let request = request.clone();
        async move { c.init_producer_id(request).await }
    })
    .await
    .expect("InitProducerId answered")
}

async fn new_id(q: &Quorum) -> (i64, i32) {
    let r = init(q, InitProducerIdRequest::default()).await;
    assert_eq!(r.error_code, ErrorCode::None as i32, "{}", r.error_message);
    (r.producer_id, r.producer_epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_unique_and_increasing_across_a_leader_kill() {
    let mut q = Quorum::start(3, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (id, epoch) = new_id(&q).await;
        assert_eq!(epoch, 0);
        ids.push(id);
    }
    // The reservation is in the committed metadata, so every controller knows it.
    let image = image_of(&q.image(leader).await);
    assert!(image.next_producer_id_block_start > *ids.last().unwrap());

    q.kill(leader);
    let new_leader = q.leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    for _ in 0..5 {
        ids.push(new_id(&q).await.0);
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must be unique and increasing across the failover: {ids:?}"
    );
    let image = image_of(&q.image(new_leader).await);
    assert!(image.next_producer_id_block_start > *ids.last().unwrap());

    // The old leader comes back and catches up; ids keep increasing.
    q.spawn(leader);
    ids.push(new_id(&q).await.0);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_bump_and_transactions_are_refused() {
    let q = Quorum::start(1, &[]);
    q.leader(Duration::from_secs(10)).await;
    let (id, _) = new_id(&q).await;
    let bumped = init(
        &q,
        InitProducerIdRequest {
            producer_id: Some(id),
            producer_epoch: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        bumped.error_code,
        ErrorCode::None as i32,
        "{}",
        bumped.error_message
    );
    assert_eq!((bumped.producer_id, bumped.producer_epoch), (id, 1));

    let refused = init(
        &q,
        InitProducerIdRequest {
            transactional_id: Some("orders-tx".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(refused.error_code, ErrorCode::InvalidRequest as i32);
    assert!(
        refused
            .error_message
            .contains("transactions are not supported"),
        "{}",
        refused.error_message
    );
    assert_eq!(refused.producer_id, -1);

    let unknown = init(
        &q,
        InitProducerIdRequest {
            producer_id: Some(1 << 40),
            producer_epoch: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        unknown.error_code,
        ErrorCode::InvalidProducerIdMapping as i32
    );
}
