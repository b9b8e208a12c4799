//! Upstream connections tied to one client connection, driven by that connection's task.
//!
//! A shared pool (hyper-util's legacy `Client`) runs every upstream connection in a task of
//! its own and hands requests and responses over channels: each request crosses tasks twice
//! and wakes them, which on a small machine means cross-thread wake-ups, futex calls and
//! context switches per request. An HTTP/1.1 client connection carries one request at a time,
//! so the upstream connection it used last is free again when its next request comes: keep
//! that one with the client connection and poll it in the same task (see [`drive`]), and a
//! keep-alive client's request never leaves its task. nginx works the same way: a worker
//! serves both sides of an exchange.
//!
//! Only plain HTTP/1.x exchanges use this. WebSocket upgrades outlive the client connection's
//! HTTP phase and HTTP/2 streams run in tasks of their own: both go through the shared pool.
//! Bodiless requests with a safe method need no hyper connection at all: their future does
//! the exchange on a connection kept here too (see `h1`). An upstream connection kept here
//! closes with its client connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use cove_core::WorkspaceId;
use tokio::time::Instant;

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;

use crate::h1;
use crate::upstream::Upstream;

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The upstream connections of one client connection: shared between the request handlers
/// (which take and return them) and [`drive`] (which polls them).
#[derive(Clone, Default)]
pub(crate) struct Affinity {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// The connection the last exchange used, free again once its response has ended.
    idle: Option<(Upstream, SendRequest<Body>)>,
    /// The connection the last bodiless exchange used, put back when its response ended.
    plain: Option<h1::Connection>,
    /// Connections opened since [`drive`] last ran, for it to adopt.
    new: Vec<Driver>,
    /// [`drive`]'s task, to wake when a connection was added.
    waker: Option<Waker>,
    /// The workspace this connection's requests last reported activity for, and when.
    activity: Option<(WorkspaceId, Instant)>,
}

/// How often one client connection reports its requests as activity. The idle stop counts
/// in minutes; once a request would be a lock and a table write per request.
const ACTIVITY_INTERVAL: Duration = Duration::from_secs(1);

impl Affinity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can be left half-changed by a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept connection, if it goes to `upstream` and is still open.
    pub fn take(&self, upstream: &Upstream) -> Option<SendRequest<Body>> {
        let mut inner = self.lock();
        match inner.idle.take() {
            Some((kept, sender)) if kept == *upstream && !sender.is_closed() => Some(sender),
            other => {
                // A connection to another upstream stays kept: a client connection usually
                // talks to one app. (Dropping a closed sender costs nothing.)
                inner.idle = other.filter(|(_, sender)| !sender.is_closed());
                None
            }
        }
    }

    /// Keeps `sender` for the next exchange (replacing an older one).
    pub fn keep(&self, upstream: Upstream, sender: SendRequest<Body>) {
        self.lock().idle = Some((upstream, sender));
    }

    /// The kept connection for bodiless exchanges, if it goes to `upstream`. One the app has
    /// closed shows when it is used (and the request is sent again on a new one).
    pub fn take_plain(&self, upstream: &Upstream) -> Option<h1::Connection> {
        let mut inner = self.lock();
        match inner.plain.take() {
            Some(connection) if connection.upstream() == upstream => Some(connection),
            other => {
                inner.plain = other;
                None
            }
        }
    }

    /// Keeps a connection whose exchange has ended for the next bodiless exchange.
    pub fn keep_plain(&self, connection: h1::Connection) {
        self.lock().plain = Some(connection);
    }

    /// Whether a request to `workspace` at `now` should be reported as activity: the first
    /// one, and then one per [`ACTIVITY_INTERVAL`].
    pub fn activity_due(&self, workspace: WorkspaceId, now: Instant) -> bool {
        let mut inner = self.lock();
        let due = inner.activity.is_none_or(|(last, at)| last != workspace || now >= at + ACTIVITY_INTERVAL);
        if due {
            inner.activity = Some((workspace, now));
        }
        due
    }

    /// Has [`drive`] poll a new upstream connection.
    pub fn adopt(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let mut inner = self.lock();
        inner.new.push(Box::pin(connection));
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }
}

/// Runs a client connection, and the upstream connections its exchanges opened, in one task
/// until the client connection ends; the upstream connections are closed then.
pub(crate) async fn drive<F: Future>(affinity: Affinity, client: F) -> F::Output {
    let mut client = std::pin::pin!(client);
    let mut upstreams: Vec<Driver> = Vec::new();
    std::future::poll_fn(move |cx| {
        // The client side first: its handlers may open upstream connections, which then get
        // their first poll in this same pass.
        if let Poll::Ready(output) = client.as_mut().poll(cx) {
            return Poll::Ready(output);
        }
        {
            let mut inner = affinity.lock();
            upstreams.append(&mut inner.new);
            if inner.waker.as_ref().is_none_or(|waker| !waker.will_wake(cx.waker())) {
                inner.waker = Some(cx.waker().clone());
            }
        }
        upstreams.retain_mut(|upstream| upstream.as_mut().poll(cx).is_pending());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Context;

    /// Polls whether a future is done without waiting.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    #[test]
    fn activity_is_due_once_a_second_per_workspace() {
        let affinity = Affinity::default();
        let (api, web) = (WorkspaceId::new_random(), WorkspaceId::new_random());
        let start = Instant::now();
        assert!(affinity.activity_due(api, start));
        assert!(!affinity.activity_due(api, start + Duration::from_millis(900)));
        assert!(affinity.activity_due(web, start + Duration::from_millis(950)), "another workspace");
        assert!(affinity.activity_due(api, start + Duration::from_millis(960)));
        assert!(!affinity.activity_due(api, start + Duration::from_millis(1500)));
        assert!(affinity.activity_due(api, start + Duration::from_millis(1960)));
    }

    #[test]
    fn adopted_connections_are_polled_until_done_and_dropped_with_the_client() {
        let affinity = Affinity::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let (finish_client, client_done) = tokio::sync::oneshot::channel::<()>();
        let adopter = affinity.clone();
        let counter = polls.clone();
        let client = async move {
            adopter.adopt(std::future::poll_fn(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Poll::<()>::Pending
            }));
            let _ = client_done.await;
            7
        };
        let mut driven = Box::pin(drive(affinity, client));
        assert_eq!(poll_once(&mut driven), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), 1, "adopted in the same pass");
        assert_eq!(poll_once(&mut driven), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        let _ = finish_client.send(());
        assert_eq!(poll_once(&mut driven), Poll::Ready(7));
    }
}
