//! The merchants topic as the enricher follows it (`MerchantStore::apply`): a record
//! without a UTF-8 key is skipped; a tombstone's key is parsed (`parse_merchant_key`)
//! and removes that version; a payload is decoded (`Merchant::decode`) and upserted.
//! The table (`merchant::MerchantTable`, with its inline ids and one-version layout) is
//! checked against a plain model after every record, and joins an event as the model
//! says.
//!
//! The input is a sequence of records (see `orderflow_fuzz::records` and
//! `orderflow_fuzz::MerchantRecord`).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use orderflow_core::merchant::{parse_merchant_key, MerchantTable, BEGINNING_OF_TIME_MS, UNKNOWN};
use orderflow_fuzz::MerchantRecord;
use orderflow_proto::v1::Merchant;
use orderflow_proto::{timestamp_millis, Message};

/// Merchant id, then effective time: (region, tier).
type Model = BTreeMap<(String, i64), (String, String)>;

fn check(table: &MerchantTable, model: &Model, id: &str, at_ms: i64) {
    let expected = model.range((id.to_owned(), i64::MIN)..=(id.to_owned(), at_ms)).next_back().map(|(_, (r, t))| (r.as_str(), t.as_str()));
    let got = table.lookup(id, at_ms).map(|v| (&*v.region, &*v.tier));
    assert_eq!(got, expected, "{id} at {at_ms}");
    let (region, tier, known) = table.join(id, at_ms);
    assert_eq!(known, expected.is_some());
    assert_eq!((region, tier), expected.unwrap_or((UNKNOWN, UNKNOWN)));
}

fuzz_target!(|data: &[u8]| {
    let mut table = MerchantTable::new();
    let mut model = Model::new();
    for record in orderflow_fuzz::records(data) {
        let MerchantRecord { key, payload } = MerchantRecord::read(record);
        let Ok(key) = std::str::from_utf8(key) else { continue };
        let touched = match payload {
            None => match parse_merchant_key(key) {
                Some((id, from)) => {
                    table.remove(id, from);
                    model.remove(&(id.to_owned(), from));
                    Some((id.to_owned(), from))
                }
                None => None,
            },
            Some(bytes) => match Merchant::decode(bytes) {
                Ok(m) => {
                    let from = m.effective_from.as_ref().map_or(BEGINNING_OF_TIME_MS, timestamp_millis);
                    if table.upsert(&m).is_ok() {
                        model.insert((m.merchant_id.clone(), from), (m.region.clone(), m.tier.clone()));
                    } else {
                        // As the enricher does: the refused record replaced this version.
                        table.remove(&m.merchant_id, from);
                        model.remove(&(m.merchant_id.clone(), from));
                    }
                    Some((m.merchant_id, from))
                }
                Err(e) => {
                    let _ = e.to_string();
                    None
                }
            },
        };
        let merchants: std::collections::BTreeSet<&str> = model.keys().map(|(id, _)| id.as_str()).collect();
        assert_eq!((table.len(), table.versions()), (merchants.len(), model.len()));
        if let Some((id, from)) = touched {
            for at in [i64::MIN, from.saturating_sub(1), from, from.saturating_add(1), i64::MAX] {
                check(&table, &model, &id, at);
            }
        }
    }
    for (id, from) in model.keys() {
        check(&table, &model, id, *from);
        check(&table, &model, id, from.saturating_sub(1));
    }
});
