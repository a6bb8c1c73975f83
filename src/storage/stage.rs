//! The vote's dispatch over a transaction's operations, shared by the
//! memory and the file storage: each implements [`Stage`] (what one
//! operation does to its staged transaction), and [`apply`] maps every
//! [`Op`] variant onto those steps, so the match over `Op` exists once.
//!
//! A blob store is a store plus the blob file staged with it, a blob
//! restore a restore plus its file; both are refused first on a storage
//! that keeps no blobs ([`StagedBlobs::check`]).

use super::blobdir::StagedBlobs;
use super::{Data, Oid, Op, Result, Tid};

/// A transaction being staged at vote: one method per kind of operation.
/// Each keeps its storage's own checks and error messages.
pub(crate) trait Stage {
    /// `oid` stored with the serial the client read (a conflict is
    /// collected, not an error).
    fn store(&mut self, oid: Oid, serial: Tid, data: &Data) -> Result<()>;
    /// `oid` deleted, with the serial the client read.
    fn delete(&mut self, oid: Oid, serial: Tid) -> Result<()>;
    /// `oid` must still be at `serial` (a read conflict otherwise).
    fn check_current(&mut self, oid: Oid, serial: Tid) -> Result<()>;
    /// A record copied from elsewhere (`data` `None`: no data).
    fn restore(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: &Option<Data>,
        prev_txn: Option<Tid>,
    ) -> Result<()>;
    /// Undo the transaction `txn`.
    fn undo(&mut self, txn: Tid) -> Result<()>;
    /// The blob files staged with this transaction.
    fn blobs(&mut self) -> &mut StagedBlobs;
}

/// Apply one operation of a transaction to `stage`.
pub(crate) fn apply(stage: &mut impl Stage, op: &Op) -> Result<()> {
    match op {
        Op::Store { oid, serial, data } => stage.store(*oid, *serial, data),
        Op::Delete { oid, serial } => stage.delete(*oid, *serial),
        Op::CheckCurrent { oid, serial } => stage.check_current(*oid, *serial),
        Op::Restore {
            oid,
            serial,
            data,
            prev_txn,
        } => stage.restore(*oid, *serial, data, *prev_txn),
        Op::Undo { txn } => stage.undo(*txn),
        Op::StoreBlob {
            oid,
            serial,
            data,
            blob,
        } => {
            stage.blobs().check()?;
            stage.store(*oid, *serial, data)?;
            stage.blobs().file(oid.0, blob);
            Ok(())
        }
        Op::RestoreBlob {
            oid,
            serial,
            data,
            prev_txn,
            blob,
        } => {
            stage.blobs().check()?;
            stage.restore(*oid, *serial, &Some(data.clone()), *prev_txn)?;
            stage.blobs().file(oid.0, blob);
            Ok(())
        }
    }
}
