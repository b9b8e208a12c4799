//! Waiting for a workspace to reach a state, with progress: a spinner on a terminal,
//! one line per state change otherwise (so CI logs show what happened).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::bail;
use cove_core::agent::AgentState;
use cove_core::{ActualState, DesiredState};
use cove_server::views::WorkspaceView;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{is_not_found, Client};
use cove_core::percent_encode;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Goal {
    Running,
    /// Running, and its agent has finished setting it up (the repository cloned...).
    Ready,
    Stopped,
    Gone,
}

/// Most starts and stops finish within a second: poll tightly at first, then back off.
const POLL_FAST: Duration = Duration::from_millis(20);
const POLL_SLOW: Duration = Duration::from_millis(100);
const FAST_FOR: Duration = Duration::from_secs(3);

/// Polls until `goal` holds. Fails fast when the workspace reports a failure recorded after
/// `since_generation` (older failures are what the change is meant to fix).
pub async fn until(
    client: &Client,
    key: &str,
    goal: Goal,
    since_generation: i64,
    timeout: Duration,
) -> anyhow::Result<Option<WorkspaceView>> {
    let progress = Progress::new(key);
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_state = None;
    loop {
        let ws = match client.get::<WorkspaceView>(&format!("/api/v1/workspaces/{}", percent_encode(key))).await {
            Ok(ws) => ws,
            Err(e) if goal == Goal::Gone && is_not_found(&e) => {
                progress.finish(&format!("{key}: deleted"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let agent_message = ws.agent.as_ref().and_then(|a| a.message.clone());
        let state = (ws.actual_state, ws.message.clone(), agent_message);
        if last_state.as_ref() != Some(&state) {
            progress.show(&ws);
            last_state = Some(state);
        }
        let reached = match goal {
            Goal::Running => ws.desired_state == DesiredState::Running && ws.actual_state == ActualState::Running,
            Goal::Ready => {
                ws.desired_state == DesiredState::Running
                    && ws.actual_state == ActualState::Running
                    && ws.agent.as_ref().is_some_and(|a| a.state == AgentState::Ready)
            }
            Goal::Stopped => ws.desired_state == DesiredState::Stopped && ws.actual_state == ActualState::Stopped,
            Goal::Gone => false,
        };
        if reached {
            progress.finish(&format!("{}: {}", ws.name, ws.actual_state));
            return Ok(Some(ws));
        }
        let failed = matches!(ws.actual_state, ActualState::Failed | ActualState::Error | ActualState::Unknown);
        if failed && ws.actual_generation > since_generation {
            progress.abandon();
            let why = ws.message.as_deref().unwrap_or("no details");
            bail!(
                "workspace {} is {}: {why} (Cove keeps retrying; follow it with `cove show {}`)",
                ws.name,
                ws.actual_state,
                ws.name
            );
        }
        if let Some(agent) = ws.agent.as_ref().filter(|a| goal == Goal::Ready && a.state == AgentState::Failed) {
            progress.abandon();
            let why = agent.message.as_deref().unwrap_or("no details");
            bail!(
                "workspace {} runs, but setting it up failed: {why} (it stays usable: `cove ssh {}` or `cove logs {}`)",
                ws.name,
                ws.name,
                ws.name
            );
        }
        if Instant::now() >= deadline {
            progress.abandon();
            bail!(
                "workspace {} is still {} after {}s; it keeps converging in the background (`cove show {}`)",
                ws.name,
                ws.actual_state,
                timeout.as_secs(),
                ws.name
            );
        }
        tokio::time::sleep(if started.elapsed() < FAST_FOR { POLL_FAST } else { POLL_SLOW }).await;
    }
}

struct Progress {
    bar: Option<ProgressBar>,
    /// Without a terminal, the last line printed, so a final state is not printed twice.
    last: std::cell::RefCell<String>,
}

impl Progress {
    fn new(key: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None, last: Default::default() };
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(format!("{key}: waiting"));
        bar.enable_steady_tick(Duration::from_millis(100));
        Self { bar: Some(bar), last: Default::default() }
    }

    fn show(&self, ws: &WorkspaceView) {
        let mut line = format!("{}: {}", ws.name, ws.actual_state);
        if let Some(m) = &ws.message {
            line.push_str(&format!(" ({m})"));
        }
        if let Some(m) = ws.agent.as_ref().and_then(|a| a.message.as_ref()) {
            line.push_str(&format!(" — {m}"));
        }
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None => self.print(line),
        }
    }

    fn finish(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(line.to_string()),
            None => self.print(line.to_string()),
        }
    }

    fn print(&self, line: String) {
        if *self.last.borrow() != line {
            eprintln!("{line}");
            *self.last.borrow_mut() = line;
        }
    }

    fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
