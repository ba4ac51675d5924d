//! Why a record is not counted: the dead-letter reasons, shared by validation
//! ([`crate::validate`]) and the wire views ([`crate::wire`]), which both produce them.

/// Why an event was rejected. `code()` is a bounded label for metrics and headers;
/// `Display` is the human explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("payload is not a protobuf OrderEvent: {0}")]
    Undecodable(String),
    #[error("event_id is missing")]
    MissingEventId,
    #[error("order_id is missing")]
    MissingOrderId,
    #[error("merchant_id is missing")]
    MissingMerchantId,
    #[error("event_time is missing")]
    MissingEventTime,
    #[error("event_time is out of range ({seconds}s, {nanos}ns)")]
    InvalidEventTime { seconds: i64, nanos: i32 },
    #[error("type is ORDER_EVENT_TYPE_UNSPECIFIED")]
    UnspecifiedType,
    #[error("type {0} is not a known OrderEventType")]
    UnknownType(i32),
    #[error("amount_minor is negative ({0})")]
    NegativeAmount(i64),
    #[error("currency `{0}` is not a three-letter ISO 4217 code")]
    BadCurrency(String),
    #[error("event_time is {ahead_ms} ms ahead of the enricher's clock (at most {max_ms} ms allowed)")]
    EventTimeInFuture { ahead_ms: i64, max_ms: i64 },
    #[error("amount_minor {amount} is above the maximum of {max}")]
    AmountTooLarge { amount: i64, max: i64 },
    #[error("the enriched record has no event")]
    MissingEvent,
    #[error("currency `{0}` is not an ISO 4217 code orderflow accepts")]
    UnknownCurrency(String),
    #[error("the record is {bytes} bytes, above the maximum of {max}")]
    EventTooLarge { bytes: usize, max: usize },
    #[error("{field} is {bytes} bytes, above the maximum of {max}")]
    IdTooLong { field: &'static str, bytes: usize, max: usize },
    /// The aggregator's dedup memory for the partition holds its most ids
    /// (`--dedup-max-ids`): the event could be neither confirmed nor ruled out as a
    /// duplicate later, so it is not counted.
    #[error("the partition's dedup memory holds its most event ids ({max_ids}); replay this event once the flood of ids has passed")]
    DedupMemoryFull { max_ids: usize },
    /// The event's window already holds the most (region, tier, currency) keys
    /// (`--max-keys-per-window`) and the event's key is new.
    #[error("its window already holds the most keys ({max}); the merchant table or currencies produce too many distinct (region, tier, currency) keys")]
    TooManyKeys { max: usize },
    /// A record derived from the event (the enriched record, say) was refused by the
    /// broker for good, e.g. too large for the topic.
    #[error("{0}")]
    RefusedByBroker(String),
}

impl InvalidReason {
    /// Every code, for describing metrics up front.
    pub const CODES: &'static [&'static str] = &[
        "undecodable",
        "missing_event_id",
        "missing_order_id",
        "missing_merchant_id",
        "missing_event_time",
        "invalid_event_time",
        "unspecified_type",
        "unknown_type",
        "negative_amount",
        "bad_currency",
        "refused_by_broker",
        "event_time_in_future",
        "amount_too_large",
        "missing_event",
        "event_too_large",
        "unknown_currency",
        "dedup_memory_full",
        "too_many_keys",
        "id_too_long",
    ];

    /// A short, stable, bounded identifier of the reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::MissingEventId => "missing_event_id",
            Self::MissingOrderId => "missing_order_id",
            Self::MissingMerchantId => "missing_merchant_id",
            Self::MissingEventTime => "missing_event_time",
            Self::InvalidEventTime { .. } => "invalid_event_time",
            Self::UnspecifiedType => "unspecified_type",
            Self::UnknownType(_) => "unknown_type",
            Self::NegativeAmount(_) => "negative_amount",
            Self::BadCurrency(_) => "bad_currency",
            Self::RefusedByBroker(_) => "refused_by_broker",
            Self::IdTooLong { .. } => "id_too_long",
            Self::DedupMemoryFull { .. } => "dedup_memory_full",
            Self::TooManyKeys { .. } => "too_many_keys",
            Self::EventTimeInFuture { .. } => "event_time_in_future",
            Self::AmountTooLarge { .. } => "amount_too_large",
            Self::MissingEvent => "missing_event",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::UnknownCurrency(_) => "unknown_currency",
        }
    }
}
