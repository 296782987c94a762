//! The output folder of a run, replaced as one unit.
//!
//! A checkpoint (the best model's files and `resume/`) is several files; writing them one by one
//! into the folder would let a kill leave an epoch-2 encoder beside epoch-1 heads. Instead every
//! checkpoint builds a complete new folder beside the old one (`.NAME.st-partial`), carries over
//! by hard link whatever it did not rewrite (the metrics log, an unchanged model, the user's own
//! files), renames it `.NAME.st-ready` (complete from here on) and swaps it with the folder in
//! one `renameat2(RENAME_EXCHANGE)`. So after a kill at any instant `NAME` holds the previous
//! checkpoint or the new one, never a mix. Where the exchange is not available (not Linux, or
//! a file system without it) two renames do it, and the one instant between them leaves `NAME`
//! absent with `.NAME.st-ready` complete: [`OutputFolder::open`] puts it back.
//!
//! The next run's [`OutputFolder::open`] removes what a killed run left beside the folder.

use std::path::{Path, PathBuf};

use burn_store::ModuleSnapshot;
use st_backbone::{AutodiffEncoderBackend, EncoderBackend};
use st_heads::MultiTaskModel;
use st_runlog::LogRecord;

use crate::TrainError;
use crate::config::TrainConfig;
use crate::resume::{Optimizers, ResumeState};
use crate::weighting::LossWeighter;

/// The file whose presence marks a trained model (written with the heads, by every checkpoint).
pub const MODEL_MARKER: &str = "heads.json";
/// The run's log: one JSON line per step and per evaluation ([`st_runlog::LogRecord`]).
pub use st_runlog::METRICS_LOG;
/// Resume state inside the output folder.
pub const RESUME_DIR: &str = "resume";
/// The state file, written last into `resume/`.
pub const RESUME_STATE: &str = "state.json";

/// A run's output folder (absolute, symlinks resolved) and the siblings its commits use.
#[derive(Debug, Clone)]
pub struct OutputFolder {
    dir: PathBuf,
    partial: PathBuf,
    ready: PathBuf,
    old: PathBuf,
}

impl OutputFolder {
    /// Recovers from a killed commit: a folder left absent between two renames is put back,
    /// staging folders are removed. The folder itself is made by [`OutputFolder::create`].
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let name = dir
            .file_name()
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "output `{}` must name a folder (it is replaced as a whole at each checkpoint)",
                    dir.display()
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
        let parent = parent
            .canonicalize()
            .map_err(|e| TrainError::io(&parent, e))?;
        let mut dir = parent.join(&name);
        // A symlinked output folder: replace its target, keep the link.
        if dir.is_symlink() {
            dir = dir.canonicalize().map_err(|e| TrainError::io(&dir, e))?;
        }
        let sibling = |suffix: &str| {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            dir.with_file_name(format!(".{name}.st-{suffix}"))
        };
        let folder = Self {
            partial: sibling("partial"),
            ready: sibling("ready"),
            old: sibling("old"),
            dir,
        };
        folder.recover()?;
        Ok(folder)
    }

    fn recover(&self) -> Result<(), TrainError> {
        if !self.dir.exists() {
            // Killed between the two renames of the fallback swap: the newest complete copy wins.
            for complete in [&self.ready, &self.old] {
                if complete.is_dir() {
                    std::fs::rename(complete, &self.dir)
                        .map_err(|e| TrainError::io(&self.dir, e))?;
                    break;
                }
            }
        }
        // The resume writer of earlier versions staged here.
        let legacy = self.dir.join(".resume-tmp");
        for stale in [&self.partial, &self.ready, &self.old, &legacy] {
            remove_if_present(stale)?;
        }
        // A kill while the log was being cut back leaves write_atomic's `.NAME.tmp-PID`.
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!(".{METRICS_LOG}.tmp-")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the folder when it is missing.
    pub fn create(&self) -> Result<(), TrainError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))
    }

    /// Whether the folder holds a model an earlier run trained.
    pub fn has_model(&self) -> bool {
        self.dir.join(MODEL_MARKER).is_file()
    }

    /// Whether the folder holds resume state.
    pub fn has_resume_state(&self) -> bool {
        self.dir.join(RESUME_DIR).join(RESUME_STATE).is_file()
    }

    /// Replaces the folder by one unit: `write` fills an empty staging folder; each entry of the
    /// current folder it did not write is carried over (hard links; copies where links fail),
    /// every entry with `carry_all`, else only the metrics log; then the two swap. An entry
    /// `write` made (a file or a whole folder such as `resume/`) replaces the old one entirely.
    pub fn commit(
        &self,
        carry_all: bool,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        remove_if_present(&self.partial)?;
        std::fs::create_dir(&self.partial).map_err(|e| TrainError::io(&self.partial, e))?;
        write(&self.partial)?;
        carry_over(&self.dir, &self.partial, carry_all)?;
        std::fs::rename(&self.partial, &self.ready).map_err(|e| TrainError::io(&self.ready, e))?;
        match exchange(&self.ready, &self.dir) {
            Ok(()) => {}
            Err(_) => {
                std::fs::rename(&self.dir, &self.old).map_err(|e| TrainError::io(&self.dir, e))?;
                std::fs::rename(&self.ready, &self.dir)
                    .map_err(|e| TrainError::io(&self.dir, e))?;
                std::fs::rename(&self.old, &self.ready)
                    .map_err(|e| TrainError::io(&self.ready, e))?;
            }
        }
        // `ready` now holds the previous checkpoint.
        remove_if_present(&self.ready)
    }
}

fn remove_if_present(path: &Path) -> Result<(), TrainError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::io(path, e)),
        _ => Ok(()),
    }
}

/// Links each entry of `from` that `to` lacks into `to` (all of them, or only the log).
fn carry_over(from: &Path, to: &Path, all: bool) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(from).map_err(|e| TrainError::io(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if std::fs::symlink_metadata(&dst).is_ok() || !(all || entry.file_name() == METRICS_LOG) {
            continue;
        }
        copy_tree(&src, &dst)?;
    }
    Ok(())
}

/// `src` at `dst`: folders recreated, files hard-linked, symlinks copied as links.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), TrainError> {
    let kind = std::fs::symlink_metadata(src)
        .map_err(|e| TrainError::io(src, e))?
        .file_type();
    if !kind.is_dir() {
        return link_or_copy(src, dst, kind.is_symlink());
    }
    std::fs::create_dir(dst).map_err(|e| TrainError::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))? {
        let entry = entry.map_err(|e| TrainError::io(src, e))?;
        copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
    }
    Ok(())
}

fn link_or_copy(src: &Path, dst: &Path, is_symlink: bool) -> Result<(), TrainError> {
    #[cfg(unix)]
    if is_symlink {
        let target = std::fs::read_link(src).map_err(|e| TrainError::io(src, e))?;
        return std::os::unix::fs::symlink(target, dst).map_err(|e| TrainError::io(dst, e));
    }
    let _ = is_symlink;
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(|e| TrainError::io(src, e))?;
    }
    Ok(())
}

/// Swaps two folders atomically.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Opens the run's output folder and refuses what would lose work: `--resume` with nothing to
/// resume, and a fresh run over a trained model without `overwrite`.
pub(crate) fn open_output(config: &TrainConfig) -> Result<OutputFolder, TrainError> {
    let folder = OutputFolder::open(&config.output)?;
    let shown = config.output.display();
    if config.resume && !folder.has_resume_state() {
        return Err(TrainError::Config(format!(
            "--resume: {shown} holds no resume state ({RESUME_DIR}/{RESUME_STATE}): no run \
             reached its first checkpoint there; start without --resume"
        )));
    }
    if !config.resume && folder.has_model() && !config.overwrite {
        return Err(TrainError::Config(format!(
            "{shown} already holds a trained model: give --overwrite (`overwrite = true` in a \
             config) to replace it, --resume to continue its run, or another --output"
        )));
    }
    folder.create()?;
    Ok(folder)
}

/// What a divergence leaves behind, for its error message.
pub(crate) fn kept_note(output: &Path, checkpointed: bool) -> String {
    if checkpointed {
        format!("the last good checkpoint in {} is kept", output.display())
    } else {
        format!(
            "no checkpoint of this run was written to {} (it diverged before its first evaluation)",
            output.display()
        )
    }
}

/// `metrics.jsonl`, appended line by line.
pub(crate) struct RunLog {
    file: std::fs::File,
    path: PathBuf,
}

impl RunLog {
    /// A fresh log, or (`resume_at`) the log a resumed run continues, cut back to the length it
    /// had at the checkpoint (`None` inside: state from before st recorded it; appended to).
    pub fn open(dir: &Path, resume_at: Option<Option<u64>>) -> Result<Self, TrainError> {
        let path = dir.join(METRICS_LOG);
        if let Some(Some(bytes)) = resume_at {
            crate::resume::truncate_log(&path, bytes)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume_at.is_some())
            .truncate(resume_at.is_none())
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { file, path })
    }

    pub fn write(&mut self, record: &LogRecord) -> Result<(), TrainError> {
        use std::io::Write;
        let line = serde_json::to_string(record).expect("log records serialize");
        writeln!(self.file, "{line}").map_err(|e| TrainError::io(&self.path, e))
    }

    /// Bytes written so far.
    pub fn len(&self) -> Result<u64, TrainError> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| TrainError::io(&self.path, e))?;
        Ok(meta.len())
    }
}

/// One checkpoint: the model (when it improved) and the resume state, committed as one swap.
pub(crate) struct Checkpoint<'a, B: AutodiffEncoderBackend> {
    pub model: &'a MultiTaskModel<B>,
    pub opts: &'a Optimizers<B>,
    pub weighter: &'a dyn LossWeighter<B>,
    pub state: &'a ResumeState,
    pub with_model: bool,
}

impl<B: AutodiffEncoderBackend> Checkpoint<'_, B> {
    /// Refuses non-finite weights (the folder keeps the last good checkpoint), then commits.
    /// `checkpointed`: this run committed before (else a run that overwrites carries nothing of
    /// the old model over).
    pub fn commit(
        &self,
        folder: &OutputFolder,
        config: &TrainConfig,
        checkpointed: bool,
    ) -> Result<(), TrainError> {
        if let Some(path) = first_non_finite(self.model) {
            return Err(TrainError::Diverged(format!(
                "parameter `{path}` is not finite after step {}; {} (try a lower learning rate)",
                self.state.step,
                kept_note(&config.output, checkpointed)
            )));
        }
        let carry_all = checkpointed || !config.overwrite;
        folder.commit(carry_all, |stage| {
            if self.with_model {
                save_model(self.model, config, stage)?;
            }
            crate::resume::write(
                &stage.join(RESUME_DIR),
                self.model,
                self.opts,
                self.weighter,
                self.state,
            )
        })
    }
}

/// The path of the first parameter holding a NaN or an infinity.
pub(crate) fn first_non_finite<B: EncoderBackend>(model: &MultiTaskModel<B>) -> Option<String> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter(|s| s.dtype.is_float())
        .find(|s| {
            s.to_data()
                .map(|d| d.iter::<f32>().any(|x| !x.is_finite()))
                .unwrap_or(true)
        })
        .map(|s| s.full_path())
}

/// Writes the model into `dir`: a sentence-transformers folder plus `heads.json`,
/// `heads.safetensors` and `train_config.json`.
pub fn save_model<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    config: &TrainConfig,
    dir: &Path,
) -> Result<(), TrainError> {
    model.encoder.save_pretrained(dir)?;
    model.save_heads(dir)?;
    let text = serde_json::to_string_pretty(config).expect("config serializes");
    st_backbone::write_atomic(&dir.join("train_config.json"), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_commit_replaces_written_files_and_carries_the_rest_over() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutputFolder::open(&tmp.path().join("run")).unwrap();
        out.create().unwrap();
        std::fs::write(out.path().join("metrics.jsonl"), "a\n").unwrap();
        out.commit(true, |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/x"), "1").unwrap();
            std::fs::write(d.join(MODEL_MARKER), "1").unwrap();
            Ok(())
        })
        .unwrap();
        out.commit(true, |d| {
            std::fs::write(d.join(MODEL_MARKER), "2").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(read(&out.path().join(MODEL_MARKER)), "2");
        assert_eq!(read(&out.path().join("sub/x")), "1");
        assert_eq!(read(&out.path().join("metrics.jsonl")), "a\n");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["run"], "staging folders left behind");
        // A folder the commit writes replaces the old one whole; without `carry_all` only the
        // log is carried over.
        out.commit(false, |d| {
            std::fs::create_dir(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/y"), "2").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(!out.path().join("sub/x").exists() && out.path().join("sub/y").exists());
        assert!(!out.path().join(MODEL_MARKER).exists());
        assert_eq!(read(&out.path().join("metrics.jsonl")), "a\n");
    }

    #[test]
    fn the_log_written_through_an_open_handle_survives_a_commit() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let out = OutputFolder::open(&tmp.path().join("run")).unwrap();
        out.create().unwrap();
        let log = out.path().join("metrics.jsonl");
        let mut file = std::fs::File::create(&log).unwrap();
        writeln!(file, "one").unwrap();
        out.commit(true, |_| Ok(())).unwrap();
        writeln!(file, "two").unwrap();
        assert_eq!(read(&log), "one\ntwo\n");
    }

    #[test]
    fn a_killed_commit_is_recovered_by_the_next_open() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        // Killed while staging: the folder is intact, the staging folder goes.
        let out = OutputFolder::open(&run).unwrap();
        out.create().unwrap();
        std::fs::write(run.join(MODEL_MARKER), "old").unwrap();
        std::fs::create_dir(&out.partial).unwrap();
        std::fs::write(out.partial.join(MODEL_MARKER), "half").unwrap();
        let out = OutputFolder::open(&run).unwrap();
        assert_eq!(read(&run.join(MODEL_MARKER)), "old");
        assert!(!out.partial.exists());
        // Killed between the fallback's two renames: the complete new copy takes its place.
        std::fs::rename(&run, &out.old).unwrap();
        std::fs::create_dir(&out.ready).unwrap();
        std::fs::write(out.ready.join(MODEL_MARKER), "new").unwrap();
        let out = OutputFolder::open(&run).unwrap();
        assert_eq!(read(&run.join(MODEL_MARKER)), "new");
        assert!(!out.ready.exists() && !out.old.exists());
    }
}
