//! Whatever a lake became, as the types the aggregation reads (issue 16).
//!
//! Other engines rewrite flowlens Parquet with other physical types: Spark has no unsigned
//! integers (`interface_index` becomes `int64`, `destination_port` `int32`), timestamps come in
//! any unit (Spark's default INT96 reads as nanoseconds) with or without a time zone, strings
//! come plain, large, as views or as dictionaries. [`normalize`] turns a batch of any of these
//! into the canonical types of `flowlens_schema::record` (`Timestamp(µs)`, `UInt32`, `UInt16`,
//! `Int64`, `Utf8`; the address columns may stay `Dictionary(Int32, Utf8)`). Integers are
//! range-checked: a value that does not fit the canonical type is an error (the caller names the
//! file and row group), never a silent wrap. Timestamps with a time zone are instants (Arrow
//! stores them in UTC); timestamps without one are taken as UTC.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
    cast::AsArray,
    types::{
        Int8Type, Int16Type, Int32Type, Int64Type, TimestampMillisecondType,
        TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
        UInt64Type,
    },
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

/// Columns the report needs in every file (a file without one of them is an error).
pub const REQUIRED: &[&str] = &[
    "flow_start",
    "flow_end",
    "observation_point",
    "interface_name",
    "interface_index",
    "direction",
    "network_transport",
    "source_address",
    "destination_address",
    "destination_port",
    "packets",
    "bytes",
];

/// Columns read when present and taken as all null when absent (older files, other writers).
pub const OPTIONAL: &[&str] = &["host"];

/// An end's identity or Kubernetes name column (`source_`/`destination_` + a `--group-by` field).
fn is_group_column(name: &str) -> bool {
    let Some(f) = name
        .strip_prefix("source_")
        .or_else(|| name.strip_prefix("destination_"))
    else {
        return false;
    };
    matches!(
        f,
        "k8s_namespace"
            | "k8s_owner_kind"
            | "k8s_owner_name"
            | "k8s_pod_name"
            | "k8s_node_name"
            | "container_id"
            | "cgroup"
            | "label"
    )
}

/// Canonical kind of each column the report reads.
enum Kind {
    Time,
    U32,
    U16,
    U8,
    I64,
    Text,
    /// Text that may stay `Dictionary(Int32, Utf8)`.
    DictText,
}

fn kind(name: &str) -> Option<Kind> {
    Some(match name {
        "flow_start" | "flow_end" => Kind::Time,
        "interface_index" => Kind::U32,
        "destination_port" | "source_port" => Kind::U16,
        "icmp_type" | "icmp_code" => Kind::U8,
        "packets" | "bytes" => Kind::I64,
        "source_address" | "destination_address" => Kind::DictText,
        "observation_point" | "interface_name" | "direction" | "network_transport" | "host" => {
            Kind::Text
        }
        // The text columns `--group-by` reads (any string encoding another engine wrote).
        n if is_group_column(n) => Kind::Text,
        _ => return None,
    })
}

/// The batch with every known column in its canonical type (other columns unchanged). The
/// error names the column and the offending value.
pub fn normalize(b: &RecordBatch) -> Result<RecordBatch, String> {
    let schema = b.schema();
    let mut changed = false;
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(b.columns()) {
        let out = match kind(f.name()) {
            Some(k) => convert(f.name(), c, k)?,
            None => c.clone(),
        };
        if out.data_type() != c.data_type() {
            changed = true;
        }
        fields.push(Field::new(f.name(), out.data_type().clone(), true));
        cols.push(out);
    }
    if !changed {
        return Ok(b.clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| e.to_string())
}

fn convert(name: &str, c: &ArrayRef, k: Kind) -> Result<ArrayRef, String> {
    match k {
        Kind::Time => time(name, c),
        Kind::U32 => int::<UInt32Type>(name, c),
        Kind::U16 => int::<UInt16Type>(name, c),
        Kind::U8 => int::<UInt8Type>(name, c),
        Kind::I64 => int::<Int64Type>(name, c),
        Kind::Text => text(name, c, false),
        Kind::DictText => text(name, c, true),
    }
}

/// Any integer column as `i64` values (nulls keep whatever the buffer holds; callers skip them).
fn as_i64(name: &str, c: &ArrayRef) -> Result<Vec<i64>, String> {
    fn widen<T: ArrowPrimitiveType>(c: &ArrayRef) -> Vec<i64>
    where
        T::Native: Into<i64>,
    {
        c.as_primitive::<T>()
            .values()
            .iter()
            .map(|v| (*v).into())
            .collect()
    }
    Ok(match c.data_type() {
        DataType::Int8 => widen::<Int8Type>(c),
        DataType::Int16 => widen::<Int16Type>(c),
        DataType::Int32 => widen::<Int32Type>(c),
        DataType::Int64 => c.as_primitive::<Int64Type>().values().to_vec(),
        DataType::UInt8 => widen::<UInt8Type>(c),
        DataType::UInt16 => widen::<UInt16Type>(c),
        DataType::UInt32 => widen::<UInt32Type>(c),
        DataType::UInt64 => {
            let a = c.as_primitive::<UInt64Type>();
            let mut out = Vec::with_capacity(a.len());
            for i in 0..a.len() {
                let v = a.values()[i];
                match i64::try_from(v) {
                    Ok(x) => out.push(x),
                    Err(_) if a.is_null(i) => out.push(0),
                    Err(_) => return Err(format!("column {name}: value {v} out of range")),
                }
            }
            out
        }
        t => return Err(format!("column {name} has type {t}, expected an integer")),
    })
}

/// An integer column as `T`, every non-null value range-checked.
fn int<T: ArrowPrimitiveType>(name: &str, c: &ArrayRef) -> Result<ArrayRef, String>
where
    T::Native: TryFrom<i64>,
{
    if *c.data_type() == T::DATA_TYPE {
        return Ok(c.clone());
    }
    let v = as_i64(name, c)?;
    let nulls = c.logical_nulls();
    let mut out: Vec<T::Native> = Vec::with_capacity(v.len());
    for (i, x) in v.into_iter().enumerate() {
        match T::Native::try_from(x) {
            Ok(y) => out.push(y),
            Err(_) if nulls.as_ref().is_some_and(|n| n.is_null(i)) => {
                out.push(T::Native::default())
            }
            Err(_) => {
                return Err(format!(
                    "column {name}: value {x} out of range of {}",
                    T::DATA_TYPE
                ));
            }
        }
    }
    Ok(Arc::new(PrimitiveArray::<T>::new(out.into(), nulls)))
}

/// A timestamp column of any unit (with or without a time zone) as µs since the epoch.
fn time(name: &str, c: &ArrayRef) -> Result<ArrayRef, String> {
    let (values, per_us): (Vec<i64>, Result<i64, i64>) = match c.data_type() {
        // µs already (flowlens writes `Timestamp(µs, "UTC")`): no copy; the aggregation reads
        // the values whatever the time zone (they are UTC instants).
        DataType::Timestamp(TimeUnit::Microsecond, _) => return Ok(c.clone()),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => (
            c.as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec(),
            Err(1000),
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => (
            c.as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec(),
            Ok(1000),
        ),
        DataType::Timestamp(TimeUnit::Second, _) => (
            c.as_primitive::<TimestampSecondType>().values().to_vec(),
            Ok(1_000_000),
        ),
        t => return Err(format!("column {name} has type {t}, expected a timestamp")),
    };
    let nulls = c.logical_nulls();
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let us = match per_us {
            Ok(m) => v.checked_mul(m),
            Err(d) => Some(v.div_euclid(d)),
        };
        match us {
            Some(x) => out.push(x),
            None if nulls.as_ref().is_some_and(|n| n.is_null(i)) => out.push(0),
            None => return Err(format!("column {name}: value {v} out of range")),
        }
    }
    Ok(Arc::new(TimestampMicrosecondArray::new(out.into(), nulls)))
}

/// A text column as `Utf8` (or left as `Dictionary(Int32, Utf8)` when `dict_ok`).
fn text(name: &str, c: &ArrayRef, dict_ok: bool) -> Result<ArrayRef, String> {
    match c.data_type() {
        DataType::Utf8 => Ok(c.clone()),
        DataType::Dictionary(k, v)
            if dict_ok && **k == DataType::Int32 && **v == DataType::Utf8 =>
        {
            Ok(c.clone())
        }
        DataType::LargeUtf8 => Ok(Arc::new(
            c.as_string::<i64>().iter().collect::<StringArray>(),
        )),
        DataType::Utf8View => Ok(Arc::new(c.as_string_view().iter().collect::<StringArray>())),
        DataType::Dictionary(_, _) => {
            let d = c
                .as_any_dictionary_opt()
                .ok_or_else(|| format!("column {name}: unreadable dictionary"))?;
            let values = text(name, d.values(), false)?;
            let values = values.as_string::<i32>();
            let keys = d.normalized_keys();
            let nulls = c.logical_nulls();
            let s: StringArray = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    if nulls.as_ref().is_some_and(|n| n.is_null(i)) || *k >= values.len() {
                        None
                    } else {
                        Some(values.value(*k))
                    }
                })
                .collect();
            Ok(Arc::new(s))
        }
        DataType::Null => Ok(Arc::new(StringArray::new_null(c.len()))),
        t => Err(format!("column {name} has type {t}, expected text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        DictionaryArray, Int32Array, Int64Array, LargeStringArray, TimestampNanosecondArray,
        UInt16Array, UInt32Array, UInt64Array,
    };

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn widened_signed_and_other_units_become_canonical() {
        let b = batch(vec![
            (
                "flow_end",
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_700_000_000_123_456_789i64])
                        .with_timezone("+02:00"),
                ) as ArrayRef,
            ),
            ("interface_index", Arc::new(Int64Array::from(vec![7i64]))),
            ("destination_port", Arc::new(Int32Array::from(vec![65535]))),
            ("packets", Arc::new(UInt64Array::from(vec![12u64]))),
            (
                "observation_point",
                Arc::new(LargeStringArray::from(vec!["xdp"])),
            ),
            (
                "source_address",
                Arc::new(
                    vec![Some("10.0.0.1")]
                        .into_iter()
                        .collect::<DictionaryArray<Int8Type>>(),
                ),
            ),
            ("extra", Arc::new(Int32Array::from(vec![-1]))),
        ]);
        let n = normalize(&b).unwrap();
        let end = n
            .column(0)
            .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        assert_eq!(end.value(0), 1_700_000_000_123_456);
        assert_eq!(
            n.column(1)
                .as_any()
                .downcast_ref::<UInt32Array>()
                .unwrap()
                .value(0),
            7
        );
        assert_eq!(
            n.column(2)
                .as_any()
                .downcast_ref::<UInt16Array>()
                .unwrap()
                .value(0),
            65535
        );
        assert_eq!(n.column(3).as_primitive::<Int64Type>().value(0), 12);
        assert_eq!(n.column(4).as_string::<i32>().value(0), "xdp");
        assert_eq!(n.column(5).as_string::<i32>().value(0), "10.0.0.1");
        assert_eq!(n.column(6).data_type(), &DataType::Int32);
    }

    #[test]
    fn out_of_range_values_are_errors_but_nulls_are_not() {
        let b = batch(vec![(
            "destination_port",
            Arc::new(Int32Array::from(vec![80, 65536])) as ArrayRef,
        )]);
        let e = normalize(&b).unwrap_err();
        assert!(e.contains("destination_port") && e.contains("65536"), "{e}");
        let b = batch(vec![(
            "interface_index",
            Arc::new(Int64Array::from(vec![Some(3), Some(-1)])) as ArrayRef,
        )]);
        assert!(normalize(&b).unwrap_err().contains("-1"));
        let b = batch(vec![(
            "packets",
            Arc::new(UInt64Array::from(vec![u64::MAX])) as ArrayRef,
        )]);
        assert!(normalize(&b).is_err());
        let b = batch(vec![(
            "interface_index",
            Arc::new(Int64Array::from(vec![Some(3), None])) as ArrayRef,
        )]);
        let n = normalize(&b).unwrap();
        assert!(n.column(0).is_null(1));
        let b = batch(vec![(
            "flow_end",
            Arc::new(arrow_array::TimestampSecondArray::from(vec![i64::MAX])) as ArrayRef,
        )]);
        assert!(normalize(&b).unwrap_err().contains("flow_end"));
    }
}
