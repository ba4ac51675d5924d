//! What ingest answers, without I/O: the judgement of each event (the enricher's own
//! check, then the storefront of the token), each event's result, the request's status
//! and the JSON bodies.

use orderflow_core::validate::{check_payload, Limits};
use orderflow_proto::v1::OrderEvent;
use serde::Serialize;

use crate::body::{Item, Unreadable};

/// An event that may be published: its key and its orders-topic payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The Kafka key, as `orderflow_producer::Publisher` keys it (`event_key`).
    pub key: String,
    pub payload: Vec<u8>,
    pub event_id: String,
}

/// Why one event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The event id, when the event shows one.
    pub event_id: Option<String>,
    /// A short, stable code: the enricher's dead-letter codes (`negative_amount`, ...),
    /// `invalid_json`, `foreign_storefront` or `refused_by_broker`.
    pub code: &'static str,
    /// What is wrong, in words.
    pub message: String,
    /// The HTTP status this event alone would get: 422 (invalid), 403 (another
    /// storefront's event).
    pub status: u16,
}

/// Judges one event of a request made with a token of `storefront`, at clock reading
/// `now_ms`: the enricher's check of the orders-topic record
/// ([`orderflow_core::validate::check_payload`], the very function the enricher runs),
/// then the storefront: an event whose `storefront_id` is set to another storefront's
/// is refused (403). An event without `storefront_id` is published as it is.
pub fn judge(item: Result<Item, Unreadable>, storefront: &str, limits: &Limits, now_ms: i64) -> Result<Candidate, Rejection> {
    let item = item.map_err(|u| Rejection { event_id: u.event_id, code: "invalid_json", message: u.message, status: 422 })?;
    let id_of = |e: &Option<OrderEvent>| e.as_ref().map(|e| e.event_id.clone()).filter(|id| !id.is_empty());
    let view = match check_payload(&item.payload, limits, now_ms) {
        Ok(view) => view,
        Err(reason) => {
            return Err(Rejection { event_id: id_of(&item.event), code: reason.code(), message: reason.to_string(), status: 422 })
        }
    };
    if !view.storefront_id.is_empty() && view.storefront_id != storefront {
        return Err(Rejection {
            event_id: Some(view.event_id.to_owned()),
            code: "foreign_storefront",
            message: format!("storefront_id `{}` is not the token's storefront `{storefront}`", view.storefront_id),
            status: 403,
        });
    }
    let event = match item.event {
        Some(e) => e,
        None => view.to_event(),
    };
    Ok(Candidate { key: orderflow_producer::event_key(&event).to_owned(), event_id: event.event_id, payload: item.payload })
}

/// One event's result, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResult {
    /// Position in the request (0-based; for JSON Lines, among non-blank lines).
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `accepted` (on the broker) or `rejected`.
    pub outcome: &'static str,
    /// 200 when accepted, else this event's own status (422, 403).
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl EventResult {
    pub fn accepted(index: usize, event_id: String) -> Self {
        Self { index, event_id: Some(event_id), outcome: "accepted", status: 200, code: None, message: None }
    }

    pub fn rejected(index: usize, r: Rejection) -> Self {
        Self { index, event_id: r.event_id, outcome: "rejected", status: r.status, code: Some(r.code), message: Some(r.message) }
    }

    /// The metric label of the reason (`none` when accepted).
    pub fn reason(&self) -> &'static str {
        self.code.unwrap_or("none")
    }
}

/// The answer to a request whose events were judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<EventResult>,
}

impl Answer {
    pub fn new(results: Vec<EventResult>) -> Self {
        let accepted = results.iter().filter(|r| r.outcome == "accepted").count();
        Self { accepted, rejected: results.len() - accepted, results }
    }

    /// The request's status: 200 when every event was accepted; 207 (Multi-Status) when
    /// some were and some were not; when none was, the events' own status if they all
    /// share one (403 for a batch of another storefront's events), else 422.
    pub fn status(&self) -> u16 {
        if self.rejected == 0 {
            return 200;
        }
        if self.accepted > 0 {
            return 207;
        }
        let first = self.results.first().map_or(422, |r| r.status);
        if self.results.iter().all(|r| r.status == first) {
            first
        } else {
            422
        }
    }
}

/// The body of a request refused whole (400, 401, 413, 415, 429, 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub error: RefusalDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalDetail {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { error: RefusalDetail { code, message: message.into() } }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_proto::v1::OrderEventType;
    use orderflow_proto::Message as _;

    use super::*;

    const NOW: i64 = 1_573_430_400_000;

    fn event(id: &str, storefront: &str) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            order_id: format!("o-{id}"),
            merchant_id: "m1".into(),
            storefront_id: storefront.into(),
            r#type: OrderEventType::Paid as i32,
            amount_minor: 100,
            currency: "CNY".into(),
            event_time: Some(orderflow_proto::millis_timestamp(NOW)),
            ..Default::default()
        }
    }

    fn item(e: &OrderEvent) -> Result<Item, Unreadable> {
        Ok(Item { payload: e.encode_to_vec(), event: Some(e.clone()) })
    }

    #[test]
    fn valid_events_are_keyed_as_the_publisher_keys_them() {
        let limits = Limits::default();
        let e = event("a", "web");
        let c = judge(item(&e), "web", &limits, NOW).unwrap();
        assert_eq!((c.key.as_str(), c.event_id.as_str()), ("o-a", "a"));
        assert_eq!(c.payload, e.encode_to_vec());
        // No storefront_id: published as it is.
        assert!(judge(item(&event("b", "")), "web", &limits, NOW).is_ok());
        // Protobuf bytes that were not decoded up front are decoded by the check.
        let raw = Ok(Item { payload: e.encode_to_vec(), event: None });
        assert_eq!(judge(raw, "web", &limits, NOW).unwrap().key, "o-a");
    }

    #[test]
    fn invalid_events_get_the_enrichers_reason() {
        let limits = Limits::default();
        let mut e = event("a", "web");
        e.amount_minor = -5;
        let r = judge(item(&e), "web", &limits, NOW).unwrap_err();
        assert_eq!((r.code, r.status, r.event_id.as_deref()), ("negative_amount", 422, Some("a")));
        assert_eq!(r.message, "amount_minor is negative (-5)");
        let mut e = event("b", "web");
        e.event_time = Some(orderflow_proto::millis_timestamp(NOW + 86_400_000));
        assert_eq!(judge(item(&e), "web", &limits, NOW).unwrap_err().code, "event_time_in_future");
        let garbage = Ok(Item { payload: vec![0xff, 0xff], event: None });
        let r = judge(garbage, "web", &limits, NOW).unwrap_err();
        assert_eq!((r.code, r.event_id), ("undecodable", None));
        let small = Limits { max_event_bytes: 10, ..Limits::default() };
        assert_eq!(judge(item(&event("c", "web")), "web", &small, NOW).unwrap_err().code, "event_too_large");
        let unreadable = Err(Unreadable { message: "not an OrderEvent in JSON: x".into(), event_id: Some("d".into()) });
        let r = judge(unreadable, "web", &limits, NOW).unwrap_err();
        assert_eq!((r.code, r.status, r.event_id.as_deref()), ("invalid_json", 422, Some("d")));
    }

    #[test]
    fn another_storefronts_event_is_forbidden() {
        let r = judge(item(&event("a", "app-ios")), "web", &Limits::default(), NOW).unwrap_err();
        assert_eq!((r.code, r.status, r.event_id.as_deref()), ("foreign_storefront", 403, Some("a")));
        assert_eq!(r.message, "storefront_id `app-ios` is not the token's storefront `web`");
    }

    #[test]
    fn request_status_from_event_results() {
        let ok = |i| EventResult::accepted(i, format!("e{i}"));
        let bad = |i, status| EventResult::rejected(i, Rejection { event_id: None, code: "x", message: "m".into(), status });
        assert_eq!(Answer::new(vec![ok(0), ok(1)]).status(), 200);
        assert_eq!(Answer::new(vec![ok(0), bad(1, 422)]).status(), 207);
        assert_eq!(Answer::new(vec![bad(0, 403), bad(1, 403)]).status(), 403);
        assert_eq!(Answer::new(vec![bad(0, 403), bad(1, 422)]).status(), 422);
        let a = Answer::new(vec![ok(0), bad(1, 422)]);
        assert_eq!((a.accepted, a.rejected), (1, 1));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["results"][0], serde_json::json!({"index": 0, "eventId": "e0", "outcome": "accepted", "status": 200}));
        assert_eq!(json["results"][1], serde_json::json!({"index": 1, "outcome": "rejected", "status": 422, "code": "x", "message": "m"}));
    }
}
