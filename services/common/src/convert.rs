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

/// The time a protobuf timestamp names; None when it is out of chrono's range. Negative
/// nanoseconds (which a valid timestamp never has) count as zero.
pub fn datetime(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
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

    #[test]
    fn timestamps_convert_back() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("a time");
        assert_eq!(datetime(&timestamp(t)), Some(t));
        let odd = prost_types::Timestamp {
            seconds: 5,
            nanos: -3,
        };
        assert_eq!(datetime(&odd), DateTime::from_timestamp(5, 0));
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(datetime(&far), None);
    }
}
