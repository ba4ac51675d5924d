//! Kafka clients for every subcommand, one concern a file:
//! - `config`: [`KafkaConfig`], where the brokers are, how to talk to them securely (TLS,
//!   SASL), and librdkafka settings passed through.
//! - `connect`: [`KafkaConfig::check_reachable`], the start-up probe that says why the
//!   brokers cannot be used (TLS, SASL, no answer).
//! - `clients`: the producer settings, the [`Producer`] every stage writes with, and the
//!   builders of producers, group consumers and readers.
//! - `admin`: metadata and group queries: [`partition_count`], [`group_positions`].
//! - `reader`: [`TopicReader`] (a whole topic, outside any group), [`header`] and
//!   [`is_fatal_read`].
//! - `consumer`: [`GroupConsumerContext`], the context of group consumers (revoked
//!   partitions, rebalances, joining, lag), and [`recv_batch`].
//!
//! Everything public is re-exported here, as `orderflow_runtime::kafka::X`.
//!
//! Secrets (passwords) never appear in `Debug` output, in errors or in logs: they are
//! [`Secret`]s, and the values of librdkafka options that hold one are redacted too.

mod admin;
mod clients;
mod config;
mod connect;
mod consumer;
mod reader;

pub use admin::{group_positions, partition_count, GroupPosition};
pub use clients::{count_error, error_code_name, producer_settings, ClientMetrics, Producer, PRODUCER_SETTINGS, STAGE_PRODUCER_SETTINGS};
pub use config::{
    is_secret_option, redact_option, KafkaConfig, SaslMechanism, Secret, Security, SecurityProtocol, DEFAULT_BROKERS,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_SASL_MECHANISM, DEFAULT_SECURITY_PROTOCOL,
};
pub use consumer::{record_bytes, recv_batch, GroupConsumerContext};
pub use reader::{header, is_fatal_read, TopicReader};
