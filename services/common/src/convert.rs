//! Conversions between the services' domain values and the wire's well-known types, written
//! once: every service answers with `google.protobuf.Timestamp`s made the same way.

use chrono::{DateTime, Utc};

/// `t` as a protobuf timestamp (whole seconds and the nanoseconds within the second).
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        // Below 2e9 by construction, so it fits.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_seconds_and_nanoseconds() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("a time");
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
        let before_epoch = DateTime::from_timestamp(-1, 500).expect("a time");
        assert_eq!(timestamp(before_epoch).seconds, -1);
    }
}
