//! The one grammar for durations and the one for memory (and disk) sizes. Spec files, flags and
//! the CLI all parse through here, so `10s` or `64MiB` means the same thing everywhere.
//!
//! **Durations** ([`parse_duration`], [`format_duration`]) are Go's `time.ParseDuration`, which is
//! what Nomad and Kubernetes users type, plus `d` for days (Mesos' `--gc_delay` has days too):
//! one or more parts, each a decimal number and a unit, `ns`, `us`, `ms`, `s`, `m`, `h` or `d`
//! (case-sensitive: `m` is minutes, `ms` milliseconds), written together or with spaces between:
//! `500ms`, `1.5s`, `1m30s`, `7d`, `1h 30m`. A bare number is refused, because nobody can tell
//! whether `30` means seconds or milliseconds; the one exception is `0`, which means the same in
//! every unit. No sign, no exponent. The result must be whole nanoseconds and fit a [`Duration`].
//! [`format_duration`] writes the canonical compound form (`1d2h`, `1m30s500ms`, `0s`), which
//! parses back to the same value.
//!
//! **Memory sizes** ([`parse_mem`], [`format_mem`]) are a decimal number and an optional binary
//! unit: `B`, `KiB`, `MiB`, `GiB`, `TiB` (or Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`; case-insensitive),
//! with optional space between: `64MiB`, `1.5 GiB`. A bare number is bytes, as in Kubernetes.
//! The decimal-looking units `KB`, `MB`, `GB`, `TB` and the bare letters `K`, `M`, `G`, `T` are
//! refused as ambiguous: `2GB` is 2·10⁹ to a disk vendor and 2·2³⁰ to most tools, and Kubernetes
//! reads `M` as 10⁶ while `head -c 300M` reads it as 2²⁰. Refusing costs one retyped flag; guessing
//! wrong costs 7% of a machine's memory. A fraction is allowed when it comes to whole bytes
//! (`1.5GiB`, not `0.1KiB`). [`format_mem`] writes the largest unit that divides exactly.
//!
//! Why not `humantime`: it has no fractions (`1.5s` is used in this repository's specs and
//! benches), accepts many spellings (`sec`, `minutes`, `months` of 30.44 days) that would become a
//! second grammar to document, and its formatter puts spaces between parts. The grammar above is
//! about a hundred lines of exact integer arithmetic.
//!
//! Both parsers are plain `fn(&str) -> Result<_, UnitError>`, which is what clap's `value_parser`
//! takes: `#[arg(long, value_parser = drover_types::units::parse_duration)] timeout: Duration`.
//! Errors quote the input and say what to write instead; the caller adds the field or flag name.

use std::time::Duration;

/// Longest input either parser looks at; anything longer is refused before parsing, so an error
/// message never echoes a megabyte of flag value.
pub const UNIT_INPUT_BYTES_MAX: usize = 64;

const DURATION_UNITS: &str = "ns, us, ms, s, m, h or d";
const MEM_UNITS: &str = "B, KiB, MiB, GiB or TiB";

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Duration units, largest first: the order [`format_duration`] writes them in.
const DURATION_UNIT_NANOS: [(&str, u128); 7] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];
/// Memory units, largest first: the order [`format_mem`] tries them in.
const MEM_UNIT_BYTES: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Why a duration or memory size did not parse. Every message quotes the input (cut to
/// [`UNIT_INPUT_BYTES_MAX`]) and, where there is one, says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty {what}; write e.g. {example}")]
    Empty {
        what: &'static str,
        example: &'static str,
    },
    #[error("`{input}…` is longer than {UNIT_INPUT_BYTES_MAX} bytes")]
    TooLong { input: String },
    #[error("`{input}` is not a {what}: expected a number at `{at}`; write e.g. {example}")]
    ExpectedNumber {
        what: &'static str,
        input: String,
        at: String,
        example: &'static str,
    },
    #[error("`{input}` has no unit after `{number}`; write e.g. `{number}s` (only 0 may go bare)")]
    MissingUnit { input: String, number: String },
    #[error("unknown unit `{unit}` in `{input}`; use {expected}")]
    UnknownUnit {
        input: String,
        unit: String,
        expected: &'static str,
    },
    #[error(
        "ambiguous unit `{unit}` in `{input}` (decimal or binary?); use {MEM_UNITS}, which are binary"
    )]
    AmbiguousUnit { input: String, unit: String },
    #[error("`{input}` is not a whole number of {resolution}")]
    TooPrecise {
        input: String,
        resolution: &'static str,
    },
    #[error("`{input}` is too large; at most {max}")]
    TooLarge { input: String, max: &'static str },
}

/// A decimal number as read from the input: `whole.fraction`, digits only.
struct Decimal<'a> {
    whole: &'a str,
    fraction: &'a str,
}

impl Decimal<'_> {
    /// `self * per_unit` as an exact integer, or `None` when that is not whole (the caller's
    /// `TooPrecise`) and `Err(())` on overflow of u128 (far beyond any accepted value).
    fn times(&self, per_unit: u128) -> Result<Option<u128>, ()> {
        // Trailing zeros change nothing; past 20 significant places no unit here (at most
        // 2^16·3^3·5^11 ns per day) can make the product whole, and the scale would overflow.
        let fraction_digits = self.fraction.trim_end_matches('0');
        if fraction_digits.len() > 20 {
            return Ok(None);
        }
        let digits = |s: &str| {
            s.bytes().try_fold(0u128, |acc, d| {
                acc.checked_mul(10)?.checked_add(u128::from(d - b'0'))
            })
        };
        let whole = digits(self.whole).ok_or(())?;
        let fraction = digits(fraction_digits).ok_or(())?;
        let scale = u32::try_from(fraction_digits.len())
            .ok()
            .and_then(|n| 10u128.checked_pow(n))
            .ok_or(())?;
        let scaled = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(fraction))
            .and_then(|n| n.checked_mul(per_unit))
            .ok_or(())?;
        Ok(scaled.is_multiple_of(scale).then_some(scaled / scale))
    }
}

/// Reads a decimal number at the start of `s`: digits with at most one `.`, at least one digit.
/// Returns it and the rest, or `None` if `s` does not start with one.
fn take_decimal(s: &str) -> Option<(Decimal<'_>, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    Some((Decimal { whole, fraction }, rest))
}

/// Trims and length-checks an input, or says why it cannot be parsed at all.
fn prepare<'a>(
    input: &'a str,
    what: &'static str,
    example: &'static str,
) -> Result<&'a str, UnitError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(UnitError::Empty { what, example });
    }
    if text.len() > UNIT_INPUT_BYTES_MAX {
        let mut cut = UNIT_INPUT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(UnitError::TooLong {
            input: text[..cut].to_string(),
        });
    }
    Ok(text)
}

/// Parses a duration: see the module docs for the grammar.
///
/// ```
/// use std::time::Duration;
/// use drover_types::units::parse_duration;
///
/// assert_eq!(parse_duration("1m30s")?, Duration::from_secs(90));
/// assert_eq!(parse_duration("1.5s")?, Duration::from_millis(1500));
/// assert_eq!(parse_duration("7d")?, Duration::from_secs(7 * 86_400));
/// assert_eq!(parse_duration("0")?, Duration::ZERO);
/// assert!(parse_duration("30").is_err()); // seconds or milliseconds?
/// # Ok::<(), drover_types::units::UnitError>(())
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    const WHAT: &str = "duration";
    const EXAMPLE: &str = "`10s`, `500ms` or `1m30s`";
    let text = prepare(input, WHAT, EXAMPLE)?;
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let too_large = || UnitError::TooLarge {
        input: text.to_string(),
        max: "about 584 billion years",
    };
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (number, after) = take_decimal(rest).ok_or_else(|| UnitError::ExpectedNumber {
            what: WHAT,
            input: text.to_string(),
            at: rest.to_string(),
            example: EXAMPLE,
        })?;
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(UnitError::MissingUnit {
                input: text.to_string(),
                number: rest[..rest.len() - after.len()].trim().to_string(),
            });
        }
        let per_unit = DURATION_UNIT_NANOS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| UnitError::UnknownUnit {
                input: text.to_string(),
                unit: unit.to_string(),
                expected: DURATION_UNITS,
            })?;
        let part = number
            .times(per_unit)
            .map_err(|()| too_large())?
            .ok_or_else(|| UnitError::TooPrecise {
                input: text.to_string(),
                resolution: "nanoseconds",
            })?;
        nanos = nanos.checked_add(part).ok_or_else(too_large)?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_large())?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).expect("a remainder below 10^9 fits u32");
    Ok(Duration::new(secs, subsec))
}

/// Writes `d` in the canonical form [`parse_duration`] reads back exactly: each unit from days
/// down to nanoseconds that has a non-zero count, largest first (`1d2h`, `1m30s500ms`); zero is
/// `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let mut left = d.as_nanos();
    let mut out = String::new();
    for (unit, per_unit) in DURATION_UNIT_NANOS {
        let count = left / per_unit;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            left %= per_unit;
        }
    }
    out
}

/// Parses a memory size in bytes: see the module docs for the grammar.
///
/// ```
/// use drover_types::units::parse_mem;
///
/// assert_eq!(parse_mem("64MiB")?, 64 << 20);
/// assert_eq!(parse_mem("1.5 GiB")?, 3 << 29);
/// assert_eq!(parse_mem("4096")?, 4096);
/// assert!(parse_mem("2GB").is_err()); // 2·10⁹ or 2·2³⁰?
/// # Ok::<(), drover_types::units::UnitError>(())
/// ```
pub fn parse_mem(input: &str) -> Result<u64, UnitError> {
    const WHAT: &str = "memory size";
    const EXAMPLE: &str = "`64MiB`, `1.5GiB` or a number of bytes";
    let text = prepare(input, WHAT, EXAMPLE)?;
    let (number, unit) = take_decimal(text).ok_or_else(|| UnitError::ExpectedNumber {
        what: WHAT,
        input: text.to_string(),
        at: text.to_string(),
        example: EXAMPLE,
    })?;
    let unit = unit.trim_start();
    let per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "tib" | "ti" => 1 << 40,
        "k" | "m" | "g" | "t" | "kb" | "mb" | "gb" | "tb" => {
            return Err(UnitError::AmbiguousUnit {
                input: text.to_string(),
                unit: unit.to_string(),
            });
        }
        _ => {
            return Err(UnitError::UnknownUnit {
                input: text.to_string(),
                unit: unit.to_string(),
                expected: MEM_UNITS,
            });
        }
    };
    let too_large = || UnitError::TooLarge {
        input: text.to_string(),
        max: "16EiB (2^64 - 1 bytes)",
    };
    let bytes = number
        .times(u128::from(per_unit))
        .map_err(|()| too_large())?
        .ok_or_else(|| UnitError::TooPrecise {
            input: text.to_string(),
            resolution: "bytes",
        })?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// A byte count the way a person writes it: the largest binary unit that divides it exactly
/// (`64MiB`, `1536B`, `0B`); [`parse_mem`] reads it back exactly.
pub fn format_mem(bytes: u64) -> String {
    MEM_UNIT_BYTES
        .iter()
        .find(|(_, size)| bytes != 0 && bytes.is_multiple_of(*size))
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, size)| format!("{}{unit}", bytes / size),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An input, the variant it must be refused with, and text its message must contain.
    type ErrorCase = (&'static str, fn(&UnitError) -> bool, &'static str);

    const SEC: u64 = 1;
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    #[test]
    fn durations_accept_every_unit_fractions_compounds_and_spaces() {
        // Proves each unit's size, fractions to whole nanoseconds, compound and spaced forms,
        // outer whitespace, and the bare `0`.
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("250ns", Duration::from_nanos(250)),
            ("3us", Duration::from_micros(3)),
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10 * SEC)),
            ("2m", Duration::from_secs(2 * MIN)),
            ("1h", Duration::from_secs(HOUR)),
            ("7d", Duration::from_secs(7 * DAY)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("0.5ms", Duration::from_micros(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h 30m", Duration::from_secs(HOUR + 30 * MIN)),
            ("5 s", Duration::from_secs(5)),
            (
                " 1d2h3m4s5ms6us7ns ",
                Duration::new(DAY + 2 * HOUR + 3 * MIN + 4, 5_006_007),
            ),
            ("30s1m", Duration::from_secs(90)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn every_duration_error_says_what_was_wrong() {
        // Proves each refusal is its own variant and the message quotes the input and the fix.
        let cases: [ErrorCase; 11] = [
            (
                "",
                |e| matches!(e, UnitError::Empty { .. }),
                "empty duration",
            ),
            (
                "  ",
                |e| matches!(e, UnitError::Empty { .. }),
                "write e.g. `10s`",
            ),
            (
                "30",
                |e| matches!(e, UnitError::MissingUnit { .. }),
                "`30s`",
            ),
            (
                "1m30",
                |e| matches!(e, UnitError::MissingUnit { .. }),
                "after `30`",
            ),
            (
                "5d3",
                |e| matches!(e, UnitError::MissingUnit { .. }),
                "`5d3`",
            ),
            (
                "5w",
                |e| matches!(e, UnitError::UnknownUnit { .. }),
                "unknown unit `w` in `5w`; use ns, us, ms, s, m, h or d",
            ),
            (
                "10S",
                |e| matches!(e, UnitError::UnknownUnit { .. }),
                "unknown unit `S`",
            ),
            (
                "ten",
                |e| matches!(e, UnitError::ExpectedNumber { .. }),
                "expected a number at `ten`",
            ),
            (
                "-1s",
                |e| matches!(e, UnitError::ExpectedNumber { .. }),
                "at `-1s`",
            ),
            (
                "1.2.3s",
                |e| matches!(e, UnitError::ExpectedNumber { .. }),
                "`1.2.3s`",
            ),
            (
                "0.5ns",
                |e| matches!(e, UnitError::TooPrecise { .. }),
                "whole number of nanoseconds",
            ),
        ];
        for (input, is, text) in cases {
            let err = parse_duration(input).expect_err(input);
            assert!(is(&err), "{input:?}: {err:?}");
            assert!(err.to_string().contains(text), "{input:?}: {err}");
        }
        for big in ["99999999999999999999999d", "213503982334602d", "1e3s"] {
            let err = parse_duration(big).expect_err(big);
            assert!(
                matches!(
                    err,
                    UnitError::TooLarge { .. } | UnitError::UnknownUnit { .. }
                ),
                "{big}: {err:?}"
            );
        }
        assert!(matches!(
            parse_duration("213503982334602d"),
            Err(UnitError::TooLarge { .. })
        ));
        let long = "1s".repeat(40);
        let err = parse_duration(&long).expect_err("too long");
        assert!(
            matches!(&err, UnitError::TooLong { input } if input.len() == UNIT_INPUT_BYTES_MAX)
        );
        assert!(err.to_string().contains("longer than 64 bytes"), "{err}");
    }

    #[test]
    fn durations_format_in_canonical_compound_form() {
        // Proves the formatter's exact output for the shapes specs and flags print.
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(168 * HOUR), "7d"),
            (Duration::new(DAY + 2 * HOUR, 7), "1d2h7ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
        }
    }

    #[test]
    fn memory_sizes_accept_binary_units_in_any_case() {
        // Proves each binary unit's size, the Kubernetes spellings, case-insensitivity, spaces,
        // fractions that come to whole bytes, and bare bytes.
        let ok = [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("512 b", 512),
            ("1KiB", 1 << 10),
            ("64MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("64Mi", 64 << 20),
            (" 2 GiB ", 2 << 30),
            ("1.5GiB", 3 << 29),
            (".5KiB", 512),
            ("1TiB", 1 << 40),
            ("16777215TiB", 16_777_215 << 40),
        ];
        for (input, want) in ok {
            assert_eq!(parse_mem(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn every_memory_error_says_what_was_wrong() {
        // Proves each refusal is its own variant and the message quotes the input and the fix.
        let cases: [ErrorCase; 11] = [
            (
                "",
                |e| matches!(e, UnitError::Empty { .. }),
                "empty memory size",
            ),
            (
                "MiB",
                |e| matches!(e, UnitError::ExpectedNumber { .. }),
                "expected a number at `MiB`",
            ),
            (
                "-1MiB",
                |e| matches!(e, UnitError::ExpectedNumber { .. }),
                "`-1MiB`",
            ),
            (
                "1.2.3MiB",
                |e| matches!(e, UnitError::ExpectedNumber { .. }),
                "`1.2.3MiB`",
            ),
            (
                "2GB",
                |e| matches!(e, UnitError::AmbiguousUnit { .. }),
                "ambiguous unit `GB` in `2GB`",
            ),
            (
                "8G",
                |e| matches!(e, UnitError::AmbiguousUnit { .. }),
                "use B, KiB, MiB, GiB or TiB",
            ),
            (
                "3mb",
                |e| matches!(e, UnitError::AmbiguousUnit { .. }),
                "`mb`",
            ),
            (
                "64 furlongs",
                |e| matches!(e, UnitError::UnknownUnit { .. }),
                "unknown unit `furlongs` in `64 furlongs`",
            ),
            (
                "1 2",
                |e| matches!(e, UnitError::UnknownUnit { .. }),
                "unknown unit `2`",
            ),
            (
                "0.1KiB",
                |e| matches!(e, UnitError::TooPrecise { .. }),
                "whole number of bytes",
            ),
            (
                "16777216TiB",
                |e| matches!(e, UnitError::TooLarge { .. }),
                "at most 16EiB",
            ),
        ];
        for (input, is, text) in cases {
            let err = parse_mem(input).expect_err(input);
            assert!(is(&err), "{input:?}: {err:?}");
            assert!(err.to_string().contains(text), "{input:?}: {err}");
        }
        let err = parse_mem(&"9".repeat(60)).expect_err("overflow of the arithmetic");
        assert!(matches!(err, UnitError::TooLarge { .. }), "{err:?}");
        let err = parse_mem(&"1".repeat(65)).expect_err("too long");
        assert!(matches!(err, UnitError::TooLong { .. }), "{err:?}");
    }

    #[test]
    fn memory_formats_with_the_largest_exact_unit() {
        // Proves the formatter's exact output, including the byte fallback and zero.
        assert_eq!(format_mem(64 << 20), "64MiB");
        assert_eq!(format_mem(3 << 29), "1536MiB");
        assert_eq!(format_mem(1536), "1536B");
        assert_eq!(format_mem(1 << 40), "1TiB");
        assert_eq!(format_mem(0), "0B");
    }

    #[test]
    fn parsers_work_as_clap_value_parsers() {
        // Proves both parsers plug into clap's `value_parser` shape: fn(&str) -> Result<T, E>
        // with E convertible to a boxed error (clap's bound), keeping the message.
        fn as_value_parser<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
            f: fn(&str) -> Result<T, E>,
            input: &str,
        ) -> Result<T, String> {
            f(input).map_err(|e| e.into().to_string())
        }
        assert_eq!(
            as_value_parser(parse_duration, "2s"),
            Ok(Duration::from_secs(2))
        );
        let err = as_value_parser(parse_duration, "5x").expect_err("unknown unit");
        assert!(err.contains("unknown unit `x`"), "{err}");
        assert_eq!(as_value_parser(parse_mem, "1KiB"), Ok(1024));
    }

    proptest! {
        #[test]
        fn durations_round_trip_through_format(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            // Proves format → parse is the identity over every Duration.
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn whole_millisecond_durations_round_trip(ms in 0u64..10_000_000_000) {
            // Proves the same over the range configs use, where every unit appears.
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn memory_sizes_round_trip_through_format(bytes in any::<u64>(), shift in 0u32..44) {
            // Proves format → parse is the identity over u64, including multiples of each unit.
            prop_assert_eq!(parse_mem(&format_mem(bytes)), Ok(bytes));
            let aligned = (bytes >> shift) << shift;
            prop_assert_eq!(parse_mem(&format_mem(aligned)), Ok(aligned));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            // Proves arbitrary text is an error or a value, never a panic.
            let _ = parse_duration(&input);
            let _ = parse_mem(&input);
        }
    }
}
