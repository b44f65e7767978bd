//! The standard normal distribution function and its inverse, to double precision.

/// `P(Z <= x)` for a standard normal `Z` (Hart's algorithm 5666 as given by West, 2005; absolute
/// error below 1e-14).
pub fn cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let a = x.abs();
    let tail = if a > 37.0 {
        0.0
    } else {
        let e = (-a * a / 2.0).exp();
        if a < 7.071_067_811_865_47 {
            let mut num = 3.526_249_659_989_11e-2 * a + 0.700_383_064_443_688;
            num = num * a + 6.373_962_203_531_65;
            num = num * a + 33.912_866_078_383;
            num = num * a + 112.079_291_497_871;
            num = num * a + 221.213_596_169_931;
            num = num * a + 220.206_867_912_376;
            let mut den = 8.838_834_764_831_84e-2 * a + 1.755_667_163_182_64;
            den = den * a + 16.064_177_579_207;
            den = den * a + 86.780_732_202_946_1;
            den = den * a + 296.564_248_779_674;
            den = den * a + 637.333_633_378_831;
            den = den * a + 793.826_512_519_948;
            den = den * a + 440.413_735_824_752;
            e * num / den
        } else {
            let mut b = a + 0.65;
            b = a + 4.0 / b;
            b = a + 3.0 / b;
            b = a + 2.0 / b;
            b = a + 1.0 / b;
            e / b / 2.506_628_274_631
        }
    };
    if x > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p`-quantile of the standard normal (Acklam's rational approximation refined by one Halley
/// step). `p = 0` and `p = 1` give the infinities; outside `[0, 1]` gives NaN.
pub fn ppf(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let p_low = 0.02425;
    let x = if p < p_low {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - p_low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    };
    // One Halley step on cdf(x) - p.
    let e = cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(cdf(0.0), 0.5);
        assert!((cdf(-1.0) - 0.158_655_253_931_457_05).abs() < 1e-14);
        assert!((cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-14);
        assert!((cdf(-8.0) - 6.220_960_574_271_785e-16).abs() < 1e-20);
        assert!((ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
        assert!((ppf(0.5)).abs() < 1e-15);
        assert!((ppf(1e-10) + 6.361_340_902_404_056).abs() < 1e-9);
        for p in [1e-8, 0.001, 0.02, 0.3, 0.7, 0.99, 1.0 - 1e-9] {
            assert!((cdf(ppf(p)) - p).abs() < 1e-13 * p.max(1e-3), "{p}");
        }
        assert!(ppf(1.5).is_nan());
        assert_eq!(ppf(0.0), f64::NEG_INFINITY);
    }
}
