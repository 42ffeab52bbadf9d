-- flowlens report aggregations for ClickHouse (issue 16; docs/REPORT.md "Other engines").
-- The same queries and rules as duckdb.sql (read its header). Tested with chdb (ClickHouse
-- in-process) reading the Parquet lake with file(); on a server, use s3('https://...') or
-- your MergeTree table (docs/clickhouse.md: then flow_start/flow_end are DateTime64 already and
-- the addresses IPv6: use IPv6NumToString, mapping ::ffff:a.b.c.d back to a.b.c.d).

-- name: view
CREATE OR REPLACE VIEW flows AS
SELECT toInt64(toUnixTimestamp64Micro(flow_end)) AS end_us,
       toInt64(toUnixTimestamp64Micro(flow_start)) AS start_us,
       toInt64(packets) AS packets,
       toInt64(bytes) AS bytes,
       ifNull(toString(observation_point), '') AS obs,
       if(ifNull(toString(interface_name), '') = '', concat('if#', toString(interface_index)),
          toString(interface_name)) AS iface,
       ifNull(toString(direction), '') AS direction,
       ifNull(toString(network_transport), '') AS transport,
       ifNull(toString(source_address), '') AS src,
       ifNull(toString(destination_address), '') AS dst,
       toInt32(destination_port) AS dport,
       host,
       (flow_end IS NOT NULL AND packets IS NOT NULL AND bytes IS NOT NULL
        AND toUnixTimestamp64Micro(flow_end) > 0 AND packets >= 0 AND bytes >= 0) AS valid
FROM file('{lake}/**/*.parquet', Parquet);

-- name: selected
CREATE OR REPLACE VIEW sel AS
SELECT *,
       (start_us IS NULL OR start_us <= 0 OR start_us > end_us
        OR end_us - start_us > 86400000000) AS clamped,
       if(clamped, end_us, assumeNotNull(start_us)) AS st
FROM flows
WHERE valid AND end_us >= {from_us} AND end_us < {to_us} AND obs = '{obs}';

-- name: rows
SELECT count() AS rows_read, countIf(NOT valid) AS rows_rejected FROM flows;

-- name: totals
SELECT count() AS records, sum(packets) AS packets, sum(bytes) AS bytes,
       min(end_us) AS min_end, max(end_us) AS max_end, countIf(clamped) AS rows_clamped
FROM sel;

-- name: observation_points
SELECT obs AS key, count() AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM flows WHERE valid AND end_us >= {from_us} AND end_us < {to_us} GROUP BY obs;

-- name: hosts
SELECT host AS key, count() AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY host;

-- name: series
SELECT iface AS interface, direction, count() AS records, sum(packets) AS packets,
       sum(bytes) AS bytes
FROM sel GROUP BY iface, direction;

-- name: buckets
SELECT iface AS interface, direction, bucket,
       toString(sum(bf)) AS bytes_fixed, toString(sum(pf)) AS packets_fixed
FROM (
    SELECT iface, direction, intDiv(end_us, {bucket_us}) AS bucket,
           toUInt128(bytes) * 4294967296 AS bf, toUInt128(packets) * 4294967296 AS pf
    FROM sel WHERE end_us <= st OR intDiv(st, {bucket_us}) = intDiv(end_us, {bucket_us})
    UNION ALL
    SELECT iface, direction, bucket,
           intDiv(toUInt128(bytes) * toUInt128(ov), d) * 4294967296
             + intDiv((toUInt128(bytes) * toUInt128(ov) % d) * 4294967296, d) AS bf,
           intDiv(toUInt128(packets) * toUInt128(ov), d) * 4294967296
             + intDiv((toUInt128(packets) * toUInt128(ov) % d) * 4294967296, d) AS pf
    FROM (
        SELECT iface, direction, packets, bytes, toUInt128(end_us - st) AS d,
               toInt64(arrayJoin(range(intDiv(st, {bucket_us}), intDiv(end_us, {bucket_us}) + 1)))
                 AS bucket,
               least(end_us, (bucket + 1) * {bucket_us}) - greatest(st, bucket * {bucket_us}) AS ov
        FROM sel WHERE end_us > st AND intDiv(st, {bucket_us}) != intDiv(end_us, {bucket_us})
    )
    WHERE ov > 0
)
GROUP BY iface, direction, bucket;

-- name: sources
SELECT src AS key, count() AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY src;

-- name: destinations
SELECT dst AS key, count() AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY dst;

-- name: conversations
SELECT least(src, dst) AS a, greatest(src, dst) AS z, count() AS records,
       sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY a, z;

-- name: services
SELECT transport, dport AS port, count() AS records, sum(packets) AS packets,
       sum(bytes) AS bytes
FROM sel GROUP BY transport, dport;
