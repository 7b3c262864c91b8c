//! Kubernetes quantities (`10Gi`, `500M`, `1.5e9`) as numbers, to compare a volume's
//! desired size with the size its claim asks for: the API server writes quantities in
//! its own canonical form (`2048Mi` comes back as `2Gi`), so strings cannot be compared.

/// The value of `quantity` (in its base unit: bytes for storage), or `None` when it is
/// not a quantity.
pub fn value(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => {
            let e = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            10f64.powi(e.parse().ok()?)
        }
    };
    Some(number * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_exponent_forms() {
        assert_eq!(value("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(value("2048Mi"), value("2Gi"));
        assert_eq!(value("500M"), Some(5e8));
        assert_eq!(value("1.5e9"), Some(1.5e9));
        assert_eq!(value("100m"), Some(0.1));
        assert_eq!(value("10"), Some(10.0));
        assert!(value("1Gi") < value("1.5Gi"));
        assert_eq!(value("ten gigs"), None);
        assert_eq!(value("10Zi"), None);
    }
}
