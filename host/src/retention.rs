//! Which snapshots a retention policy keeps, with restic's semantics
//! (`restic forget --keep-*`), and `forget`: recording the rest as forgotten
//! and removing their snapshot files. What the forgotten snapshots alone
//! reached is reclaimed later by `prune`.
//!
//! One rule is added to restic's: the newest snapshot of every repository
//! is always kept. It is what the next backup is compared with and builds
//! on, and the only record of what the repository holds now.

use serde::Serialize;
use time::{Date, Month, OffsetDateTime};

use crate::ids::RepoName;
use crate::vault::{Snapshot, Vault, VaultError};

/// How many snapshots to keep in each kind of time bucket (restic's
/// `--keep-last`, `--keep-hourly`, ... `--keep-within`). Buckets are in UTC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep every snapshot within this span before the newest one.
    pub within: Option<Span>,
}

impl Policy {
    /// A policy that names nothing to keep would forget everything but the
    /// newest snapshot: refused, as restic does.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
    }

    /// The policy as the flags that give it, for the record of a forget.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (flag, n) in [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            if n > 0 {
                parts.push(format!("--keep-{flag} {n}"));
            }
        }
        if let Some(span) = &self.within {
            parts.push(format!("--keep-within {span}"));
        }
        parts.join(" ")
    }
}

/// A calendar span, as restic writes it: `1y6m`, `14d`, `36h`, `2y3m4d5h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a span like 7d, 36h or 1y6m (y, m, d, h)")]
pub struct BadSpan(String);

impl std::str::FromStr for Span {
    type Err = BadSpan;

    fn from_str(text: &str) -> Result<Self, BadSpan> {
        let bad = || BadSpan(text.to_string());
        let mut span = Span::default();
        let mut digits = String::new();
        let mut any = false;
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u32 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            let slot = match c {
                'y' => &mut span.years,
                'm' => &mut span.months,
                'd' => &mut span.days,
                'h' => &mut span.hours,
                _ => return Err(bad()),
            };
            *slot = slot.checked_add(n).ok_or_else(bad)?;
            any = true;
        }
        if !digits.is_empty() || !any {
            return Err(bad());
        }
        Ok(span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Span {
    /// The moment this span before `ms` (calendar years and months; a day
    /// past the end of the month is clamped to its last day).
    fn before(&self, ms: u64) -> Option<u64> {
        let at = moment(ms)?;
        let months_back = i64::from(self.years) * 12 + i64::from(self.months);
        let total = i64::from(at.year()) * 12 + i64::from(u8::from(at.month())) - 1 - months_back;
        let year = i32::try_from(total.div_euclid(12)).ok()?;
        let month = Month::try_from(u8::try_from(total.rem_euclid(12) + 1).ok()?).ok()?;
        let day = at.day().min(month.length(year));
        let date = Date::from_calendar_date(year, month, day).ok()?;
        let shifted = at.replace_date(date)
            - time::Duration::days(i64::from(self.days))
            - time::Duration::hours(i64::from(self.hours));
        u64::try_from(shifted.unix_timestamp_nanos() / 1_000_000).ok()
    }
}

fn moment(ms: u64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// Why a snapshot is kept: the rules that chose it.
pub type Reasons = Vec<&'static str>;

/// For snapshots given newest first, the reasons each is kept (empty:
/// forgotten). Restic's rule: a bucket rule with count left keeps a
/// snapshot whose bucket (hour, day, ISO week, month, year) differs from
/// the last one that rule kept, so it keeps the newest of each of its N
/// most recent buckets that hold snapshots. `last` keeps the N newest.
pub fn apply(policy: &Policy, times_newest_first: &[u64]) -> Vec<Reasons> {
    type Bucket = fn(OffsetDateTime, usize) -> i64;
    let rules: [(&'static str, u32, Bucket); 6] = [
        ("last", policy.last, |_, nr| nr as i64),
        ("hourly", policy.hourly, |t, _| {
            (t.unix_timestamp()).div_euclid(3600)
        }),
        ("daily", policy.daily, |t, _| {
            i64::from(t.date().to_julian_day())
        }),
        ("weekly", policy.weekly, |t, _| {
            let (year, week, _) = t.to_iso_week_date();
            i64::from(year) * 100 + i64::from(week)
        }),
        ("monthly", policy.monthly, |t, _| {
            i64::from(t.year()) * 100 + i64::from(u8::from(t.month()))
        }),
        ("yearly", policy.yearly, |t, _| i64::from(t.year())),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let within_from = policy
        .within
        .and_then(|span| times_newest_first.first().and_then(|&t| span.before(t)));
    let mut out = Vec::with_capacity(times_newest_first.len());
    for (nr, &ms) in times_newest_first.iter().enumerate() {
        let mut reasons = Vec::new();
        if nr == 0 {
            reasons.push("newest");
        }
        if within_from.is_some_and(|from| ms > from) {
            reasons.push("within");
        }
        if let Some(t) = moment(ms) {
            for (i, (name, _, bucket)) in rules.iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                let value = bucket(t, nr);
                if last_bucket[i] != Some(value) {
                    last_bucket[i] = Some(value);
                    left[i] -= 1;
                    reasons.push(name);
                }
            }
        }
        out.push(reasons);
    }
    out
}

/// One snapshot's fate under a policy.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub id: String,
    pub seq: u64,
    pub time_ms: u64,
    /// Empty when the snapshot is forgotten.
    pub keep: Reasons,
}

/// A repository's snapshots, newest first, and what the policy does to them.
#[derive(Clone, Debug, Serialize)]
pub struct RepoPlan {
    pub repository: RepoName,
    pub decisions: Vec<Decision>,
}

impl RepoPlan {
    pub fn forgotten(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep.is_empty())
    }
}

/// What `policy` keeps and forgets of each repository (or of `only`).
pub fn plan(
    vault: &Vault,
    policy: &Policy,
    only: Option<&RepoName>,
) -> Result<Vec<RepoPlan>, VaultError> {
    let mut plans = Vec::new();
    for repo in vault.repositories()? {
        if only.is_some_and(|o| o != &repo) {
            continue;
        }
        let mut snapshots: Vec<Snapshot> = vault.snapshots(&repo)?;
        snapshots.reverse();
        let times: Vec<u64> = snapshots.iter().map(|s| s.body.time_ms).collect();
        let reasons = apply(policy, &times);
        plans.push(RepoPlan {
            repository: repo,
            decisions: snapshots
                .iter()
                .zip(reasons)
                .map(|(s, keep)| Decision {
                    id: s.id.to_hex(),
                    seq: s.body.seq,
                    time_ms: s.body.time_ms,
                    keep,
                })
                .collect(),
        });
    }
    Ok(plans)
}

/// Forget what each plan forgets: a record of the forgotten snapshots is
/// written to the vault first, then their files are removed. Returns how
/// many were forgotten.
pub fn forget(
    vault: &Vault,
    plans: &[RepoPlan],
    policy: &Policy,
    now_ms: u64,
) -> Result<usize, VaultError> {
    let mut total = 0;
    for plan in plans {
        let ids: Vec<String> = plan.forgotten().map(|d| d.id.clone()).collect();
        if ids.is_empty() {
            continue;
        }
        total += vault.forget_snapshots(&plan.repository, &ids, &policy.describe(), now_ms)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;
    // 2026-03-02T00:00:00Z, a Monday.
    const MONDAY: u64 = 1_772_409_600_000;

    fn kept(policy: &Policy, times: &[u64]) -> Vec<usize> {
        apply(policy, times)
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn spans_parse_as_restic_writes_them() {
        let span: Span = "1y6m".parse().expect("span");
        assert_eq!(
            span,
            Span {
                years: 1,
                months: 6,
                ..Span::default()
            }
        );
        assert_eq!("2d12h".parse::<Span>().expect("span").to_string(), "2d12h");
        for bad in ["", "7", "d", "7w", "1.5d", "-1d"] {
            assert!(bad.parse::<Span>().is_err(), "{bad}");
        }
        // 31 March minus one month is the last day of February.
        let march_31 = MONDAY + 29 * DAY;
        let one_month = Span {
            months: 1,
            ..Span::default()
        };
        assert_eq!(one_month.before(march_31), Some(MONDAY - 2 * DAY));
    }

    #[test]
    fn each_rule_keeps_the_newest_of_its_buckets() {
        // Newest first: three a day for ten days, at 18:00, 12:00, 06:00.
        let times: Vec<u64> = (0..10u64)
            .rev()
            .flat_map(|d| [18, 12, 6].map(|h| MONDAY + d * DAY + h * HOUR))
            .collect();
        let last = Policy {
            last: 4,
            ..Policy::default()
        };
        assert_eq!(kept(&last, &times), vec![0, 1, 2, 3]);
        let daily = Policy {
            daily: 3,
            ..Policy::default()
        };
        assert_eq!(kept(&daily, &times), vec![0, 3, 6]);
        // Days 7–9 are the week of 2026-03-09 (its newest is index 0) and
        // days 0–6 the week before (its newest: day 6 at 18:00, index 9).
        let weekly = Policy {
            weekly: 5,
            ..Policy::default()
        };
        assert_eq!(kept(&weekly, &times), vec![0, 9]);
        let within = Policy {
            within: Some(Span {
                days: 1,
                ..Span::default()
            }),
            ..Policy::default()
        };
        // Strictly later than 24 h before the newest (day 9, 18:00): the
        // three of day 9; day 8 at 18:00 is exactly 24 h before, and goes.
        assert_eq!(kept(&within, &times), vec![0, 1, 2]);
        let combined = Policy {
            last: 1,
            daily: 2,
            ..Policy::default()
        };
        assert_eq!(kept(&combined, &times), vec![0, 3]);
    }

    #[test]
    fn the_newest_is_always_kept() {
        let times = [MONDAY + DAY, MONDAY];
        let reasons = apply(&Policy::default(), &times);
        assert_eq!(reasons[0], vec!["newest"]);
        assert!(reasons[1].is_empty());
        assert!(Policy::default().is_empty());
        assert_eq!(
            Policy {
                last: 3,
                within: Some("7d".parse().expect("span")),
                ..Policy::default()
            }
            .describe(),
            "--keep-last 3 --keep-within 7d"
        );
    }
}
