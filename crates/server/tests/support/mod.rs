//! Shared by the server's API and dashboard tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cove_runtime::FakeBackend;
use cove_server::{AppState, Config};
use cove_store::Store;

/// The server's state over `store`, on the fake backend (which has the image `img:1`, the
/// default) with a reconciler that runs every 50 ms, its data in `dir`, the dashboard at
/// `public_url`.
pub fn fake_state(store: Arc<dyn Store>, dir: &Path, public_url: &str) -> AppState {
    let fake = Arc::new(FakeBackend::new());
    fake.add_image("img:1");
    let reconcile = cove_reconciler::Config { interval: Duration::from_millis(50), ..Default::default() };
    let reconciler = cove_reconciler::spawn(store.clone(), fake.clone(), reconcile.clone());
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.default_image = "img:1".into();
    config.reconcile = reconcile;
    config.public_url = public_url.into();
    AppState::bare(store, fake, reconciler, config, cove_server::tickets::Signer::with_key([1; 32]))
}
