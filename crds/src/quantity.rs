//! Exact parsing of Kubernetes resource quantities into integer units.
//!
//! Placement must never over-commit because of float rounding, so values are kept as an exact
//! fraction and rounded up (as Kubernetes does) only when converted to integer units.

use thiserror::Error;

/// Why a quantity string was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error(
        "quantity {0:?} is not a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E)"
    )]
    Syntax(String),
    #[error("quantity {0:?} is too large")]
    Overflow(String),
}

/// An exact non-negative value: `numerator / denominator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedQuantity {
    numerator: u128,
    denominator: u128,
}

impl ParsedQuantity {
    /// Value in thousandths, rounded up (CPU millicores).
    pub fn to_milli(self) -> Result<u64, QuantityError> {
        self.scaled(1000)
    }

    /// Value in whole units, rounded up (bytes, GPUs).
    pub fn to_units(self) -> Result<u64, QuantityError> {
        self.scaled(1)
    }

    fn scaled(self, factor: u128) -> Result<u64, QuantityError> {
        let n = self
            .numerator
            .checked_mul(factor)
            .ok_or_else(|| QuantityError::Overflow(self.describe()))?;
        u64::try_from(n.div_ceil(self.denominator))
            .map_err(|_| QuantityError::Overflow(self.describe()))
    }

    fn describe(self) -> String {
        format!("{}/{}", self.numerator, self.denominator)
    }
}

fn pow(base: u128, exp: u32, input: &str) -> Result<u128, QuantityError> {
    base.checked_pow(exp)
        .ok_or_else(|| QuantityError::Overflow(input.to_owned()))
}

/// Parses a non-negative quantity such as `4`, `500m`, `1.5Gi`, `2e3` or `10T`.
pub fn parse(input: &str) -> Result<ParsedQuantity, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(input.to_owned());
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(syntax());
    }
    let digits = format!("{int_part}{frac_part}");
    let mut numerator: u128 = digits
        .parse()
        .map_err(|_| QuantityError::Overflow(input.to_owned()))?;
    let frac_len = u32::try_from(frac_part.len()).map_err(|_| syntax())?;
    let mut denominator = pow(10, frac_len, input)?;

    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (pow(10, 6, input)?, 1),
        "G" => (pow(10, 9, input)?, 1),
        "T" => (pow(10, 12, input)?, 1),
        "P" => (pow(10, 15, input)?, 1),
        "E" => (pow(10, 18, input)?, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| syntax())?;
            let p = pow(10, e.unsigned_abs(), input)?;
            if e >= 0 { (p, 1) } else { (1, p) }
        }
        _ => return Err(syntax()),
    };
    numerator = numerator
        .checked_mul(mul)
        .ok_or_else(|| QuantityError::Overflow(input.to_owned()))?;
    denominator = denominator
        .checked_mul(div)
        .ok_or_else(|| QuantityError::Overflow(input.to_owned()))?;
    Ok(ParsedQuantity {
        numerator,
        denominator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> u64 {
        parse(s).and_then(ParsedQuantity::to_milli).unwrap()
    }
    fn units(s: &str) -> u64 {
        parse(s).and_then(ParsedQuantity::to_units).unwrap()
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(milli("4"), 4000);
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("1.5"), 1500);
        assert_eq!(milli(".25"), 250);
        assert_eq!(milli("2e3"), 2_000_000);
        // Kubernetes rounds sub-milli values up, never down.
        assert_eq!(milli("1u"), 1);
    }

    #[test]
    fn byte_forms() {
        assert_eq!(units("64Gi"), 64 << 30);
        assert_eq!(units("1.5Ki"), 1536);
        assert_eq!(units("10T"), 10_000_000_000_000);
        assert_eq!(units("7680Gi"), 7680 << 30);
        assert_eq!(units("1e-3"), 1);
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(""), Err(QuantityError::Empty));
        assert!(matches!(parse("4 cores"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("-1"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("1Xi"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse("."), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse("99999Ei").and_then(ParsedQuantity::to_units),
            Err(QuantityError::Overflow(_))
        ));
    }
}
