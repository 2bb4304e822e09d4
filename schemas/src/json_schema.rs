//! JSON Schemas of the wire types, generated into `schemas/json/`.
//!
//! `cargo test -p arca-schemas` fails when a file there is stale;
//! `ARCA_BLESS=1 cargo test -p arca-schemas` rewrites them.

use schemars::{JsonSchema, schema_for};

use crate::{event, msg, system};

/// Every schema as (file name, pretty JSON).
pub fn all() -> Vec<(&'static str, String)> {
    fn one<T: JsonSchema>(name: &'static str) -> (&'static str, String) {
        let mut s = serde_json::to_string_pretty(&schema_for!(T)).expect("schema encodes");
        s.push('\n');
        (name, s)
    }
    vec![
        one::<event::JobEvent>("job-event.json"),
        one::<system::SystemsFile>("systems-file.json"),
        one::<crate::JobRecord>("job-record.json"),
        one::<msg::SnapshotInfo>("snapshot-info.json"),
        one::<msg::StartBackup>("start-backup.json"),
        one::<msg::LoadSystems>("load-systems.json"),
        one::<msg::CancelJob>("cancel-job.json"),
        one::<msg::CatalogRebuilt>("catalog-rebuilt.json"),
        one::<msg::StartRestore>("start-restore.json"),
        one::<msg::OpenWindow>("open-window.json"),
        one::<msg::RunHook>("run-hook.json"),
        one::<msg::HookReply>("hook-reply.json"),
        one::<msg::StartBackupTransfer>("start-backup-transfer.json"),
        one::<msg::StartRestoreTransfer>("start-restore-transfer.json"),
        one::<msg::TransferState>("transfer-state.json"),
        one::<msg::PutChunk>("put-chunk.json"),
        one::<msg::CommitSnapshot>("commit-snapshot.json"),
        one::<crate::error::ErrorReply>("error-reply.json"),
        one::<crate::tree::TreeBatch>("tree-batch.json"),
        one::<crate::trust::TokenClaims>("token-claims.json"),
        one::<crate::trust::SnapshotManifest>("snapshot-manifest.json"),
        one::<crate::trust::AuditRecord>("audit-record.json"),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn json_schemas_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
        let bless = std::env::var_os("ARCA_BLESS").is_some();
        let mut stale = Vec::new();
        for (name, text) in super::all() {
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "stale JSON Schemas in schemas/json: {stale:?}; run ARCA_BLESS=1 cargo test -p arca-schemas"
        );
    }
}
