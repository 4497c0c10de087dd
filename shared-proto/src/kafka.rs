//! Names of the numbers a `session.v1.Kafka` carries (Apache Kafka's protocol guide): the REST
//! API, span names and attributes, and metric labels read them through here, so every stage
//! names an API or an error code the same way.

/// The name of a request's API key (`Produce`, `Fetch`, …); `None` for a key not in this table
/// (shown as `ApiKey<n>`).
pub fn api_name(key: u32) -> Option<&'static str> {
    Some(match key {
        0 => "Produce",
        1 => "Fetch",
        2 => "ListOffsets",
        3 => "Metadata",
        8 => "OffsetCommit",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        11 => "JoinGroup",
        12 => "Heartbeat",
        13 => "LeaveGroup",
        14 => "SyncGroup",
        15 => "DescribeGroups",
        16 => "ListGroups",
        17 => "SaslHandshake",
        18 => "ApiVersions",
        19 => "CreateTopics",
        20 => "DeleteTopics",
        21 => "DeleteRecords",
        22 => "InitProducerId",
        23 => "OffsetForLeaderEpoch",
        24 => "AddPartitionsToTxn",
        25 => "AddOffsetsToTxn",
        26 => "EndTxn",
        28 => "TxnOffsetCommit",
        29 => "DescribeAcls",
        30 => "CreateAcls",
        31 => "DeleteAcls",
        32 => "DescribeConfigs",
        33 => "AlterConfigs",
        35 => "DescribeLogDirs",
        36 => "SaslAuthenticate",
        37 => "CreatePartitions",
        42 => "DeleteGroups",
        44 => "IncrementalAlterConfigs",
        47 => "OffsetDelete",
        60 => "DescribeCluster",
        61 => "DescribeProducers",
        65 => "DescribeTransactions",
        66 => "ListTransactions",
        68 => "ConsumerGroupHeartbeat",
        69 => "ConsumerGroupDescribe",
        71 => "GetTelemetrySubscriptions",
        72 => "PushTelemetry",
        75 => "DescribeTopicPartitions",
        _ => return None,
    })
}

/// [`api_name`], or `ApiKey<n>`.
pub fn api_label(key: u32) -> String {
    api_name(key).map_or_else(|| format!("ApiKey{key}"), str::to_owned)
}

/// The name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`, …; `NONE` for 0); `None` for a
/// code not in this table (shown as `ERROR<n>`).
pub fn error_name(code: i32) -> Option<&'static str> {
    Some(match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        0 => "NONE",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        4 => "INVALID_FETCH_SIZE",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        8 => "BROKER_NOT_AVAILABLE",
        9 => "REPLICA_NOT_AVAILABLE",
        10 => "MESSAGE_TOO_LARGE",
        12 => "OFFSET_METADATA_TOO_LARGE",
        13 => "NETWORK_EXCEPTION",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        18 => "RECORD_LIST_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        21 => "INVALID_REQUIRED_ACKS",
        22 => "ILLEGAL_GENERATION",
        23 => "INCONSISTENT_GROUP_PROTOCOL",
        24 => "INVALID_GROUP_ID",
        25 => "UNKNOWN_MEMBER_ID",
        26 => "INVALID_SESSION_TIMEOUT",
        27 => "REBALANCE_IN_PROGRESS",
        28 => "INVALID_COMMIT_OFFSET_SIZE",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        30 => "GROUP_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        32 => "INVALID_TIMESTAMP",
        33 => "UNSUPPORTED_SASL_MECHANISM",
        34 => "ILLEGAL_SASL_STATE",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        39 => "INVALID_REPLICA_ASSIGNMENT",
        40 => "INVALID_CONFIG",
        41 => "NOT_CONTROLLER",
        42 => "INVALID_REQUEST",
        43 => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        44 => "POLICY_VIOLATION",
        45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        46 => "DUPLICATE_SEQUENCE_NUMBER",
        47 => "INVALID_PRODUCER_EPOCH",
        48 => "INVALID_TXN_STATE",
        49 => "INVALID_PRODUCER_ID_MAPPING",
        50 => "INVALID_TRANSACTION_TIMEOUT",
        51 => "CONCURRENT_TRANSACTIONS",
        52 => "TRANSACTION_COORDINATOR_FENCED",
        53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        54 => "SECURITY_DISABLED",
        55 => "OPERATION_NOT_ATTEMPTED",
        56 => "KAFKA_STORAGE_ERROR",
        57 => "LOG_DIR_NOT_FOUND",
        58 => "SASL_AUTHENTICATION_FAILED",
        59 => "UNKNOWN_PRODUCER_ID",
        60 => "REASSIGNMENT_IN_PROGRESS",
        72 => "LISTENER_NOT_FOUND",
        74 => "FENCED_LEADER_EPOCH",
        75 => "UNKNOWN_LEADER_EPOCH",
        76 => "UNSUPPORTED_COMPRESSION_TYPE",
        77 => "STALE_BROKER_EPOCH",
        78 => "OFFSET_NOT_AVAILABLE",
        79 => "MEMBER_ID_REQUIRED",
        81 => "GROUP_MAX_SIZE_REACHED",
        82 => "FENCED_INSTANCE_ID",
        87 => "INVALID_RECORD",
        89 => "THROTTLING_QUOTA_EXCEEDED",
        100 => "UNKNOWN_TOPIC_ID",
        _ => return None,
    })
}

/// [`error_name`], or `ERROR<n>`.
pub fn error_label(code: i32) -> String {
    error_name(code).map_or_else(|| format!("ERROR{code}"), str::to_owned)
}

/// The OpenTelemetry messaging operation of an API: `(messaging.operation.name,
/// messaging.operation.type)` — `send` for Produce, `poll`/`receive` for Fetch, `commit` for
/// OffsetCommit; `None` for the APIs that are not a messaging operation (Metadata, ApiVersions,
/// group membership, administration).
pub fn messaging_operation(key: u32) -> Option<(&'static str, &'static str)> {
    match key {
        0 => Some(("send", "send")),
        1 => Some(("poll", "receive")),
        8 => Some(("commit", "settle")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert_eq!(api_label(0), "Produce");
        assert_eq!(api_label(3), "Metadata");
        assert_eq!(api_label(999), "ApiKey999");
        assert_eq!(error_label(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_label(0), "NONE");
        assert_eq!(error_label(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_label(4242), "ERROR4242");
        assert_eq!(messaging_operation(1), Some(("poll", "receive")));
        assert_eq!(messaging_operation(3), None);
    }
}
