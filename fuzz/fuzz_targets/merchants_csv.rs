//! The merchants CSV (`merchant::read_merchants_csv`, read by `merchants load`): any
//! bytes either fail with a message or give merchant versions, which are then keyed for
//! the merchants topic as `load_merchants` keys them (`merchant_key`, which must parse
//! back with `parse_merchant_key`) and loaded into a table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::merchant::{merchant_key, parse_merchant_key, MerchantTable, BEGINNING_OF_TIME_MS};
use orderflow_proto::v1::Merchant;
use orderflow_proto::{timestamp_millis, Message};

fuzz_target!(|data: &[u8]| {
    let merchants = match orderflow_core::merchant::read_merchants_csv(data) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut table = MerchantTable::new();
    for m in &merchants {
        assert!(!m.merchant_id.is_empty() && !m.region.is_empty() && !m.tier.is_empty(), "{m:?}");
        let key = merchant_key(&m.merchant_id, m.effective_from.as_ref());
        let from = m.effective_from.as_ref().map_or(BEGINNING_OF_TIME_MS, timestamp_millis);
        assert_eq!(parse_merchant_key(&key), Some((m.merchant_id.as_str(), from)), "{key}");
        let payload = m.encode_to_vec();
        assert_eq!(&Merchant::decode(payload.as_slice()).expect("an encoded merchant decodes"), m);
        table.upsert(m).expect("a merchant the CSV reader accepts, the table accepts");
        let v = table.lookup(&m.merchant_id, from).expect("the version just loaded");
        assert_eq!((&*v.region, &*v.tier, v.effective_from_ms), (m.region.as_str(), m.tier.as_str(), from));
    }
    assert!(table.len() <= merchants.len() && table.versions() <= merchants.len());
});
