//! The two halves of a workspace's state: what its user wants and what the runtime shows.
//! Names follow GitLab Workspaces, which users of remote development already know.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the user asked for. The store is the truth for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DesiredState {
    Running,
    Stopped,
    /// Holds until the workspace is observed stopped, then becomes `Running`.
    RestartRequested,
    /// The workspace and its volume are to be removed; the record goes last.
    Terminated,
}

/// What the runtime shows, as last observed by the reconciler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActualState {
    CreationRequested,
    Starting,
    Running,
    Stopping,
    Stopped,
    /// The workspace itself failed: its container exited or could not be made or started.
    Failed,
    /// Cove could not act: the engine refused or was unreachable mid-operation.
    Error,
    Terminating,
    Terminated,
    /// The engine could not be asked.
    Unknown,
}

impl ActualState {
    /// States a CLI waiting for a change should keep waiting through.
    pub fn is_transitional(self) -> bool {
        matches!(self, Self::CreationRequested | Self::Starting | Self::Stopping | Self::Terminating)
    }
}

macro_rules! string_forms {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| {
                        let names: Vec<_> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{s:?} is not one of {}", names.join(", "))
                    })
            }
        }
    };
}

string_forms!(DesiredState {
    Running => "Running",
    Stopped => "Stopped",
    RestartRequested => "RestartRequested",
    Terminated => "Terminated",
});

string_forms!(ActualState {
    CreationRequested => "CreationRequested",
    Starting => "Starting",
    Running => "Running",
    Stopping => "Stopping",
    Stopped => "Stopped",
    Failed => "Failed",
    Error => "Error",
    Terminating => "Terminating",
    Terminated => "Terminated",
    Unknown => "Unknown",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_round_trip() {
        for s in ActualState::ALL {
            assert_eq!(s.as_str().parse::<ActualState>(), Ok(*s));
            assert_eq!(serde_json::to_string(s).ok(), Some(format!("\"{}\"", s.as_str())));
        }
        for s in DesiredState::ALL {
            assert_eq!(s.as_str().parse::<DesiredState>(), Ok(*s));
        }
        assert_eq!("running".parse::<DesiredState>(), Ok(DesiredState::Running));
        assert!("Sleeping".parse::<DesiredState>().is_err());
    }
}
