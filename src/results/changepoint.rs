//! Where a test's failure rate changed along a line of commits: TestLooper's change-point
//! model (`../shared/reference/seeds.md` §2.7). The rate is taken as piecewise constant,
//! each segment a Bernoulli process at its maximum-likelihood rate; a break between two
//! commits is believed when the two-segment log-likelihood beats the one-segment one by
//! more than the log of a prior against change: 0.1, 0.01 and 0.001 give one, two and three
//! stars. Pure functions, for `vmcheck hunt`.

/// One commit's tally: failures of runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub failures: u64,
    pub runs: u64,
}

impl Tally {
    pub fn rate(self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.failures as f64 / self.runs as f64
        }
    }
}

/// The log-likelihood of `f` failures in `n` runs at their own rate (0 when the rate is 0
/// or 1).
pub fn log_l(f: u64, n: u64) -> f64 {
    if f == 0 || f >= n {
        return 0.0;
    }
    let (f, n) = (f as f64, n as f64);
    let p = f / n;
    f * p.ln() + (n - f) * (1.0 - p).ln()
}

fn pooled(t: &[Tally]) -> (u64, u64) {
    t.iter()
        .fold((0, 0), |(f, n), x| (f + x.failures, n + x.runs))
}

/// The best single break in `tallies` (oldest first): after index `at - 1`, the gain in
/// log-likelihood of two segments over one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// The first commit of the second segment.
    pub at: usize,
    pub gain: f64,
    /// 0 to 3: how many of the priors 0.1, 0.01, 0.001 the gain overcomes.
    pub stars: u8,
    /// The failure rates before and after.
    pub before: f64,
    pub after: f64,
}

/// The stars a gain earns.
pub fn stars(gain: f64) -> u8 {
    [10f64, 100.0, 1000.0]
        .iter()
        .filter(|prior| gain > prior.ln())
        .count() as u8
}

/// The most likely break in `tallies`, if there are two or more with runs.
pub fn best_split(tallies: &[Tally]) -> Option<Split> {
    let (f, n) = pooled(tallies);
    let whole = log_l(f, n);
    (1..tallies.len())
        .map(|at| {
            let (lf, ln) = pooled(&tallies[..at]);
            let (rf, rn) = pooled(&tallies[at..]);
            let gain = log_l(lf, ln) + log_l(rf, rn) - whole;
            let rate = |f: u64, n: u64| if n == 0 { 0.0 } else { f as f64 / n as f64 };
            Split {
                at,
                gain,
                stars: stars(gain),
                before: rate(lf, ln),
                after: rate(rf, rn),
            }
        })
        .filter(|s| pooled(&tallies[..s.at]).1 > 0 && pooled(&tallies[s.at..]).1 > 0)
        .max_by(|a, b| a.gain.total_cmp(&b.gain))
}

/// About how many times the runs on each side must grow for a break of `gain` (at the same
/// rates) to earn one star: the gain grows with the number of runs.
pub fn growth_for_one_star(gain: f64) -> Option<f64> {
    (gain > 1e-9).then(|| 10f64.ln() / gain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(failures: u64, runs: u64) -> Tally {
        Tally { failures, runs }
    }

    #[test]
    fn a_clear_rise_is_found_with_three_stars() {
        let s = best_split(&[t(0, 20), t(0, 20), t(9, 20), t(11, 20)]).unwrap();
        assert_eq!(s.at, 2);
        assert_eq!(s.stars, 3);
        assert_eq!((s.before, s.after), (0.0, 0.5));
    }

    #[test]
    fn equal_rates_have_no_break_worth_a_star() {
        let s = best_split(&[t(2, 20), t(2, 20), t(2, 20)]).unwrap();
        assert_eq!(s.stars, 0);
        assert!(s.gain.abs() < 1e-9);
        assert_eq!(growth_for_one_star(s.gain), None);
        // A small difference in few runs: not enough, and it says how many more.
        let s = best_split(&[t(0, 5), t(1, 5)]).unwrap();
        assert_eq!(s.stars, 0);
        let more = growth_for_one_star(s.gain).unwrap();
        assert!(more > 1.0, "{more}");
    }

    #[test]
    fn log_likelihood_edges() {
        assert_eq!(log_l(0, 10), 0.0);
        assert_eq!(log_l(10, 10), 0.0);
        assert!((log_l(5, 10) - 10.0 * 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(best_split(&[t(1, 2)]), None);
        assert_eq!(stars(2.0), 0);
        assert_eq!(stars(2.4), 1);
        assert_eq!(stars(7.0), 3);
    }
}
