//! The JSON shapes schedules are stored and sent in, as the other SDKs write and read them.
//!
//! Entity state: PascalCase keys, the status as the .NET enum's ordinal, the interval as a .NET
//! `TimeSpan` (`[-][d.]hh:mm:ss[.fffffff]`), times as ISO 8601 with an offset, the input as a JSON
//! string. Operation inputs (create, update): the Python SDK's snake_case keys with the interval
//! in seconds. Reads also take the older snake_case state and a status by name.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ScheduleCreationOptions, ScheduleDescription, ScheduleUpdateOptions};

/// Where a schedule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScheduleStatus {
    /// Not created, or deleted.
    #[default]
    Uninitialized,
    Active,
    Paused,
}

impl ScheduleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uninitialized => "Uninitialized",
            Self::Active => "Active",
            Self::Paused => "Paused",
        }
    }

    fn ordinal(self) -> u8 {
        match self {
            Self::Uninitialized => 0,
            Self::Active => 1,
            Self::Paused => 2,
        }
    }
}

impl Serialize for ScheduleStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.ordinal())
    }
}

impl<'de> Deserialize<'de> for ScheduleStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // An ordinal, or a name (older writers); anything else reads as not created, as the
        // other SDKs read it.
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(1) => Self::Active,
                Some(2) => Self::Paused,
                _ => Self::Uninitialized,
            },
            serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "active" => Self::Active,
                "2" | "paused" => Self::Paused,
                _ => Self::Uninitialized,
            },
            _ => Self::Uninitialized,
        })
    }
}

/// A time as Python's `isoformat()` writes an aware UTC time (microseconds, `+00:00`).
pub(super) fn iso(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

/// Reads an ISO 8601 time with an offset or `Z`; one without is taken as UTC.
pub(super) fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

mod opt_time {
    use super::*;

    pub(in super::super) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&iso(*t)),
            None => s.serialize_none(),
        }
    }

    pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => parse_iso(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an ISO 8601 time: {s}"))),
        }
    }
}

const TICKS_PER_SECOND: u128 = 10_000_000;

/// A duration as a .NET `TimeSpan` string.
pub(super) fn timespan(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let clock = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    let mut out = if days > 0 {
        format!("{days}.{clock}")
    } else {
        clock
    };
    let ticks = d.subsec_nanos() / 100;
    if ticks > 0 {
        out.push_str(&format!(".{ticks:07}"));
    }
    out
}

/// Reads a .NET `TimeSpan` string; negative ones are refused.
pub(super) fn parse_timespan(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.starts_with('-') {
        return None;
    }
    let (days, clock) = match s.split_once('.') {
        // A dot before the first colon separates the days.
        Some((d, rest)) if !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, s),
    };
    let (clock, fraction) = match clock.rsplit_once('.') {
        Some((c, f)) if !f.contains(':') => (c, Some(f)),
        _ => (clock, None),
    };
    let mut parts = clock.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() {
        return None;
    }
    let mut nanos = 0u32;
    if let Some(f) = fraction {
        if f.is_empty() || f.len() > 7 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ticks: u128 = format!("{f:0<7}").parse().ok()?;
        nanos = (ticks * 1_000_000_000 / TICKS_PER_SECOND) as u32;
    }
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h.checked_mul(3600)?)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(sec)?;
    Some(Duration::new(secs, nanos))
}

mod interval {
    use super::*;

    pub(in super::super) fn serialize<S: Serializer>(
        d: &Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&timespan(*d))
    }

    pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_timespan(&s).ok_or_else(|| serde::de::Error::custom(format!("not a TimeSpan: {s}")))
    }
}

/// The configuration part of the entity's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Configuration {
    #[serde(alias = "schedule_id")]
    pub(super) schedule_id: String,
    #[serde(alias = "orchestration_name")]
    pub(super) orchestration_name: String,
    #[serde(with = "interval")]
    pub(super) interval: Duration,
    /// The input as JSON text (the .NET shape).
    #[serde(default)]
    pub(super) orchestration_input: Option<String>,
    #[serde(default, alias = "orchestration_instance_id")]
    pub(super) orchestration_instance_id: Option<String>,
    #[serde(default, alias = "start_at", with = "opt_time")]
    pub(super) start_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "end_at", with = "opt_time")]
    pub(super) end_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "start_immediately_if_late")]
    pub(super) start_immediately_if_late: bool,
}

impl Configuration {
    pub(super) fn input(&self) -> Option<serde_json::Value> {
        // Not JSON (another writer's shape): the text itself, as the other SDKs read it.
        self.orchestration_input.as_deref().map(|s| {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
        })
    }

    pub(super) fn from_create(o: &ScheduleCreationOptions) -> Self {
        Self {
            schedule_id: o.schedule_id.clone(),
            orchestration_name: o.orchestration_name.clone(),
            interval: o.interval,
            orchestration_input: o.orchestration_input.as_ref().map(|v| v.to_string()),
            orchestration_instance_id: o.orchestration_instance_id.clone(),
            start_at: o.start_at,
            end_at: o.end_at,
            start_immediately_if_late: o.start_immediately_if_late,
        }
    }
}

/// The entity's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct State {
    #[serde(default, alias = "status")]
    pub(super) status: ScheduleStatus,
    #[serde(default, alias = "execution_token")]
    pub(super) execution_token: Option<String>,
    #[serde(default, alias = "last_run_at", with = "opt_time")]
    pub(super) last_run_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "next_run_at", with = "opt_time")]
    pub(super) next_run_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "schedule_created_at", with = "opt_time")]
    pub(super) schedule_created_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "schedule_last_modified_at", with = "opt_time")]
    pub(super) schedule_last_modified_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "schedule_configuration")]
    pub(super) schedule_configuration: Option<Configuration>,
}

impl State {
    pub(super) fn describe(&self) -> ScheduleDescription {
        let c = self.schedule_configuration.as_ref();
        ScheduleDescription {
            schedule_id: c.map(|c| c.schedule_id.clone()).unwrap_or_default(),
            orchestration_name: c.map(|c| c.orchestration_name.clone()),
            orchestration_input: c.and_then(Configuration::input),
            orchestration_instance_id: c.and_then(|c| c.orchestration_instance_id.clone()),
            start_at: c.and_then(|c| c.start_at),
            end_at: c.and_then(|c| c.end_at),
            interval: c.map(|c| c.interval),
            start_immediately_if_late: c.map(|c| c.start_immediately_if_late),
            status: self.status,
            execution_token: self.execution_token.clone().unwrap_or_default(),
            last_run_at: self.last_run_at,
            next_run_at: self.next_run_at,
            created_at: self.schedule_created_at,
            last_modified_at: self.schedule_last_modified_at,
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn from_seconds(field: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("{field}: must be a positive number of seconds"))
}

/// `create_schedule`'s input, as the Python SDK sends it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CreateInput {
    pub(super) schedule_id: String,
    pub(super) orchestration_name: String,
    pub(super) interval_seconds: f64,
    #[serde(default)]
    pub(super) orchestration_input: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) orchestration_instance_id: Option<String>,
    #[serde(default, with = "opt_time")]
    pub(super) start_at: Option<DateTime<Utc>>,
    #[serde(default, with = "opt_time")]
    pub(super) end_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(super) start_immediately_if_late: bool,
}

impl CreateInput {
    pub(super) fn of(o: &ScheduleCreationOptions) -> Self {
        Self {
            schedule_id: o.schedule_id.clone(),
            orchestration_name: o.orchestration_name.clone(),
            interval_seconds: seconds(o.interval),
            orchestration_input: o.orchestration_input.clone(),
            orchestration_instance_id: o.orchestration_instance_id.clone(),
            start_at: o.start_at,
            end_at: o.end_at,
            start_immediately_if_late: o.start_immediately_if_late,
        }
    }

    pub(super) fn options(self) -> Result<ScheduleCreationOptions, String> {
        let o = ScheduleCreationOptions {
            schedule_id: self.schedule_id,
            orchestration_name: self.orchestration_name,
            interval: from_seconds("interval", self.interval_seconds)?,
            orchestration_input: self.orchestration_input,
            orchestration_instance_id: self.orchestration_instance_id,
            start_at: self.start_at,
            end_at: self.end_at,
            start_immediately_if_late: self.start_immediately_if_late,
        };
        o.validate()?;
        Ok(o)
    }
}

/// `update_schedule`'s input, as the Python SDK sends it (unset fields are `null`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct UpdateInput {
    #[serde(default)]
    pub(super) orchestration_name: Option<String>,
    #[serde(default)]
    pub(super) orchestration_input: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) orchestration_instance_id: Option<String>,
    #[serde(default, with = "opt_time")]
    pub(super) start_at: Option<DateTime<Utc>>,
    #[serde(default, with = "opt_time")]
    pub(super) end_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(super) interval_seconds: Option<f64>,
    #[serde(default)]
    pub(super) start_immediately_if_late: Option<bool>,
}

impl UpdateInput {
    pub(super) fn of(o: &ScheduleUpdateOptions) -> Self {
        Self {
            orchestration_name: o.orchestration_name.clone(),
            orchestration_input: o.orchestration_input.clone(),
            orchestration_instance_id: o.orchestration_instance_id.clone(),
            start_at: o.start_at,
            end_at: o.end_at,
            interval_seconds: o.interval.map(seconds),
            start_immediately_if_late: o.start_immediately_if_late,
        }
    }

    pub(super) fn options(self) -> Result<ScheduleUpdateOptions, String> {
        let interval = self
            .interval_seconds
            .map(|s| from_seconds("interval", s))
            .transpose()?;
        if let Some(i) = interval {
            super::check_interval(i)?;
        }
        Ok(ScheduleUpdateOptions {
            orchestration_name: self.orchestration_name,
            orchestration_input: self.orchestration_input,
            orchestration_instance_id: self.orchestration_instance_id,
            start_at: self.start_at,
            end_at: self.end_at,
            interval,
            start_immediately_if_late: self.start_immediately_if_late,
        })
    }
}

/// The input of the orchestration clients change schedules through.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct OperationRequest {
    pub(super) entity_id: String,
    pub(super) operation_name: String,
    #[serde(default)]
    pub(super) input: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_read_back_what_they_write_in_the_dotnet_shape() {
        for (d, s) in [
            (Duration::from_secs(1), "00:00:01"),
            (Duration::from_secs(3_723), "01:02:03"),
            (Duration::from_secs(90_061), "1.01:01:01"),
            (Duration::from_millis(1_500), "00:00:01.5000000"),
            (Duration::new(2, 100), "00:00:02.0000001"),
        ] {
            assert_eq!(timespan(d), s);
            assert_eq!(parse_timespan(s), Some(d), "{s}");
        }
        assert_eq!(
            parse_timespan("00:00:01.5"),
            Some(Duration::from_millis(1_500))
        );
        for bad in [
            "",
            "-00:00:01",
            "1:2",
            "a:b:c",
            "00:00:01.",
            "00:00:01.12345678",
            "1.2.3",
        ] {
            assert_eq!(parse_timespan(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_are_written_as_python_writes_them_and_read_in_any_iso_shape() {
        let t = DateTime::parse_from_rfc3339("2026-12-06T20:00:05.123456Z")
            .unwrap()
            .to_utc();
        assert_eq!(iso(t), "2026-12-06T20:00:05.123456+00:00");
        let whole = DateTime::parse_from_rfc3339("2026-12-06T20:00:05Z")
            .unwrap()
            .to_utc();
        assert_eq!(iso(whole), "2026-12-06T20:00:05+00:00");
        assert_eq!(parse_iso("2026-12-06T20:00:05.123456+00:00"), Some(t));
        assert_eq!(parse_iso("2026-12-06T21:00:05.123456+01:00"), Some(t));
        assert_eq!(parse_iso("2026-12-06T20:00:05.123456"), Some(t));
        assert_eq!(parse_iso("yesterday"), None);
    }

    #[test]
    fn the_state_reads_the_dotnet_shape_and_the_older_snake_case_one() {
        let dotnet = r#"{"Status":2,"ExecutionToken":"abc","LastRunAt":null,"NextRunAt":null,
            "ScheduleCreatedAt":"2026-12-06T20:00:00+00:00","ScheduleLastModifiedAt":null,
            "ScheduleConfiguration":{"ScheduleId":"s1","OrchestrationName":"o","Interval":"00:00:05",
            "OrchestrationInput":"{\"a\":1}","OrchestrationInstanceId":null,"StartAt":null,
            "EndAt":null,"StartImmediatelyIfLate":false}}"#;
        let s: State = serde_json::from_str(dotnet).unwrap();
        assert_eq!(s.status, ScheduleStatus::Paused);
        let d = s.describe();
        assert_eq!(d.interval, Some(Duration::from_secs(5)));
        assert_eq!(d.orchestration_input, Some(serde_json::json!({"a": 1})));
        // Written back in the same shape.
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(back["Status"], 2);
        assert_eq!(back["ScheduleConfiguration"]["Interval"], "00:00:05");
        assert_eq!(
            back["ScheduleConfiguration"]["OrchestrationInput"],
            "{\"a\":1}"
        );

        let older = r#"{"status":"Active","execution_token":"t",
            "schedule_configuration":{"schedule_id":"s2","orchestration_name":"o","Interval":"00:01:00"}}"#;
        let s: State = serde_json::from_str(older).unwrap();
        assert_eq!(s.status, ScheduleStatus::Active);
        assert_eq!(s.describe().schedule_id, "s2");
    }

    #[test]
    fn operation_inputs_refuse_bad_intervals_naming_the_field() {
        let create = |secs: f64| CreateInput {
            schedule_id: "s".into(),
            orchestration_name: "o".into(),
            interval_seconds: secs,
            orchestration_input: None,
            orchestration_instance_id: None,
            start_at: None,
            end_at: None,
            start_immediately_if_late: false,
        };
        assert!(create(5.0).options().is_ok());
        for bad in [0.0, 0.5, -1.0, f64::NAN, f64::INFINITY] {
            let e = create(bad).options().unwrap_err();
            assert!(e.starts_with("interval:"), "{bad}: {e}");
        }
        let e = UpdateInput {
            interval_seconds: Some(0.2),
            ..Default::default()
        }
        .options()
        .unwrap_err();
        assert!(e.starts_with("interval:"), "{e}");
    }
}
