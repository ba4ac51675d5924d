//! The merchant table and the temporal join.
//!
//! A merchant can have several versions, each effective from an event time; an order
//! is joined with the version in effect at the order's event time, so replaying an old
//! trace after a merchant moved region gives the same totals as the first run. A
//! version without an effective time applies from the beginning of time. On the
//! merchants topic each version is keyed `merchant_id@effective_from_millis`, so
//! compaction keeps every version and loading a row again replaces that version.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};

use orderflow_proto::v1::{EnrichedOrderEvent, Merchant, OrderEvent};
use orderflow_proto::{millis_timestamp, timestamp_millis, Timestamp};

use crate::validate::{check_payload, InvalidReason, Limits};
use crate::{wire, Error, Result};

/// Region and tier given to orders whose merchant is not in the table.
pub const UNKNOWN: &str = "unknown";

/// Effective time of a version loaded without one: the beginning of time.
pub const BEGINNING_OF_TIME_MS: i64 = i64::MIN;

/// Longest region or tier, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 64;
/// Longest merchant id, in bytes.
pub const MAX_MERCHANT_ID_BYTES: usize = 256;

/// Why a merchant record is refused. Region and tier become totals keys and
/// Prometheus label values, so they are short, non-empty, made of letters (any
/// script), digits, `_`, `-`, `.` and inner spaces, and not the reserved [`UNKNOWN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerchantProblem {
    #[error("merchant_id is empty")]
    EmptyId,
    #[error("merchant_id is {0} bytes, above {MAX_MERCHANT_ID_BYTES}")]
    IdTooLong(usize),
    #[error("{0} is empty")]
    EmptyAttribute(&'static str),
    #[error("{field} is {bytes} bytes, above {MAX_ATTRIBUTE_BYTES}")]
    AttributeTooLong { field: &'static str, bytes: usize },
    #[error("{field} `{value}` may hold only letters, digits, `_`, `-`, `.` and inner spaces")]
    BadCharacters { field: &'static str, value: String },
    #[error("{field} `{UNKNOWN}` is reserved for orders whose merchant is not in the table")]
    Reserved { field: &'static str },
}

impl MerchantProblem {
    /// Every code, for describing metrics up front.
    pub const CODES: &'static [&'static str] =
        &["empty_merchant_id", "merchant_id_too_long", "empty_attribute", "attribute_too_long", "bad_characters", "reserved_attribute"];

    /// A short, stable, bounded identifier of the problem (a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Self::EmptyId => "empty_merchant_id",
            Self::IdTooLong(_) => "merchant_id_too_long",
            Self::EmptyAttribute(_) => "empty_attribute",
            Self::AttributeTooLong { .. } => "attribute_too_long",
            Self::BadCharacters { .. } => "bad_characters",
            Self::Reserved { .. } => "reserved_attribute",
        }
    }
}

/// Checks a merchant record against [`MerchantProblem`]'s rules (every path a
/// merchant takes into the table goes through [`MerchantTable::upsert`], which calls it).
pub fn check_merchant(m: &Merchant) -> std::result::Result<(), MerchantProblem> {
    if m.merchant_id.is_empty() {
        return Err(MerchantProblem::EmptyId);
    }
    if m.merchant_id.len() > MAX_MERCHANT_ID_BYTES {
        return Err(MerchantProblem::IdTooLong(m.merchant_id.len()));
    }
    for (field, value) in [("region", m.region.as_str()), ("tier", m.tier.as_str())] {
        if value.is_empty() {
            return Err(MerchantProblem::EmptyAttribute(field));
        }
        if value.len() > MAX_ATTRIBUTE_BYTES {
            return Err(MerchantProblem::AttributeTooLong { field, bytes: value.len() });
        }
        let allowed = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ');
        if !value.chars().all(allowed) || value.starts_with(' ') || value.ends_with(' ') {
            return Err(MerchantProblem::BadCharacters { field, value: value.to_owned() });
        }
        if value == UNKNOWN {
            return Err(MerchantProblem::Reserved { field });
        }
    }
    Ok(())
}

/// One version of a merchant's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantVersion {
    pub effective_from_ms: i64,
    pub region: Arc<str>,
    pub tier: Arc<str>,
}

/// All known merchants, each with its versions sorted by effective time.
///
/// Laid out for the enricher's per-event lookup in a table of many merchants: ids of up
/// to [`INLINE_ID`] bytes and a merchant's only version live in the hash table's bucket
/// itself, so a lookup reads one bucket and no other heap memory.
#[derive(Debug, Default, Clone)]
pub struct MerchantTable {
    by_id: HashMap<IdKey, Versions>,
    versions: usize,
}

/// Merchant ids up to this many bytes (UUIDs included) are stored inline.
const INLINE_ID: usize = 38;

/// A merchant id as a table key: inline when it fits, else on the heap. An id is inline
/// exactly when it fits, so the two forms never hold the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdKey {
    Inline(InlineId),
    Heap(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InlineId {
    len: u8,
    bytes: [u8; INLINE_ID],
}

impl InlineId {
    fn new(id: &str) -> Option<Self> {
        let src = id.as_bytes();
        let mut bytes = [0; INLINE_ID];
        bytes.get_mut(..src.len())?.copy_from_slice(src);
        Some(Self { len: src.len() as u8, bytes })
    }
}

impl IdKey {
    fn new(id: &str) -> Self {
        InlineId::new(id).map_or_else(|| Self::Heap(id.into()), Self::Inline)
    }
}

// Both forms hash as the borrowed lookups below do (`Equivalent` requires it).
impl Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Self::Inline(id) => id.hash(state),
            Self::Heap(id) => id.hash(state),
        }
    }
}

impl Hash for InlineId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.bytes);
        state.write_u8(self.len);
    }
}

/// A borrowed id too long to be inline, for allocation-free lookups.
#[derive(Hash)]
struct LongId<'a>(&'a str);

impl Equivalent<IdKey> for InlineId {
    fn equivalent(&self, key: &IdKey) -> bool {
        matches!(key, IdKey::Inline(id) if id == self)
    }
}

impl Equivalent<IdKey> for LongId<'_> {
    fn equivalent(&self, key: &IdKey) -> bool {
        matches!(key, IdKey::Heap(id) if **id == *self.0)
    }
}

/// A merchant's versions, sorted by effective time; never empty. Most merchants have
/// one, kept without an allocation of its own.
#[derive(Debug, Clone)]
enum Versions {
    One(MerchantVersion),
    Many(Vec<MerchantVersion>),
}

impl Versions {
    fn as_slice(&self) -> &[MerchantVersion] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::Many(vs) => vs,
        }
    }

    /// Adds `version` or replaces the one with its effective time; whether it was added.
    fn upsert(&mut self, version: MerchantVersion) -> bool {
        let from = version.effective_from_ms;
        match self.as_slice().binary_search_by_key(&from, |v| v.effective_from_ms) {
            Ok(i) => {
                match self {
                    Self::One(v) => *v = version,
                    Self::Many(vs) => vs[i] = version,
                }
                false
            }
            Err(i) => {
                if let Self::One(v) = self {
                    *self = Self::Many(vec![v.clone()]);
                }
                if let Self::Many(vs) = self {
                    vs.insert(i, version);
                }
                true
            }
        }
    }

    /// Removes the version effective from `from`; whether there was one. `false` for
    /// the last one: the caller removes the merchant instead.
    fn remove(&mut self, from: i64) -> bool {
        match self {
            Self::One(_) => false,
            Self::Many(vs) => match vs.binary_search_by_key(&from, |v| v.effective_from_ms) {
                Ok(i) => {
                    vs.remove(i);
                    if let [only] = vs.as_slice() {
                        *self = Self::One(only.clone());
                    }
                    true
                }
                Err(_) => false,
            },
        }
    }
}

/// The Kafka key of a merchant version on the merchants topic.
pub fn merchant_key(merchant_id: &str, effective_from: Option<&Timestamp>) -> String {
    match effective_from {
        Some(t) => format!("{merchant_id}@{}", timestamp_millis(t)),
        None => format!("{merchant_id}@-"),
    }
}

/// Parses a merchants-topic key back into merchant id and effective time
/// (the merchant id may itself contain `@`: the last one separates).
pub fn parse_merchant_key(key: &str) -> Option<(&str, i64)> {
    let (id, from) = key.rsplit_once('@')?;
    let from = if from == "-" { BEGINNING_OF_TIME_MS } else { from.parse().ok()? };
    Some((id, from))
}

impl MerchantTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of merchants.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table has no merchants.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Number of merchant versions.
    pub fn versions(&self) -> usize {
        self.versions
    }

    /// Adds a version, or replaces the version with the same effective time; a record
    /// that fails [`check_merchant`] is refused and the table left as it was.
    pub fn upsert(&mut self, m: &Merchant) -> std::result::Result<(), MerchantProblem> {
        check_merchant(m)?;
        let from = m.effective_from.as_ref().map_or(BEGINNING_OF_TIME_MS, timestamp_millis);
        let version = MerchantVersion { effective_from_ms: from, region: m.region.as_str().into(), tier: m.tier.as_str().into() };
        let added = match self.get_mut(&m.merchant_id) {
            Some(versions) => versions.upsert(version),
            None => {
                self.by_id.insert(IdKey::new(&m.merchant_id), Versions::One(version));
                true
            }
        };
        if added {
            self.versions += 1;
        }
        Ok(())
    }

    /// Removes one version (a tombstone on the merchants topic).
    pub fn remove(&mut self, merchant_id: &str, effective_from_ms: i64) {
        let Some(versions) = self.get_mut(merchant_id) else { return };
        if versions.remove(effective_from_ms) {
            self.versions -= 1;
        } else if versions.as_slice()[0].effective_from_ms == effective_from_ms {
            // Its last version: the merchant goes.
            self.versions -= 1;
            match InlineId::new(merchant_id) {
                Some(id) => self.by_id.remove(&id),
                None => self.by_id.remove(&LongId(merchant_id)),
            };
        }
    }

    fn get(&self, merchant_id: &str) -> Option<&Versions> {
        match InlineId::new(merchant_id) {
            Some(id) => self.by_id.get(&id),
            None => self.by_id.get(&LongId(merchant_id)),
        }
    }

    fn get_mut(&mut self, merchant_id: &str) -> Option<&mut Versions> {
        match InlineId::new(merchant_id) {
            Some(id) => self.by_id.get_mut(&id),
            None => self.by_id.get_mut(&LongId(merchant_id)),
        }
    }

    /// The version of `merchant_id` in effect at `at_ms`, if any.
    pub fn lookup(&self, merchant_id: &str, at_ms: i64) -> Option<&MerchantVersion> {
        let versions = self.get(merchant_id)?.as_slice();
        let i = versions.partition_point(|v| v.effective_from_ms <= at_ms);
        i.checked_sub(1).map(|i| &versions[i])
    }

    /// Region, tier and whether the merchant is known, for `merchant_id` at `at_ms`:
    /// the temporal join of [`Self::enrich`] and [`Self::enrich_payload`].
    pub fn join(&self, merchant_id: &str, at_ms: i64) -> (&str, &str, bool) {
        match self.lookup(merchant_id, at_ms) {
            Some(v) => (&v.region, &v.tier, true),
            None => (UNKNOWN, UNKNOWN, false),
        }
    }

    /// Joins a (validated) event with its merchant. Unknown merchants get region and
    /// tier [`UNKNOWN`] and `merchant_known = false`: their GMV still counts.
    pub fn enrich(&self, event: OrderEvent) -> EnrichedOrderEvent {
        let at = event.event_time.as_ref().map_or(i64::MIN, timestamp_millis);
        let (region, tier, merchant_known) = self.join(&event.merchant_id, at);
        // `String::from(&str)`: a copy, not `to_string`'s trip through `Display`.
        EnrichedOrderEvent { region: String::from(region), tier: String::from(tier), merchant_known, event: Some(event) }
    }

    /// The enricher's per-event work on a raw orders-topic payload: decodes it without
    /// allocating, validates it, joins it as [`Self::enrich`] does, and builds the
    /// enriched-topic record around the payload's own bytes
    /// ([`wire::encode_enriched_spliced`]): it decodes to the same `EnrichedRecord` as
    /// encoding `enrich(decode_and_validate(payload)?)` would. The key is the `order_id`.
    ///
    /// The event is held to `limits` at the clock reading `now_ms`: a record larger than
    /// `limits.max_event_bytes` is refused before it is parsed.
    pub fn enrich_payload(&self, payload: &[u8], limits: &Limits, now_ms: i64) -> Result<EnrichedPayload, InvalidReason> {
        let event = check_payload(payload, limits, now_ms)?;
        let at = event.event_time.as_ref().map_or(i64::MIN, timestamp_millis);
        let (region, tier, merchant_known) = self.join(event.merchant_id, at);
        Ok(EnrichedPayload {
            key: event.order_id.to_owned(),
            value: wire::encode_enriched_spliced(payload, region, tier, merchant_known),
            merchant_known,
        })
    }
}

/// An enriched-topic record made by [`MerchantTable::enrich_payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichedPayload {
    /// The Kafka key: the event's `order_id`.
    pub key: String,
    /// An encoded `EnrichedRecord` holding the event.
    pub value: Vec<u8>,
    pub merchant_known: bool,
}

/// Reads a merchants CSV: a header with at least `merchant_id,region,tier` (any order,
/// further columns allowed; an optional `effective_from` column holds RFC 3339 times).
/// Every bad row is reported with its line number; any bad row fails the whole file so
/// that a table is never half-loaded.
pub fn read_merchants_csv<R: std::io::Read>(reader: R) -> Result<Vec<Merchant>> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(reader);
    let headers = rdr.headers().map_err(|e| Error::MerchantCsv(format!("reading header: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(id_col), Some(region_col), Some(tier_col)) = (col("merchant_id"), col("region"), col("tier")) else {
        return Err(Error::MerchantCsv(format!(
            "header must name merchant_id, region and tier; found `{}`",
            headers.iter().collect::<Vec<_>>().join(",")
        )));
    };
    let from_col = col("effective_from");
    let mut merchants = Vec::new();
    let mut problems = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let line = i + 2;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let field = |c: usize| row.get(c).unwrap_or("");
        let (id, region, tier) = (field(id_col), field(region_col), field(tier_col));
        let effective_from = match from_col.map(field).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match s.parse::<Timestamp>() {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("line {line}: effective_from `{s}`: {e}"));
                    continue;
                }
            },
        };
        let merchant = Merchant { merchant_id: id.into(), region: region.into(), tier: tier.into(), effective_from };
        match check_merchant(&merchant) {
            Ok(()) => merchants.push(merchant),
            Err(problem) => problems.push(format!("line {line}: {problem}")),
        }
    }
    if problems.is_empty() {
        Ok(merchants)
    } else {
        Err(Error::MerchantCsv(problems.join("; ")))
    }
}

/// A version effective from `ms` (test and generator helper).
pub fn merchant_at(id: &str, region: &str, tier: &str, ms: Option<i64>) -> Merchant {
    Merchant { merchant_id: id.into(), region: region.into(), tier: tier.into(), effective_from: ms.map(millis_timestamp) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(merchant: &str, at: i64) -> OrderEvent {
        OrderEvent { merchant_id: merchant.into(), event_time: Some(millis_timestamp(at)), ..Default::default() }
    }

    #[test]
    fn joins_the_version_in_effect_at_event_time() {
        let mut t = MerchantTable::new();
        t.upsert(&merchant_at("m1", "east", "gold", None)).unwrap();
        t.upsert(&merchant_at("m1", "west", "silver", Some(1_000))).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.versions(), 2);
        let e = t.enrich(event("m1", 999));
        assert_eq!((e.region.as_str(), e.tier.as_str(), e.merchant_known), ("east", "gold", true));
        let e = t.enrich(event("m1", 1_000));
        assert_eq!((e.region.as_str(), e.tier.as_str()), ("west", "silver"));
    }

    #[test]
    fn unknown_merchant_and_not_yet_effective_merchant_are_unknown() {
        let mut t = MerchantTable::new();
        t.upsert(&merchant_at("m2", "north", "bronze", Some(5_000))).unwrap();
        let e = t.enrich(event("nobody", 0));
        assert_eq!((e.region.as_str(), e.tier.as_str(), e.merchant_known), (UNKNOWN, UNKNOWN, false));
        assert!(!t.enrich(event("m2", 4_999)).merchant_known);
    }

    #[test]
    fn reloading_a_version_replaces_it_and_tombstones_remove_it() {
        let mut t = MerchantTable::new();
        t.upsert(&merchant_at("m", "a", "x", None)).unwrap();
        t.upsert(&merchant_at("m", "b", "y", None)).unwrap();
        assert_eq!(t.versions(), 1);
        assert_eq!(&*t.lookup("m", 0).unwrap().region, "b");
        t.remove("m", BEGINNING_OF_TIME_MS);
        assert!(t.is_empty());
        assert_eq!(t.versions(), 0);
    }

    #[test]
    fn short_and_long_ids_are_different_merchants() {
        let long = "x".repeat(INLINE_ID + 1);
        let fits = "x".repeat(INLINE_ID);
        let mut t = MerchantTable::new();
        for (id, region) in [(&long, "long"), (&fits, "fits"), (&"m\0".to_string(), "nul")] {
            t.upsert(&merchant_at(id, region, "t", None)).unwrap();
        }
        assert_eq!(t.len(), 3);
        assert_eq!(&*t.lookup(&long, 0).unwrap().region, "long");
        assert_eq!(&*t.lookup(&fits, 0).unwrap().region, "fits");
        assert!(t.lookup("", 0).is_none());
        assert_eq!(&*t.lookup("m\0", 0).unwrap().region, "nul");
        assert!(t.lookup("m", 0).is_none());
        assert!(t.lookup(&"x".repeat(INLINE_ID + 2), 0).is_none());
        t.upsert(&merchant_at(&long, "later", "t", Some(10))).unwrap();
        assert_eq!(&*t.lookup(&long, 10).unwrap().region, "later");
        t.remove(&long, BEGINNING_OF_TIME_MS);
        t.remove(&long, 10);
        t.remove(&fits, BEGINNING_OF_TIME_MS);
        assert_eq!((t.len(), t.versions()), (1, 1));
        assert!(t.lookup(&long, 10).is_none() && t.lookup(&fits, 0).is_none());
    }

    #[test]
    fn removing_versions_one_by_one() {
        let mut t = MerchantTable::new();
        for from in [Some(20), None, Some(10)] {
            t.upsert(&merchant_at("m", &format!("r{}", from.unwrap_or(0)), "t", from)).unwrap();
        }
        assert_eq!(t.versions(), 3);
        t.remove("m", 15); // no such version
        t.remove("other", 10); // no such merchant
        assert_eq!(t.versions(), 3);
        t.remove("m", 10);
        assert_eq!(&*t.lookup("m", 15).unwrap().region, "r0");
        t.remove("m", BEGINNING_OF_TIME_MS);
        assert_eq!((t.len(), t.versions()), (1, 1));
        assert!(t.lookup("m", 15).is_none());
        assert_eq!(&*t.lookup("m", 20).unwrap().region, "r20");
        t.remove("m", 19);
        assert_eq!(t.versions(), 1);
        t.remove("m", 20);
        assert!(t.is_empty());
        assert_eq!(t.versions(), 0);
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(merchant_key("a@b", None), "a@b@-");
        assert_eq!(parse_merchant_key("a@b@-"), Some(("a@b", BEGINNING_OF_TIME_MS)));
        let k = merchant_key("m", Some(&millis_timestamp(-5)));
        assert_eq!(parse_merchant_key(&k), Some(("m", -5)));
        assert_eq!(parse_merchant_key("no-separator"), None);
    }

    #[test]
    fn reads_csv_with_extra_columns_in_any_order() {
        let csv = "name,tier,merchant_id,region,effective_from\nShop,gold,m1,east,\nShop2,silver,m2,west,2019-11-11T00:00:00Z\n";
        let ms = read_merchants_csv(csv.as_bytes()).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0], merchant_at("m1", "east", "gold", None));
        assert_eq!(ms[1], merchant_at("m2", "west", "silver", Some(1_573_430_400_000)));
    }

    #[test]
    fn csv_errors_name_their_lines() {
        let err = read_merchants_csv("merchant_id,region\nm1,east\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("header must name"), "{err}");
        let err = read_merchants_csv("merchant_id,region,tier\nm1,east,gold\n,west,x\nm3,w,t,extra\nm4,east,gold\nm5,,\n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3:") && err.contains("line 6:") && !err.contains("line 5:"), "{err}");
    }

    #[test]
    fn enrich_payload_decodes_as_the_prost_built_record() {
        use orderflow_proto::v1::{enriched_record, EnrichedRecord, OrderEventType};
        use orderflow_proto::Message;

        use crate::validate::decode_and_validate;

        let limits = Limits::default();
        let mut t = MerchantTable::new();
        for i in 0..50 {
            t.upsert(&merchant_at(&format!("m{i}"), &format!("r{}", i % 3), "gold", None)).unwrap();
            t.upsert(&merchant_at(&format!("m{i}"), &format!("r{}", i % 3 + 10), "t-2", Some(5_000))).unwrap();
        }
        for i in 0..400u32 {
            let mut e = OrderEvent {
                event_id: format!("e{i}"),
                order_id: format!("o{}", i / 2),
                merchant_id: format!("m{}", i % 60),
                customer_id: if i % 3 == 0 { String::new() } else { format!("c\u{e9}{i}") },
                r#type: OrderEventType::Paid as i32,
                amount_minor: i64::from(i) * 97,
                currency: "EUR".into(),
                event_time: Some(millis_timestamp(i64::from(i) * 25)),
                ..Default::default()
            };
            if i % 7 == 0 {
                e.currency = "eur".into(); // invalid: same reason both ways
            }
            let mut payload = e.encode_to_vec();
            if i % 5 == 0 {
                payload.extend_from_slice(&[0xa0, 0x06, 0x01]); // an unknown field (100): passed through
            }
            let expected = decode_and_validate(&payload).map(|ev| {
                let key = ev.order_id.clone();
                (key, EnrichedRecord { kind: Some(enriched_record::Kind::Event(t.enrich(ev))) })
            });
            match (t.enrich_payload(&payload, &limits, 0), expected) {
                (Ok(got), Ok((key, record))) => {
                    assert_eq!(got.key, key);
                    assert_eq!(EnrichedRecord::decode(got.value.as_slice()).unwrap(), record);
                    let Some(enriched_record::Kind::Event(enriched)) = &record.kind else { unreachable!() };
                    assert_eq!(got.merchant_known, enriched.merchant_known);
                    if i % 5 != 0 {
                        assert_eq!(got.value, record.encode_to_vec());
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("{a:?} vs {b:?}"),
            }
        }
    }

    /// Region and tier are bounded labels: every path into the table refuses what
    /// would make an ambiguous key or an unbounded label, and says why.
    #[test]
    fn merchant_records_are_checked_on_the_way_into_the_table() {
        let mut t = MerchantTable::new();
        let refused =
            |t: &mut MerchantTable, id: &str, region: &str, tier: &str| t.upsert(&merchant_at(id, region, tier, None)).unwrap_err();
        assert_eq!(refused(&mut t, "m", "", "gold"), MerchantProblem::EmptyAttribute("region"));
        assert_eq!(refused(&mut t, "m", "east", ""), MerchantProblem::EmptyAttribute("tier"));
        assert_eq!(refused(&mut t, "", "east", "gold"), MerchantProblem::EmptyId);
        assert_eq!(refused(&mut t, "m", "east/west", "gold").code(), "bad_characters");
        assert_eq!(refused(&mut t, "m", "east", "gold\n").code(), "bad_characters");
        assert_eq!(refused(&mut t, "m", " east", "gold").code(), "bad_characters");
        assert_eq!(refused(&mut t, "m", "east", "a%2Fb").code(), "bad_characters");
        assert_eq!(refused(&mut t, "m", &"e".repeat(65), "gold"), MerchantProblem::AttributeTooLong { field: "region", bytes: 65 });
        assert_eq!(refused(&mut t, &"m".repeat(257), "east", "gold"), MerchantProblem::IdTooLong(257));
        assert_eq!(refused(&mut t, "m", UNKNOWN, "gold"), MerchantProblem::Reserved { field: "region" });
        assert!(t.is_empty(), "nothing refused was added");
        for (region, tier) in [("华东", "天猫"), ("cn-east.1", "tier_2"), ("North America", "gold"), (&*"e".repeat(64), "t")] {
            t.upsert(&merchant_at("m", region, tier, None)).unwrap();
        }
        assert!(MerchantProblem::CODES.contains(&MerchantProblem::Reserved { field: "tier" }.code()));
    }

    #[test]
    fn a_merchants_csv_with_bad_attributes_names_each_line() {
        let csv = "merchant_id,region,tier\nm1,east,gold\nm2,east/west,gold\nm3,,gold\nm4,unknown,gold\n";
        let err = read_merchants_csv(csv.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("line 3: region `east/west` may hold only"), "{err}");
        assert!(err.contains("line 4: region is empty"), "{err}");
        assert!(err.contains("line 5: region `unknown` is reserved"), "{err}");
        assert!(!err.contains("line 2"), "{err}");
    }
}
