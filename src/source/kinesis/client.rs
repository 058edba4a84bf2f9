//! The Kinesis client of a source and its preflight: credentials from the
//! config or the standard AWS chain, the endpoint override, and a first
//! `ListShards` that names the config key at fault when it fails.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_kinesis::config::{Credentials, ProvideCredentials, Region};
use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;

use crate::config::KinesisSourceConfig;

/// How long the preflight waits for the stream to answer.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);
/// Region when neither the config nor the AWS chain names one.
const FALLBACK_REGION: &str = "us-east-1";

/// Errors starting a Kinesis source, each naming the config key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct KinesisSourceError {
    /// Dotted config key, e.g. `sources[1].endpoint`.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// Builds the client for `config` (the `sources[index]` entry).
pub async fn build(
    config: &KinesisSourceConfig,
    index: usize,
) -> Result<Client, KinesisSourceError> {
    let key = |name: &str| format!("sources[{index}].{name}");
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        loader =
            loader.credentials_provider(Credentials::new(id, secret, None, None, "sluice-config"));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_kinesis::config::Builder::from(&shared);
    if shared.region().is_none() {
        builder = builder.region(Region::new(FALLBACK_REGION));
    }
    let provider = shared.credentials_provider().ok_or_else(|| KinesisSourceError {
        key: key("access_key_id"),
        reason: "no AWS credentials: set access_key_id and secret_access_key, or provide them through the AWS chain (AWS_ACCESS_KEY_ID, a profile, a web identity, instance metadata)".into(),
    })?;
    if let Err(error) = provider.provide_credentials().await {
        return Err(KinesisSourceError {
            key: key("access_key_id"),
            reason: format!(
                "no AWS credentials found ({error}): set access_key_id and secret_access_key, or provide them through the AWS chain"
            ),
        });
    }
    Ok(Client::from_conf(builder.build()))
}

/// Every shard of `stream`, open and closed, following pagination.
pub async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Shard>, String> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let request = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = request
            .send()
            .await
            .map_err(|e| aws_sdk_kinesis::error::DisplayErrorContext(e).to_string())?;
        shards.extend(page.shards().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(shards),
        }
    }
}

/// Checks that the stream answers, naming the key to fix when it does not.
pub async fn preflight(
    client: &Client,
    config: &KinesisSourceConfig,
    index: usize,
) -> Result<(), KinesisSourceError> {
    let listed = tokio::time::timeout(PREFLIGHT_TIMEOUT, list_shards(client, &config.stream)).await;
    let endpoint = config
        .endpoint
        .as_deref()
        .unwrap_or("the regional AWS endpoint");
    match listed {
        Ok(Ok(_)) => Ok(()),
        Err(_) => Err(KinesisSourceError {
            key: format!("sources[{index}].endpoint"),
            reason: format!(
                "{endpoint} did not answer within {}s",
                PREFLIGHT_TIMEOUT.as_secs()
            ),
        }),
        Ok(Err(error)) if error.contains("ResourceNotFound") => Err(KinesisSourceError {
            key: format!("sources[{index}].stream"),
            reason: format!(
                "stream `{}` not found at {endpoint}: {error}",
                config.stream
            ),
        }),
        Ok(Err(error)) => Err(KinesisSourceError {
            key: format!("sources[{index}].endpoint"),
            reason: format!(
                "listing the shards of `{}` at {endpoint} failed: {error}",
                config.stream
            ),
        }),
    }
}
