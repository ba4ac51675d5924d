//! Equivalence of the hand-written `OrderEvent` view with prost: wherever either
//! accepts a payload, both do and agree field by field; a payload prost refuses, the
//! view refuses too (the view's documented contract: it parses exactly when
//! `OrderEvent::decode` succeeds). The dead-letter reason of a refused payload is
//! prost's message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::validate::InvalidReason;
use orderflow_core::wire::{undecodable, OrderEventView};
use orderflow_proto::v1::OrderEvent;
use orderflow_proto::Message;

fuzz_target!(|payload: &[u8]| {
    let view = OrderEventView::parse(payload);
    let prost = OrderEvent::decode(payload);
    match (view, prost) {
        (Ok(v), Ok(p)) => {
            assert_eq!(v.event_id, p.event_id);
            assert_eq!(v.order_id, p.order_id);
            assert_eq!(v.merchant_id, p.merchant_id);
            assert_eq!(v.storefront_id, p.storefront_id);
            assert_eq!(v.customer_id, p.customer_id);
            assert_eq!(v.r#type, p.r#type);
            assert_eq!(v.amount_minor, p.amount_minor);
            assert_eq!(v.currency, p.currency);
            assert_eq!(v.event_time, p.event_time);
            assert_eq!(v.to_event(), p);
            assert_eq!(v, OrderEventView::from_event(&p));
        }
        (Err(e), Err(p)) => {
            assert_eq!(undecodable::<OrderEvent>(payload, &e), InvalidReason::Undecodable(p.to_string()));
        }
        (v, p) => panic!("the view and prost disagree on {payload:?}: view {v:?}, prost {p:?}"),
    }
});
