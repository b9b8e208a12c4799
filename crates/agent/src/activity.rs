//! What the user does inside the workspace, told to the control plane so the idle stop
//! covers every way in (the proxy only sees HTTP): terminal input, SSH sessions, editor use.
//!
//! Activity is collected in memory and reported at most once per [`REPORT_INTERVAL`]; open
//! sessions are reported with it, so `cove show` can name what keeps a workspace awake.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_core::agent::ActivityReport;

use crate::control::Control;

pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Inner {
    kinds: BTreeSet<String>,
    sessions: BTreeMap<String, u32>,
    /// Sessions changed since the last report (opened or closed).
    changed: bool,
}

#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Mutex<Inner>>,
}

/// An open session of some kind; counted until dropped.
pub struct SessionGuard {
    activity: Activity,
    kind: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self.activity.lock();
        if let Some(n) = inner.sessions.get_mut(&self.kind) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.sessions.remove(&self.kind);
            }
        }
        inner.changed = true;
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user did something of `kind` ("terminal", "ssh", "editor") just now.
    pub fn touch(&self, kind: &str) {
        let mut inner = self.lock();
        if !inner.kinds.contains(kind) {
            inner.kinds.insert(kind.to_string());
        }
    }

    /// Counts a session of `kind` as open (and as activity) until the guard is dropped.
    pub fn session(&self, kind: &str) -> SessionGuard {
        let mut inner = self.lock();
        *inner.sessions.entry(kind.to_string()).or_default() += 1;
        inner.kinds.insert(kind.to_string());
        inner.changed = true;
        SessionGuard { activity: self.clone(), kind: kind.to_string() }
    }

    pub fn sessions(&self) -> BTreeMap<String, u32> {
        self.lock().sessions.clone()
    }

    /// What to report now, if anything; clears the activity seen.
    pub fn take_report(&self) -> Option<ActivityReport> {
        let mut inner = self.lock();
        if inner.kinds.is_empty() && !inner.changed {
            return None;
        }
        inner.changed = false;
        let kinds = std::mem::take(&mut inner.kinds).into_iter().collect();
        Some(ActivityReport { kinds, sessions: inner.sessions.clone() })
    }

    /// Reports activity until the process ends. A report that cannot be sent is merged
    /// back, so nothing is lost while the control plane restarts.
    pub async fn report_loop(self, control: Control) {
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(report) = self.take_report() else { continue };
            if let Err(e) = control.post("/v1/activity", &report).await {
                tracing::debug!(error = %e, "cannot report activity; will retry");
                let mut inner = self.lock();
                inner.kinds.extend(report.kinds);
                inner.changed = true;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_until_dropped_and_reported_once() {
        let activity = Activity::default();
        assert_eq!(activity.take_report(), None);
        let a = activity.session("ssh");
        let b = activity.session("ssh");
        activity.touch("terminal");
        let report = activity.take_report().unwrap();
        assert_eq!(report.kinds, vec!["ssh".to_string(), "terminal".to_string()]);
        assert_eq!(report.sessions.get("ssh"), Some(&2));
        assert_eq!(activity.take_report(), None, "nothing new");
        drop(a);
        drop(b);
        let report = activity.take_report().unwrap();
        assert!(report.kinds.is_empty() && report.sessions.is_empty(), "{report:?}");
    }
}
