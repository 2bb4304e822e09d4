//! The scheduler's client of one media service: chunk keys, backup and
//! restore sessions, and the snapshots it holds.

use arca_schemas::msg::{
    ChunkKey, CloseRestoreSession, CloseSession, GetChunkKey, GetSnapshot, ListSnapshotsReply,
    MediaListSnapshots, OpenRestoreSession, OpenSession, RestoreSessionClosed, SessionClosed,
    SessionOpened, SnapshotReply,
};
use arca_schemas::subject::{self, MediaVerb};

use super::{JobSigner, Link};
use crate::rpc::{DEFAULT_TIMEOUT, RpcError};
use crate::trust::Grant;

/// One media service, for one job. Every request may take
/// [`DEFAULT_TIMEOUT`] and, but for closing a session, is retried for the
/// link's window.
#[derive(Clone)]
pub struct MediaPeer {
    link: Link,
    media: String,
    signer: JobSigner,
}

impl MediaPeer {
    /// Media service `media`; requests on the job's behalf are signed by
    /// `signer`.
    pub fn new(link: Link, media: &str, signer: JobSigner) -> Self {
        MediaPeer {
            link,
            media: media.to_owned(),
            signer,
        }
    }

    /// The media service's id.
    pub fn id(&self) -> &str {
        &self.media
    }

    fn subject(&self, verb: MediaVerb) -> String {
        subject::media(&self.media, verb)
    }

    /// The chunk-id key of a system.
    pub async fn chunk_key(&self, req: &GetChunkKey) -> Result<ChunkKey, RpcError> {
        let s = self.subject(MediaVerb::ChunkKey);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, None)
            .await
    }

    /// Opens a backup session, for the agent holding `agent_key`.
    pub async fn open_session(
        &self,
        req: &OpenSession,
        agent_key: Option<String>,
    ) -> Result<SessionOpened, RpcError> {
        let token = self.signer.with(Grant {
            agent_key,
            ..Grant::default()
        });
        let s = self.subject(MediaVerb::Session);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, Some(&*token))
            .await
    }

    /// Opens a cross-system restore session the grant allows.
    pub async fn open_restore_session(
        &self,
        req: &OpenRestoreSession,
        grant: Grant,
    ) -> Result<SessionOpened, RpcError> {
        let token = self.signer.with(grant);
        let s = self.subject(MediaVerb::RestoreSession);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, Some(&*token))
            .await
    }

    /// Ends a cross-system restore's grant.
    pub async fn close_restore_session(
        &self,
        req: &CloseRestoreSession,
        grant: Grant,
    ) -> Result<RestoreSessionClosed, RpcError> {
        let token = self.signer.with(grant);
        let s = self.subject(MediaVerb::CloseRestore);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, Some(&*token))
            .await
    }

    /// Tells media once that the job ended (it also closes an idle session
    /// by itself).
    pub async fn close_session(&self, req: &CloseSession) -> Result<SessionClosed, RpcError> {
        let s = self.subject(MediaVerb::CloseSession);
        self.link.once(s, req, DEFAULT_TIMEOUT, None).await
    }

    /// One snapshot's record.
    pub async fn snapshot(&self, req: &GetSnapshot) -> Result<SnapshotReply, RpcError> {
        let s = self.subject(MediaVerb::Snapshot);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, None)
            .await
    }

    /// The snapshots media holds.
    pub async fn snapshots(
        &self,
        req: &MediaListSnapshots,
    ) -> Result<ListSnapshotsReply, RpcError> {
        let s = self.subject(MediaVerb::Snapshots);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, None)
            .await
    }
}
