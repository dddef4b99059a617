//! `ClusterClient` against fake brokers that disagree: one keeps an old view of a partition (a
//! leader cut off from the controllers: itself, at leader epoch 0), the other knows the new
//! leader (epoch 1). Once the client has seen the newer epoch it never goes back to the deposed
//! leader, whichever broker it asks, and after a request to the deposed leader failed it asks
//! the other broker first (defect 3 of docs/reliability.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rill_protocol::client::{ClusterClient, LeaderInfo};
use rill_protocol::proto::broker_server::{Broker, BrokerServer};
use rill_protocol::proto::*;
use tonic::{Request, Response, Status};

struct FakeBroker {
    /// This broker's view of partition 0 of `t`: (leader, leader epoch).
    view: (i32, i32),
    /// Both brokers: (id, port).
    brokers: Arc<std::sync::Mutex<Vec<(i32, u16)>>>,
    asked: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Broker for FakeBroker {
    async fn produce(
        &self,
        _: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_offsets(
        &self,
        _: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn metadata(
        &self,
        _: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let brokers = self
            .brokers
            .lock()
            .unwrap()
            .iter()
            .map(|(id, port)| BrokerDescription {
                node_id: *id,
                endpoints: vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: u32::from(*port),
                }],
                ..Default::default()
            })
            .collect();
        Ok(Response::new(MetadataResponse {
            brokers,
            topics: vec![TopicMetadata {
                name: "t".into(),
                topic_id: "the-topic".into(),
                partitions: vec![PartitionMetadata {
                    index: 0,
                    leader_id: self.view.0,
                    leader_epoch: self.view.1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
    async fn describe_configs(
        &self,
        _: tonic::Request<DescribeConfigsRequest>,
    ) -> Result<tonic::Response<DescribeConfigsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

async fn serve(broker: FakeBroker) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BrokerServer::new(broker))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_an_old_view_cannot_send_the_client_back_to_the_deposed_leader() {
    let brokers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stale_asked, fresh_asked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stale = serve(FakeBroker {
        view: (1, 0),
        brokers: Arc::clone(&brokers),
        asked: Arc::clone(&stale_asked),
    })
    .await;
    let fresh = serve(FakeBroker {
        view: (2, 1),
        brokers: Arc::clone(&brokers),
        asked: Arc::clone(&fresh_asked),
    })
    .await;
    *brokers.lock().unwrap() = vec![(1, stale), (2, fresh)];

    // Bootstrapped from the deposed leader: its old view is all the client knows at first.
    let client =
        ClusterClient::new(&[format!("127.0.0.1:{stale}")], Duration::from_secs(5)).unwrap();
    let p = client.partitions("t").await.unwrap();
    assert_eq!(
        p[0],
        LeaderInfo {
            leader: 1,
            epoch: 0
        }
    );

    // A produce to broker 1 timed out: the next refresh asks broker 2 first.
    client.broker_failed(1);
    client.invalidate("t");
    let p = client.partitions("t").await.unwrap();
    assert_eq!(
        p[0],
        LeaderInfo {
            leader: 2,
            epoch: 1
        },
        "the other broker was asked"
    );

    // The broker that failed stays last while the other answers.
    for _ in 0..5 {
        client.invalidate("t");
        client.partitions("t").await.unwrap();
    }
    assert_eq!(stale_asked.load(Ordering::SeqCst), 1);
    assert_eq!(fresh_asked.load(Ordering::SeqCst), 6);

    // Asked again — the other broker failed this time — the deposed leader's old view does not
    // replace the newer leader the client knows.
    client.broker_failed(2);
    for _ in 0..5 {
        client.invalidate("t");
        let p = client.partitions("t").await.unwrap();
        assert_eq!(
            p[0],
            LeaderInfo {
                leader: 2,
                epoch: 1
            }
        );
    }
    assert_eq!(
        stale_asked.load(Ordering::SeqCst),
        6,
        "the stale broker answered"
    );
}
