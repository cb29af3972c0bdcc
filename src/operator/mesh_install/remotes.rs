//! What the MeshInstall controller hears of RemoteClusters: the Secrets they name go into a
//! revision's Role, so a RemoteCluster that changes or goes wakes its mesh, and no
//! MeshInstall is rendered before the RemoteClusters are listed (a Role rendered from an
//! empty list would take the control plane's Secret access away, then give it back).

use std::sync::Arc;

use futures::Stream;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use crate::api::RemoteCluster;
use crate::operator::watch::Guarded;

/// Fed by the RemoteCluster watch's driver.
pub struct RemoteFeed {
    meshes: mpsc::UnboundedSender<String>,
    listed: Arc<watch::Sender<bool>>,
}

/// The controller's end of a [`RemoteFeed`].
pub struct RemoteNews {
    meshes: mpsc::UnboundedReceiver<String>,
    /// True once the RemoteClusters have been listed.
    pub listed: watch::Receiver<bool>,
}

/// A feed and its receiving end.
pub fn remote_feed() -> (RemoteFeed, RemoteNews) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (listed_tx, listed) = watch::channel(false);
    let feed = RemoteFeed {
        meshes: tx,
        listed: Arc::new(listed_tx),
    };
    (feed, RemoteNews { meshes: rx, listed })
}

impl RemoteFeed {
    /// Notes the mesh of a RemoteCluster that changed or went, and the end of a list.
    pub fn event(&self, event: &watcher::Event<Guarded<RemoteCluster>>) {
        match event {
            watcher::Event::Apply(g) | watcher::Event::InitApply(g) | watcher::Event::Delete(g) => {
                if let Ok(rc) = &g.0 {
                    // The receiver lives as long as the controller; after it, nobody needs this.
                    let _ = self.meshes.send(rc.spec.mesh.clone());
                }
            }
            watcher::Event::InitDone => {
                self.listed.send_replace(true);
            }
            watcher::Event::Init => {}
        }
    }
}

impl RemoteNews {
    /// The meshes whose RemoteClusters changed, as a stream; and the `listed` gate.
    pub fn split(self) -> (impl Stream<Item = String> + Send + 'static, watch::Receiver<bool>) {
        let meshes = futures::stream::unfold(self.meshes, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        (meshes, self.listed)
    }
}
