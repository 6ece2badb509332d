//! Reading a `/metrics` exposition in tests.

/// The value of the sample whose name and labels are exactly `series`; panics, showing the
/// whole exposition, when there is none.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}
