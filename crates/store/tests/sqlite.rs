//! The SQLite store against real database files in a temporary directory.

// A failed unwrap is how a test reports an unexpected error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use cove_core::{ActualState, DesiredState, Name, Resources, Role, ShareLevel, User, UserId, Workspace, WorkspaceId};
use cove_store::{GitToken, NewToken, NewUser, NewWorkspace, SqliteStore, Store, StoreError, WorkspacePatch};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;

const GIB: u64 = 1024 * 1024 * 1024;

struct Fixture {
    dir: TempDir,
    store: SqliteStore,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cove.db")).await.unwrap();
        Self { dir, store }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("cove.db")
    }

    async fn reopen(self) -> Self {
        self.store.close().await;
        let store = SqliteStore::open(&self.path()).await.unwrap();
        Self { dir: self.dir, store }
    }

    async fn user(&self, user_name: &str) -> User {
        let new = NewUser { name: name(user_name), role: Role::Member, password_hash: format!("hash of {user_name}") };
        self.store.user_create(new).await.unwrap()
    }

    async fn workspace(&self, owner: &User, workspace_name: &str) -> Workspace {
        self.store.workspace_create(new_workspace(owner.id, workspace_name)).await.unwrap()
    }

    /// Edits the file behind the store's back, past the schema's CHECK constraints.
    async fn tamper(&self, sql: &str) {
        let mut conn = SqliteConnectOptions::new()
            .filename(self.path())
            .pragma("ignore_check_constraints", "ON")
            .connect()
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn new_workspace(owner: UserId, workspace_name: &str) -> NewWorkspace {
    NewWorkspace {
        name: name(workspace_name),
        owner,
        image: "ghcr.io/cove/base:1".into(),
        resources: Resources { cpus_milli: 1500, memory_bytes: 2 * GIB, disk_bytes: Some(10 * GIB) },
        idle_timeout_seconds: 45,
        desired: DesiredState::Running,
        source: None,
        handoff: None,
        devcontainer_path: None,
    }
}

fn names(workspaces: &[Workspace]) -> Vec<(String, String)> {
    workspaces.iter().map(|w| (w.name.to_string(), w.owner_name.to_string())).collect()
}

#[tokio::test]
async fn users_create_get_and_count() {
    let f = Fixture::new().await;
    assert_eq!(f.store.user_count().await.unwrap(), 0);
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    assert_eq!(f.store.user_count().await.unwrap(), 2);

    assert_eq!(f.store.user_get(ada.id).await.unwrap(), ada);
    let (found, hash) = f.store.user_get_by_name_with_password(&bob.name).await.unwrap().unwrap();
    assert_eq!(found, bob);
    assert_eq!(hash, "hash of bob");

    assert!(f.store.user_get_by_name_with_password(&name("eve")).await.unwrap().is_none());
    assert!(matches!(f.store.user_get(UserId::new_random()).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn user_name_is_unique() {
    let f = Fixture::new().await;
    f.user("ada").await;
    let again = NewUser { name: name("ada"), role: Role::Admin, password_hash: "x".into() };
    match f.store.user_create(again).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("ada"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(f.store.user_count().await.unwrap(), 1);
}

#[tokio::test]
async fn workspace_create_get_and_list() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    let new = new_workspace(ada.id, "web");
    let (image, resources) = (new.image.clone(), new.resources);
    let web = f.store.workspace_create(new).await.unwrap();

    assert_eq!(web.name, name("web"));
    assert_eq!((web.owner, &web.owner_name), (ada.id, &ada.name));
    assert_eq!((&web.spec.image, web.spec.resources), (&image, resources));
    assert_eq!(web.idle_timeout_seconds, 45);
    assert_eq!((web.desired, web.actual), (DesiredState::Running, ActualState::CreationRequested));
    assert_eq!((web.generation, web.actual_generation), (1, 0));
    assert_eq!(web.message, None);
    assert_eq!(web.created_at, web.updated_at);

    assert_eq!(f.store.workspace_get(web.id).await.unwrap(), web);
    assert_eq!(f.store.workspace_get_by_name(ada.id, &web.name).await.unwrap(), web);
    assert!(matches!(f.store.workspace_get_by_name(bob.id, &web.name).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.workspace_get(WorkspaceId::new_random()).await, Err(StoreError::NotFound)));

    f.workspace(&ada, "api").await;
    f.workspace(&bob, "db").await;
    f.workspace(&bob, "api").await;
    let pair = |w: &str, o: &str| (w.to_string(), o.to_string());
    let by_ada = f.store.workspace_list_by_owner(ada.id).await.unwrap();
    assert_eq!(names(&by_ada), [pair("api", "ada"), pair("web", "ada")]);
    let all = f.store.workspace_list_all().await.unwrap();
    assert_eq!(names(&all), [pair("api", "ada"), pair("api", "bob"), pair("db", "bob"), pair("web", "ada")]);
}

#[tokio::test]
async fn workspace_name_is_unique_per_owner() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    f.workspace(&ada, "api").await;

    match f.store.workspace_create(new_workspace(ada.id, "api")).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("api"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let bobs = f.workspace(&bob, "api").await;
    assert_eq!(bobs.owner, bob.id);
    assert_eq!(f.store.workspace_list_all().await.unwrap().len(), 2);
}

#[tokio::test]
async fn workspace_create_for_unknown_owner_is_not_found() {
    let f = Fixture::new().await;
    let result = f.store.workspace_create(new_workspace(UserId::new_random(), "api")).await;
    assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
}

#[tokio::test]
async fn workspace_patch_bumps_generation_and_checks_the_expected_one() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;

    let stop = WorkspacePatch { desired: Some(DesiredState::Stopped), ..Default::default() };
    let stopped = f.store.workspace_patch(ws.id, stop, Some(ws.generation)).await.unwrap();
    assert_eq!(stopped.generation, ws.generation + 1);
    assert_eq!(stopped.desired, DesiredState::Stopped);
    assert_eq!(stopped.spec, ws.spec);
    assert_eq!(stopped.idle_timeout_seconds, ws.idle_timeout_seconds);
    assert!(stopped.updated_at >= ws.updated_at);
    assert_eq!(stopped.created_at, ws.created_at);
    assert_eq!(f.store.workspace_get(ws.id).await.unwrap(), stopped);

    // A patch made from the old read loses and changes nothing.
    let run = WorkspacePatch { desired: Some(DesiredState::Running), ..Default::default() };
    let stale = f.store.workspace_patch(ws.id, run, Some(ws.generation)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert_eq!(f.store.workspace_get(ws.id).await.unwrap(), stopped);

    // Resources are replaced whole: a patch without a disk size clears it.
    let smaller = Resources { cpus_milli: 500, memory_bytes: GIB, disk_bytes: None };
    let resize = WorkspacePatch { resources: Some(smaller), idle_timeout_seconds: Some(0), ..Default::default() };
    let resized = f.store.workspace_patch(ws.id, resize, None).await.unwrap();
    assert_eq!(resized.spec.resources, smaller);
    assert_eq!(resized.idle_timeout_seconds, 0);
    assert_eq!(resized.desired, DesiredState::Stopped);
    assert_eq!(resized.generation, stopped.generation + 1);

    let touched = f.store.workspace_patch(ws.id, WorkspacePatch::default(), None).await.unwrap();
    assert_eq!(touched.generation, resized.generation + 1);
    assert_eq!(touched.spec, resized.spec);
}

#[tokio::test]
async fn workspace_patch_of_unknown_id_is_not_found() {
    let f = Fixture::new().await;
    for expected_generation in [None, Some(1)] {
        let result =
            f.store.workspace_patch(WorkspaceId::new_random(), WorkspacePatch::default(), expected_generation).await;
        assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
    }
}

#[tokio::test]
async fn workspace_set_actual_wins_only_with_a_newer_generation() {
    use ActualState::*;
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;

    let mut expected = (ws.actual, ws.message.clone(), ws.actual_generation);
    let mut check = async |generation: i64, state: ActualState, wins: bool| {
        let message = format!("{state} at {generation}");
        let written = f.store.workspace_set_actual(ws.id, state, Some(&message), generation).await.unwrap();
        assert_eq!(written, wins, "writing {state} at generation {generation}");
        if wins {
            expected = (state, Some(message), generation);
        }
        let stored = f.store.workspace_get(ws.id).await.unwrap();
        assert_eq!((stored.actual, stored.message, stored.actual_generation), expected);
        assert_eq!(stored.generation, ws.generation, "observed state leaves the generation");
        assert_eq!(stored.updated_at, ws.updated_at, "observed state leaves updated_at");
    };
    check(1, Starting, true).await;
    check(1, Failed, false).await; // equal loses
    check(0, Stopped, false).await; // older loses
    check(2, Running, true).await;
    check(5, Error, true).await; // gaps are fine
    check(4, Running, false).await;

    let unknown = f.store.workspace_set_actual(WorkspaceId::new_random(), Running, None, 9).await;
    assert!(!unknown.unwrap());
}

#[tokio::test]
async fn every_state_can_be_stored() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    for &desired in DesiredState::ALL {
        let patch = WorkspacePatch { desired: Some(desired), ..Default::default() };
        f.store.workspace_patch(ws.id, patch, None).await.unwrap();
        assert_eq!(f.store.workspace_get(ws.id).await.unwrap().desired, desired);
    }
    for (generation, &actual) in (1..).zip(ActualState::ALL) {
        assert!(f.store.workspace_set_actual(ws.id, actual, None, generation).await.unwrap());
        assert_eq!(f.store.workspace_get(ws.id).await.unwrap().actual, actual);
    }
}

#[tokio::test]
async fn workspace_delete_then_get_is_not_found() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    let other = f.workspace(&ada, "web").await;

    f.store.workspace_delete(ws.id).await.unwrap();
    assert!(matches!(f.store.workspace_get(ws.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.workspace_delete(ws.id).await, Err(StoreError::NotFound)));
    assert_eq!(f.store.workspace_list_all().await.unwrap(), [other]);

    // The name is free again.
    f.workspace(&ada, "api").await;
}

#[tokio::test]
async fn token_authenticate_honours_expiry_and_records_use() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let t0 = Utc::now().trunc_subsecs(3);
    let new = NewToken {
        scope: cove_core::TokenScope::Write,
        user: ada.id,
        name: "laptop".into(),
        token_hash: cove_core::hash_token("secret"),
        expires_at: Some(t0 + Duration::hours(1)),
    };
    let token = f.store.token_create(new).await.unwrap();
    assert_eq!(token.last_used_at, None);
    assert_eq!(f.store.token_list_by_user(ada.id).await.unwrap(), std::slice::from_ref(&token));

    // Steps in order: when the token is used, and the last use it should show then
    // (`None`: not accepted).
    let check = async |at: DateTime<Utc>, last_used: Option<DateTime<Utc>>| {
        let hash = cove_core::hash_token("secret");
        let found = f.store.token_authenticate(&hash, at).await.unwrap();
        let seen = found.as_ref().and_then(|(t, _)| t.last_used_at);
        assert_eq!(seen, last_used, "used at {at}");
        if let Some((t, user)) = found {
            assert_eq!((t.id, user), (token.id, ada.clone()));
            let listed = f.store.token_list_by_user(ada.id).await.unwrap();
            assert_eq!(listed, [t], "the use is stored");
        }
    };
    check(t0, Some(t0)).await;
    check(t0 + Duration::seconds(30), Some(t0)).await; // within the minute: no write
    check(t0 + Duration::minutes(2), Some(t0 + Duration::minutes(2))).await;
    let last_moment = t0 + Duration::hours(1) - Duration::milliseconds(1);
    check(last_moment, Some(last_moment)).await;
    check(t0 + Duration::hours(1), None).await;
    check(t0 + Duration::hours(2), None).await;

    let unknown = f.store.token_authenticate(&cove_core::hash_token("guess"), t0).await.unwrap();
    assert!(unknown.is_none());

    // Why a token was refused: expired from its expiry on, never for an unknown one.
    let hash = cove_core::hash_token("secret");
    assert!(!f.store.token_expired(&hash, last_moment).await.unwrap());
    assert!(f.store.token_expired(&hash, t0 + Duration::hours(1)).await.unwrap());
    assert!(!f.store.token_expired(&cove_core::hash_token("guess"), t0 + Duration::hours(2)).await.unwrap());
}

#[tokio::test]
async fn token_scope_is_kept() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    for (i, scope) in [cove_core::TokenScope::Read, cove_core::TokenScope::Write, cove_core::TokenScope::Admin]
        .into_iter()
        .enumerate()
    {
        let secret = format!("secret{i}");
        let new = NewToken {
            scope,
            user: ada.id,
            name: format!("t{i}"),
            token_hash: cove_core::hash_token(&secret),
            expires_at: None,
        };
        assert_eq!(f.store.token_create(new).await.unwrap().scope, scope);
        let (found, _) =
            f.store.token_authenticate(&cove_core::hash_token(&secret), Utc::now()).await.unwrap().unwrap();
        assert_eq!(found.scope, scope);
    }
}

#[tokio::test]
async fn token_delete_needs_the_owning_user() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    let new = NewToken {
        scope: cove_core::TokenScope::Write,
        user: ada.id,
        name: "ci".into(),
        token_hash: cove_core::hash_token("secret"),
        expires_at: None,
    };
    let token = f.store.token_create(new).await.unwrap();

    let by_bob = f.store.token_delete(bob.id, token.id).await;
    assert!(matches!(by_bob, Err(StoreError::NotFound)), "{by_bob:?}");
    let hash = cove_core::hash_token("secret");
    assert!(f.store.token_authenticate(&hash, Utc::now()).await.unwrap().is_some());

    f.store.token_delete(ada.id, token.id).await.unwrap();
    assert!(f.store.token_authenticate(&hash, Utc::now()).await.unwrap().is_none());
    assert!(f.store.token_list_by_user(ada.id).await.unwrap().is_empty());
    let again = f.store.token_delete(ada.id, token.id).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
}

#[tokio::test]
async fn tokens_list_by_user_oldest_first() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    let mut made = vec![];
    for (i, user) in [ada.id, bob.id, ada.id, ada.id].into_iter().enumerate() {
        let new = NewToken {
            scope: cove_core::TokenScope::Write,
            user,
            name: format!("token {i}"),
            token_hash: cove_core::hash_token(&format!("secret {i}")),
            expires_at: None,
        };
        made.push(f.store.token_create(new).await.unwrap());
    }
    let listed = f.store.token_list_by_user(ada.id).await.unwrap();
    assert!(listed.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    let mut listed_ids: Vec<_> = listed.iter().map(|t| t.id).collect();
    let mut adas: Vec<_> = made.iter().filter(|t| t.user == ada.id).map(|t| t.id).collect();
    listed_ids.sort();
    adas.sort();
    assert_eq!(listed_ids, adas);

    let for_nobody = NewToken {
        scope: cove_core::TokenScope::Write,
        user: UserId::new_random(),
        name: "x".into(),
        token_hash: cove_core::hash_token("x"),
        expires_at: None,
    };
    assert!(matches!(f.store.token_create(for_nobody).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn instance_id_is_made_once_and_kept() {
    let f = Fixture::new().await;
    let first = f.store.instance_id().await.unwrap();
    assert_eq!(first.len(), 32, "a simple uuid: {first}");
    assert_eq!(f.store.instance_id().await.unwrap(), first);

    let f = f.reopen().await;
    assert_eq!(f.store.instance_id().await.unwrap(), first);

    let elsewhere = Fixture::new().await;
    assert_ne!(elsewhere.store.instance_id().await.unwrap(), first);
}

#[tokio::test]
async fn instance_id_agrees_when_asked_at_once() {
    let f = Fixture::new().await;
    let second = SqliteStore::open(&f.path()).await.unwrap();
    let asks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { f.store.clone() } else { second.clone() };
            tokio::spawn(async move { store.instance_id().await.unwrap() })
        })
        .collect();
    let mut ids = vec![];
    for ask in asks {
        ids.push(ask.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn data_survives_reopening() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    let stop = WorkspacePatch { desired: Some(DesiredState::Stopped), ..Default::default() };
    f.store.workspace_patch(ws.id, stop, None).await.unwrap();
    f.store.workspace_set_actual(ws.id, ActualState::Stopped, Some("idle"), 3).await.unwrap();
    let before = f.store.workspace_get(ws.id).await.unwrap();
    let new = NewToken {
        scope: cove_core::TokenScope::Write,
        user: ada.id,
        name: "laptop".into(),
        token_hash: cove_core::hash_token("secret"),
        expires_at: None,
    };
    let token = f.store.token_create(new).await.unwrap();

    // Reopening runs the migrations again, which must find nothing to do.
    let f = f.reopen().await.reopen().await;
    assert_eq!(f.store.user_get(ada.id).await.unwrap(), ada);
    assert_eq!(f.store.workspace_get(ws.id).await.unwrap(), before);
    assert_eq!(f.store.token_list_by_user(ada.id).await.unwrap(), [token]);
    let hash = cove_core::hash_token("secret");
    assert!(f.store.token_authenticate(&hash, Utc::now()).await.unwrap().is_some());
}

#[tokio::test]
async fn corrupt_rows_are_reported() {
    // Each edit breaks one value that the store must parse rather than trust.
    let check = async |edit: &str| {
        let f = Fixture::new().await;
        let ada = f.user("ada").await;
        f.workspace(&ada, "api").await;
        f.tamper(edit).await;
        let result = f.store.workspace_list_all().await;
        assert!(matches!(result, Err(StoreError::Corrupt(_))), "after {edit:?}: {result:?}");
    };
    check("UPDATE workspaces SET id = 'not-a-uuid'").await;
    check("UPDATE workspaces SET name = 'Not A Name'").await;
    check("UPDATE workspaces SET desired = 'Sleeping'").await;
    check("UPDATE workspaces SET actual = 'napping'").await;
    check("UPDATE workspaces SET memory_bytes = -5").await;
    check("UPDATE workspaces SET idle_timeout_seconds = 5000000000").await;
    check("UPDATE workspaces SET created_at = 9223372036854775807").await;
    check("UPDATE users SET name = 'ADA'").await;

    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    f.tamper("UPDATE users SET role = 'root'").await;
    let result = f.store.user_get(ada.id).await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
}

#[tokio::test]
async fn activity_only_moves_forward() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    assert_eq!((ws.last_activity_at, ws.last_activity_kind.clone()), (None, None));
    let t1 = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let t0 = DateTime::from_timestamp_millis(1_600_000_000_000).unwrap();
    let gone = WorkspaceId::new_random();
    f.store.workspace_record_activity(&[(ws.id, t1, "http".into()), (gone, t1, "http".into())]).await.unwrap();
    f.store.workspace_record_activity(&[(ws.id, t0, "exec".into())]).await.unwrap();
    let got = f.store.workspace_get(ws.id).await.unwrap();
    assert_eq!((got.last_activity_at, got.last_activity_kind.as_deref()), (Some(t1), Some("http")));
    // Activity is not a user's change: it bumps neither generation nor updated_at.
    assert_eq!((got.generation, got.updated_at), (ws.generation, ws.updated_at));
}

#[tokio::test]
async fn app_shares_default_to_owner_and_go_with_the_workspace() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    assert_eq!(f.store.app_share_get(ws.id, "8080").await.unwrap(), None);
    f.store.app_share_set(ws.id, "8080", ShareLevel::Public).await.unwrap();
    f.store.app_share_set(ws.id, "3000", ShareLevel::Authenticated).await.unwrap();
    f.store.app_share_set(ws.id, "8080", ShareLevel::Authenticated).await.unwrap();
    assert_eq!(
        f.store.app_share_list(ws.id).await.unwrap(),
        [("3000".to_string(), ShareLevel::Authenticated), ("8080".to_string(), ShareLevel::Authenticated)]
    );
    f.store.app_share_set(ws.id, "3000", ShareLevel::Owner).await.unwrap();
    assert_eq!(f.store.app_share_get(ws.id, "3000").await.unwrap(), None);
    assert!(f.store.app_share_set(WorkspaceId::new_random(), "1", ShareLevel::Public).await.is_err());
    f.store.workspace_delete(ws.id).await.unwrap();
    assert_eq!(f.store.app_share_list(ws.id).await.unwrap(), []);
}

#[tokio::test]
async fn git_tokens_per_user_and_host() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    let token = |user: UserId, host: &str, secret: &[u8]| GitToken {
        user,
        host: host.into(),
        username: "git".into(),
        nonce: vec![7; 12],
        ciphertext: secret.to_vec(),
        created_at: Utc::now(),
    };
    let stored = f.store.git_token_set(token(ada.id, "github.com", b"one")).await.unwrap();
    f.store.git_token_set(token(ada.id, "gitlab.com", b"two")).await.unwrap();
    f.store.git_token_set(token(bob.id, "github.com", b"bob's")).await.unwrap();
    assert_eq!(f.store.git_token_get(ada.id, "github.com").await.unwrap(), Some(stored.clone()));
    // Setting again replaces.
    let replaced = f.store.git_token_set(token(ada.id, "github.com", b"three")).await.unwrap();
    let got = f.store.git_token_get(ada.id, "github.com").await.unwrap().unwrap();
    assert_eq!((got.ciphertext.as_slice(), got.created_at), (&b"three"[..], replaced.created_at));
    let hosts: Vec<String> = f.store.git_token_list(ada.id).await.unwrap().into_iter().map(|t| t.host).collect();
    assert_eq!(hosts, ["github.com", "gitlab.com"]);
    f.store.git_token_delete(ada.id, "github.com").await.unwrap();
    assert_eq!(f.store.git_token_get(ada.id, "github.com").await.unwrap(), None);
    assert!(matches!(f.store.git_token_delete(ada.id, "github.com").await, Err(StoreError::NotFound)));
    assert_eq!(f.store.git_token_get(bob.id, "github.com").await.unwrap().unwrap().ciphertext, b"bob's");
}

#[tokio::test]
async fn quotas_are_kept_and_cleared() {
    let f = Fixture::new().await;
    assert_eq!(f.store.quota_get().await.unwrap(), cove_store::Quotas::default());
    let set = cove_store::Quotas {
        max_workspaces: Some(3),
        max_running: Some(0),
        max_cpus_milli: Some(1500),
        max_memory_bytes: Some(8 << 30),
    };
    f.store.quota_set(set).await.unwrap();
    assert_eq!(f.store.quota_get().await.unwrap(), set);
    let fewer = cove_store::Quotas { max_running: Some(2), ..Default::default() };
    f.store.quota_set(fewer).await.unwrap();
    assert_eq!(f.store.quota_get().await.unwrap(), fewer);
}

#[tokio::test]
async fn audit_lists_the_newest_oldest_first() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let t0 = Utc::now().trunc_subsecs(3);
    for i in 0..5 {
        let entry = cove_store::AuditEntry {
            id: 0,
            at: t0 + Duration::seconds(i),
            actor_id: (i % 2 == 0).then_some(ada.id),
            actor_name: Some("ada".into()),
            action: format!("POST /a{i}"),
            target: "/t".into(),
            outcome: "201".into(),
            peer: Some("127.0.0.1:1".into()),
        };
        f.store.audit_record(entry).await.unwrap();
    }
    let actions = |list: Vec<cove_store::AuditEntry>| list.into_iter().map(|e| e.action).collect::<Vec<_>>();
    assert_eq!(actions(f.store.audit_list(None, 2).await.unwrap()), ["POST /a3", "POST /a4"]);
    let since = f.store.audit_list(Some(t0 + Duration::seconds(2)), 100).await.unwrap();
    assert_eq!(since[0].actor_id, Some(ada.id));
    assert_eq!(since[0].at, t0 + Duration::seconds(2));
    assert_eq!(actions(since), ["POST /a2", "POST /a3", "POST /a4"]);
}

#[tokio::test]
async fn a_disabled_user_authenticates_no_token() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let new = NewToken {
        scope: cove_core::TokenScope::Write,
        user: ada.id,
        name: "t".into(),
        token_hash: cove_core::hash_token("s"),
        expires_at: None,
    };
    f.store.token_create(new).await.unwrap();
    let hash = cove_core::hash_token("s");
    let off = f.store.user_patch(ada.id, cove_store::UserPatch { disabled: Some(true), ..Default::default() }).await;
    assert!(off.unwrap().disabled);
    assert!(f.store.token_authenticate(&hash, Utc::now()).await.unwrap().is_none());
    let patch = cove_store::UserPatch { disabled: Some(false), password_hash: Some("new-hash".into()) };
    assert!(!f.store.user_patch(ada.id, patch).await.unwrap().disabled);
    assert!(f.store.token_authenticate(&hash, Utc::now()).await.unwrap().is_some());
    let (_, stored) = f.store.user_get_by_name_with_password(&ada.name).await.unwrap().unwrap();
    assert_eq!(stored, "new-hash");
    let missing = f.store.user_patch(cove_core::UserId::new_random(), cove_store::UserPatch::default()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

#[tokio::test]
async fn observed_running_opens_a_run_and_anything_else_or_deletion_closes_it() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    let before = Utc::now() - Duration::seconds(1);
    assert!(f.store.run_list(before).await.unwrap().is_empty());

    assert!(f.store.workspace_set_actual(ws.id, ActualState::Starting, None, 1).await.unwrap());
    assert!(f.store.run_list(before).await.unwrap().is_empty(), "starting is not running");
    assert!(f.store.workspace_set_actual(ws.id, ActualState::Running, None, 2).await.unwrap());
    // Running seen again (a later pass) keeps the one open run.
    assert!(f.store.workspace_set_actual(ws.id, ActualState::Running, None, 3).await.unwrap());
    let runs = f.store.run_list(before).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].workspace_name, "api");
    assert_eq!(runs[0].owner, ada.id);
    assert_eq!(runs[0].resources.cpus_milli, 1500);
    assert_eq!(runs[0].stopped_at, None);

    // An older generation loses and records nothing.
    assert!(!f.store.workspace_set_actual(ws.id, ActualState::Stopped, None, 2).await.unwrap());
    assert_eq!(f.store.run_list(before).await.unwrap()[0].stopped_at, None);
    assert!(f.store.workspace_set_actual(ws.id, ActualState::Stopped, None, 4).await.unwrap());
    let runs = f.store.run_list(before).await.unwrap();
    let stopped = runs[0].stopped_at.expect("the run is closed by the stop");
    assert!(stopped >= runs[0].started_at);

    // A second run, ended by the deletion of the record; it outlives the workspace.
    assert!(f.store.workspace_set_actual(ws.id, ActualState::Running, None, 5).await.unwrap());
    f.store.workspace_delete(ws.id).await.unwrap();
    let f = f.reopen().await;
    let runs = f.store.run_list(before).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.stopped_at.is_some()), "{runs:?}");
    // Runs that ended before `since` are left out.
    assert!(f.store.run_list(Utc::now() + Duration::seconds(5)).await.unwrap().is_empty());
}

#[tokio::test]
async fn settings_and_the_user_list() {
    let f = Fixture::new().await;
    assert_eq!(f.store.setting_get("price.cpu_hour").await.unwrap(), None);
    f.store.setting_set("price.cpu_hour", "0.04").await.unwrap();
    f.store.setting_set("price.cpu_hour", "0.05").await.unwrap();
    assert_eq!(f.store.setting_get("price.cpu_hour").await.unwrap().as_deref(), Some("0.05"));
    f.user("zed").await;
    f.user("ada").await;
    let names: Vec<_> = f.store.user_list().await.unwrap().iter().map(|u| u.name.to_string()).collect();
    assert_eq!(names, ["ada", "zed"]);
}

#[tokio::test]
async fn oidc_accounts_are_linked_by_issuer_and_subject() {
    let f = Fixture::new().await;
    let issuer = "https://id.example.com";
    let identity = |subject: &str, email: &str| cove_store::OidcIdentity {
        issuer: issuer.into(),
        subject: subject.into(),
        email: Some(email.into()),
    };
    assert!(f.store.oidc_identity_user(issuer, "s-1").await.unwrap().is_none());
    let new = NewUser { name: name("ada"), role: Role::Member, password_hash: "!oidc".into() };
    let ada = f.store.oidc_user_create(new, identity("s-1", "ada@example.com")).await.unwrap();
    assert_eq!(f.store.oidc_identity_user(issuer, "s-1").await.unwrap(), Some(ada.clone()));
    // The same subject at another issuer is another account.
    assert!(f.store.oidc_identity_user("https://other.example.com", "s-1").await.unwrap().is_none());

    // A second link of the same account, or a taken name, changes nothing.
    let again = NewUser { name: name("ada-2"), role: Role::Member, password_hash: "!oidc".into() };
    assert!(matches!(
        f.store.oidc_user_create(again, identity("s-1", "x@example.com")).await,
        Err(StoreError::Conflict(_))
    ));
    let taken = NewUser { name: name("ada"), role: Role::Member, password_hash: "!oidc".into() };
    assert!(matches!(
        f.store.oidc_user_create(taken, identity("s-2", "y@example.com")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(f.store.user_count().await.unwrap(), 1);
    assert!(f.store.oidc_identity_user(issuer, "s-2").await.unwrap().is_none());

    // A login updates the role when the provider's groups say so, and only then.
    let admin = f.store.oidc_identity_login(identity("s-1", "ada@new.example.com"), Some(Role::Admin)).await.unwrap();
    assert_eq!((admin.id, admin.role), (ada.id, Role::Admin));
    let same = f.store.oidc_identity_login(identity("s-1", "ada@new.example.com"), None).await.unwrap();
    assert_eq!(same.role, Role::Admin);
    assert!(matches!(
        f.store.oidc_identity_login(identity("s-9", "z@example.com"), None).await,
        Err(StoreError::NotFound)
    ));
}

fn secret(scope: cove_store::SecretScope, name: &str, ciphertext: &[u8]) -> cove_store::Secret {
    cove_store::Secret {
        scope,
        name: name.into(),
        kind: cove_store::SecretKind::Env,
        nonce: vec![1; 12],
        ciphertext: ciphertext.to_vec(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[tokio::test]
async fn secrets_by_scope_frozen_sets_and_rewrapping() {
    use cove_store::{FrozenSecret, Sealed, SealedRef, SecretKind, SecretScope};
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let ws = f.workspace(&ada, "api").await;
    let first = f.store.secret_set(secret(SecretScope::User(ada.id), "A", b"one")).await.unwrap();
    f.store.secret_set(secret(SecretScope::Instance, "A", b"inst")).await.unwrap();
    f.store.secret_set(secret(SecretScope::Workspace(ws.id), "B", b"own")).await.unwrap();
    // Replacing keeps created_at and moves updated_at.
    let again = f.store.secret_set(secret(SecretScope::User(ada.id), "A", b"two")).await.unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert!(again.updated_at >= first.updated_at && again.ciphertext == b"two");
    let user: Vec<String> =
        f.store.secret_list(SecretScope::User(ada.id)).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(user, ["A"]);
    assert!(matches!(f.store.secret_delete(SecretScope::Instance, "nope").await, Err(StoreError::NotFound)));

    let frozen = |name: &str| FrozenSecret {
        workspace: ws.id,
        name: name.into(),
        kind: SecretKind::File,
        scope: "user".into(),
        nonce: vec![2; 12],
        ciphertext: b"frozen".to_vec(),
        frozen_at: Utc::now(),
    };
    f.store.workspace_secret_freeze(ws.id, vec![frozen("x"), frozen("y")]).await.unwrap();
    f.store.workspace_secret_freeze(ws.id, vec![frozen("y")]).await.unwrap();
    let set = f.store.workspace_secret_list(ws.id).await.unwrap();
    assert_eq!(set.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["y"]);
    assert_eq!(set[0].kind, SecretKind::File);

    // Everything sealed is listed and rewritten at once.
    f.store
        .key_check_set(Sealed { what: SealedRef::KeyCheck, nonce: vec![3; 12], ciphertext: vec![9; 20] })
        .await
        .unwrap();
    let all = f.store.sealed_list_all().await.unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    let rewrapped: Vec<Sealed> =
        all.into_iter().map(|s| Sealed { nonce: vec![7; 12], ciphertext: b"new".to_vec(), what: s.what }).collect();
    f.store.sealed_replace_all(rewrapped).await.unwrap();
    let f = f.reopen().await;
    let all = f.store.sealed_list_all().await.unwrap();
    assert!(all.iter().all(|s| s.nonce == vec![7; 12] && s.ciphertext == b"new"), "{all:?}");
    assert_eq!(f.store.key_check_get().await.unwrap().unwrap().ciphertext, b"new");

    // A workspace takes its own secrets and its frozen set with it; the user's stay.
    f.store.workspace_delete(ws.id).await.unwrap();
    assert!(f.store.secret_list(SecretScope::Workspace(ws.id)).await.unwrap().is_empty());
    assert!(f.store.workspace_secret_list(ws.id).await.unwrap().is_empty());
    assert_eq!(f.store.secret_list(SecretScope::User(ada.id)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn shares_and_sessions() {
    let f = Fixture::new().await;
    let ada = f.user("ada").await;
    let bob = f.user("bob").await;
    let ws = f.workspace(&ada, "api").await;
    f.store.workspace_share_add(ws.id, bob.id).await.unwrap();
    f.store.workspace_share_add(ws.id, bob.id).await.unwrap();
    assert_eq!(names(&f.store.workspace_list_shared_with(bob.id).await.unwrap()), [("api".into(), "ada".into())]);
    assert_eq!(f.store.workspace_share_list(ws.id).await.unwrap(), [(bob.id, name("bob"))]);
    assert!(f.store.workspace_list_shared_with(ada.id).await.unwrap().is_empty());
    assert!(matches!(f.store.workspace_share_add(ws.id, UserId::new_random()).await, Err(StoreError::NotFound)));
    f.store.workspace_share_remove(ws.id, bob.id).await.unwrap();
    assert!(matches!(f.store.workspace_share_remove(ws.id, bob.id).await, Err(StoreError::NotFound)));

    let new = |n: &str| NewToken {
        user: ada.id,
        name: n.into(),
        scope: cove_core::TokenScope::Write,
        token_hash: format!("hash-{n}"),
        expires_at: None,
    };
    let session = f.store.token_create(new("cli")).await.unwrap();
    f.store.token_create(new("plain")).await.unwrap();
    f.store.session_record(session.id, Some("10.0.0.1"), Some("cove-cli/1")).await.unwrap();
    let sessions = f.store.session_list_by_user(ada.id).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!((sessions[0].token.id, sessions[0].peer.as_deref()), (session.id, Some("10.0.0.1")));
    f.store.token_delete(ada.id, session.id).await.unwrap();
    assert!(f.store.session_list_by_user(ada.id).await.unwrap().is_empty());
}
