//! Topic administration through a real quorum: every bad input gets its precise error and
//! leaves the metadata unchanged.

mod common;

use std::time::Duration;

use common::*;
use rill_protocol::ErrorCode;
use rill_protocol::proto::*;

async fn offset(q: &Quorum) -> i64 {
    q.call(0, |mut c| async move {
        c.describe_cluster(DescribeClusterRequest {}).await
    })
    .await
    .unwrap()
    .metadata_offset
}

fn cfg(name: &str, value: &str) -> ConfigEntry {
    ConfigEntry {
        name: name.into(),
        value: Some(value.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors_and_changes_nothing() {
    let q = Quorum::start(1, &[]);
    q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    let _b2 = FakeBroker::start(&q, 2).await;
    create(&q, 0, vec![topic("existing", 1, 1)]).await;
    let before = offset(&q).await;
    let image_before = image_of(&q.image(0).await);

    let mut with_bad_config = topic("cfg", 1, 1);
    with_bad_config.configs = vec![cfg("retention.ms", "-7")];
    let mut with_unknown_config = topic("cfg2", 1, 1);
    with_unknown_config.configs = vec![cfg("retention.hours", "1")];
    let cases: Vec<(CreatableTopic, ErrorCode)> = vec![
        (topic("bad/name", 1, 1), ErrorCode::InvalidTopicException),
        (topic("..", 1, 1), ErrorCode::InvalidTopicException),
        (
            topic(&"x".repeat(250), 1, 1),
            ErrorCode::InvalidTopicException,
        ),
        (topic("zero", 0, 1), ErrorCode::InvalidPartitions),
        (
            topic("too-many-replicas", 1, 3),
            ErrorCode::InvalidReplicationFactor,
        ),
        (topic("existing", 1, 1), ErrorCode::TopicAlreadyExists),
        (with_bad_config, ErrorCode::InvalidConfig),
        (with_unknown_config, ErrorCode::InvalidConfig),
    ];
    for (t, code) in cases {
        let r = create(&q, 0, vec![t.clone()]).await;
        assert_eq!(
            r.topics[0].error_code,
            code as i32,
            "{}: {}",
            t.name.chars().take(20).collect::<String>(),
            r.topics[0].error_message
        );
        assert!(!r.topics[0].error_message.is_empty());
        if t.name == "cfg2" {
            // The message for an unknown config names every accepted one.
            for c in rill_storage::TOPIC_CONFIGS {
                assert!(
                    r.topics[0].error_message.contains(c.name),
                    "{} not listed: {}",
                    c.name,
                    r.topics[0].error_message
                );
            }
        }
    }
    // Validate-only succeeds without creating anything.
    let r = q
        .call(0, |mut c| async move {
            c.create_topics(CreateTopicsRequest {
                topics: vec![topic("dry-run", 3, 2)],
                validate_only: true,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, ErrorCode::None as i32);
    // Unknown topics for delete, partitions, configs.
    let r = q
        .call(0, |mut c| async move {
            c.delete_topics(DeleteTopicsRequest {
                names: vec!["nope".into()],
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(
        r.topics[0].error_code,
        ErrorCode::UnknownTopicOrPartition as i32
    );
    let r = q
        .call(0, |mut c| async move {
            c.create_partitions(CreatePartitionsRequest {
                topics: vec![CreatePartitionsTopic {
                    name: "existing".into(),
                    count: 1,
                }],
                validate_only: false,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, ErrorCode::InvalidPartitions as i32);
    for (name, value) in [
        ("retention.ms", "soon"),
        ("cleanup.policy", "shred"),
        ("no.such.key", "1"),
    ] {
        let r = alter_configs(&q, vec![topic_config("existing", name, 0, value)]).await;
        assert_eq!(
            r.results[0].error_code,
            ErrorCode::InvalidConfig as i32,
            "{name}={value}"
        );
    }
    // An operation rill does not know (Kafka's APPEND is 2) is refused, not taken for SET.
    let r = alter_configs(
        &q,
        vec![topic_config("existing", "retention.ms", 2, "1000")],
    )
    .await;
    assert_eq!(
        r.results[0].error_code,
        ErrorCode::InvalidRequest as i32,
        "{r:?}"
    );
    assert!(r.results[0].error_message.contains("operation"), "{r:?}");
    // One topic named twice: both refused (the second would undo what the first decided).
    let unclean = |value| topic_config("existing", "unclean.leader.election.enable", 0, value);
    let r = alter_configs(&q, vec![unclean("true"), unclean("false")]).await;
    assert_eq!(r.results.len(), 2);
    for res in &r.results {
        assert_eq!(res.error_code, ErrorCode::InvalidRequest as i32, "{r:?}");
        assert!(res.error_message.contains("more than once"), "{r:?}");
    }
    assert_eq!(offset(&q).await, before, "no record was committed");
    assert!(image_of(&q.image(0).await) == image_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_partitions_and_configs_round_trip() {
    let q = Quorum::start(1, &[]);
    q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    let mut t = topic("profiles", 2, 1);
    t.configs = vec![cfg("cleanup.policy", "compact")];
    let r = create(&q, 0, vec![t, topic("defaults", -1, -1)]).await;
    assert!(r.topics.iter().all(|t| t.error_code == 0), "{r:?}");
    assert_eq!(
        (r.topics[1].num_partitions, r.topics[1].replication_factor),
        (1, 1),
        "num.partitions and default.replication.factor apply"
    );
    let r = q
        .call(0, |mut c| async move {
            c.create_partitions(CreatePartitionsRequest {
                topics: vec![CreatePartitionsTopic {
                    name: "profiles".into(),
                    count: 5,
                }],
                validate_only: false,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0);
    let r = q
        .call(0, |mut c| async move {
            c.incremental_alter_configs(IncrementalAlterConfigsRequest {
                resources: vec![AlterConfigsResource {
                    topic: "profiles".into(),
                    configs: vec![
                        AlterableConfig {
                            name: "delete.retention.ms".into(),
                            operation: ConfigOperation::Set as i32,
                            value: Some("1000".into()),
                        },
                        AlterableConfig {
                            name: "cleanup.policy".into(),
                            operation: ConfigOperation::Delete as i32,
                            value: None,
                        },
                    ],
                    ..Default::default()
                }],
                validate_only: false,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.results[0].error_code, 0, "{r:?}");
    let d = q
        .call(0, |mut c| async move {
            c.describe_configs(DescribeConfigsRequest {
                topics: vec!["profiles".into()],
            })
            .await
        })
        .await
        .unwrap();
    let get = |name: &str| {
        d.results[0]
            .configs
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        (
            get("delete.retention.ms").value.as_str(),
            get("delete.retention.ms").is_default
        ),
        ("1000", false)
    );
    assert_eq!(
        (
            get("cleanup.policy").value.as_str(),
            get("cleanup.policy").is_default
        ),
        ("delete", true)
    );
    assert_eq!(
        image_of(&q.image(0).await).topics["profiles"]
            .partitions
            .len(),
        5
    );
    let r = q
        .call(0, |mut c| async move {
            c.delete_topics(DeleteTopicsRequest {
                names: vec!["profiles".into()],
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0);
    assert!(!image_of(&q.image(0).await).topics.contains_key("profiles"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_limit_is_configurable_and_enforced() {
    let q = Quorum::start(1, &["max.partitions.per.topic=10"]);
    q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    let r = create(&q, 0, vec![topic("big", 11, 1)]).await;
    assert_eq!(r.topics[0].error_code, ErrorCode::InvalidPartitions as i32);
    assert!(
        r.topics[0]
            .error_message
            .contains("max.partitions.per.topic = 10"),
        "{}",
        r.topics[0].error_message
    );
    assert_eq!(
        create(&q, 0, vec![topic("ok", 10, 1)]).await.topics[0].error_code,
        0
    );
    let r = q
        .call(0, |mut c| async move {
            c.create_partitions(CreatePartitionsRequest {
                topics: vec![CreatePartitionsTopic {
                    name: "ok".into(),
                    count: 12,
                }],
                validate_only: false,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, ErrorCode::InvalidPartitions as i32);
}
