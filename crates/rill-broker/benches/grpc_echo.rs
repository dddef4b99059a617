//! The loopback gRPC limit for produce-sized payloads: a tonic server whose Produce does no work
//! at all, driven like `rill perf produce` drives a broker (1 KiB records in 16 KiB batches, up
//! to 1 MiB per request, several requests in flight). `cargo bench -p rill-broker --bench grpc_echo`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_protocol::proto::broker_client::BrokerClient;
use rill_protocol::proto::broker_server::{Broker, BrokerServer};
use rill_protocol::proto::*;
use rill_protocol::record_batch::{Compression, RecordBatchBuilder};
use tonic::{Request, Response, Status};

struct Echo;

#[tonic::async_trait]
impl Broker for Echo {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(ProduceResponse {
            topics: r
                .topics
                .iter()
                .map(|t| TopicProduceResponse {
                    name: t.name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| PartitionProduceResponse {
                            index: p.index,
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn list_offsets(
        &self,
        _: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn metadata(
        &self,
        _: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn describe_configs(
        &self,
        _: tonic::Request<DescribeConfigsRequest>,
    ) -> Result<tonic::Response<DescribeConfigsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(BrokerServer::new(Echo).max_decoding_message_size(64 << 20))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        let mut b = RecordBatchBuilder::new(Compression::None);
        for i in 0..15 {
            b.append(i, None, Some(&[7u8; 1024]), &[]);
        }
        let batch = b.build().unwrap();
        for (label, batches_per_request) in [("16 KiB requests", 1usize), ("1 MiB requests", 64)] {
            let records: Bytes = batch
                .iter()
                .copied()
                .cycle()
                .take(batch.len() * batches_per_request)
                .collect::<Vec<u8>>()
                .into();
            let client = BrokerClient::connect(format!("http://{addr}"))
                .await
                .unwrap()
                .max_encoding_message_size(64 << 20);
            let start = Instant::now();
            let run_for = Duration::from_secs(4);
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let mut c = client.clone();
                let records = records.clone();
                tasks.push(tokio::spawn(async move {
                    let mut sent = 0usize;
                    while start.elapsed() < run_for {
                        let req = ProduceRequest {
                            acks: 1,
                            timeout_ms: 1000,
                            topics: vec![TopicProduceData {
                                name: "t".into(),
                                partitions: vec![PartitionProduceData {
                                    index: 0,
                                    records: records.clone(),
                                }],
                            }],
                        };
                        c.produce(req).await.unwrap();
                        sent += records.len();
                    }
                    sent
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            let mbps = total as f64 / start.elapsed().as_secs_f64() / (1024.0 * 1024.0);
            println!("gRPC echo, {label}, 4 in flight: {mbps:.0} MB/s");
        }
    });
}
