//! DescribeConfigs of topics as this broker applies them. The controllers know a topic's
//! overrides and the built-in defaults; what a topic without an override really gets is this
//! broker's own default (`log.retention.ms` for `retention.ms`, …), which only the broker knows.
//! Kafka answers DescribeConfigs from a broker for the same reason.

use std::time::Duration;

use rill_protocol::proto::{
    ConfigSource, DescribeConfigsRequest, DescribeConfigsResponse, DescribeConfigsResult,
};
use rill_storage::LogConfig;

use crate::network::BrokerService;

/// Replaces the built-in defaults in the controllers' answer by this broker's own where they
/// differ (source STATIC_BROKER_CONFIG), and names every value's source.
pub(crate) fn apply_broker_defaults(result: &mut DescribeConfigsResult, defaults: &LogConfig) {
    for c in &mut result.configs {
        let source = if !c.is_default {
            ConfigSource::DynamicTopicConfig
        } else {
            match defaults.get(&c.name) {
                Some(v) if v != c.value => {
                    c.value = v;
                    ConfigSource::StaticBrokerConfig
                }
                _ => ConfigSource::DefaultConfig,
            }
        };
        c.source = source as i32;
    }
}

/// Forwards to the controllers and answers with this broker's defaults applied.
pub async fn handle(
    svc: &BrokerService,
    req: DescribeConfigsRequest,
) -> Result<DescribeConfigsResponse, tonic::Status> {
    let started = std::time::Instant::now();
    let Some(controllers) = &svc.controller_client else {
        return Err(tonic::Status::unavailable(
            "this broker has no connection to the controllers",
        ));
    };
    // Well within a client's own request timeout (30 s by default), so that a client hears
    // why (the controllers did not answer) rather than its own timeout; as the Kafka
    // listener's admin requests.
    let patience = svc
        .request_timeout
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    let answer = controllers
        .call(patience, |mut c| {
            let req = req.clone();
            async move { c.describe_configs(req).await }
        })
        .await
        .map(|mut answer| {
            let defaults = &svc.rm.config().topic_defaults;
            for r in &mut answer.results {
                apply_broker_defaults(r, defaults);
            }
            answer
        });
    svc.metrics.observe(
        "DescribeConfigs",
        started.elapsed().as_secs_f64(),
        answer
            .as_ref()
            .is_ok_and(|a| a.results.iter().all(|r| r.error_code == 0)),
    );
    answer.map_err(tonic::Status::from)
}
