//! A borrowing protobuf walk for the records that make up almost all of a
//! `.wandb` file: history rows, summary updates and system-metrics samples.
//!
//! prost decodes every string of every item into its own heap `String`;
//! for a history row of a dozen metrics that is dozens of allocations, and
//! wandb-core writes two summary records per row. This module reads those
//! three record types in place instead: item keys and `value_json` texts are
//! `&str` slices of the record payload, collected into a [`Scratch`] whose
//! buffers are reused from record to record.
//!
//! It is a fast path, not a second source of truth: whenever a payload is
//! anything but a well-formed record of one of those three types (a field
//! with an unexpected wire type, invalid UTF-8, a group, a `record_type`
//! given twice, …) the walk gives up and the caller decodes the payload with
//! prost (`proto::Record`), which then decides, and words the error.
//! Field numbers: `docs/wandb-format.md` and `proto.rs`.

use std::ops::Range;

/// The protobuf fields of `Record`'s `record_type` oneof (see `proto.rs`).
const RECORD_ONEOF: [u32; 17] = [2, 3, 4, 5, 6, 7, 8, 11, 13, 17, 18, 20, 21, 22, 23, 26, 27];

/// What a record payload holds, as far as the fast path is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek<'a> {
    /// A history record; the slice is the `HistoryRecord` message.
    History(&'a [u8]),
    /// A summary record; the slice is the `SummaryRecord` message.
    Summary(&'a [u8]),
    /// A stats record; the slice is the `StatsRecord` message.
    Stats(&'a [u8]),
    /// A well-formed record of a type the reader does not declare.
    Unknown,
    /// Anything else: decode it with prost.
    Other,
}

/// A protobuf field's value, by wire type (groups are not supported).
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

/// A cursor over one message's fields.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Option<u64> {
        // most varints here (keys, lengths) are one byte
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Some(u64::from(b));
            }
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return None; // more than 64 bits
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// Field 1, 2 or 16 as a string of under 128 bytes (one-byte tag and
    /// length; two for field 16's tag), if that is what comes next.
    #[inline]
    fn short_string(&mut self) -> Option<(u32, &'a [u8])> {
        let rest = self.buf.get(self.pos..)?;
        let (n, at) = match rest {
            [0x0a, ..] => (1, 1),
            [0x12, ..] => (2, 1),
            [0x82, 0x01, ..] => (16, 2),
            _ => return None,
        };
        let len = *rest.get(at)?;
        if len >= 0x80 {
            return None;
        }
        let b = rest.get(at + 1..at + 1 + usize::from(len))?;
        self.pos += at + 1 + usize::from(len);
        Some((n, b))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next field: `Some(Ok(..))`, `None` at the end, `Some(Err(()))`
    /// when the bytes are not a field the walk can read.
    fn next_field(&mut self) -> Option<Result<(u32, Wire<'a>), ()>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.field().ok_or(()))
    }

    fn field(&mut self) -> Option<(u32, Wire<'a>)> {
        let key = u32::try_from(self.varint()?).ok()?;
        let number = Some(key >> 3).filter(|n| *n > 0)?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return None, // groups (3, 4) and invalid wire types
        };
        Some((number, wire))
    }
}

fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// Classifies a record payload. Only [`Peek::Other`] needs prost.
pub fn peek(payload: &[u8]) -> Peek<'_> {
    let mut f = Fields::new(payload);
    let mut found: Option<(u32, &[u8])> = None;
    let mut oneofs = 0;
    while let Some(field) = f.next_field() {
        let Ok((n, w)) = field else {
            return Peek::Other;
        };
        match (n, w) {
            (1, Wire::Varint(_)) => {}
            (19, Wire::Bytes(b)) if text(b).is_some() => {}
            (1 | 19, _) => return Peek::Other,
            (n, w) if RECORD_ONEOF.contains(&n) => {
                oneofs += 1;
                match w {
                    Wire::Bytes(b) => found = Some((n, b)),
                    _ => return Peek::Other,
                }
            }
            _ => {} // a field this reader does not declare: skipped, as prost does
        }
    }
    match (oneofs, found) {
        (0, _) => Peek::Unknown,
        (1, Some((2, b))) => Peek::History(b),
        (1, Some((3, b))) => Peek::Summary(b),
        (1, Some((7, b))) => Peek::Stats(b),
        _ => Peek::Other,
    }
}

/// A typed history value (`HistoryItem.value`), borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Typed<'a> {
    /// `null`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A string.
    Text(&'a str),
    /// Other JSON.
    Json(&'a str),
}

/// One history, summary or stats item, borrowed from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    /// `key` (used when the key path is empty).
    pub key: &'a str,
    /// The key path's range in [`Scratch::path`].
    pub nested: Range<usize>,
    /// `value_json`.
    pub value_json: &'a str,
    /// The typed value (history only).
    pub typed: Option<Typed<'a>>,
}

/// Reusable buffers for decoded items. Create one per read window (the
/// payloads it borrows from live that long) and pass it to each `decode_*`.
#[derive(Debug, Default)]
pub struct Scratch<'a> {
    /// Items set (history and stats items; summary updates).
    pub items: Vec<Item<'a>>,
    /// Summary items removed.
    pub removed: Vec<Item<'a>>,
    /// Key path parts of all items, in order.
    pub path: Vec<&'a str>,
}

impl<'a> Scratch<'a> {
    fn clear(&mut self) {
        self.items.clear();
        self.removed.clear();
        self.path.clear();
    }

    /// The key path of an item: its `nested_key` when set, else `[key]`.
    pub fn key_path<'s>(&'s self, item: &'s Item<'a>) -> &'s [&'a str] {
        if item.nested.is_empty() {
            std::slice::from_ref(&item.key)
        } else {
            &self.path[item.nested.clone()]
        }
    }
}

/// Decodes one `HistoryItem`, `SummaryItem`, `ConfigItem`-shaped or
/// `StatsItem` message (`typed` allows the history value oneof).
fn item<'a>(msg: &'a [u8], path: &mut Vec<&'a str>, typed_ok: bool) -> Option<Item<'a>> {
    let start = path.len();
    let mut it = Item {
        key: "",
        nested: 0..0,
        value_json: "",
        typed: None,
    };
    let mut f = Fields::new(msg);
    loop {
        // wandb-core writes items as `nested_key` parts and `value_json`,
        // each shorter than 128 bytes: read those without the general walk
        if let Some((n, b)) = f.short_string() {
            match n {
                1 => it.key = text(b)?,
                2 => path.push(text(b)?),
                _ => it.value_json = text(b)?,
            }
            continue;
        }
        let Some(field) = f.next_field() else {
            break;
        };
        match field.ok()? {
            (1, Wire::Bytes(b)) => it.key = text(b)?,
            (2, Wire::Bytes(b)) => path.push(text(b)?),
            (16, Wire::Bytes(b)) => it.value_json = text(b)?,
            (3, Wire::Varint(_)) if typed_ok => it.typed = Some(Typed::None),
            (4, Wire::Varint(v)) if typed_ok => it.typed = Some(Typed::Bool(v != 0)),
            (5, Wire::Varint(v)) if typed_ok => {
                it.typed = Some(Typed::Int(((v >> 1) as i64) ^ -((v & 1) as i64)))
            }
            (6, Wire::Fixed64(v)) if typed_ok => it.typed = Some(Typed::Float(f64::from_bits(v))),
            (7, Wire::Bytes(b)) if typed_ok => it.typed = Some(Typed::Text(text(b)?)),
            (8, Wire::Bytes(b)) if typed_ok => it.typed = Some(Typed::Json(text(b)?)),
            (1 | 2 | 16, _) => return None,
            (3..=8, _) if typed_ok => return None,
            _ => {}
        }
    }
    it.nested = start..path.len();
    Some(it)
}

/// The step of a `HistoryRecord` (`step.num`), when given.
pub type Step = Option<i64>;

/// Decodes a `HistoryRecord` into `s.items`; returns its `step`, or `None`
/// when the message is not one the fast path reads (decode it with prost).
pub fn decode_history<'a>(msg: &'a [u8], s: &mut Scratch<'a>) -> Option<Step> {
    s.clear();
    let mut step = None;
    let mut f = Fields::new(msg);
    while let Some(field) = f.next_field() {
        match field.ok()? {
            (1, Wire::Bytes(b)) => {
                let it = item(b, &mut s.path, true)?;
                s.items.push(it);
            }
            (2, Wire::Bytes(b)) => {
                // an optional message given twice is merged: the last num wins
                let mut num = step.unwrap_or(0);
                let mut g = Fields::new(b);
                while let Some(field) = g.next_field() {
                    match field.ok()? {
                        (1, Wire::Varint(v)) => num = v as i64,
                        (1, _) => return None,
                        _ => {}
                    }
                }
                step = Some(num);
            }
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    Some(step)
}

/// Decodes a `SummaryRecord` into `s.items` (updates) and `s.removed`.
/// `None`: not one the fast path reads.
pub fn decode_summary<'a>(msg: &'a [u8], s: &mut Scratch<'a>) -> Option<()> {
    s.clear();
    let mut f = Fields::new(msg);
    while let Some(field) = f.next_field() {
        match field.ok()? {
            (1, Wire::Bytes(b)) => {
                let it = item(b, &mut s.path, false)?;
                s.items.push(it);
            }
            (2, Wire::Bytes(b)) => {
                let it = item(b, &mut s.path, false)?;
                s.removed.push(it);
            }
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    Some(())
}

/// Decodes a `StatsRecord` into `s.items` (key and `value_json` only);
/// returns its timestamp (seconds, nanos), if any. `None`: not one the fast
/// path reads.
pub fn decode_stats<'a>(msg: &'a [u8], s: &mut Scratch<'a>) -> Option<Option<(i64, i32)>> {
    s.clear();
    let mut ts: Option<(i64, i32)> = None;
    let mut f = Fields::new(msg);
    while let Some(field) = f.next_field() {
        match field.ok()? {
            (1, Wire::Varint(_)) => {}
            (2, Wire::Bytes(b)) => {
                let (mut secs, mut nanos) = ts.unwrap_or((0, 0));
                let mut g = Fields::new(b);
                while let Some(field) = g.next_field() {
                    match field.ok()? {
                        (1, Wire::Varint(v)) => secs = v as i64,
                        (2, Wire::Varint(v)) => nanos = v as i32,
                        (1 | 2, _) => return None,
                        _ => {}
                    }
                }
                ts = Some((secs, nanos));
            }
            (3, Wire::Bytes(b)) => {
                // a StatsItem has only key (1) and value_json (16)
                let mut it = Item {
                    key: "",
                    nested: 0..0,
                    value_json: "",
                    typed: None,
                };
                let mut g = Fields::new(b);
                while let Some(field) = g.next_field() {
                    match field.ok()? {
                        (1, Wire::Bytes(k)) => it.key = text(k)?,
                        (16, Wire::Bytes(v)) => it.value_json = text(v)?,
                        (1 | 16, _) => return None,
                        _ => {}
                    }
                }
                s.items.push(it);
            }
            (1..=3, _) => return None,
            _ => {}
        }
    }
    Some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wandb::proto;
    use prost::Message;

    fn history(items: Vec<proto::HistoryItem>, step: Option<i64>) -> Vec<u8> {
        proto::Record {
            num: 7,
            record_type: Some(proto::RecordType::History(proto::HistoryRecord {
                item: items,
                step: step.map(|num| proto::HistoryStep { num }),
            })),
            uuid: String::new(),
        }
        .encode_to_vec()
    }

    fn hitem(key: &str, nested: &[&str], json: &str) -> proto::HistoryItem {
        proto::HistoryItem {
            key: key.into(),
            nested_key: nested.iter().map(|s| s.to_string()).collect(),
            value: None,
            value_json: json.into(),
        }
    }

    #[test]
    fn history_items_borrow_from_the_payload() {
        let bytes = history(
            vec![hitem("loss", &[], "0.5"), hitem("", &["val", "acc"], "1")],
            Some(42),
        );
        let Peek::History(msg) = peek(&bytes) else {
            panic!("not a history record: {:?}", peek(&bytes));
        };
        let mut s = Scratch::default();
        assert_eq!(decode_history(msg, &mut s), Some(Some(42)));
        assert_eq!(s.items.len(), 2);
        assert_eq!(s.key_path(&s.items[0]), ["loss"]);
        assert_eq!(s.key_path(&s.items[1]), ["val", "acc"]);
        assert_eq!(s.items[1].value_json, "1");
    }

    #[test]
    fn long_strings_take_the_general_walk() {
        let long = format!("\"{}\"", "x".repeat(300));
        let bytes = history(
            vec![hitem("", &["a", "b"], &long), hitem("k", &[], "1")],
            None,
        );
        let Peek::History(msg) = peek(&bytes) else {
            panic!()
        };
        let mut s = Scratch::default();
        assert_eq!(decode_history(msg, &mut s), Some(None));
        assert_eq!(s.key_path(&s.items[0]), ["a", "b"]);
        assert_eq!(s.items[0].value_json, long);
        assert_eq!((s.items[1].key, s.items[1].value_json), ("k", "1"));
        // a string cut short is refused, not read past
        assert_eq!(decode_history(&msg[..msg.len() - 1], &mut s), None);
    }

    #[test]
    fn typed_values_decode_as_prost_does() {
        let mut items = Vec::new();
        for (i, v) in [
            proto::HistoryValue::None(0),
            proto::HistoryValue::Boolean(true),
            proto::HistoryValue::Integer(-5),
            proto::HistoryValue::Number(2.5),
            proto::HistoryValue::Text("hé".into()),
            proto::HistoryValue::Json("[1]".into()),
        ]
        .into_iter()
        .enumerate()
        {
            items.push(proto::HistoryItem {
                key: format!("k{i}"),
                nested_key: vec![],
                value: Some(v),
                value_json: String::new(),
            });
        }
        let bytes = history(items, None);
        let Peek::History(msg) = peek(&bytes) else {
            panic!()
        };
        let mut s = Scratch::default();
        assert_eq!(decode_history(msg, &mut s), Some(None));
        let typed: Vec<_> = s.items.iter().map(|i| i.typed).collect();
        assert_eq!(
            typed,
            [
                Some(Typed::None),
                Some(Typed::Bool(true)),
                Some(Typed::Int(-5)),
                Some(Typed::Float(2.5)),
                Some(Typed::Text("hé")),
                Some(Typed::Json("[1]")),
            ]
        );
    }

    #[test]
    fn anything_unusual_goes_to_prost() {
        // invalid UTF-8 in a key
        let mut bad = history(vec![hitem("loss", &[], "1")], None);
        let at = bad.windows(4).position(|w| w == b"loss").unwrap();
        bad[at] = 0xff;
        let Peek::History(msg) = peek(&bad) else {
            panic!()
        };
        assert_eq!(decode_history(msg, &mut Scratch::default()), None);
        assert!(proto::Record::decode(bad.as_slice()).is_err());
        // truncated payload
        let good = history(vec![hitem("loss", &[], "1")], None);
        assert_eq!(peek(&good[..good.len() - 1]), Peek::Other);
        // two record types in one record: prost decides
        let mut two = good.clone();
        two.extend(
            proto::Record {
                num: 0,
                record_type: Some(proto::RecordType::Summary(proto::SummaryRecord::default())),
                uuid: String::new(),
            }
            .encode_to_vec(),
        );
        assert_eq!(peek(&two), Peek::Other);
        // a record type the reader does not declare (field 9, tbrecord)
        assert_eq!(peek(&[0x4a, 0x00]), Peek::Unknown);
        // a cold record type
        let exit = proto::Record {
            num: 1,
            record_type: Some(proto::RecordType::Exit(proto::RunExitRecord::default())),
            uuid: String::new(),
        }
        .encode_to_vec();
        assert_eq!(peek(&exit), Peek::Other);
        // a group
        assert_eq!(peek(&[0x0b, 0x0c]), Peek::Other);
    }

    #[test]
    fn summary_and_stats() {
        let sum = proto::Record {
            num: 3,
            record_type: Some(proto::RecordType::Summary(proto::SummaryRecord {
                update: vec![proto::SummaryItem {
                    key: "acc".into(),
                    nested_key: vec![],
                    value_json: "0.9".into(),
                }],
                remove: vec![proto::SummaryItem {
                    key: "".into(),
                    nested_key: vec!["a".into(), "b".into()],
                    value_json: "".into(),
                }],
            })),
            uuid: String::new(),
        }
        .encode_to_vec();
        let Peek::Summary(msg) = peek(&sum) else {
            panic!()
        };
        let mut s = Scratch::default();
        assert_eq!(decode_summary(msg, &mut s), Some(()));
        assert_eq!(s.items[0].value_json, "0.9");
        assert_eq!(s.key_path(&s.removed[0]), ["a", "b"]);

        let stats = proto::Record {
            num: 4,
            record_type: Some(proto::RecordType::Stats(proto::StatsRecord {
                stats_type: 0,
                timestamp: Some(proto::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                item: vec![proto::StatsItem {
                    key: "cpu".into(),
                    value_json: "12.5".into(),
                }],
            })),
            uuid: String::new(),
        }
        .encode_to_vec();
        let Peek::Stats(msg) = peek(&stats) else {
            panic!()
        };
        assert_eq!(decode_stats(msg, &mut s), Some(Some((1_700_000_000, 5))));
        assert_eq!((s.items[0].key, s.items[0].value_json), ("cpu", "12.5"));
    }
}
