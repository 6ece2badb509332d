//! The W3C `traceparent` header, parsed strictly in one place.

/// The fields of a well-formed W3C `traceparent`: version, trace id, parent span id and flags,
/// each as the hex text it was sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub version: &'a str,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub flags: &'a str,
}

impl<'a> TraceParent<'a> {
    /// `None` unless `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids.
    pub fn parse(text: &'a str) -> Option<Self> {
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let mut p = text.split('-');
        let (version, trace_id, span_id, flags) = (p.next()?, p.next()?, p.next()?, p.next()?);
        (p.next().is_none()
            && hex(version, 2)
            && hex(trace_id, 32)
            && !zero(trace_id)
            && hex(span_id, 16)
            && !zero(span_id)
            && hex(flags, 2))
        .then_some(Self {
            version,
            trace_id,
            span_id,
            flags,
        })
    }

    /// The same trace with another parent span.
    pub fn with_span(&self, span_id: &str) -> String {
        format!(
            "{}-{}-{span_id}-{}",
            self.version, self.trace_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("well-formed");
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id, "00f067aa0ba902b7");
        assert_eq!(
            tp.with_span("1111111111111111"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }
}
