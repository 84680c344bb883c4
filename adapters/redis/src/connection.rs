//! Connections: a reconnecting multiplexed connection for ordinary commands, and dedicated
//! connections for blocking reads (a `BLOCK` would stall every command pipelined behind it).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use crate::RedisConfig;

pub(crate) async fn manager(config: &RedisConfig) -> redis::RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.response_timeout))
        .set_connection_timeout(Some(config.connection_timeout))
        .set_number_of_retries(6)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(config.client.clone(), cfg).await
}

/// A connection for one blocking read of up to `block`.
pub(crate) async fn blocking(
    config: &RedisConfig,
    block: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + config.response_timeout))
        .set_connection_timeout(Some(config.connection_timeout));
    config
        .client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}
