//! The reconcile plan: a pure function from (desired state, observed runtime) to the
//! actions that make them meet. The reconciler performs the actions; this module only
//! decides, so every rule here is covered by a table test.

use serde::{Deserialize, Serialize};

use crate::{ActualState, DesiredState};

/// A container's state as the engine reports it, reduced to what the rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited { code: i64 },
    Removing,
    Dead,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub state: ContainerState,
    /// The `cove.spec-hash` label the container was made with.
    pub spec_hash: Option<String>,
}

/// Everything the runtime holds for one workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub container: Option<ObservedContainer>,
    pub volume: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    CreateVolume,
    CreateContainer,
    StartContainer,
    UnpauseContainer,
    StopContainer,
    /// Forced: also stops a running container.
    RemoveContainer,
    RemoveVolume,
    /// Turn desired `RestartRequested` into `Running`; valid once the workspace is seen stopped.
    MarkRestarted,
    /// Delete the workspace's record: the last step of termination, once nothing is left.
    Forget,
}

impl Action {
    /// The step's name in messages: "step 'start container' failed: ...".
    pub fn step(self) -> &'static str {
        match self {
            Action::CreateVolume => "create volume",
            Action::CreateContainer => "create container",
            Action::StartContainer => "start container",
            Action::UnpauseContainer => "unpause container",
            Action::StopContainer => "stop container",
            Action::RemoveContainer => "remove container",
            Action::RemoveVolume => "remove volume",
            Action::MarkRestarted => "mark restarted",
            Action::Forget => "forget workspace",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The state to record before acting (or the steady state when there is nothing to do).
    pub now: ActualState,
    pub message: Option<String>,
    pub actions: Vec<Action>,
    /// The state to record once every action has succeeded.
    pub then: ActualState,
}

impl Plan {
    fn steady(state: ActualState) -> Self {
        Self { now: state, message: None, actions: vec![], then: state }
    }

    fn act(now: ActualState, actions: Vec<Action>, then: ActualState) -> Self {
        Self { now, message: None, actions, then }
    }

    fn with_message(mut self, message: String) -> Self {
        self.message = Some(message);
        self
    }

    /// A plan whose recorded state is a failure counts against the workspace's retry backoff.
    pub fn is_failure(&self) -> bool {
        matches!(self.now, ActualState::Failed | ActualState::Error)
    }
}

/// Decides what to do for one workspace. `spec_hash` is the hash of the wanted spec;
/// a container made from another spec is replaced, never patched. `recorded` is the actual
/// state last written: an exited container is a crash only if it was last seen running.
pub fn plan(desired: DesiredState, spec_hash: &str, observed: &Observed, recorded: ActualState) -> Plan {
    use ActualState as A;
    use ContainerState as C;
    let container = observed.container.as_ref().map(|c| c.state);
    match desired {
        DesiredState::Running => match container {
            Some(C::Running) if is_current(observed, spec_hash) => Plan::steady(A::Running),
            Some(C::Restarting | C::Removing) => {
                Plan::steady(A::Starting).with_message("waiting for the engine to settle the container".into())
            }
            Some(C::Exited { code }) if is_current(observed, spec_hash) && recorded == A::Running => {
                Plan::act(A::Failed, vec![Action::StartContainer], A::Running)
                    .with_message(format!("container exited with code {code}; starting it again"))
            }
            _ => Plan::act(A::Starting, actions_to_run(observed, spec_hash), A::Running),
        },
        DesiredState::Stopped => match container {
            Some(C::Running | C::Restarting) => Plan::act(A::Stopping, vec![Action::StopContainer], A::Stopped),
            Some(C::Paused) => {
                Plan::act(A::Stopping, vec![Action::UnpauseContainer, Action::StopContainer], A::Stopped)
            }
            None | Some(C::Created | C::Exited { .. } | C::Dead | C::Removing) => Plan::steady(A::Stopped),
        },
        DesiredState::RestartRequested => {
            let mut actions = match container {
                Some(C::Running | C::Restarting) => vec![Action::StopContainer],
                Some(C::Paused) => vec![Action::UnpauseContainer, Action::StopContainer],
                _ => vec![],
            };
            let now = if actions.is_empty() { A::Starting } else { A::Stopping };
            // After the stop the container is exited; plan the start from that picture.
            let stopped = Observed {
                container: observed.container.as_ref().map(|c| ObservedContainer {
                    state: match c.state {
                        C::Running | C::Restarting | C::Paused => C::Exited { code: 0 },
                        other => other,
                    },
                    spec_hash: c.spec_hash.clone(),
                }),
                volume: observed.volume,
            };
            actions.push(Action::MarkRestarted);
            actions.extend(actions_to_run(&stopped, spec_hash));
            Plan::act(now, actions, A::Running)
        }
        DesiredState::Terminated => {
            let mut actions = vec![];
            if observed.container.is_some() {
                actions.push(Action::RemoveContainer);
            }
            if observed.volume {
                actions.push(Action::RemoveVolume);
            }
            actions.push(Action::Forget);
            Plan::act(A::Terminating, actions, A::Terminated)
        }
    }
}

fn is_current(observed: &Observed, spec_hash: &str) -> bool {
    observed.container.as_ref().is_some_and(|c| c.spec_hash.as_deref() == Some(spec_hash))
}

/// The actions that take a workspace that is not running to running.
fn actions_to_run(observed: &Observed, spec_hash: &str) -> Vec<Action> {
    use ContainerState as C;
    let mut actions = vec![];
    if !observed.volume {
        actions.push(Action::CreateVolume);
    }
    let current = is_current(observed, spec_hash);
    match observed.container.as_ref().map(|c| c.state) {
        None => {}
        Some(C::Running) if current => return actions,
        Some(C::Paused) if current => {
            actions.push(Action::UnpauseContainer);
            return actions;
        }
        Some(C::Created | C::Exited { .. }) if current => {
            actions.push(Action::StartContainer);
            return actions;
        }
        // Outdated, dead or half-removed: replace it.
        Some(_) => actions.push(Action::RemoveContainer),
    }
    actions.push(Action::CreateContainer);
    actions.push(Action::StartContainer);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use ActualState as A;
    use ContainerState as C;
    use DesiredState as D;

    const HASH: &str = "current";

    /// What the runtime shows: `None` for no container; `old` for a container of another spec.
    fn world(container: Option<C>, old: bool, volume: bool) -> Observed {
        Observed {
            container: container
                .map(|state| ObservedContainer { state, spec_hash: Some(if old { "old" } else { HASH }.to_string()) }),
            volume,
        }
    }

    #[track_caller]
    fn check(desired: D, observed: Observed, now: A, actions: &[Action], then: A) {
        check_from(A::Stopped, desired, observed, now, actions, then);
    }

    /// Like `check`, from a given last recorded state.
    #[track_caller]
    fn check_from(recorded: A, desired: D, observed: Observed, now: A, actions: &[Action], then: A) {
        let p = plan(desired, HASH, &observed, recorded);
        assert_eq!(
            (p.now, p.actions.as_slice(), p.then),
            (now, actions, then),
            "desired {desired:?}, observed {observed:?}"
        );
    }

    #[test]
    fn desired_running() {
        let exited = C::Exited { code: 1 };
        check(
            D::Running,
            world(None, false, false),
            A::Starting,
            &[CreateVolume, CreateContainer, StartContainer],
            A::Running,
        );
        check(D::Running, world(None, false, true), A::Starting, &[CreateContainer, StartContainer], A::Running);
        check(D::Running, world(Some(C::Created), false, true), A::Starting, &[StartContainer], A::Running);
        check(D::Running, world(Some(C::Running), false, true), A::Running, &[], A::Running);
        check(D::Running, world(Some(C::Paused), false, true), A::Starting, &[UnpauseContainer], A::Running);
        // Exited while it was last seen running: a crash, counted as a failure.
        check_from(A::Running, D::Running, world(Some(exited), false, true), A::Failed, &[StartContainer], A::Running);
        // Exited because it was stopped: a plain start.
        check_from(
            A::Stopped,
            D::Running,
            world(Some(exited), false, true),
            A::Starting,
            &[StartContainer],
            A::Running,
        );
        check_from(A::Failed, D::Running, world(Some(exited), false, true), A::Starting, &[StartContainer], A::Running);
        check(
            D::Running,
            world(Some(C::Dead), false, true),
            A::Starting,
            &[RemoveContainer, CreateContainer, StartContainer],
            A::Running,
        );
        check(D::Running, world(Some(C::Restarting), false, true), A::Starting, &[], A::Starting);
        check(D::Running, world(Some(C::Removing), false, true), A::Starting, &[], A::Starting);
        // A changed spec replaces the container and keeps the volume.
        check(
            D::Running,
            world(Some(C::Running), true, true),
            A::Starting,
            &[RemoveContainer, CreateContainer, StartContainer],
            A::Running,
        );
        check(
            D::Running,
            world(Some(exited), true, true),
            A::Starting,
            &[RemoveContainer, CreateContainer, StartContainer],
            A::Running,
        );
        // A volume removed by hand under an exited container is made again.
        check(
            D::Running,
            world(Some(C::Created), false, false),
            A::Starting,
            &[CreateVolume, StartContainer],
            A::Running,
        );
    }

    #[test]
    fn desired_stopped() {
        check(D::Stopped, world(None, false, false), A::Stopped, &[], A::Stopped);
        check(D::Stopped, world(None, false, true), A::Stopped, &[], A::Stopped);
        check(D::Stopped, world(Some(C::Running), false, true), A::Stopping, &[StopContainer], A::Stopped);
        check(D::Stopped, world(Some(C::Running), true, true), A::Stopping, &[StopContainer], A::Stopped);
        check(D::Stopped, world(Some(C::Restarting), false, true), A::Stopping, &[StopContainer], A::Stopped);
        check(
            D::Stopped,
            world(Some(C::Paused), false, true),
            A::Stopping,
            &[UnpauseContainer, StopContainer],
            A::Stopped,
        );
        check(D::Stopped, world(Some(C::Created), false, true), A::Stopped, &[], A::Stopped);
        check(D::Stopped, world(Some(C::Exited { code: 137 }), false, true), A::Stopped, &[], A::Stopped);
        check(D::Stopped, world(Some(C::Dead), false, true), A::Stopped, &[], A::Stopped);
    }

    #[test]
    fn desired_restart() {
        check(
            D::RestartRequested,
            world(Some(C::Running), false, true),
            A::Stopping,
            &[StopContainer, MarkRestarted, StartContainer],
            A::Running,
        );
        check(
            D::RestartRequested,
            world(Some(C::Paused), false, true),
            A::Stopping,
            &[UnpauseContainer, StopContainer, MarkRestarted, StartContainer],
            A::Running,
        );
        check(
            D::RestartRequested,
            world(Some(C::Exited { code: 0 }), false, true),
            A::Starting,
            &[MarkRestarted, StartContainer],
            A::Running,
        );
        check(
            D::RestartRequested,
            world(None, false, true),
            A::Starting,
            &[MarkRestarted, CreateContainer, StartContainer],
            A::Running,
        );
        // A restart also applies a changed spec.
        check(
            D::RestartRequested,
            world(Some(C::Running), true, true),
            A::Stopping,
            &[StopContainer, MarkRestarted, RemoveContainer, CreateContainer, StartContainer],
            A::Running,
        );
    }

    #[test]
    fn desired_terminated() {
        check(
            D::Terminated,
            world(Some(C::Running), false, true),
            A::Terminating,
            &[RemoveContainer, RemoveVolume, Forget],
            A::Terminated,
        );
        check(
            D::Terminated,
            world(Some(C::Exited { code: 0 }), true, false),
            A::Terminating,
            &[RemoveContainer, Forget],
            A::Terminated,
        );
        check(D::Terminated, world(None, false, true), A::Terminating, &[RemoveVolume, Forget], A::Terminated);
        // Correct even if creation never began.
        check(D::Terminated, world(None, false, false), A::Terminating, &[Forget], A::Terminated);
    }

    #[test]
    fn failures_are_marked() {
        let p = plan(D::Running, HASH, &world(Some(C::Exited { code: 3 }), false, true), A::Running);
        assert!(p.is_failure());
        assert_eq!(p.message.as_deref(), Some("container exited with code 3; starting it again"));
        assert!(!plan(D::Running, HASH, &world(None, false, false), A::CreationRequested).is_failure());
    }
}
