//! The shipped `.proto` file, the Rust encoder and the export schema must agree.
//!
//! 1. `schema/proto/flow.proto` is parsed here (a small parser for the subset it uses) and its
//!    fields compared with `COLUMNS`: same names, same order (field number = position + 1),
//!    a protobuf type that fits the column type, `optional` exactly for nullable columns.
//! 2. Records are encoded by [`Encoder`] and the bytes decoded by a generic wire-format decoder
//!    driven only by the parsed `.proto` file; every field's value must equal the value of the
//!    same-named column in the Arrow batch that the Parquet sink writes (`to_record_batch`).
//! 3. JSON: keys are the column names, values equal the Arrow batch's.

use std::collections::BTreeMap;

use arrow_array::{
    Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt8Array,
    UInt16Array, UInt32Array,
};
use arrow_schema::DataType;
use flowlens_schema::record::{COLUMNS, arrow_schema, to_record_batch};
use flowlens_testkit::records::conversations;

use super::*;

const PROTO: &str = include_str!("../../../../schema/proto/flow.proto");

#[derive(Debug, Clone, PartialEq)]
struct ProtoField {
    name: String,
    ty: String,
    number: u32,
    optional: bool,
}

/// Parses `message FlowRecord { ... }` of a proto3 file: `[optional] TYPE NAME = N;` lines.
fn parse_proto(src: &str) -> (String, String, Vec<ProtoField>) {
    let text: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let stmt = |kw: &str| {
        let i = text.find(kw).unwrap_or_else(|| panic!("no `{kw}`"));
        text[i + kw.len()..]
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let syntax = stmt("syntax =");
    let package = stmt("package ");
    let start = text
        .find("message FlowRecord {")
        .expect("message FlowRecord")
        + 20;
    let end = start + text[start..].find('}').expect("closing brace");
    let mut fields = Vec::new();
    for s in text[start..end].split(';') {
        let toks: Vec<&str> = s.split_whitespace().collect();
        if toks.is_empty() {
            continue;
        }
        let (optional, toks) = match toks[0] {
            "optional" => (true, &toks[1..]),
            _ => (false, &toks[..]),
        };
        assert!(
            toks.len() == 4 && toks[2] == "=",
            "unparsed field statement {s:?}"
        );
        fields.push(ProtoField {
            ty: toks[0].to_string(),
            name: toks[1].to_string(),
            number: toks[3].parse().expect("field number"),
            optional,
        });
    }
    (syntax, package, fields)
}

/// The protobuf type a column maps to.
fn proto_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => "int64",
        DataType::Utf8 => "string",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => "uint32",
        DataType::Int64 => "int64",
        other => panic!("no protobuf mapping for {other}"),
    }
}

#[test]
fn proto_file_matches_the_export_schema() {
    let (syntax, package, fields) = parse_proto(PROTO);
    assert_eq!(syntax, "\"proto3\"");
    assert_eq!(package, "flowlens.v1");
    assert_eq!(fields.len(), COLUMNS.len(), "field count != column count");
    for (i, (f, c)) in fields.iter().zip(COLUMNS).enumerate() {
        assert_eq!(f.name, c.name, "field {i}");
        assert_eq!(f.number as usize, i + 1, "field {} number", f.name);
        assert_eq!(f.ty, proto_type(&(c.data_type)()), "field {} type", f.name);
        assert_eq!(f.optional, c.nullable, "field {} optional", f.name);
    }
}

/// The parser itself catches drift (so the check above can fail).
#[test]
fn proto_parser_sees_changes() {
    let renamed = PROTO.replace("string host = 22;", "string hostname = 22;");
    assert_ne!(parse_proto(&renamed).2, parse_proto(PROTO).2);
    let renumbered = PROTO.replace("int64 packets = 17;", "int64 packets = 24;");
    assert_ne!(parse_proto(&renumbered).2, parse_proto(PROTO).2);
    let retyped = PROTO.replace("int64 bytes = 18;", "uint32 bytes = 18;");
    assert_ne!(parse_proto(&retyped).2, parse_proto(PROTO).2);
}

/// A decoded protobuf value, typed by the `.proto` declaration.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(i128),
    Str(String),
    Null,
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long");
}

/// Decodes one message using only the parsed `.proto` fields; absent fields get proto3
/// defaults (`optional` ones: Null).
fn decode_with_proto(fields: &[ProtoField], b: &[u8]) -> BTreeMap<String, Val> {
    let by_num: BTreeMap<u32, &ProtoField> = fields.iter().map(|f| (f.number, f)).collect();
    let mut out: BTreeMap<String, Val> = fields
        .iter()
        .map(|f| {
            let v = match (f.optional, f.ty.as_str()) {
                (true, _) => Val::Null,
                (false, "string") => Val::Str(String::new()),
                _ => Val::Int(0),
            };
            (f.name.clone(), v)
        })
        .collect();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i);
        let (num, wire) = ((tag >> 3) as u32, tag & 7);
        let f = by_num
            .get(&num)
            .unwrap_or_else(|| panic!("field number {num} is not in the .proto"));
        let v = match (wire, f.ty.as_str()) {
            (0, "int64") => Val::Int(i128::from(varint(b, &mut i) as i64)),
            (0, "uint32") => {
                let v = varint(b, &mut i);
                assert!(v <= u64::from(u32::MAX), "{} overflows uint32", f.name);
                Val::Int(i128::from(v))
            }
            (2, "string") => {
                let n = varint(b, &mut i) as usize;
                let s = std::str::from_utf8(&b[i..i + n])
                    .expect("utf-8")
                    .to_string();
                i += n;
                Val::Str(s)
            }
            (w, t) => panic!("field {} declared {t} arrived with wire type {w}", f.name),
        };
        out.insert(f.name.clone(), v);
    }
    out
}

/// Row `i` of the Arrow batch as (column name → value). Timestamps as µs integers.
fn arrow_row(b: &RecordBatch, i: usize) -> BTreeMap<String, Val> {
    let schema = b.schema();
    let mut out = BTreeMap::new();
    for (f, col) in schema.fields().iter().zip(b.columns()) {
        let v = if col.is_null(i) {
            Val::Null
        } else {
            let a = col.as_any();
            match f.data_type() {
                DataType::Timestamp(..) => Val::Int(
                    a.downcast_ref::<TimestampMicrosecondArray>()
                        .unwrap()
                        .value(i)
                        .into(),
                ),
                DataType::Utf8 => {
                    Val::Str(a.downcast_ref::<StringArray>().unwrap().value(i).into())
                }
                DataType::UInt8 => {
                    Val::Int(a.downcast_ref::<UInt8Array>().unwrap().value(i).into())
                }
                DataType::UInt16 => {
                    Val::Int(a.downcast_ref::<UInt16Array>().unwrap().value(i).into())
                }
                DataType::UInt32 => {
                    Val::Int(a.downcast_ref::<UInt32Array>().unwrap().value(i).into())
                }
                DataType::Int64 => {
                    Val::Int(a.downcast_ref::<Int64Array>().unwrap().value(i).into())
                }
                other => panic!("unhandled column type {other}"),
            }
        };
        out.insert(f.name().clone(), v);
    }
    out
}

#[test]
fn protobuf_bytes_decode_with_the_proto_file_to_the_parquet_values() {
    let (_, _, fields) = parse_proto(PROTO);
    let recs = conversations(60);
    let batch = to_record_batch(&arrow_schema(), &recs).unwrap();
    let mut enc = Encoder::new(KafkaFormat::Protobuf);
    let mut buf = Vec::new();
    let (mut saw_null_vlan, mut saw_vlan, mut saw_big) = (false, false, false);
    for (i, r) in recs.iter().enumerate() {
        enc.encode(r, &mut buf);
        let got = decode_with_proto(&fields, &buf);
        let want = arrow_row(&batch, i);
        assert_eq!(got, want, "record {i}");
        saw_null_vlan |= want["vlan_id"] == Val::Null;
        saw_vlan |= matches!(want["vlan_id"], Val::Int(_));
        saw_big |= matches!(want["bytes"], Val::Int(v) if v > i128::from(u32::MAX));
        // prost's own decoder agrees with the generic one.
        let m = <FlowMessage as prost::Message>::decode(&buf[..]).unwrap();
        assert_eq!(m.community_id, r.community_id);
        assert_eq!(m.bytes as u64, r.bytes);
    }
    assert!(
        saw_null_vlan && saw_vlan && saw_big,
        "test data lacks a case"
    );
}

#[test]
fn json_keys_are_the_columns_and_values_match_parquet() {
    let recs = conversations(30);
    let batch = to_record_batch(&arrow_schema(), &recs).unwrap();
    let mut enc = Encoder::new(KafkaFormat::Json);
    let mut buf = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        enc.encode(r, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut cols: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        cols.sort_unstable();
        assert_eq!(keys, cols, "record {i}");
        // Key order in the text is the column order too.
        let text = std::str::from_utf8(&buf).unwrap();
        let pos: Vec<usize> = COLUMNS
            .iter()
            .map(|c| text.find(&format!("\"{}\":", c.name)).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "order: {text}");
        for (name, want) in arrow_row(&batch, i) {
            let got = &obj[&name];
            let ok = match (&want, got) {
                (Val::Null, serde_json::Value::Null) => true,
                (Val::Str(s), serde_json::Value::String(g)) => s == g,
                (Val::Int(n), serde_json::Value::String(g)) if name.starts_with("flow_") => {
                    *g == rfc3339_micros(*n as i64)
                }
                (Val::Int(n), serde_json::Value::Number(g)) => {
                    g.as_u64().map(i128::from) == Some(*n)
                }
                _ => false,
            };
            assert!(ok, "record {i} column {name}: {got} vs {want:?}");
        }
    }
}

#[test]
fn rfc3339_is_exact() {
    assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        rfc3339_micros(1_764_140_000_123_456),
        "2025-11-26T06:53:20.123456Z"
    );
    assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    assert_eq!(
        rfc3339_micros(951_782_400_000_000),
        "2000-02-29T00:00:00.000000Z"
    );
}

#[test]
fn both_directions_share_a_key_and_conversations_differ() {
    let recs = conversations(200);
    let mut keys = std::collections::HashSet::new();
    for pair in recs.chunks(2) {
        assert_ne!(pair[0].key.src_addr, pair[1].key.src_addr);
        assert_eq!(message_key(&pair[0]), message_key(&pair[1]));
        keys.insert(message_key(&pair[0]));
    }
    assert_eq!(keys.len(), 200, "distinct conversations collide");
    // Stable across builds: FNV-1a 64 of a known ID.
    let mut r = recs[0].clone();
    r.community_id = "1:LQU9qZlK+B5F3KDmev6m5PMibrg=".into();
    assert_eq!(message_key(&r), 0x6e14_7d16_93bc_a147_u64.to_be_bytes());
}

#[test]
fn formats_parse() {
    assert_eq!("json".parse::<KafkaFormat>().unwrap(), KafkaFormat::Json);
    assert_eq!(
        "protobuf".parse::<KafkaFormat>().unwrap(),
        KafkaFormat::Protobuf
    );
    assert!(
        "avro"
            .parse::<KafkaFormat>()
            .unwrap_err()
            .contains("protobuf")
    );
}

/// `docs/SCHEMA.md`'s Kafka mapping table, generated from `COLUMNS` and the type mapping above.
fn kafka_markdown_table() -> String {
    let mut s =
        String::from("| column | protobuf field number: type | JSON value |\n|---|---|---|\n");
    for (i, c) in COLUMNS.iter().enumerate() {
        let dt = (c.data_type)();
        let json = match dt {
            DataType::Timestamp(..) => {
                "string, RFC 3339 UTC with µs (`2026-11-26T07:30:08.123456Z`)"
            }
            DataType::Utf8 => "string",
            _ => "number",
        };
        let note = match dt {
            DataType::Timestamp(..) => " (µs since the Unix epoch, UTC)",
            _ => "",
        };
        s.push_str(&format!(
            "| `{}` | {}: {}`{}`{} | {}{} |\n",
            c.name,
            i + 1,
            if c.nullable { "optional " } else { "" },
            proto_type(&dt),
            note,
            json,
            if c.nullable { " or null" } else { "" }
        ));
    }
    s
}

/// docs/SCHEMA.md must contain the generated Kafka table verbatim (between the `kafka` markers).
/// `FLOWLENS_BLESS=1 cargo test -p flowlens-sinks --lib kafka` rewrites it.
#[test]
fn schema_doc_kafka_table_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SCHEMA.md");
    let doc = std::fs::read_to_string(path).expect("docs/SCHEMA.md");
    let (begin, end) = ("<!-- kafka:begin -->\n", "<!-- kafka:end -->");
    let b = doc.find(begin).expect("kafka begin marker") + begin.len();
    let e = doc.find(end).expect("kafka end marker");
    if std::env::var_os("FLOWLENS_BLESS").is_some() {
        let new = format!("{}{}{}", &doc[..b], kafka_markdown_table(), &doc[e..]);
        std::fs::write(path, new).unwrap();
        return;
    }
    assert_eq!(
        &doc[b..e],
        kafka_markdown_table(),
        "docs/SCHEMA.md is out of date; run FLOWLENS_BLESS=1 cargo test -p flowlens-sinks --lib kafka"
    );
}
