//! Is a call site leaking? A time series of the site's open count, and a verdict on it.
//!
//! A leak is not "more open now than at the start" (a busy server opens more at noon than at
//! night) but a count that **keeps growing** with descriptors that **outlive** a minimum age.
//! A site is a *suspected leak* when all of these hold over the session's window:
//! 1. enough evidence: at least [`MIN_POINTS`] samples over at least [`MIN_WINDOW`];
//! 2. a significant upward trend: the Mann-Kendall test (a rank test: no assumption about
//!    the shape or noise of the growth) rejects "no trend" at one-sided p < 0.001;
//! 3. still growing: within the most recent half of the window, the lowest count of its last
//!    quarter is above the highest count of its first quarter (a pool that warmed up and then
//!    stayed level passes 2 on the warm-up alone, never 3);
//! 4. its descriptors outlive `--min-age`: some of those open now are older than that (a
//!    site that opens and closes quickly is never suspected, however busy).
//!
//! The growth rate is the Theil-Sen slope (median of pairwise slopes), robust to the bursts
//! of a busy site. Everything here is pure; [`super::history`] samples the counts.
use std::time::Duration;

use serde::Serialize;

/// Samples kept per site. When full, every other one is dropped and the sampling step doubles,
/// so the series always spans the whole session in bounded memory (~1.5 KiB per site).
pub(crate) const MAX_POINTS: usize = 64;
pub(crate) const MIN_POINTS: usize = 10;
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(5);
/// How often sites are sampled (observe/session.rs samples on this tick).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The shortest session in which a site can be judged at all: [`MIN_POINTS`] samples, one every
/// [`SAMPLE_EVERY`], spanning at least [`MIN_WINDOW`]. Shorter sessions say so rather than
/// report "no suspected leak" as if it were a verdict.
pub(crate) const TIME_TO_JUDGE: Duration = {
    let points = SAMPLE_EVERY.saturating_mul(MIN_POINTS as u32 - 1);
    if points.as_nanos() > MIN_WINDOW.as_nanos() { points } else { MIN_WINDOW }
};
/// One-sided p < 0.001 for a standard normal statistic.
const Z_SIGNIFICANT: f64 = 3.09;

/// One sample of a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Point {
    /// CLOCK_BOOTTIME ns.
    pub(crate) t_ns: u64,
    /// Descriptors open at that time (in a process's memory series: bytes; model/history.rs).
    pub(crate) open: u64,
    /// Opened by the site since tracing started (a counter).
    pub(crate) opened: u64,
}

/// The bounded, evenly decimated history of one site, plus its most recent sample.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    points: Vec<Point>,
    latest: Option<Point>,
    /// Keep one tick in `step`; doubles at each decimation.
    step: u64,
    ticks: u64,
}

impl Default for Series {
    fn default() -> Series {
        Series { points: Vec::new(), latest: None, step: 1, ticks: 0 }
    }
}

impl Series {
    /// Record the sample of one tick (ticks are evenly spaced by the caller).
    pub(crate) fn push(&mut self, point: Point) {
        if self.ticks.is_multiple_of(self.step) {
            if self.points.len() == MAX_POINTS {
                // Kept ticks were 0, s, 2s, ...; keeping the even indices leaves 0, 2s, 4s, ...
                // and this tick (MAX_POINTS * s) is a multiple of the new step 2s.
                let mut index = 0;
                self.points.retain(|_| {
                    index += 1;
                    index % 2 == 1
                });
                self.step *= 2;
            }
            self.points.push(point);
        }
        self.latest = Some(point);
        self.ticks += 1;
    }

    /// The window: the kept samples, then the latest one if it was not kept.
    pub(crate) fn window(&self) -> Vec<Point> {
        let mut window = self.points.clone();
        if let Some(latest) = self.latest.filter(|l| self.points.last().is_none_or(|p| p.t_ns < l.t_ns)) {
            window.push(latest);
        }
        window
    }

    pub(crate) fn first(&self) -> Option<Point> {
        self.points.first().copied()
    }
}

/// The Mann-Kendall trend test on a sequence in time order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MannKendall {
    /// Sum of the signs of all later-minus-earlier differences.
    pub(crate) s: i64,
    /// Normal approximation of S (with continuity and tie corrections).
    pub(crate) z: f64,
    /// Kendall's tau-a: S over the number of pairs, in [-1, 1].
    pub(crate) tau: f64,
}

impl MannKendall {
    /// One-sided p-value for "increasing".
    pub(crate) fn p_increasing(&self) -> f64 {
        0.5 * libm::erfc(self.z / std::f64::consts::SQRT_2)
    }
}

/// Mann (1945), Kendall (1975): S = Σ_{i<j} sign(x_j - x_i); under "no trend" S is about
/// normal with variance [n(n-1)(2n+5) - Σ t(t-1)(2t+5)] / 18 over groups of t tied values.
pub(crate) fn mann_kendall(values: &[u64]) -> MannKendall {
    let n = values.len();
    let mut s: i64 = 0;
    for (i, a) in values.iter().enumerate() {
        for b in &values[i + 1..] {
            s += (b > a) as i64 - (b < a) as i64;
        }
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let ties: f64 = sorted
        .chunk_by(|a, b| a == b)
        .map(|group| group.len() as f64)
        .filter(|t| *t > 1.0)
        .map(|t| t * (t - 1.0) * (2.0 * t + 5.0))
        .sum();
    let nf = n as f64;
    let variance = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    let z = if variance <= 0.0 || s == 0 {
        0.0
    } else if s > 0 {
        (s - 1) as f64 / variance.sqrt()
    } else {
        (s + 1) as f64 / variance.sqrt()
    };
    let pairs = nf * (nf - 1.0) / 2.0;
    MannKendall { s, z, tau: if pairs > 0.0 { s as f64 / pairs } else { 0.0 } }
}

/// Theil-Sen slope of the open count, per second: the median of the slopes between every two
/// samples. `None` with fewer than two samples at distinct times.
///
/// The median is selected, not sorted for: `serve` takes every traced process's slope once a
/// second (its descriptors' time to the limit, observe/export.rs), and a full window has 2,080
/// slopes, which a sort took 26 µs for.
pub(crate) fn theil_sen(points: &[Point]) -> Option<f64> {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.t_ns > a.t_ns {
                slopes.push((b.open as f64 - a.open as f64) / ((b.t_ns - a.t_ns) as f64 / 1e9));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let (count, mid) = (slopes.len(), slopes.len() / 2);
    let (below, &mut upper, _) = slopes.select_nth_unstable_by(mid, f64::total_cmp);
    if count % 2 == 1 {
        return Some(upper);
    }
    // The other middle one is the greatest of those ordered before it.
    let lower = below.iter().copied().max_by(f64::total_cmp).expect("an even count of at least 2");
    Some((lower + upper) / 2.0)
}

/// What the table says about a site's open descriptors now, beyond the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// Open descriptors older than the minimum age.
    pub(crate) aged: u64,
    /// Open descriptors opened since the window started.
    pub(crate) open_from_window: u64,
}

/// The verdict on a site, and the trend it rests on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) suspected: bool,
    /// Theil-Sen slope of the open count.
    pub(crate) growth_per_minute: f64,
    pub(crate) trend: Trend,
}

/// The numbers behind a verdict (the report's `trend`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Trend {
    pub(crate) samples: usize,
    pub(crate) window_seconds: f64,
    /// Mann-Kendall one-sided p-value for "increasing".
    pub(crate) p_value: f64,
    pub(crate) kendall_tau: f64,
    /// Opened by the site during the window, and how many of those are still open.
    pub(crate) opened_in_window: u64,
    pub(crate) still_open_from_window: u64,
    /// Open descriptors older than `--min-age`.
    pub(crate) older_than_min_age: u64,
}

/// The verdict on one site's window (oldest sample first). `None` with fewer than two samples.
/// (Why it is suspected, in a sentence, is the report's: output/report.)
pub(crate) fn assess(window: &[Point], evidence: Evidence) -> Option<Verdict> {
    let (first, last) = (window.first()?, window.last()?);
    let per_second = theil_sen(window)?;
    let window_seconds = (last.t_ns - first.t_ns) as f64 / 1e9;
    let opens: Vec<u64> = window.iter().map(|p| p.open).collect();
    let mk = mann_kendall(&opens);
    let enough = window.len() >= MIN_POINTS && window_seconds >= MIN_WINDOW.as_secs_f64();
    let suspected =
        enough && mk.z >= Z_SIGNIFICANT && still_growing(&opens[opens.len() / 2..]) && evidence.aged > 0;
    let trend = Trend {
        samples: window.len(),
        window_seconds,
        p_value: mk.p_increasing(),
        kendall_tau: mk.tau,
        opened_in_window: last.opened.saturating_sub(first.opened),
        still_open_from_window: evidence.open_from_window,
        older_than_min_age: evidence.aged,
    };
    Some(Verdict { suspected, growth_per_minute: per_second * 60.0, trend })
}

/// The lowest count of the last quarter is above the highest of the first quarter.
fn still_growing(recent: &[u64]) -> bool {
    let quarter = (recent.len() / 4).max(1);
    if recent.len() < 2 * quarter {
        return false;
    }
    let early = recent[..quarter].iter().max();
    let late = recent[recent.len() - quarter..].iter().min();
    matches!((early, late), (Some(e), Some(l)) if l > e)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SECOND: u64 = 1_000_000_000;

    /// A series sampled once a second from `open(t)` and `opened(t)`.
    pub(crate) fn series(seconds: u64, open: impl Fn(u64) -> u64, opened: impl Fn(u64) -> u64) -> Vec<Point> {
        (0..seconds)
            .map(|t| Point { t_ns: 1000 * SECOND + t * SECOND, open: open(t), opened: opened(t) })
            .collect()
    }

    /// Deterministic noise in [0, amplitude] (a linear congruential generator).
    pub(crate) fn noise(seed: u64, amplitude: u64) -> u64 {
        let x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % (amplitude + 1)
    }

    fn aged(n: u64) -> Evidence {
        Evidence { aged: n, open_from_window: n }
    }

    #[test]
    fn a_session_of_time_to_judge_has_enough_samples() {
        // Sampled from t = 0 to t = TIME_TO_JUDGE, once every SAMPLE_EVERY.
        let seconds = TIME_TO_JUDGE.as_secs() + 1;
        let growing = series(seconds, |t| t, |t| t);
        let verdict = assess(&growing, aged(5)).unwrap();
        assert!(verdict.suspected, "{verdict:?}");
        let short = series(seconds - 1, |t| t, |t| t);
        assert!(!assess(&short, aged(5)).unwrap().suspected, "one sample less");
    }

    #[test]
    fn mann_kendall_matches_hand_computed_values() {
        // 1 2 3 4 5: S = 10, var = 5*4*15/18 = 16.67, z = 9/4.08 = 2.20.
        let mk = mann_kendall(&[1, 2, 3, 4, 5]);
        assert_eq!(mk.s, 10);
        assert!((mk.z - 2.2045).abs() < 1e-3, "{mk:?}");
        assert_eq!(mk.tau, 1.0);
        assert!((mk.p_increasing() - 0.01374).abs() < 1e-4, "{}", mk.p_increasing());
        // Ties: 1 1 2 2: S = 4, var = (4*3*13 - 2*(2*1*9))/18 = 6.67, z = 3/2.58.
        let mk = mann_kendall(&[1, 1, 2, 2]);
        assert_eq!(mk.s, 4);
        assert!((mk.z - 1.1619).abs() < 1e-3, "{mk:?}");
        // All equal: no information, no trend.
        assert_eq!(mann_kendall(&[7; 20]).z, 0.0);
        assert!(mann_kendall(&[5, 4, 3, 2, 1]).z < 0.0);
    }

    /// The median as selected equals the median of the sorted slopes, to the bit.
    #[test]
    fn theil_sen_is_the_median_of_the_sorted_slopes() {
        use proptest::prelude::*;
        let sorted_median = |points: &[Point]| {
            let mut slopes: Vec<f64> = Vec::new();
            for (i, a) in points.iter().enumerate() {
                for b in &points[i + 1..] {
                    if b.t_ns > a.t_ns {
                        slopes.push((b.open as f64 - a.open as f64) / ((b.t_ns - a.t_ns) as f64 / 1e9));
                    }
                }
            }
            slopes.sort_unstable_by(f64::total_cmp);
            let mid = slopes.len() / 2;
            (!slopes.is_empty()).then(|| {
                if slopes.len() % 2 == 1 { slopes[mid] } else { (slopes[mid - 1] + slopes[mid]) / 2.0 }
            })
        };
        // Times that repeat or go back (pairs left out), and counts that tie.
        let point =
            (0u64..40, 0u64..12).prop_map(|(t, open)| Point { t_ns: t * SECOND / 3, open, opened: 0 });
        proptest!(ProptestConfig { cases: 2048, ..ProptestConfig::default() }, |(points in proptest::collection::vec(point, 0..70))| {
            let selected = theil_sen(&points);
            let sorted = sorted_median(&points);
            prop_assert_eq!(selected.map(f64::to_bits), sorted.map(f64::to_bits));
        });
    }

    #[test]
    fn theil_sen_ignores_outliers() {
        let mut points = series(30, |t| 2 * t, |t| t);
        points[10].open = 10_000;
        let slope = theil_sen(&points).unwrap();
        assert!((slope - 2.0).abs() < 0.1, "{slope}");
        assert_eq!(theil_sen(&points[..1]), None);
    }

    #[test]
    fn a_steady_site_is_never_suspected() {
        // Hundreds of opens and closes a second, a few open at any sample: whatever the
        // noise, no trend, and nothing old.
        for seed in 0..200 {
            let window = series(60, |t| noise(seed * 1000 + t, 5), |t| 300 * t);
            let v = assess(&window, Evidence::default()).unwrap();
            assert!(!v.suspected, "seed {seed}: {v:?}");
        }
        // Even with long-lived descriptors (a pool of 50 recycled over time) it stays level.
        for seed in 0..200 {
            let window = series(60, |t| 45 + noise(seed * 7919 + t, 10), |t| 10 * t);
            let v = assess(&window, aged(40)).unwrap();
            assert!(!v.suspected, "seed {seed}: {v:?}");
        }
    }

    #[test]
    fn a_pool_that_warmed_up_and_stayed_level_is_not_suspected() {
        let window = series(60, |t| (t * 10).min(100), |t| (t * 10).min(100));
        let v = assess(&window, aged(100)).unwrap();
        assert!(mann_kendall(&window.iter().map(|p| p.open).collect::<Vec<_>>()).z > Z_SIGNIFICANT);
        assert!(!v.suspected, "{v:?}");
    }

    #[test]
    fn slow_growth_among_churn_is_suspected() {
        // One descriptor a second stays open among 300 opened and closed a second.
        let window = series(30, |t| t + noise(t, 3), |t| 301 * t);
        let v = assess(&window, Evidence { aged: 19, open_from_window: 29 }).unwrap();
        assert!(v.suspected, "{v:?}");
        assert!((v.growth_per_minute - 60.0).abs() < 10.0, "{}", v.growth_per_minute);
        assert!(v.trend.p_value < 1e-6);
        // Why, in a sentence: output/report/build.rs, a_suspected_site_says_why.
    }

    #[test]
    fn growth_of_young_descriptors_is_not_a_leak() {
        // Load ramps up; every descriptor is short-lived.
        let window = series(30, |t| 10 * t, |t| 1000 * t);
        let v = assess(&window, aged(0)).unwrap();
        assert!(!v.suspected);
        assert!(v.growth_per_minute > 0.0);
    }

    #[test]
    fn too_little_evidence_is_not_a_verdict() {
        let window = series(5, |t| t, |t| t);
        let v = assess(&window, aged(5)).unwrap();
        assert!(!v.suspected, "5 samples are not enough");
        assert!(assess(&window[..1], aged(1)).is_none());
    }

    #[test]
    fn a_leak_that_never_closes_says_so() {
        let window = series(3 * 3600 / 60, |t| t * 100, |t| t * 100)
            .into_iter()
            .map(|p| Point { t_ns: 1000 * SECOND + (p.t_ns - 1000 * SECOND) * 60, ..p })
            .collect::<Vec<_>>();
        let v = assess(&window, Evidence { aged: 17_900, open_from_window: 17_900 }).unwrap();
        assert!(v.suspected);
        // Why, in a sentence: output/report/build.rs, a_suspected_site_says_why.
    }

    #[test]
    fn series_stay_bounded_and_span_the_session() {
        let mut s = Series::default();
        for t in 0..10_000u64 {
            s.push(Point { t_ns: t * SECOND, open: t, opened: t });
        }
        let window = s.window();
        assert!(window.len() <= MAX_POINTS + 1);
        assert_eq!(window.first().unwrap().t_ns, 0, "the first sample is kept");
        assert_eq!(window.last().unwrap().t_ns, 9_999 * SECOND, "the latest sample is there");
        // Evenly spaced kept samples.
        let kept = &window[..window.len() - 1];
        let gaps: Vec<u64> = kept.windows(2).map(|w| w[1].t_ns - w[0].t_ns).collect();
        assert!(gaps.iter().all(|g| *g == gaps[0]), "{gaps:?}");
        assert!(window.len() >= MAX_POINTS / 2);
    }
}
