//! What leaves a task as a file: the guest's export offers, gated by the
//! profile (fetched, or rebuilt from pixels where the profile flattens),
//! and safe copies of the task's own file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vitrine_policy::Profile;
use vitrine_shim::protocol::ExportOffer;

use super::{
    chain, SafeCopyHandOff, TaskEvent, TaskOptions, Worker, WorkerCommand, EXPORT_DECISION_WAIT,
    EXPORT_FETCH_WAIT,
};
use crate::backend::GuestChannel;
use crate::service::export_gate::{self, OfferCheck};
use crate::service::receipt::ReceiptOutput;
use crate::service::safe_copy::{self, SafeCopyRequest};
use crate::task::{fetch_export, TaskRun};
use crate::viewer::ViewerLink;

impl Worker<'_> {
    /// The viewer asked for a safe copy: the D-Bus side starts a new task
    /// for the same file (its own VM, print resolution, OCR).
    pub(super) fn hand_off_safe_copy(&mut self, link: &mut ViewerLink) {
        let copy = self
            .source
            .as_ref()
            .and_then(|(file, name)| Some((file.try_clone().ok()?, name.clone())));
        let status = match copy {
            Some((file, name)) => {
                self.emit(TaskEvent::SafeCopyAsked(SafeCopyHandOff {
                    file: Arc::new(Mutex::new(Some(file))),
                    name,
                }));
                "saving a safe copy in a new VM (a notification tells where)…"
            }
            None => "no safe copy: only a file opened from disk can be saved",
        };
        let _ = link.send_status(status);
    }

    /// Writes the safe copy of a finished run, and records it.
    pub(super) fn save_safe_copy(
        &mut self,
        run: &TaskRun,
        copy: &SafeCopyRequest,
        profile: &Profile,
        kind: &vitrine_shim::protocol::TaskKind,
    ) -> Result<(), String> {
        let vitrine_shim::protocol::TaskKind::OpenFile { name, .. } = kind else {
            return Err("only a file has pages to copy".into());
        };
        let dir = copy
            .out_dir
            .clone()
            .or_else(|| self.source_dir.clone())
            .unwrap_or_else(|| self.ctx.dirs.exports.clone());
        let meta = crate::safe_pdf::SafePdfMeta {
            producer: safe_copy::producer(),
            input_sha256: Some(self.receipt.input_sha256.clone()),
        };
        let written =
            safe_copy::write(run, name, &dir, &profile.export, &meta).map_err(|e| chain(&e))?;
        self.receipt.outputs.push(ReceiptOutput {
            what: "safe-copy".into(),
            sha256: written.sha256.clone(),
            bytes: written.bytes,
        });
        self.detail("safe-copy-pages", written.pages.to_string());
        self.detail("safe-copy-words", written.words.to_string());
        self.detail("safe-copy-bytes", written.bytes.to_string());
        self.detail("safe-copy-sha256", written.sha256);
        self.detail("safe-copy", written.path.to_string_lossy());
        Ok(())
    }

    /// Gates every offer; returns how many files were written.
    pub(super) fn exports(
        &mut self,
        channel: &mut GuestChannel,
        offers: &[ExportOffer],
        profile: &Profile,
        options: &TaskOptions,
        (deadline, limits): (Instant, vitrine_shim::protocol::Limits),
    ) -> usize {
        self.state("exporting");
        let dest = options
            .export_dir
            .clone()
            .unwrap_or_else(|| self.ctx.dirs.exports.clone());
        let mut pending: BTreeMap<String, (&ExportOffer, bool)> = BTreeMap::new();
        let mut written = 0;
        for offer in offers {
            let status =
                match export_gate::check(&profile.export, &offer.name, &offer.mime, offer.size) {
                    OfferCheck::Refused(why) => format!("refused: {why}"),
                    OfferCheck::Allowed { flatten } => {
                        match self.write_export(channel, offer, profile, &dest, (flatten, limits)) {
                            Ok(path) => {
                                written += 1;
                                format!("approved: {}", path.display())
                            }
                            Err(why) => format!("failed: {why}"),
                        }
                    }
                    OfferCheck::Ask { flatten } => {
                        pending.insert(offer.name.clone(), (offer, flatten));
                        "pending".to_owned()
                    }
                };
            self.export_event(offer, status);
        }
        let wait_until = deadline.min(Instant::now() + EXPORT_DECISION_WAIT);
        while !pending.is_empty() {
            let left = wait_until.saturating_duration_since(Instant::now());
            let command = match self.commands.recv_timeout(left) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            match command {
                WorkerCommand::Cancel => break,
                WorkerCommand::Approve { name, reply } => match pending.remove(&name) {
                    None => {
                        let _ = reply.send(Err(format!("no pending export named {name:?}")));
                    }
                    Some((offer, flatten)) => {
                        let result =
                            self.write_export(channel, offer, profile, &dest, (flatten, limits));
                        let status = match &result {
                            Ok(path) => {
                                written += 1;
                                format!("approved: {}", path.display())
                            }
                            Err(why) => format!("failed: {why}"),
                        };
                        self.export_event(offer, status);
                        let _ = reply.send(result);
                    }
                },
                WorkerCommand::Deny { name, reply } => match pending.remove(&name) {
                    None => {
                        let _ = reply.send(Err(format!("no pending export named {name:?}")));
                    }
                    Some((offer, _)) => {
                        self.export_event(offer, "denied".to_owned());
                        let _ = reply.send(Ok(()));
                    }
                },
            }
        }
        for (offer, _) in pending.values() {
            self.export_event(
                offer,
                "expired: no decision before the task ended".to_owned(),
            );
        }
        written
    }

    fn export_event(&self, offer: &ExportOffer, status: String) {
        self.emit(TaskEvent::Export {
            name: offer.name.clone(),
            size: offer.size,
            sha256: export_gate::offer_hash_hex(offer),
            status,
        });
    }

    fn write_export(
        &mut self,
        channel: &mut GuestChannel,
        offer: &ExportOffer,
        profile: &Profile,
        dest: &std::path::Path,
        (flatten, limits): (bool, vitrine_shim::protocol::Limits),
    ) -> Result<PathBuf, String> {
        if flatten {
            return self.write_flattened(channel, offer, profile, dest, limits);
        }
        let data = fetch_export(channel, offer, Instant::now() + EXPORT_FETCH_WAIT)
            .map_err(|e| chain(&e))?;
        export_gate::check_fetched(&profile.export, &offer.name, &data).map_err(|e| chain(&e))?;
        let path = export_gate::write_approved(dest, offer, &data).map_err(|e| chain(&e))?;
        self.receipt.outputs.push(ReceiptOutput {
            what: format!("export:{}", offer.name),
            sha256: export_gate::data_hash_hex(&data),
            bytes: offer.size,
        });
        Ok(path)
    }

    /// A flattening profile's export: the guest renders it and the host
    /// rebuilds it from the pixels as `NAME-safe.pdf`; its bytes never come.
    fn write_flattened(
        &mut self,
        channel: &mut GuestChannel,
        offer: &ExportOffer,
        profile: &Profile,
        dest: &std::path::Path,
        limits: vitrine_shim::protocol::Limits,
    ) -> Result<PathBuf, String> {
        let copy = safe_copy::protocol(&SafeCopyRequest::default(), &profile.export);
        // Rendering (and OCR) takes longer than a fetch: the task's own limit.
        let deadline = Instant::now() + Duration::from_millis(limits.time_limit_ms.into());
        let run = crate::task::flatten_export(channel, offer, copy, limits, deadline)
            .map_err(|e| chain(&e))?;
        let meta = crate::safe_pdf::SafePdfMeta {
            producer: safe_copy::producer(),
            input_sha256: Some(export_gate::offer_hash_hex(offer)),
        };
        let written = safe_copy::write(&run, &offer.name, dest, &profile.export, &meta)
            .map_err(|e| chain(&e))?;
        self.receipt.outputs.push(ReceiptOutput {
            what: format!("export:{} (flattened)", offer.name),
            sha256: written.sha256,
            bytes: written.bytes,
        });
        Ok(written.path)
    }
}
