//! Usage and cost this month: running hours from the store's run intervals (opened and
//! closed as the reconciler records observed state), what they cost at the admin's prices
//! per CPU-hour and GB-hour, and what the same workspaces would cost always on, which is
//! what scale to zero saves. The arithmetic is pure (`compute`); the page draws a small
//! inline SVG chart next to the tables.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use cove_core::{Resources, UserId, Workspace, WorkspaceId};
use cove_store::{RunInterval, Store};

use super::{error_page, page, Session};
use crate::pages::escape;
use crate::AppState;

pub const PRICE_CPU_HOUR: &str = "price.cpu_hour";
pub const PRICE_GB_HOUR: &str = "price.gb_hour";
pub const PRICE_CURRENCY: &str = "price.currency";

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn router() -> Router<AppState> {
    Router::new().route("/usage", get(usage_page))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Prices {
    pub cpu_hour: f64,
    /// Per GiB of memory per hour.
    pub gb_hour: f64,
    pub currency: String,
}

impl Default for Prices {
    /// Roughly what a cloud VM costs; admins set their own.
    fn default() -> Self {
        Self { cpu_hour: 0.04, gb_hour: 0.005, currency: "$".into() }
    }
}

impl Prices {
    pub fn per_hour(&self, r: &Resources) -> f64 {
        r.cpus() * self.cpu_hour + r.memory_bytes as f64 / GIB * self.gb_hour
    }

    /// Two decimals; a cost too small to show is "<0.01", not a misleading zero.
    pub fn money(&self, amount: f64) -> String {
        if amount > 0.0 && amount < 0.005 {
            return format!("<{}0.01", self.currency);
        }
        format!("{}{amount:.2}", self.currency)
    }
}

/// Hours as people read them: `3 h 05 m`, `12 m`, `40 s`.
pub fn hours_text(hours: f64) -> String {
    // Non-negative and far below u64::MAX for any real usage, so the cast cannot wrap.
    let s = (hours * 3600.0).round().max(0.0) as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} m", s / 60),
        _ => format!("{} h {:02} m", s / 3600, s % 3600 / 60),
    }
}

/// The prices the admin set, the defaults for any not set (or unreadable).
pub async fn prices(store: &dyn Store) -> Prices {
    let d = Prices::default();
    let number = |v: Option<String>, default: f64| v.and_then(|s| s.parse().ok()).unwrap_or(default);
    Prices {
        cpu_hour: number(store.setting_get(PRICE_CPU_HOUR).await.ok().flatten(), d.cpu_hour),
        gb_hour: number(store.setting_get(PRICE_GB_HOUR).await.ok().flatten(), d.gb_hour),
        currency: store.setting_get(PRICE_CURRENCY).await.ok().flatten().unwrap_or(d.currency),
    }
}

/// Midnight UTC on the first of `now`'s month.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub workspace: WorkspaceId,
    pub name: String,
    pub owner: UserId,
    /// Still there (not deleted).
    pub exists: bool,
    pub runs: u32,
    pub running_hours: f64,
    pub cost: f64,
    /// Hours since the month (or the workspace) began, to now or its deletion.
    pub always_on_hours: f64,
    pub always_on_cost: f64,
}

fn hours(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_milliseconds().max(0) as f64) / 3_600_000.0
}

/// Usage from `since` to `now` of the workspaces in `runs` and in `existing`, by name.
pub fn compute(
    runs: &[RunInterval],
    existing: &[Workspace],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    prices: &Prices,
) -> Vec<Usage> {
    // Each workspace's usage, and for a deleted one the span its runs cover.
    type Span = (DateTime<Utc>, DateTime<Utc>, Resources);
    let mut by_id: BTreeMap<WorkspaceId, (Usage, Option<Span>)> = BTreeMap::new();
    for ws in existing {
        let from = ws.created_at.max(since);
        let always = hours(from, now);
        let usage = Usage {
            workspace: ws.id,
            name: ws.name.to_string(),
            owner: ws.owner,
            exists: true,
            runs: 0,
            running_hours: 0.0,
            cost: 0.0,
            always_on_hours: always,
            always_on_cost: always * prices.per_hour(&ws.spec.resources),
        };
        by_id.insert(ws.id, (usage, None));
    }
    for run in runs {
        let start = run.started_at.max(since);
        let end = run.stopped_at.unwrap_or(now).min(now);
        if end <= start && run.stopped_at.is_some() {
            continue;
        }
        let h = hours(start, end);
        let entry = by_id.entry(run.workspace).or_insert_with(|| {
            let usage = Usage {
                workspace: run.workspace,
                name: run.workspace_name.clone(),
                owner: run.owner,
                exists: false,
                runs: 0,
                running_hours: 0.0,
                cost: 0.0,
                always_on_hours: 0.0,
                always_on_cost: 0.0,
            };
            (usage, None)
        });
        entry.0.runs += 1;
        entry.0.running_hours += h;
        entry.0.cost += h * prices.per_hour(&run.resources);
        // A deleted workspace was there from its first run to its last stop.
        if !entry.0.exists {
            let span = entry.1.get_or_insert((start, end, run.resources));
            span.0 = span.0.min(start);
            span.1 = span.1.max(end);
            span.2 = run.resources;
        }
    }
    let mut out: Vec<Usage> = by_id
        .into_values()
        .map(|(mut u, span)| {
            if let Some((from, to, resources)) = span {
                u.always_on_hours = hours(from, to);
                u.always_on_cost = u.always_on_hours * prices.per_hour(&resources);
            }
            u
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.owner.to_string().cmp(&b.owner.to_string())));
    out
}

/// The same, summed per owner.
pub fn per_owner(usage: &[Usage]) -> BTreeMap<UserId, (f64, f64, f64)> {
    let mut out: BTreeMap<UserId, (f64, f64, f64)> = BTreeMap::new();
    for u in usage {
        let e = out.entry(u.owner).or_default();
        e.0 += u.running_hours;
        e.1 += u.cost;
        e.2 += u.always_on_cost;
    }
    out
}

/// Bars per row: what it cost (dark) over what always-on would have (light).
fn chart(rows: &[(String, f64, f64)], prices: &Prices) -> String {
    let max = rows.iter().map(|(_, c, a)| c.max(*a)).fold(0.0_f64, f64::max);
    if rows.is_empty() || max <= 0.0 {
        return String::new();
    }
    let (label_w, bar_w, row_h) = (140.0, 300.0, 28.0);
    let height = row_h * rows.len() as f64 + 30.0;
    let bars: String = rows
        .iter()
        .enumerate()
        .map(|(i, (name, cost, always))| {
            let y = 10.0 + row_h * i as f64;
            let w_always = bar_w * always / max;
            let w_cost = (bar_w * cost / max).max(if *cost > 0.0 { 1.0 } else { 0.0 });
            format!(
                "<g><title>{name}: {} running, {} always on</title>\
<text x=\"0\" y=\"{ty}\" class=\"chart-label\">{name}</text>\
<rect x=\"{label_w}\" y=\"{y}\" width=\"{w_always:.1}\" height=\"18\" class=\"bar-always\"></rect>\
<rect x=\"{label_w}\" y=\"{y}\" width=\"{w_cost:.1}\" height=\"18\" class=\"bar-cost\"></rect></g>",
                prices.money(*cost),
                prices.money(*always),
                name = escape(name),
                ty = y + 14.0,
            )
        })
        .collect();
    format!(
        "<figure><svg role=\"img\" aria-labelledby=\"chart-title\" viewBox=\"0 0 {vw} {height}\" class=\"chart\">\
<title id=\"chart-title\">Cost this month per workspace: running compared with always on</title>{bars}</svg>\
<figcaption><span class=\"key key-cost\"></span> cost of the hours it ran · <span class=\"key key-always\"></span> cost if always on</figcaption></figure>",
        vw = label_w + bar_w + 10.0,
    )
}

async fn usage_page(State(state): State<AppState>, session: Session) -> Response {
    let now = Utc::now();
    let since = month_start(now);
    let admin = session.is_admin();
    let loaded = async {
        let runs = state.store.run_list(since).await?;
        let existing = if admin {
            state.store.workspace_list_all().await?
        } else {
            state.store.workspace_list_by_owner(session.user.id).await?
        };
        let users = if admin { state.store.user_list().await? } else { vec![session.user.clone()] };
        Ok::<_, cove_store::StoreError>((runs, existing, users))
    }
    .await;
    let (runs, existing, users) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&session, &e.into()),
    };
    // A member sees their own usage only, deleted workspaces included.
    let runs: Vec<_> = runs.into_iter().filter(|r| admin || r.owner == session.user.id).collect();
    let prices = prices(state.store.as_ref()).await;
    let usage = compute(&runs, &existing, since, now, &prices);
    let owner_name =
        |id: UserId| users.iter().find(|u| u.id == id).map_or_else(|| id.to_string(), |u| u.name.to_string());
    let rows: String = usage
        .iter()
        .map(|u| {
            let gone = if u.exists { "" } else { " <span class=\"badge\">deleted</span>" };
            format!(
                "<tr data-usage=\"{name}\"><td data-label=\"Workspace\">{name}{gone}</td><td data-label=\"Owner\">{owner}</td>\
<td data-label=\"Runs\">{runs}</td><td data-label=\"Running\">{hours}</td><td data-label=\"Cost\">{cost}</td>\
<td data-label=\"Always on\">{always_h}, {always}</td></tr>",
                name = escape(&u.name),
                owner = escape(&owner_name(u.owner)),
                runs = u.runs,
                hours = hours_text(u.running_hours),
                cost = prices.money(u.cost),
                always_h = hours_text(u.always_on_hours),
                always = prices.money(u.always_on_cost),
            )
        })
        .collect();
    let per_user: String = per_owner(&usage)
        .iter()
        .map(|(id, (h, cost, always))| {
            format!(
                "<tr><td data-label=\"User\">{}</td><td data-label=\"Running\">{}</td><td data-label=\"Cost\">{}</td>\
<td data-label=\"Always on\">{}</td><td data-label=\"Saved\">{}</td></tr>",
                escape(&owner_name(*id)),
                hours_text(*h),
                prices.money(*cost),
                prices.money(*always),
                prices.money((always - cost).max(0.0)),
            )
        })
        .collect();
    let chart_rows: Vec<_> = usage.iter().map(|u| (u.name.clone(), u.cost, u.always_on_cost)).collect();
    let content = if usage.is_empty() {
        "<p class=\"empty\">No workspaces ran this month yet.</p>".to_string()
    } else {
        format!(
            "{chart}<h2>Per workspace</h2><table class=\"list\" id=\"usage-workspaces\"><thead><tr><th scope=\"col\">Workspace</th>\
<th scope=\"col\">Owner</th><th scope=\"col\">Runs</th><th scope=\"col\">Running</th><th scope=\"col\">Cost</th>\
<th scope=\"col\">Always on</th></tr></thead><tbody>{rows}</tbody></table>\
<h2>Per user</h2><table class=\"list\" id=\"usage-users\"><thead><tr><th scope=\"col\">User</th><th scope=\"col\">Running</th>\
<th scope=\"col\">Cost</th><th scope=\"col\">Always on</th><th scope=\"col\">Saved by stopping</th></tr></thead><tbody>{per_user}</tbody></table>",
            chart = chart(&chart_rows, &prices),
        )
    };
    let body = format!(
        "<h1>Usage this month</h1><p class=\"muted\">Since {since} · at {cpu} per CPU-hour and {gb} per GB-hour of memory{who}.</p>{content}",
        since = super::when(since),
        cpu = escape(&prices.money(prices.cpu_hour)),
        gb = escape(&format!("{}{:.4}", prices.currency, prices.gb_hour)),
        who = if admin { ", every user's workspaces" } else { "" },
    );
    page(&session, "Usage", &body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn run(ws: WorkspaceId, owner: UserId, start: DateTime<Utc>, stop: Option<DateTime<Utc>>) -> RunInterval {
        RunInterval {
            workspace: ws,
            workspace_name: "api".into(),
            owner,
            resources: Resources { cpus_milli: 2000, memory_bytes: 4 << 30, disk_bytes: None },
            started_at: start,
            stopped_at: stop,
        }
    }

    #[test]
    fn month_start_is_the_first_at_midnight_utc() {
        let t = Utc.with_ymd_and_hms(2026, 12, 17, 15, 4, 5).unwrap();
        assert_eq!(month_start(t), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    }

    #[test]
    fn hours_are_clipped_to_the_month_and_priced_by_size() {
        let prices = Prices { cpu_hour: 0.5, gb_hour: 0.25, currency: "€".into() };
        // 2 CPUs and 4 GiB: 2 * 0.5 + 4 * 0.25 = 2 an hour.
        let since = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let now = since + Duration::hours(10);
        let (ws, owner) = (WorkspaceId::new_random(), UserId::new_random());
        let runs = [
            // Started last month: only the hour after midnight counts.
            run(ws, owner, since - Duration::hours(3), Some(since + Duration::hours(1))),
            // Still running: counts to now.
            run(ws, owner, now - Duration::hours(2), None),
        ];
        let usage = compute(&runs, &[], since, now, &prices);
        assert_eq!(usage.len(), 1);
        let u = &usage[0];
        assert!(!u.exists);
        assert_eq!(u.runs, 2);
        assert!((u.running_hours - 3.0).abs() < 1e-9, "{u:?}");
        assert!((u.cost - 6.0).abs() < 1e-9, "{u:?}");
        // Deleted (not among the existing): always on from its first run to now.
        assert!((u.always_on_hours - 10.0).abs() < 1e-9, "{u:?}");
        assert!((u.always_on_cost - 20.0).abs() < 1e-9, "{u:?}");
        assert_eq!(prices.money(u.cost), "€6.00");
        assert_eq!(prices.money(0.001), "<€0.01");
        assert_eq!(prices.money(0.0), "€0.00");
        assert_eq!(hours_text(u.running_hours), "3 h 00 m");
        assert_eq!(hours_text(0.01), "36 s");
        let owners = per_owner(&usage);
        assert!((owners[&owner].0 - 3.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_ran_is_zero_cost_and_no_chart() {
        let prices = Prices::default();
        let now = Utc::now();
        assert!(compute(&[], &[], month_start(now), now, &prices).is_empty());
        assert_eq!(chart(&[], &prices), "");
        assert_eq!(chart(&[("a".into(), 0.0, 0.0)], &prices), "");
        assert!(chart(&[("a<b".into(), 1.0, 2.0)], &prices).contains("a&lt;b"));
    }
}
