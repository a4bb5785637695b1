//! The telemetry message both binaries speak (contract section 3): topics,
//! device id rules and the payload of the system being replaced, plus `seq`.

use serde::{Deserialize, Serialize};

/// Topic prefix devices publish to: `device/data/{device_id}`.
pub const DATA_PREFIX: &str = "device/data/";
/// Legacy topic prefix still accepted: `vehicle/speed/{device_id}`.
pub const LEGACY_PREFIX: &str = "vehicle/speed/";
/// What the collector subscribes to unless told otherwise.
pub const DEFAULT_TOPICS: &[&str] = &["device/data/+", "vehicle/speed/+"];
/// Longest device id.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// The topic a device publishes its telemetry to.
pub fn data_topic(device_id: &str) -> String {
    format!("{DATA_PREFIX}{device_id}")
}

/// The legacy topic of a device.
pub fn legacy_topic(device_id: &str) -> String {
    format!("{LEGACY_PREFIX}{device_id}")
}

/// Why a device id is not acceptable; the text is what the rejected table stores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Empty.
    #[error("device_id is empty")]
    Empty,
    /// Too long.
    #[error("device_id is {0} characters long; at most 128 are allowed")]
    TooLong(usize),
    /// Characters outside the allowed set.
    #[error("device_id {0:?} has characters outside [A-Za-z0-9_.-]")]
    BadCharacters(String),
}

/// Checks the contract's rule: 1 to 128 characters of `A-Z a-z 0-9 _ - .`.
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    let len = id.chars().count();
    if len > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong(len));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        let shown: String = id.chars().take(64).collect();
        return Err(DeviceIdError::BadCharacters(shown));
    }
    Ok(())
}

/// One telemetry reading, with the field names and types of the replaced system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Device id.
    pub device_id: String,
    /// Per-device sequence number from 1, kept across simulator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Unix seconds of the publish.
    pub timestamp: f64,
    /// km/h.
    pub speed: f64,
    /// Percent.
    pub cpu_usage: f64,
    /// Percent.
    pub ram_usage: f64,
    /// Bytes.
    pub memory_total: u64,
    /// Bytes.
    pub memory_used: u64,
    /// Bytes.
    pub memory_available: u64,
    /// Percent.
    pub memory_percent: f64,
    /// Bytes.
    pub disk_total: u64,
    /// Bytes.
    pub disk_used: u64,
    /// Bytes.
    pub disk_free: u64,
    /// Percent.
    pub disk_percent: f64,
    /// Counter, bytes.
    pub network_bytes_sent: u64,
    /// Counter, bytes.
    pub network_bytes_recv: u64,
    /// What the on-board camera detected.
    pub detection_label: String,
    /// 0..1.
    pub detection_confidence: f64,
}

impl Telemetry {
    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("telemetry always serialises")
    }
}

/// The same payload with its top-level `"timestamp"` set to `ts`, for a message that
/// waited in a queue: the contract's timestamp is the time of the publish. Works on
/// the compact JSON that [`Telemetry::to_json`] writes; `None` if there is no such field.
pub fn with_publish_time(payload: &[u8], ts: f64) -> Option<Vec<u8>> {
    const KEY: &[u8] = b"\"timestamp\":";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = payload[start..]
        .iter()
        .position(|b| !(b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')))?;
    if len == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(serde_json::to_string(&ts).ok()?.as_bytes());
    out.extend_from_slice(&payload[start + len..]);
    Some(out)
}

/// Unix time now, in seconds with sub-second precision.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_rules() {
        assert!(validate_device_id("vehicle_01").is_ok());
        assert!(validate_device_id("a.b-c_D9").is_ok());
        assert!(validate_device_id(&"x".repeat(128)).is_ok());
        assert_eq!(validate_device_id(""), Err(DeviceIdError::Empty));
        assert_eq!(
            validate_device_id(&"x".repeat(129)),
            Err(DeviceIdError::TooLong(129))
        );
        let err = validate_device_id("a/b").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"device_id "a/b" has characters outside [A-Za-z0-9_.-]"#
        );
        for bad in [
            "a+b",
            "#",
            "a b",
            "é",
            "x'; DROP TABLE telemetry;--",
            "a\u{0}b",
        ] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_keeps_the_replaced_field_names() {
        let t = Telemetry {
            device_id: "vehicle_01".into(),
            seq: Some(3),
            timestamp: 1.5,
            speed: 42.0,
            cpu_usage: 1.0,
            ram_usage: 2.0,
            memory_total: 8,
            memory_used: 4,
            memory_available: 4,
            memory_percent: 50.0,
            disk_total: 10,
            disk_used: 5,
            disk_free: 5,
            disk_percent: 50.0,
            network_bytes_sent: 1,
            network_bytes_recv: 2,
            detection_label: "car".into(),
            detection_confidence: 0.9,
        };
        let v: serde_json::Value = serde_json::from_slice(&t.to_json()).unwrap();
        for field in [
            "device_id",
            "seq",
            "timestamp",
            "speed",
            "cpu_usage",
            "ram_usage",
            "memory_total",
            "memory_used",
            "memory_available",
            "memory_percent",
            "disk_total",
            "disk_used",
            "disk_free",
            "disk_percent",
            "network_bytes_sent",
            "network_bytes_recv",
            "detection_label",
            "detection_confidence",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(data_topic("v1"), "device/data/v1");
        let restamped = with_publish_time(&t.to_json(), 1700000000.25).unwrap();
        let mut want = t.clone();
        want.timestamp = 1700000000.25;
        let got: Telemetry = serde_json::from_slice(&restamped).unwrap();
        assert_eq!(got, want);
        assert_eq!(with_publish_time(b"{\"speed\":1}", 2.0), None);
        assert_eq!(legacy_topic("v1"), "vehicle/speed/v1");
    }
}
