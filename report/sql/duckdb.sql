-- flowlens report aggregations for DuckDB (issue 16; docs/REPORT.md "Other engines").
-- report/sql/run.py fills in {lake}, {from_us}, {to_us}, {bucket_us}, {obs} and runs each
-- "-- name:" section; `flowlens report --from-json` turns the result into the report.
-- Rules (the same as flowlens report, report/src/compute.rs):
--   * a row is rejected when packets/bytes are null or negative or flow_end is null or at or
--     before 1970-01-01; it is selected when flow_end is in [from, to) and observation_point
--     is the chosen one;
--   * flow_start null, <= 0, after flow_end or more than a day before it: the row counts as
--     zero-length at flow_end ("clamped");
--   * a row's bytes/packets are spread over the buckets [flow_start, flow_end] overlaps, in
--     fixed point with 32 fraction bits, each share rounded down: x*ov/d -> (x*ov div d) * 2^32
--     + ((x*ov mod d) * 2^32) div d. Integer sums: any engine, any row order, same bits.

-- name: view
CREATE OR REPLACE TEMP VIEW flows AS
SELECT CAST(epoch_us(flow_end) AS BIGINT) AS end_us,
       CAST(epoch_us(flow_start) AS BIGINT) AS start_us,
       CAST(packets AS BIGINT) AS packets,
       CAST(bytes AS BIGINT) AS bytes,
       coalesce(observation_point, '') AS obs,
       CASE WHEN coalesce(interface_name, '') = '' THEN 'if#' || CAST(interface_index AS VARCHAR)
            ELSE interface_name END AS iface,
       coalesce(direction, '') AS direction,
       coalesce(network_transport, '') AS transport,
       coalesce(source_address, '') AS src,
       coalesce(destination_address, '') AS dst,
       CAST(destination_port AS INTEGER) AS dport,
       CAST(host AS VARCHAR) AS host,
       (flow_end IS NOT NULL AND packets IS NOT NULL AND bytes IS NOT NULL
        AND epoch_us(flow_end) > 0 AND packets >= 0 AND bytes >= 0) AS valid
-- Files without a host column (older flowlens) read it as null, even if no file has one.
FROM (SELECT * FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = false,
                                 union_by_name = true)
      UNION ALL BY NAME SELECT CAST(NULL AS VARCHAR) AS host WHERE false);

-- name: selected
CREATE OR REPLACE TEMP VIEW sel AS
SELECT *,
       CASE WHEN start_us IS NULL OR start_us <= 0 OR start_us > end_us
                 OR end_us - start_us > 86400000000 THEN end_us ELSE start_us END AS st,
       (start_us IS NULL OR start_us <= 0 OR start_us > end_us
        OR end_us - start_us > 86400000000) AS clamped
FROM flows
WHERE valid AND end_us >= {from_us} AND end_us < {to_us} AND obs = '{obs}';

-- name: rows
SELECT count(*) AS rows_read, count(*) FILTER (WHERE NOT valid) AS rows_rejected FROM flows;

-- name: totals
SELECT count(*) AS records, coalesce(sum(packets), 0) AS packets, coalesce(sum(bytes), 0) AS bytes,
       min(end_us) AS min_end, max(end_us) AS max_end,
       count(*) FILTER (WHERE clamped) AS rows_clamped
FROM sel;

-- name: observation_points
SELECT obs AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM flows WHERE valid AND end_us >= {from_us} AND end_us < {to_us} GROUP BY obs;

-- name: hosts
SELECT host AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY host;

-- name: series
SELECT iface AS interface, direction, count(*) AS records, sum(packets) AS packets,
       sum(bytes) AS bytes
FROM sel GROUP BY iface, direction;

-- name: buckets
WITH one AS (
    SELECT iface, direction, end_us // {bucket_us} AS bucket,
           CAST(bytes AS HUGEINT) * 4294967296 AS bf, CAST(packets AS HUGEINT) * 4294967296 AS pf
    FROM sel WHERE end_us <= st OR st // {bucket_us} = end_us // {bucket_us}
), spread AS (
    SELECT iface, direction, bucket, packets, bytes, end_us - st AS d,
           least(end_us, (bucket + 1) * {bucket_us}) - greatest(st, bucket * {bucket_us}) AS ov
    FROM (SELECT *, unnest(range(st // {bucket_us}, end_us // {bucket_us} + 1)) AS bucket
          FROM sel WHERE end_us > st AND st // {bucket_us} <> end_us // {bucket_us})
), shares AS (
    SELECT iface, direction, bucket,
           (CAST(bytes AS HUGEINT) * ov // d) * 4294967296
             + ((CAST(bytes AS HUGEINT) * ov % d) * 4294967296) // d AS bf,
           (CAST(packets AS HUGEINT) * ov // d) * 4294967296
             + ((CAST(packets AS HUGEINT) * ov % d) * 4294967296) // d AS pf
    FROM spread WHERE ov > 0
)
SELECT iface AS interface, direction, bucket,
       CAST(sum(bf) AS VARCHAR) AS bytes_fixed, CAST(sum(pf) AS VARCHAR) AS packets_fixed
FROM (SELECT * FROM one UNION ALL SELECT * FROM shares)
GROUP BY iface, direction, bucket;

-- name: sources
SELECT src AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY src;

-- name: destinations
SELECT dst AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY dst;

-- name: conversations
SELECT least(src, dst) AS a, greatest(src, dst) AS z, count(*) AS records,
       sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY least(src, dst), greatest(src, dst);

-- name: services
SELECT transport, dport AS port, count(*) AS records, sum(packets) AS packets,
       sum(bytes) AS bytes
FROM sel GROUP BY transport, dport;
