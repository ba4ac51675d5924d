//! The start-up probe: whether the brokers can be used, and if not, why (TLS, SASL, or
//! no answer).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaConfig;
use crate::{Error, Result};

impl KafkaConfig {
    /// Fails when the brokers cannot be used, within `connect_timeout`:
    /// [`Error::Tls`] as soon as a TLS handshake fails (an untrusted certificate, say),
    /// [`Error::Authentication`] as soon as the SASL login is refused, and
    /// [`Error::Unreachable`], naming the brokers and how to change them, when no broker
    /// answers a metadata request in time. Services call it once at start, after
    /// checking their local inputs.
    pub fn check_reachable(&self) -> Result<()> {
        let probe = ConnectProbe::default();
        let client: BaseConsumer<ConnectProbe> = self.config(&[])?.create_with_context(probe.clone())?;
        let started = Instant::now();
        // Short attempts first, so that a refusal is reported at once; longer ones
        // after, so that a slow link still gets its answer in time.
        let mut attempt = Duration::from_millis(250);
        loop {
            let left = self.connect_timeout.saturating_sub(started.elapsed());
            let error = match client.fetch_metadata(None, left.min(attempt)) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            attempt = (attempt * 2).min(Duration::from_secs(2));
            // Serves what librdkafka queued meanwhile (log lines, and errors such as a
            // failed TLS handshake or SASL login, which reach the probe): `poll` returns
            // `None` once it has waited its time with nothing but log lines to serve.
            for _ in 0..1000 {
                if client.poll(Duration::from_millis(20)).is_none() {
                    break;
                }
            }
            let last = probe.last();
            match last {
                Some((ConnectFailure::Tls, reason)) => return Err(Error::Tls { brokers: self.brokers.clone(), reason }),
                Some((ConnectFailure::Authentication, reason)) => {
                    return Err(Error::Authentication {
                        brokers: self.brokers.clone(),
                        username: self.security.sasl_username.clone().unwrap_or_default(),
                        reason,
                    })
                }
                Some((ConnectFailure::Other, _)) | None if started.elapsed() < self.connect_timeout => {}
                last => {
                    let last = last.map(|(_, reason)| format!("; last broker error: {reason}")).unwrap_or_default();
                    return Err(Error::Unreachable {
                        brokers: self.brokers.clone(),
                        waited: self.connect_timeout,
                        cause: format!("{}{last}", crate::kafka_cause(&error)),
                    });
                }
            }
        }
    }
}

/// What kind of trouble librdkafka last reported about the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectFailure {
    /// A TLS handshake failed: an untrusted or mismatched certificate, or a broker not
    /// speaking TLS.
    Tls,
    /// The SASL login was refused.
    Authentication,
    /// Anything else (a refused connection, a broker going away).
    Other,
}

/// A client context that keeps the most telling error librdkafka reported about the
/// brokers, so that [`KafkaConfig::check_reachable`] can say why they cannot be used
/// instead of only that they did not answer. A TLS or SASL failure is never replaced
/// by a later, vaguer error ("all brokers are down").
#[derive(Debug, Clone, Default)]
struct ConnectProbe {
    last: Arc<Mutex<Option<(ConnectFailure, String)>>>,
}

impl ConnectProbe {
    fn last(&self) -> Option<(ConnectFailure, String)> {
        self.last.lock().expect("connect probe poisoned").clone()
    }
}

impl ClientContext for ConnectProbe {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "Broker error while connecting.");
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::SSL) => ConnectFailure::Tls,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => ConnectFailure::Authentication,
            Some(RDKafkaErrorCode::AllBrokersDown) => return,
            _ => ConnectFailure::Other,
        };
        let mut last = self.last.lock().expect("connect probe poisoned");
        if kind != ConnectFailure::Other || !matches!(*last, Some((ConnectFailure::Tls | ConnectFailure::Authentication, _))) {
            *last = Some((kind, reason.to_owned()));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ConnectProbe {}
