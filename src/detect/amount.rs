//! Money as integer hundredths, parsed exactly from decimal text.

use std::fmt;

/// An amount in hundredths of the currency unit. Sums saturate at
/// `i64::MAX`: a saturated sum is at least 9.2e18 hundredths, which is still
/// above `2300 * n` for any pair with fewer than 4e15 transactions, so no
/// decision of the contract can change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cents(pub i64);

impl Cents {
    #[inline]
    pub fn saturating_add(self, other: Cents) -> Cents {
        Cents(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Why an amount was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseAmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount is not plain decimal notation")]
    NotDecimal,
    #[error("amount has more than 15 digits before the point")]
    TooLarge,
}

const MAX_INTEGER_DIGITS: usize = 15;

/// Parses `DIGITS` or `DIGITS.DIGITS` (no sign, no exponent, at most 15
/// digits before the point, leading zeros included) and rounds half away
/// from zero to hundredths.
pub fn parse_amount(text: &[u8]) -> Result<Cents, ParseAmountError> {
    if text.is_empty() {
        return Err(ParseAmountError::Empty);
    }
    let (integer, fraction) = match memchr::memchr(b'.', text) {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    if integer.is_empty() || !integer.iter().all(u8::is_ascii_digit) {
        return Err(ParseAmountError::NotDecimal);
    }
    if let Some(fraction) = fraction
        && (fraction.is_empty() || !fraction.iter().all(u8::is_ascii_digit))
    {
        return Err(ParseAmountError::NotDecimal);
    }
    // Leading zeros count: the text itself is bounded, not only its value.
    if integer.len() > MAX_INTEGER_DIGITS {
        return Err(ParseAmountError::TooLarge);
    }
    let units = integer
        .iter()
        .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
    let fraction = fraction.unwrap_or(b"");
    let digit = |i: usize| fraction.get(i).map_or(0, |&d| i64::from(d - b'0'));
    let round_up = i64::from(digit(2) >= 5);
    Ok(Cents(units * 100 + digit(0) * 10 + digit(1) + round_up))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(text: &str) -> Result<i64, ParseAmountError> {
        parse_amount(text.as_bytes()).map(|c| c.0)
    }

    #[test]
    fn plain_decimals() {
        assert_eq!(cents("0"), Ok(0));
        assert_eq!(cents("4.55"), Ok(455));
        assert_eq!(cents("4.5"), Ok(450));
        assert_eq!(cents("23"), Ok(2300));
        assert_eq!(cents("0023.00"), Ok(2300));
        assert_eq!(cents("8329.96"), Ok(832_996));
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(cents("0.005"), Ok(1));
        assert_eq!(cents("0.0049999"), Ok(0));
        assert_eq!(cents("22.995"), Ok(2300));
        assert_eq!(cents("22.994999"), Ok(2299));
        assert_eq!(cents("0.999"), Ok(100));
    }

    #[test]
    fn fifteen_integer_digits_is_the_limit() {
        assert_eq!(cents("999999999999999.99"), Ok(99_999_999_999_999_999));
        assert_eq!(cents("000999999999999"), Ok(99_999_999_999_900));
        assert_eq!(cents("1000000000000000"), Err(ParseAmountError::TooLarge));
        // Leading zeros count as digits.
        assert_eq!(
            cents("0000999999999999999"),
            Err(ParseAmountError::TooLarge)
        );
        assert_eq!(
            cents("000000000000000000000000001.00"),
            Err(ParseAmountError::TooLarge)
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "-1", "+1", "1e3", "1e400", "NaN", "inf", ".5", "5.", "1.2.3", " 1", "1,5", "0x10",
        ] {
            assert!(cents(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(cents(""), Err(ParseAmountError::Empty));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(
            Cents(i64::MAX - 1).saturating_add(Cents(5)),
            Cents(i64::MAX)
        );
    }
}
