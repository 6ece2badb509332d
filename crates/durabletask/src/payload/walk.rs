//! A walk over an encoded protobuf message that finds every `google.protobuf.StringValue` in it,
//! at any depth, and may replace its value: what the claim check does to whole requests, the way
//! the other SDKs do it by reflection. prost has no reflection, so the walk reads the wire format
//! with the contract's descriptors (`durabletask_proto::FILE_DESCRIPTOR_SET`), which say which
//! fields are messages and of which type.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;

const STRING_VALUE: &str = "google.protobuf.StringValue";

#[derive(Debug, Clone)]
enum Kind {
    StringValue,
    Message(String),
}

/// The message-typed fields of every message of the contract, by full name (no leading dot).
struct Schema {
    messages: HashMap<String, HashMap<u32, Kind>>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let set = prost_types::FileDescriptorSet::decode(durabletask_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let mut messages = HashMap::new();
        for file in &set.file {
            let prefix = file.package.clone().unwrap_or_default();
            for m in &file.message_type {
                add(&mut messages, &prefix, m);
            }
        }
        Schema { messages }
    })
}

fn add(
    out: &mut HashMap<String, HashMap<u32, Kind>>,
    prefix: &str,
    m: &prost_types::DescriptorProto,
) {
    let name = if prefix.is_empty() {
        m.name().to_string()
    } else {
        format!("{prefix}.{}", m.name())
    };
    let mut fields = HashMap::new();
    for f in &m.field {
        if f.r#type() != prost_types::field_descriptor_proto::Type::Message {
            continue;
        }
        let type_name = f.type_name().trim_start_matches('.').to_string();
        let kind = if type_name == STRING_VALUE {
            Kind::StringValue
        } else {
            Kind::Message(type_name)
        };
        fields.insert(f.number() as u32, kind);
    }
    for nested in &m.nested_type {
        add(out, &name, nested);
    }
    out.insert(name, fields);
}

/// The message is not what its type says (cut short, a group, an unknown type name).
#[derive(Debug, thiserror::Error)]
#[error("a {0} message that cannot be read: {1}")]
pub(crate) struct WalkError(String, &'static str);

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The value of an encoded `StringValue` (field 1; the last one wins, as in protobuf), or `None`
/// when it is not one.
fn string_value(body: &[u8]) -> Option<&str> {
    let (mut pos, mut value) = (0, "");
    while pos < body.len() {
        let key = varint(body, &mut pos)?;
        match key & 7 {
            0 => {
                varint(body, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(body, &mut pos)?).ok()?;
                let bytes = body.get(pos..pos.checked_add(len)?)?;
                pos += len;
                if key >> 3 == 1 {
                    value = std::str::from_utf8(bytes).ok()?;
                }
            }
            _ => return None,
        }
    }
    (pos == body.len()).then_some(value)
}

fn encode_string_value(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    if !value.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Calls `visit` with the value of every `StringValue` in `bytes` (a message of type `name`),
/// in wire order; where it answers `Some(new)`, the value becomes `new`. The rewritten message,
/// or `None` when nothing changed.
pub(crate) fn rewrite(
    bytes: &[u8],
    name: &str,
    visit: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Option<Vec<u8>>, WalkError> {
    let fields = schema()
        .messages
        .get(name)
        .ok_or_else(|| WalkError(name.to_string(), "not a message of the contract"))?;
    let bad = |why| WalkError(name.to_string(), why);
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = varint(bytes, &mut pos).ok_or_else(|| bad("a cut field key"))?;
        let number = (key >> 3) as u32;
        match key & 7 {
            0 => {
                varint(bytes, &mut pos).ok_or_else(|| bad("a cut varint"))?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = varint(bytes, &mut pos)
                    .and_then(|l| usize::try_from(l).ok())
                    .ok_or_else(|| bad("a cut length"))?;
                let body_at = pos;
                pos = pos
                    .checked_add(len)
                    .filter(|end| *end <= bytes.len())
                    .ok_or_else(|| bad("a field past the end"))?;
                let body = &bytes[body_at..pos];
                let replaced = match fields.get(&number) {
                    Some(Kind::StringValue) => string_value(body)
                        .and_then(&mut *visit)
                        .map(|new| encode_string_value(&new)),
                    Some(Kind::Message(inner)) => rewrite(body, inner, visit)?,
                    None => None,
                };
                if let Some(new_body) = replaced {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
                    o.extend_from_slice(&bytes[copied..start]);
                    put_varint(o, key);
                    put_varint(o, new_body.len() as u64);
                    o.extend_from_slice(&new_body);
                    copied = pos;
                }
            }
            _ => return Err(bad("a group or an unknown wire type")),
        }
        if pos > bytes.len() {
            return Err(bad("a fixed-size field past the end"));
        }
    }
    Ok(out.map(|mut o| {
        o.extend_from_slice(&bytes[copied..]);
        o
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use durabletask_proto as pb;

    fn big(n: usize) -> String {
        "x".repeat(n)
    }

    #[test]
    fn every_string_value_at_any_depth_is_found_and_replaced_and_the_rest_kept() {
        let mut tags = std::collections::HashMap::new();
        tags.insert("k".to_string(), "v".to_string());
        let response = pb::OrchestratorResponse {
            instance_id: "i".into(),
            custom_status: Some("status".into()),
            completion_token: "t".into(),
            actions: vec![
                pb::OrchestratorAction {
                    id: 3,
                    orchestrator_action_type: Some(
                        pb::orchestrator_action::OrchestratorActionType::ScheduleTask(
                            pb::ScheduleTaskAction {
                                name: "a".into(),
                                input: Some(big(10)),
                                tags: tags.clone(),
                                ..Default::default()
                            },
                        ),
                    ),
                },
                pb::OrchestratorAction {
                    id: 4,
                    orchestrator_action_type: Some(
                        pb::orchestrator_action::OrchestratorActionType::CompleteOrchestration(
                            pb::CompleteOrchestrationAction {
                                result: Some(big(20)),
                                ..Default::default()
                            },
                        ),
                    ),
                },
            ],
            ..Default::default()
        };
        let bytes = response.encode_to_vec();
        let mut seen = Vec::new();
        let out = rewrite(&bytes, "OrchestratorResponse", &mut |v| {
            seen.push(v.to_string());
            (v.len() > 8).then(|| format!("token-{}", v.len()))
        })
        .expect("walk")
        .expect("changed");
        // In wire order (field numbers), every one of them.
        assert_eq!(seen, [big(10), big(20), "status".to_string()]);
        let back = pb::OrchestratorResponse::decode(&out[..]).expect("decodes");
        let mut want = response.clone();
        if let Some(pb::orchestrator_action::OrchestratorActionType::ScheduleTask(t)) =
            &mut want.actions[0].orchestrator_action_type
        {
            t.input = Some("token-10".into());
        }
        if let Some(pb::orchestrator_action::OrchestratorActionType::CompleteOrchestration(c)) =
            &mut want.actions[1].orchestrator_action_type
        {
            c.result = Some("token-20".into());
        }
        assert_eq!(back, want);
        // Nothing to replace: nothing copied.
        assert!(
            rewrite(&bytes, "OrchestratorResponse", &mut |_| None)
                .expect("walk")
                .is_none()
        );
    }

    #[test]
    fn history_events_and_replacing_a_value_with_an_empty_one_round_trip() {
        let req = pb::OrchestratorRequest {
            instance_id: "i".into(),
            new_events: vec![pb::HistoryEvent {
                event_id: -1,
                event_type: Some(pb::history_event::EventType::ExecutionStarted(
                    pb::ExecutionStartedEvent {
                        name: "o".into(),
                        input: Some("blob:v1:c:n".into()),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = rewrite(&req.encode_to_vec(), "OrchestratorRequest", &mut |v| {
            v.starts_with("blob:").then(String::new)
        })
        .expect("walk")
        .expect("changed");
        let back = pb::OrchestratorRequest::decode(&out[..]).expect("decodes");
        match &back.new_events[0].event_type {
            Some(pb::history_event::EventType::ExecutionStarted(e)) => {
                assert_eq!(e.input.as_deref(), Some(""));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_bytes_and_unknown_types_are_errors_not_panics() {
        assert!(rewrite(b"\x0a\xff", "OrchestratorRequest", &mut |_| None).is_err());
        assert!(rewrite(b"\x0a\x05ab", "OrchestratorRequest", &mut |_| None).is_err());
        assert!(rewrite(b"\x0b", "OrchestratorRequest", &mut |_| None).is_err());
        assert!(rewrite(b"", "NoSuchMessage", &mut |_| None).is_err());
        assert_eq!(
            rewrite(b"", "OrchestratorRequest", &mut |_| None).expect("empty"),
            None
        );
    }
}
