//! Kubernetes resource quantities (`100m`, `0.5`, `500Mi`, `1e3`), parsed and printed by the
//! rules of apimachinery's `resource.Quantity`: the same grammar, the same three formats
//! (BinarySI, DecimalSI, DecimalExponent) and the same canonical output form.
//!
//! Values are held exactly as a signed count of nano-units (`i128`), which covers every
//! representable quantity (|value| <= 2^63-1 units, precision 1n) without floating point.
//! Precision finer than 1n is rounded up (away from zero), as apimachinery does.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Largest magnitude apimachinery can carry in an int64 amount, in whole units.
const MAX_UNITS: i128 = i64::MAX as i128;
const NANO: i128 = 1_000_000_000;
/// Bound on the input length: a quantity is a short token, anything longer is an error.
const MAX_LEN: usize = 64;

/// Which family of suffix a quantity was written with; it decides the canonical output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` (powers of 1024).
    BinarySI,
    /// `n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E` (powers of 1000).
    DecimalSI,
    /// `e<N>` / `E<N>` (powers of ten).
    DecimalExponent,
}

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error("quantity {0:?} is longer than {MAX_LEN} characters")]
    TooLong(String),
    #[error("quantity {0:?} has no digits")]
    NoDigits(String),
    #[error("quantity {input:?} has an unknown suffix {suffix:?} (expected Ki|Mi|Gi|Ti|Pi|Ei, n|u|m|k|M|G|T|P|E, or e<N>)")]
    BadSuffix { input: String, suffix: String },
    #[error("quantity {0:?} has a malformed exponent")]
    BadExponent(String),
    #[error("quantity {0:?} is out of range (magnitude must be <= 2^63-1)")]
    OutOfRange(String),
}

/// An exact Kubernetes resource quantity.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

const BINARY: [(&str, u32); 6] = [("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5), ("Ei", 6)];
const DECIMAL: [(&str, i32); 9] = [("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18)];

fn pow10(e: u32) -> Option<u128> {
    10u128.checked_pow(e)
}

impl Quantity {
    /// Zero, printed as `0`.
    pub const ZERO: Quantity = Quantity { nanos: 0, format: Format::DecimalSI };

    /// A CPU-style quantity of `m` thousandths (`70m`).
    pub fn from_millis(m: i64) -> Self {
        Quantity { nanos: m as i128 * 1_000_000, format: Format::DecimalSI }
    }

    /// A byte count printed with binary suffixes (`893Mi`).
    pub fn from_bytes(b: u64) -> Self {
        Quantity { nanos: b as i128 * NANO, format: Format::BinarySI }
    }

    /// Whole mebibytes, printed as `<n>Mi` when exact.
    pub fn from_mebibytes(mi: u64) -> Self {
        Self::from_bytes(mi.saturating_mul(1 << 20))
    }

    /// A plain integer count (pods, pids), printed in DecimalSI.
    pub fn from_units(n: i64) -> Self {
        Quantity { nanos: n as i128 * NANO, format: Format::DecimalSI }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The exact value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// Value in thousandths, rounded up (how CPU is compared).
    pub fn millis_ceil(&self) -> i128 {
        div_ceil_away(self.nanos, 1_000_000)
    }

    /// Value in whole units, rounded up (how bytes are compared).
    pub fn units_ceil(&self) -> i128 {
        div_ceil_away(self.nanos, NANO)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Sum; `None` when it would leave the representable range.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let n = self.nanos.checked_add(other.nanos)?;
        (n.abs() <= MAX_UNITS * NANO).then_some(Quantity { nanos: n, format: self.format })
    }

    /// Difference; `None` when it would leave the representable range.
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        let n = self.nanos.checked_sub(other.nanos)?;
        (n.abs() <= MAX_UNITS * NANO).then_some(Quantity { nanos: n, format: self.format })
    }

    /// Same value, printed in another format.
    pub fn with_format(self, format: Format) -> Quantity {
        Quantity { format, ..self }
    }

    /// Parse with apimachinery's grammar:
    /// `[+-] (digits | digits.digits | digits. | .digits) [suffix]`.
    pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        if input.len() > MAX_LEN {
            return Err(QuantityError::TooLong(input.chars().take(MAX_LEN).collect()));
        }
        let bytes = input.as_bytes();
        let mut i = 0;
        let negative = match bytes[0] {
            b'-' => {
                i = 1;
                true
            }
            b'+' => {
                i = 1;
                false
            }
            _ => false,
        };
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        // The scan stops only at ASCII bytes, so these are char boundaries.
        let int_digits = input.get(int_start..i).unwrap_or_default();
        let mut frac_digits = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let f = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = input.get(f..i).unwrap_or_default();
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(QuantityError::NoDigits(input.to_string()));
        }
        let suffix = input.get(i..).unwrap_or_default();
        let (format, exp10, binary_pow) = parse_suffix(input, suffix)?;

        // Mantissa as an integer, leading zeros dropped so long zero-padded input still fits.
        let digits: String = format!("{int_digits}{frac_digits}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 38 {
            return Err(QuantityError::OutOfRange(input.to_string()));
        }
        let mut mantissa: u128 =
            if digits.is_empty() { 0 } else { digits.parse().map_err(|_| QuantityError::OutOfRange(input.to_string()))? };
        if binary_pow > 0 {
            let mult = 1024u128.pow(binary_pow);
            mantissa = mantissa.checked_mul(mult).ok_or_else(|| QuantityError::OutOfRange(input.to_string()))?;
        }
        // Decimal exponent that takes the mantissa to nano-units.
        let e = exp10 as i64 - frac_digits.len() as i64 + 9;
        let nanos: u128 = if mantissa == 0 {
            0
        } else if e >= 0 {
            let p = u32::try_from(e).ok().and_then(pow10).ok_or_else(|| QuantityError::OutOfRange(input.to_string()))?;
            mantissa.checked_mul(p).ok_or_else(|| QuantityError::OutOfRange(input.to_string()))?
        } else {
            // Finer than 1n: round up, like apimachinery.
            match u32::try_from(-e).ok().and_then(pow10) {
                Some(d) => mantissa.div_ceil(d),
                None => 1,
            }
        };
        if nanos > (MAX_UNITS * NANO) as u128 {
            return Err(QuantityError::OutOfRange(input.to_string()));
        }
        let nanos = nanos as i128;
        Ok(Quantity { nanos: if negative { -nanos } else { nanos }, format })
    }

    /// Canonical form: no precision lost, no fractional digits, the largest suffix possible.
    pub fn canonical(&self) -> String {
        if self.nanos == 0 {
            return "0".to_string();
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        if self.format == Format::BinarySI && abs >= 1024 * NANO as u128 && abs.is_multiple_of(NANO as u128) {
            let mut v = abs / NANO as u128;
            let mut k = 0;
            while k < BINARY.len() && v.is_multiple_of(1024) {
                v /= 1024;
                k += 1;
            }
            let suffix = if k == 0 { "" } else { BINARY[k - 1].0 };
            return format!("{sign}{v}{suffix}");
        }
        // Largest exponent (multiple of 3, -9..=18) that keeps the mantissa whole.
        let mut exp = -9i32;
        let mut mantissa = abs;
        while exp < 18 && mantissa.is_multiple_of(1000) {
            mantissa /= 1000;
            exp += 3;
        }
        let suffix = match self.format {
            Format::DecimalExponent => {
                if exp == 0 {
                    String::new()
                } else {
                    format!("e{exp}")
                }
            }
            _ => match exp {
                0 => String::new(),
                _ => DECIMAL.iter().find(|(_, e)| *e == exp).map(|(s, _)| s.to_string()).unwrap_or_default(),
            },
        };
        format!("{sign}{mantissa}{suffix}")
    }
}

fn parse_suffix(input: &str, suffix: &str) -> Result<(Format, i32, u32), QuantityError> {
    if suffix.is_empty() {
        return Ok((Format::DecimalSI, 0, 0));
    }
    if let Some((_, p)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        return Ok((Format::BinarySI, 0, *p));
    }
    if let Some(rest) = suffix.strip_prefix(['e', 'E'])
        && !rest.is_empty()
    {
        let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
        // Exponents beyond a few digits can only overflow or round to 1n; refuse them early.
        if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuantityError::BadExponent(input.to_string()));
        }
        let e: i32 = rest.parse().map_err(|_| QuantityError::BadExponent(input.to_string()))?;
        return Ok((Format::DecimalExponent, e, 0));
    }
    if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
        return Ok((Format::DecimalSI, *e, 0));
    }
    Err(QuantityError::BadSuffix { input: input.to_string(), suffix: suffix.to_string() })
}

fn div_ceil_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 {
        q
    } else if n > 0 {
        q + 1
    } else {
        q - 1
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.canonical())
    }
}

impl<'de> serde::Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Quantity::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).canonical()
    }

    #[test]
    fn canonical_forms_match_apimachinery() {
        let cases = [
            ("100m", "100m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("500Mi", "500Mi"),
            ("1Gi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1024", "1024"),
            ("1G", "1G"),
            ("1000", "1k"),
            ("1e3", "1e3"),
            ("1E3", "1e3"),
            ("1.5e3", "1500"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("129M", "129M"),
            ("123Mi", "123Mi"),
            ("1000Ki", "1000Ki"),
            ("1024Ki", "1Mi"),
            ("100Ki", "100Ki"),
            ("0.1Ki", "102400m"),
            ("1023", "1023"),
            ("-100m", "-100m"),
            ("+1", "1"),
            ("0", "0"),
            ("-0", "0"),
            ("0Mi", "0"),
            ("1n", "1n"),
            ("0.1n", "1n"),
            ("1u", "1u"),
            ("1E", "1E"),
            ("5.", "5"),
            (".5", "500m"),
            ("1e-3", "1e-3"),
            ("0.0001", "100u"),
        ];
        for (input, want) in cases {
            assert_eq!(canon(input), want, "input {input}");
        }
    }

    #[test]
    fn values_are_exact() {
        assert_eq!(Quantity::parse("1Gi").unwrap().units_ceil(), 1 << 30);
        assert_eq!(Quantity::parse("0.5").unwrap().millis_ceil(), 500);
        assert_eq!(Quantity::parse("1e3").unwrap(), Quantity::parse("1k").unwrap());
        assert_eq!(Quantity::parse("1.5Gi").unwrap(), Quantity::parse("1536Mi").unwrap());
        assert_eq!(Quantity::parse("0.0001m").unwrap().nanos(), 100);
    }

    #[test]
    fn malformed_quantities_are_refused_with_reason() {
        let bad = [
            ("", "empty"),
            ("abc", "no digits"),
            ("1.2.3", "unknown suffix"),
            ("1Mb", "unknown suffix"),
            ("1 Mi", "unknown suffix"),
            ("1ki", "unknown suffix"),
            ("Mi", "no digits"),
            ("1e", "unknown suffix"),
            ("1e+", "malformed exponent"),
            ("1e3.5", "malformed exponent"),
            ("1e99999", "malformed exponent"),
            ("10Ei", "out of range"),
            ("9223372036854775808", "out of range"),
            ("-", "no digits"),
            (".", "no digits"),
        ];
        for (input, reason) in bad {
            let err = Quantity::parse(input).expect_err(input).to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
        assert!(Quantity::parse("9223372036854775807").is_ok());
        assert!(matches!(Quantity::parse(&"1".repeat(70)), Err(QuantityError::TooLong(_))));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn suffix() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["", "n", "u", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti", "e3", "e-3", "e6", "E2"])
        }

        proptest! {
            #[test]
            fn canonical_round_trips(neg in any::<bool>(), int in 0u64..1_000_000, frac in proptest::option::of(0u32..1000), sfx in suffix()) {
                let mut s = String::new();
                if neg { s.push('-'); }
                s.push_str(&int.to_string());
                if let Some(f) = frac { s.push('.'); s.push_str(&format!("{f:03}")); }
                s.push_str(sfx);
                let q = Quantity::parse(&s).unwrap();
                let c = q.canonical();
                let back = Quantity::parse(&c).unwrap();
                prop_assert_eq!(back, q, "{} -> {}", s, c);
                // Canonical form is a fixed point and keeps the format family.
                prop_assert_eq!(back.canonical(), c.clone());
                prop_assert!(!c.contains('.'), "no fractional digits: {}", c);
            }

            #[test]
            fn value_matches_independent_model(int in 0u64..1_000_000, frac in 0u32..1000, idx in 0usize..9) {
                // (suffix, nanos per unit); value = (int + frac/1000) * factor, rounded up to 1n.
                let table: [(&str, i128); 9] = [
                    ("n", 1), ("u", 1_000), ("m", 1_000_000), ("", 1_000_000_000), ("k", 1_000_000_000_000),
                    ("Ki", 1024 * 1_000_000_000), ("Mi", (1 << 20) * 1_000_000_000), ("e3", 1_000_000_000_000), ("e-2", 10_000_000),
                ];
                let (sfx, factor) = table[idx];
                let q = Quantity::parse(&format!("{int}.{frac:03}{sfx}")).unwrap();
                let scaled = (int as i128 * 1000 + frac as i128) * factor;
                let want = scaled / 1000 + i128::from(scaled % 1000 != 0);
                prop_assert_eq!(q.nanos(), want);
            }

            #[test]
            fn from_bytes_round_trips(b in any::<u32>(), shift in 0u32..30) {
                let bytes = (b as u64) << shift;
                let q = Quantity::from_bytes(bytes);
                let back = Quantity::parse(&q.canonical()).unwrap();
                prop_assert_eq!(back.units_ceil(), bytes as i128);
            }

            #[test]
            fn garbage_never_panics(s in "\\PC{0,20}") {
                let _ = Quantity::parse(&s);
            }
        }
    }
}
