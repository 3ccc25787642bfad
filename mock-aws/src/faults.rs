//! Continuous fault injection for long runs: a fraction of calls answered with the service's
//! throttling error, a fraction with an internal error (HTTP 500 or 503), and a random extra
//! delay on every answer.
//!
//! Each request's fate is a pure function of the seed and the request's arrival number
//! ([`Faults::draw`]), so a run is reproducible for a given arrival order and the rates can be
//! tested without a server. The generator is SplitMix64 over the arrival number: counter-based,
//! so concurrent requests need no lock around a shared generator state.

use std::time::Duration;

/// The continuous faults; all off by default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Fraction of calls (0..=1) answered `ThrottlingException` (HTTP 400; Bedrock's is 429).
    pub throttle_rate: f64,
    /// Fraction of calls (0..=1) answered with an internal error, half HTTP 500, half HTTP 503.
    pub error_rate: f64,
    /// Upper bound of a uniform extra delay added to the base latency of every answer.
    pub jitter: Duration,
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            throttle_rate: 0.0,
            error_rate: 0.0,
            jitter: Duration::ZERO,
            seed: 1,
        }
    }
}

/// What one request gets besides its normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Throttle,
    /// HTTP 500 (SageMaker's `InternalFailure`, Comprehend's and Bedrock's
    /// `InternalServerException`).
    Internal,
    /// HTTP 503 (`ServiceUnavailable`; Bedrock's `ServiceUnavailableException`).
    Unavailable,
}

/// One request's draw: its extra delay and its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub jitter: Duration,
    pub fault: Fault,
}

impl Faults {
    /// Rates must be fractions whose sum is at most 1 (a call gets at most one fault).
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("throttle rate", self.throttle_rate),
            ("error rate", self.error_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.throttle_rate + self.error_rate > 1.0 {
            return Err(format!(
                "throttle rate + error rate must be at most 1, got {}",
                self.throttle_rate + self.error_rate
            ));
        }
        Ok(())
    }

    /// The fate of the `n`-th request (0-based arrival number).
    pub fn draw(&self, n: u64) -> Draw {
        // Two independent words per request: one picks the fault, one the jitter.
        let u = unit(splitmix64(self.seed ^ n.wrapping_mul(2)));
        let fault = if u < self.throttle_rate {
            Fault::Throttle
        } else if u < self.throttle_rate + self.error_rate {
            // The lower half of the error band answers 500, the upper half 503.
            if u < self.throttle_rate + self.error_rate / 2.0 {
                Fault::Internal
            } else {
                Fault::Unavailable
            }
        } else {
            Fault::None
        };
        let span = self.jitter.as_micros() as u64;
        let jitter = if span == 0 {
            Duration::ZERO
        } else {
            let word = splitmix64(self.seed ^ n.wrapping_mul(2).wrapping_add(1));
            Duration::from_micros(word % (span + 1))
        };
        Draw { jitter, fault }
    }
}

/// SplitMix64's output function of the state `x` advanced once (Steele, Lea & Flood 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from the top 53 bits.
fn unit(word: u64) -> f64 {
    (word >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAWS: u64 = 200_000;

    fn count(faults: &Faults, fault: Fault) -> u64 {
        (0..DRAWS)
            .filter(|&n| faults.draw(n).fault == fault)
            .count() as u64
    }

    #[test]
    fn no_faults_by_default() {
        let faults = Faults::default();
        assert!(faults.validate().is_ok());
        assert!((0..DRAWS).all(|n| faults.draw(n)
            == Draw {
                jitter: Duration::ZERO,
                fault: Fault::None
            }));
    }

    #[test]
    fn rates_are_met_within_half_a_percent() {
        let faults = Faults {
            throttle_rate: 0.05,
            error_rate: 0.02,
            jitter: Duration::ZERO,
            seed: 42,
        };
        let share = |fault| count(&faults, fault) as f64 / DRAWS as f64;
        assert!((share(Fault::Throttle) - 0.05).abs() < 0.005);
        assert!((share(Fault::Internal) - 0.01).abs() < 0.005);
        assert!((share(Fault::Unavailable) - 0.01).abs() < 0.005);
        assert!((share(Fault::None) - 0.93).abs() < 0.005);
    }

    #[test]
    fn rates_of_one_fault_every_call() {
        let throttle = Faults {
            throttle_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(count(&throttle, Fault::Throttle), DRAWS);
        let errors = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(
            count(&errors, Fault::Internal) + count(&errors, Fault::Unavailable),
            DRAWS
        );
        assert!(count(&errors, Fault::Internal) > DRAWS / 3);
        assert!(count(&errors, Fault::Unavailable) > DRAWS / 3);
    }

    #[test]
    fn the_seed_decides_the_sequence() {
        let faults = |seed| Faults {
            throttle_rate: 0.3,
            error_rate: 0.3,
            jitter: Duration::from_millis(50),
            seed,
        };
        let run = |seed| (0..1000).map(|n| faults(seed).draw(n)).collect::<Vec<_>>();
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn jitter_stays_within_its_bound_and_spreads_over_it() {
        let faults = Faults {
            jitter: Duration::from_millis(20),
            ..Faults::default()
        };
        let jitters: Vec<Duration> = (0..DRAWS).map(|n| faults.draw(n).jitter).collect();
        assert!(jitters.iter().all(|j| *j <= Duration::from_millis(20)));
        let mean = jitters.iter().sum::<Duration>() / DRAWS as u32;
        assert!(mean > Duration::from_micros(9_800) && mean < Duration::from_micros(10_200));
        assert!(jitters.iter().any(|j| *j < Duration::from_millis(1)));
        assert!(jitters.iter().any(|j| *j > Duration::from_millis(19)));
    }

    #[test]
    fn invalid_rates_are_refused() {
        let with = |throttle_rate, error_rate| Faults {
            throttle_rate,
            error_rate,
            ..Faults::default()
        };
        assert!(with(-0.1, 0.0).validate().is_err());
        assert!(with(0.0, 1.5).validate().is_err());
        assert!(with(f64::NAN, 0.0).validate().is_err());
        assert!(with(0.6, 0.5).validate().is_err());
        assert!(with(0.5, 0.5).validate().is_ok());
    }
}
