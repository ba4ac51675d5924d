//! What the fuzz targets share: the framing that turns one fuzz input into a sequence
//! of records (for the decoders whose outcome depends on what came before: the
//! aggregator's partitions, the merger, the merchant table), and the seed corpora,
//! generated here from valid records (`seeds/`, see [`seeds`]).

/// Splits a fuzz input into records: each is a 2-byte little-endian length, then that
/// many bytes (fewer if the input ends first). [`frame`] is the inverse.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let len = match data {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        let rest = &data[data.len().min(2)..];
        let (record, after) = rest.split_at(len.min(rest.len()));
        data = after;
        Some(record)
    })
}

/// The fuzz input [`records`] splits into `records` (each at most 65,535 bytes).
pub fn frame<R: AsRef<[u8]>>(records: &[R]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let r = r.as_ref();
        out.extend_from_slice(&u16::try_from(r.len()).expect("a record of at most 65,535 bytes").to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// A merchants-topic record as the `merchant_records` target reads it from one framed
/// record: a flags byte (bit 0: the record is a tombstone, without payload), the key's
/// length in one byte, the key, and the payload (the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MerchantRecord<'a> {
    pub key: &'a [u8],
    pub payload: Option<&'a [u8]>,
}

impl<'a> MerchantRecord<'a> {
    /// Reads one (never fails: missing parts are empty).
    pub fn read(record: &'a [u8]) -> Self {
        let (flags, rest) = record.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        let (key_len, rest) = rest.split_first().map_or((0, &[][..]), |(l, r)| (usize::from(*l), r));
        let (key, payload) = rest.split_at(key_len.min(rest.len()));
        Self { key, payload: (flags & 1 == 0).then_some(payload) }
    }

    /// The inverse of [`Self::read`] (keys of at most 255 bytes).
    pub fn write(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.payload.is_none()), u8::try_from(self.key.len()).expect("a key of at most 255 bytes")];
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.payload.unwrap_or_default());
        out
    }
}

pub mod seeds {
    //! The seed corpora: a few valid (and a few typically invalid) records per target,
    //! written to `fuzz/seeds/<target>/` by this crate's test
    //! (`FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml --lib`).

    use orderflow_core::merchant::{merchant_at, merchant_key};
    use orderflow_core::partition::PartitionState;
    use orderflow_core::validate::DEFAULT_MAX_EVENT_BYTES;
    use orderflow_core::window::{Tallies, TotalKey, WindowSpec};
    use orderflow_core::wire::encode_enriched_spliced;
    use orderflow_proto::v1::{
        enriched_record, partial_record, EnrichedOrderEvent, EnrichedRecord, IdleTick, OrderEvent, OrderEventType, PartialRecord,
        PartialTotal, PartitionCheckpoint, PartitionProgress,
    };
    use orderflow_proto::{millis_timestamp, Message, Timestamp};

    use super::{frame, MerchantRecord};

    /// 2019-11-11T00:00:00Z.
    pub const T0: i64 = 1_573_430_400_000;

    /// A valid event.
    pub fn event(i: i64, ty: OrderEventType, merchant: &str, currency: &str, amount: i64, at_ms: i64) -> OrderEvent {
        OrderEvent {
            event_id: format!("e{i}"),
            order_id: format!("o{}", i / 2),
            merchant_id: merchant.into(),
            storefront_id: format!("sf{}", i % 3),
            customer_id: format!("c{i}"),
            r#type: ty as i32,
            amount_minor: amount,
            currency: currency.into(),
            event_time: Some(millis_timestamp(at_ms)),
        }
    }

    fn events() -> Vec<OrderEvent> {
        use OrderEventType::*;
        vec![
            event(1, Created, "m1", "CNY", 12_345, T0),
            event(2, Paid, "m1", "CNY", 12_345, T0 + 1_500),
            event(3, Cancelled, "m2", "USD", 999, T0 + 61_000),
            event(4, Refunded, "unknown-merchant", "EUR", 1, T0 + 59_999),
            OrderEvent { customer_id: "c\u{e9}\u{4e2d}".into(), ..event(5, Paid, "m2", "HKD", 0, T0 + 125_000) },
        ]
    }

    /// The merchants the targets' tables hold (also the `merchants_csv` seed's rows).
    pub fn merchants() -> Vec<orderflow_proto::v1::Merchant> {
        vec![
            merchant_at("m1", "cn-east", "tmall", None),
            merchant_at("m1", "cn-west", "taobao", Some(T0 + 60_000)),
            merchant_at("m2", "intl", "tmall-flagship", Some(0)),
        ]
    }

    fn enriched(e: &OrderEvent, region: &str, tier: &str) -> Vec<u8> {
        encode_enriched_spliced(&e.encode_to_vec(), region, tier, region != "unknown")
    }

    /// `e` with its customer id padded so that it encodes to exactly `size` bytes.
    fn event_of_size(e: &OrderEvent, size: usize) -> Vec<u8> {
        let mut e = e.clone();
        let mut pad = size.saturating_sub(e.encoded_len());
        loop {
            e.customer_id = "x".repeat(pad);
            let bytes = e.encode_to_vec();
            match bytes.len().cmp(&size) {
                std::cmp::Ordering::Equal => return bytes,
                std::cmp::Ordering::Greater => pad -= 1,
                std::cmp::Ordering::Less => pad += 1,
            }
        }
    }

    fn tick(at_ms: i64) -> Vec<u8> {
        tick_at(millis_timestamp(at_ms))
    }

    fn tick_at(t: Timestamp) -> Vec<u8> {
        EnrichedRecord { kind: Some(enriched_record::Kind::IdleTick(IdleTick { close_through: Some(t) })) }.encode_to_vec()
    }

    /// `e` with the largest values its fields hold.
    fn extremes(e: &OrderEvent) -> OrderEvent {
        OrderEvent {
            r#type: i32::MAX,
            amount_minor: i64::MAX,
            event_time: Some(Timestamp { seconds: i64::MAX, nanos: i32::MAX }),
            ..e.clone()
        }
    }

    fn spec() -> WindowSpec {
        WindowSpec::new(60_000, 5_000).expect("a valid spec")
    }

    /// `(target, [(file name, bytes)])` for every target.
    pub fn all() -> Vec<(&'static str, Vec<(String, Vec<u8>)>)> {
        let events = events();
        let payloads: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();

        let mut order_events: Vec<(String, Vec<u8>)> =
            payloads.iter().enumerate().map(|(i, p)| (format!("event-{i}"), p.clone())).collect();
        // An unknown field (a storefront on a newer contract) and an invalid event.
        order_events.push(("unknown-field".into(), [payloads[0].as_slice(), &[0xa0, 0x06, 0x01]].concat()));
        order_events.push(("bad-currency".into(), OrderEvent { currency: "cny".into(), ..events[1].clone() }.encode_to_vec()));
        // The edges: the largest values every field can hold.
        order_events.push(("extremes".into(), extremes(&events[1]).encode_to_vec()));
        let prost_seeds = order_events.clone();
        // Confluent Schema Registry's frame: magic 0, schema id, the one-byte index path
        // [0]; the long form of a nested path [1, 2]; and a frame cut short.
        order_events.push(("registry-frame".into(), [&[0, 0, 0, 0, 7, 0][..], &payloads[0]].concat()));
        order_events.push(("registry-nested".into(), [&[0, 0, 0, 1, 0, 4, 2, 4][..], &payloads[1]].concat()));
        order_events.push(("registry-cut-short".into(), vec![0, 0, 0]));
        // The enricher's size limit (64 KiB): the largest event accepted, and one byte more.
        for (name, size) in [("largest", DEFAULT_MAX_EVENT_BYTES), ("too-large", DEFAULT_MAX_EVENT_BYTES + 1)] {
            order_events.push((name.into(), event_of_size(&events[1], size)));
        }

        let enriched_records: Vec<Vec<u8>> = vec![
            enriched(&events[0], "cn-east", "tmall"),
            enriched(&events[1], "cn-east", "tmall"),
            enriched(&events[1], "cn-east", "tmall"), // a retry: a duplicate
            enriched(&events[3], "unknown", "unknown"),
            enriched(&events[2], "intl", "tmall-flagship"),
            enriched(&events[0], "cn-east", "tmall"), // late by now
            tick(T0 + 200_000),
            EnrichedRecord { kind: Some(enriched_record::Kind::Event(EnrichedOrderEvent::default())) }.encode_to_vec(),
        ];
        let ends_of_time = [
            enriched(&extremes(&events[0]), "r", "t"),
            enriched(&OrderEvent { event_time: Some(Timestamp { seconds: i64::MIN, nanos: 0 }), ..events[1].clone() }, "r", "t"),
            tick_at(Timestamp { seconds: i64::MIN, nanos: 0 }),
            enriched(&events[2], "r", "t"),
            tick_at(Timestamp { seconds: i64::MAX, nanos: i32::MAX }),
        ];
        let enriched_seeds = vec![
            ("one-event".to_owned(), frame(&enriched_records[..1])),
            ("events-duplicate-late-tick".to_owned(), frame(&enriched_records)),
            ("ends-of-time".to_owned(), frame(&ends_of_time)),
        ];

        let mut state = PartitionState::new(
            spec(),
            orderflow_core::partition::StateBounds::new(65_000),
            orderflow_core::dedup::DedupKey::from_words(1, 2),
        );
        let mut closed = Vec::new();
        let checkpoint_empty = state.checkpoint("orderflow.enriched", 0, 0).encode_to_vec();
        for (i, e) in events.iter().enumerate() {
            let record = EnrichedOrderEvent { event: Some(e.clone()), region: "r".into(), tier: "t".into(), merchant_known: i % 2 == 0 };
            state.apply(&record, &mut closed);
        }
        let open = state.checkpoint("orderflow.enriched", 3, 17);
        let mut largest = open.clone();
        largest.watermark_ms = i64::MAX;
        for w in &mut largest.open {
            for t in [&mut w.created, &mut w.paid, &mut w.cancelled, &mut w.refunded].into_iter().flatten() {
                (t.count, t.amount_minor) = (i64::MAX, i64::MAX);
            }
        }
        // As aggregators before the admission log wrote it: the memory itself.
        let mut memory_itself = open.clone();
        memory_itself.dedup_from_log = false;
        memory_itself.dedup_log_runs.clear();
        memory_itself.dedup_log_mark_offsets.clear();
        memory_itself.dedup_log_mark_times_ms.clear();
        memory_itself.dedup_fingerprints = (0u8..32).collect();
        memory_itself.dedup_event_times_ms = vec![open.watermark_ms, open.watermark_ms - 1];
        // At the largest offset, where no admission can be logged (runs are half-open).
        let last_offset = PartitionCheckpoint { next_offset: i64::MAX, ..state.checkpoint("orderflow.enriched", 3, 0) };
        let checkpoint_seeds = vec![
            ("empty".to_owned(), checkpoint_empty),
            ("last-offset".to_owned(), last_offset.encode_to_vec()),
            ("open-windows-and-ids".to_owned(), open.encode_to_vec()),
            ("memory-itself".to_owned(), memory_itself.encode_to_vec()),
            ("extremes".to_owned(), largest.encode_to_vec()),
        ];

        let key = TotalKey { region: "cn-east".into(), tier: "tmall".into(), currency: "CNY".into() };
        let mut tallies = Tallies::default();
        tallies.add(0, 12_345);
        tallies.add(1, 12_345);
        let partial = |partition: i32, start: i64| PartialRecord {
            kind: Some(partial_record::Kind::Partial(PartialTotal {
                total: Some(tallies.to_window_total(start, start + 60_000, &key)),
                partition,
                newest_record_ms: 0,
            })),
        };
        let progress = |partition: i32, through: i64| PartialRecord {
            kind: Some(partial_record::Kind::Progress(PartitionProgress {
                partition,
                closed_through: Some(millis_timestamp(through)),
                partition_count: 2,
            })),
        };
        let partials: Vec<Vec<u8>> = [
            partial(0, T0),
            progress(0, T0 + 60_000),
            partial(1, T0),
            partial(1, T0 + 60_000),
            partial(1, T0), // a repeat
            progress(1, T0 + 120_000),
            progress(0, T0 + 120_000),
        ]
        .iter()
        .map(Message::encode_to_vec)
        .collect();
        let total = tallies.to_window_total(T0, T0 + 60_000, &key).encode_to_vec();
        let mut extreme = tallies;
        for t in &mut extreme.0 {
            (t.count, t.amount_minor) = (i64::MAX, i64::MAX);
        }
        let extreme_partial = |partition: i32| PartialRecord {
            kind: Some(partial_record::Kind::Partial(PartialTotal {
                total: Some(extreme.to_window_total(i64::MIN, i64::MAX, &key)),
                partition,
                newest_record_ms: 0,
            })),
        };
        let many = PartialRecord {
            kind: Some(partial_record::Kind::Progress(PartitionProgress {
                partition: i32::MAX,
                closed_through: Some(Timestamp { seconds: i64::MAX, nanos: i32::MAX }),
                partition_count: i32::MAX,
            })),
        };
        let extremes: Vec<Vec<u8>> = [extreme_partial(0), extreme_partial(1), progress(0, i64::MAX), progress(1, i64::MAX), many]
            .iter()
            .map(Message::encode_to_vec)
            .collect();
        // The merger's checkpoint after the two-partition partials: a window emitted
        // (kept for corrections) and one pending; and a new merger's.
        let mut merger = orderflow_core::merge::Merger::new();
        for payload in &partials {
            match PartialRecord::decode(payload.as_slice()).expect("a seed decodes").kind {
                Some(partial_record::Kind::Partial(p)) => {
                    merger.add_partial(&p).expect("a seed partial merges");
                }
                Some(partial_record::Kind::Progress(p)) => {
                    merger.progress(&p);
                }
                None => {}
            }
        }
        let merger_seeds = vec![
            ("two-partitions".to_owned(), merger.checkpoint("orderflow.totals.partial", 7).encode_to_vec()),
            ("new".to_owned(), orderflow_core::merge::Merger::new().checkpoint("orderflow.totals.partial", 0).encode_to_vec()),
        ];
        let partial_seeds = vec![
            ("two-partitions".to_owned(), frame(&partials)),
            ("a-total".to_owned(), frame(&[total])),
            ("extremes".to_owned(), frame(&extremes)),
        ];

        let lines: Vec<String> = events.iter().map(|e| serde_json::to_string(e).expect("a valid event serializes")).collect();
        let snake = r#"{"event_id":"e","orderId":"o","merchant_id":"m","type":"ORDER_EVENT_TYPE_CREATED","amount_minor":5,"currency":"USD","event_time":"2019-11-11T00:00:00.5+08:00"}"#;
        let trace_seeds = vec![
            ("one-line".to_owned(), lines[0].clone().into_bytes()),
            ("lines-blank-and-bad".to_owned(), format!("{}\n\n  \nnot json\n{}\n", lines.join("\n"), snake).into_bytes()),
        ];

        let mut csv = String::from("name,tier,merchant_id,region,effective_from\n");
        for (i, m) in merchants().iter().enumerate() {
            let from = m.effective_from.map(|t| t.to_string()).unwrap_or_default();
            csv.push_str(&format!("Shop {i},{},{},{},{from}\n", m.tier, m.merchant_id, m.region));
        }
        let csv_seeds = vec![
            ("three-versions".to_owned(), csv.into_bytes()),
            ("minimal".to_owned(), b"merchant_id,region,tier\nm1,east,gold\n".to_vec()),
            ("bad-rows".to_owned(), b"merchant_id,region,tier,effective_from\n,west,x\nm3,w,t,2019-13-01T00:00:00Z\n".to_vec()),
        ];

        let mut merchant_records: Vec<Vec<u8>> = merchants()
            .iter()
            .map(|m| {
                let key = merchant_key(&m.merchant_id, m.effective_from.as_ref());
                MerchantRecord { key: key.as_bytes(), payload: Some(&m.encode_to_vec()) }.write()
            })
            .collect();
        let tombstone_key = merchant_key("m1", Some(&millis_timestamp(T0 + 60_000)));
        merchant_records.push(MerchantRecord { key: tombstone_key.as_bytes(), payload: None }.write());
        let merchant_seeds = vec![("versions-and-a-tombstone".to_owned(), frame(&merchant_records))];

        vec![
            ("order_event", order_events),
            ("order_event_prost", prost_seeds),
            ("enriched_record", enriched_seeds),
            ("checkpoint", checkpoint_seeds),
            ("partial_records", partial_seeds),
            ("merger_checkpoint", merger_seeds),
            ("trace_line", trace_seeds),
            ("merchants_csv", csv_seeds),
            ("merchant_records", merchant_seeds),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_never_fails() {
        let records: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 300]];
        assert_eq!(super::records(&frame(&records)).collect::<Vec<_>>(), records);
        assert_eq!(super::records(&[5]).collect::<Vec<_>>(), vec![&[0u8; 0][..]]);
        assert_eq!(super::records(&[9, 0, 1]).collect::<Vec<_>>(), vec![&[1u8][..]]);
        let m = MerchantRecord { key: b"m@-", payload: Some(b"xyz") };
        assert_eq!(MerchantRecord::read(&m.write()), m);
        let t = MerchantRecord { key: b"m@5", payload: None };
        assert_eq!(MerchantRecord::read(&t.write()), t);
    }

    /// The committed seed corpora are what [`seeds::all`] generates; with
    /// `FUZZ_WRITE_SEEDS=1`, (re)writes them instead.
    #[test]
    fn seed_corpora_are_generated() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
        for (target, files) in seeds::all() {
            let dir = root.join(target);
            if write {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
            }
            let mut names: Vec<String> = Vec::new();
            for (name, bytes) in files {
                let path = dir.join(&name);
                if write {
                    std::fs::write(&path, &bytes).unwrap();
                } else {
                    let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert_eq!(committed, bytes, "{} is stale: regenerate with FUZZ_WRITE_SEEDS=1", path.display());
                }
                names.push(name);
            }
            let mut on_disk: Vec<String> =
                std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            on_disk.sort();
            names.sort();
            assert_eq!(on_disk, names, "{}", dir.display());
        }
    }
}
