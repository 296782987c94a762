//! Dataset name → local folder, the way [`crate::resolve`] does it for models.
//!
//! The public datasets st develops against (STS-B, SST-2, TREC, BANKING77, SNIPS, WNUT-17, SICK,
//! MSRP) are not in the repository. A dataset `NAME` is looked up, in order, in:
//!
//! 1. `$ST_DATASETS/NAME` (a folder the user points at);
//! 2. `../shared/datasets/NAME` beside the repository, when the caller names the repository;
//! 3. the st cache, `$ST_HOME/datasets/NAME` (default `~/.cache/st/datasets/NAME`);
//! 4. a fetch from its origin (the repository and commit in `datasets.tsv`, from
//!    `$ST_DATASETS_URL`, default [`DEFAULT_URL`]) into that cache: every file sha256-checked,
//!    the folder placed with one rename, so it is complete or absent.
//!
//! A folder counts in steps 1–3 when it holds every file of the dataset. Tests, `cargo xtask
//! e2e` and `cargo xtask experiments` all go through [`Lookup`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Where datasets are fetched from unless `$ST_DATASETS_URL` says otherwise: files are at
/// `BASE/OWNER/REPO/COMMIT/PATH`.
pub const DEFAULT_URL: &str = "https://raw.githubusercontent.com";

/// The datasets st knows, in the order `cargo xtask datasets` lists them.
pub const NAMES: &[&str] = &[
    "stsb",
    "sst2",
    "trec",
    "banking77",
    "snips",
    "wnut17",
    "sick",
    "msrp",
];

/// One file of a dataset: where it comes from, where it goes, what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// `owner/name` of the origin repository.
    pub repo: String,
    /// The origin commit (full hex), so the bytes never change.
    pub commit: String,
    /// Path inside the origin repository.
    pub origin: String,
    /// Path inside the dataset's local folder.
    pub local: String,
    pub bytes: u64,
    /// Lowercase hex sha256.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("unknown dataset `{0}` (known: {known})", known = NAMES.join(", "))]
    Unknown(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{url}: sha256 is {got}, expected {want}; the download was refused (nothing was kept)")]
    Checksum {
        url: String,
        got: String,
        want: String,
    },
    #[error(
        "dataset `{name}` not found; looked in:\n{tried}\nand fetching it failed: {fetch}\n\
         Run `cargo xtask datasets` where its origin is reachable, or set ST_DATASETS to a \
         folder holding {name}/"
    )]
    Unavailable {
        name: String,
        tried: String,
        fetch: Box<DatasetError>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every file of every dataset, read from the manifest compiled into st.
pub fn manifest() -> &'static [(String, DataFile)] {
    static MANIFEST: OnceLock<Vec<(String, DataFile)>> = OnceLock::new();
    MANIFEST.get_or_init(|| parse_manifest(include_str!("datasets.tsv")))
}

fn parse_manifest(text: &str) -> Vec<(String, DataFile)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 7, "datasets.tsv: 7 columns expected in `{line}`");
            let file = DataFile {
                repo: f[1].into(),
                commit: f[2].into(),
                origin: f[3].into(),
                local: f[4].into(),
                bytes: f[5].parse().expect("datasets.tsv: bytes column"),
                sha256: f[6].into(),
            };
            (f[0].to_string(), file)
        })
        .collect()
}

/// The files of dataset `name`.
pub fn files(name: &str) -> Result<Vec<DataFile>, DatasetError> {
    let files: Vec<DataFile> = manifest()
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, f)| f.clone())
        .collect();
    if files.is_empty() {
        return Err(DatasetError::Unknown(name.into()));
    }
    Ok(files)
}

/// The cache datasets are fetched into: `$ST_HOME/datasets`.
pub fn cache_dir() -> PathBuf {
    crate::st_home().join("datasets")
}

/// Where to look for datasets and where to fetch them from.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// `$ST_DATASETS`.
    pub explicit: Option<PathBuf>,
    /// `../shared/datasets` beside the repository.
    pub shared: Option<PathBuf>,
    /// The cache fetches go to.
    pub cache: PathBuf,
    /// Base URL of the origin (see [`DEFAULT_URL`]).
    pub base_url: String,
}

impl Lookup {
    /// From the environment (`ST_DATASETS`, `ST_HOME`, `ST_DATASETS_URL`); `repository` is the
    /// root of a checkout, whose `../shared/datasets` is searched when it exists.
    pub fn from_env(repository: Option<&Path>) -> Self {
        Self {
            explicit: std::env::var_os("ST_DATASETS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            shared: repository.map(|r| r.join("..").join("shared").join("datasets")),
            cache: cache_dir(),
            base_url: std::env::var("ST_DATASETS_URL")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_URL.into()),
        }
    }

    /// The folders searched before fetching, in order, each with how the user would name it.
    fn roots(&self) -> Vec<(String, PathBuf)> {
        let mut roots = Vec::new();
        if let Some(dir) = &self.explicit {
            roots.push(("ST_DATASETS".to_string(), dir.clone()));
        }
        if let Some(dir) = &self.shared {
            roots.push(("../shared/datasets".to_string(), dir.clone()));
        }
        roots.push(("the st cache".to_string(), self.cache.clone()));
        roots
    }

    /// The folder holding every file of dataset `name`, fetched into the cache if no folder
    /// has it.
    pub fn dataset(&self, name: &str, log: crate::Log) -> Result<PathBuf, DatasetError> {
        let files = files(name)?;
        let mut tried = String::new();
        for (label, root) in self.roots() {
            let dir = root.join(name);
            if is_complete(&dir, &files) {
                return Ok(dir);
            }
            tried.push_str(&format!(
                "  {label}: {} (incomplete or absent)\n",
                dir.display()
            ));
        }
        if self.explicit.is_none() {
            tried.push_str("  ST_DATASETS: not set\n");
        }
        fetch(name, &files, &self.base_url, &self.cache, log).map_err(|e| {
            DatasetError::Unavailable {
                name: name.into(),
                tried: tried.trim_end().into(),
                fetch: Box::new(e),
            }
        })
    }

    /// One folder holding all of `names` as sub-folders (for configs that name several
    /// datasets by one root): the first searched folder that has them all, else the cache
    /// after fetching what it lacks.
    pub fn root(&self, names: &[&str], log: crate::Log) -> Result<PathBuf, DatasetError> {
        let all = |root: &Path| -> Result<bool, DatasetError> {
            for name in names {
                if !is_complete(&root.join(name), &files(name)?) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        for (_, root) in self.roots() {
            if all(&root)? {
                return Ok(root);
            }
        }
        let cache_only = Lookup {
            explicit: None,
            shared: None,
            ..self.clone()
        };
        for name in names {
            cache_only.dataset(name, log)?;
        }
        Ok(self.cache.clone())
    }
}

/// Whether `dir` holds every file of a dataset with the expected size (the hash is checked
/// when fetching, and by `cargo xtask datasets`).
pub fn is_complete(dir: &Path, files: &[DataFile]) -> bool {
    files.iter().all(|f| {
        std::fs::metadata(dir.join(&f.local)).is_ok_and(|m| m.is_file() && m.len() == f.bytes)
    })
}

/// Checks every file of a dataset folder against its sha256; the error names the first that
/// differs.
pub fn verify(dir: &Path, files: &[DataFile]) -> Result<(), crate::HubError> {
    let sums: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f.local.as_str(), f.sha256.as_str()))
        .collect();
    crate::verify(dir, &sums)
}

/// Fetches `files` from `base_url` into `cache/name`, unless that folder is already complete.
///
/// Everything is downloaded into a temporary sibling folder and checked (size and sha256)
/// before one rename places it: on any failure nothing is placed and the temporary folder is
/// removed. Temporary folders left by killed fetches are removed first.
pub fn fetch(
    name: &str,
    files: &[DataFile],
    base_url: &str,
    cache: &Path,
    log: crate::Log,
) -> Result<PathBuf, DatasetError> {
    let dest = cache.join(name);
    if is_complete(&dest, files) {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    remove_stale_partials(cache, name);
    let partial = tempfile::Builder::new()
        .prefix(&format!(".fetch-{name}-{}-", std::process::id()))
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    for file in files {
        let url = file_url(base_url, file);
        log(&format!("fetching {url}"));
        download(&agent, &url, file, &partial.path().join(&file.local))?;
    }
    write_source(partial.path(), files)?;
    place(partial, &dest, files)?;
    log(&format!("dataset {name} ready in {}", dest.display()));
    Ok(dest)
}

/// `BASE/OWNER/REPO/COMMIT/PATH`.
pub fn file_url(base_url: &str, file: &DataFile) -> String {
    format!(
        "{}/{}/{}/{}",
        base_url.trim_end_matches('/'),
        file.repo,
        file.commit,
        file.origin
    )
}

/// Streams `url` into `out`, refusing a body of the wrong size or hash (the caller's temporary
/// folder is removed on error, so a refused file is never kept).
fn download(
    agent: &ureq::Agent,
    url: &str,
    file: &DataFile,
    out: &Path,
) -> Result<(), DatasetError> {
    let fail = |reason: String| DatasetError::Download {
        url: url.into(),
        reason,
    };
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => fail(format!("HTTP status {code}")),
        // Its Display repeats the URL the caller already names.
        ureq::Error::Transport(t) => fail(match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        }),
    })?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out).map_err(io(out))?);
    let mut reader = response.into_reader();
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(format!("download interrupted after {got} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        // A server sending more than the file can hold is refused without filling the disk.
        if got > file.bytes {
            return Err(fail(format!("more than the expected {} bytes", file.bytes)));
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(io(out))?;
    }
    writer.flush().map_err(io(out))?;
    if got != file.bytes {
        return Err(fail(format!(
            "got {got} bytes, expected {} (interrupted download?)",
            file.bytes
        )));
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != file.sha256 {
        return Err(DatasetError::Checksum {
            url: url.into(),
            got: digest,
            want: file.sha256.clone(),
        });
    }
    Ok(())
}

/// A `SOURCE.txt` naming where each file came from, as the shared copies have.
fn write_source(dir: &Path, files: &[DataFile]) -> Result<(), DatasetError> {
    let mut text = String::from("Fetched by st (cargo xtask datasets), sha256-checked:\n");
    for f in files {
        text.push_str(&format!(
            "{}  github {} commit {} path {}  sha256 {}\n",
            f.local, f.repo, f.commit, f.origin, f.sha256
        ));
    }
    let path = dir.join("SOURCE.txt");
    std::fs::write(&path, text).map_err(io(&path))
}

/// Renames the checked temporary folder to `dest`. A complete `dest` placed meanwhile by
/// another process wins; an incomplete one (copied by hand, say) is replaced.
fn place(partial: tempfile::TempDir, dest: &Path, files: &[DataFile]) -> Result<(), DatasetError> {
    if dest.exists() && !is_complete(dest, files) {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    let path = partial.keep();
    match std::fs::rename(&path, dest) {
        Ok(()) => Ok(()),
        Err(_) if is_complete(dest, files) => {
            let _ = std::fs::remove_dir_all(&path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&path);
            Err(io(dest)(e))
        }
    }
}

/// Removes `.fetch-NAME-PID-*` folders whose process is gone (killed mid-fetch).
fn remove_stale_partials(cache: &Path, name: &str) {
    let prefix = format!(".fetch-{name}-");
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        // Only where /proc tells which processes live; elsewhere leave them be.
        if cfg!(target_os = "linux") && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_covers_every_dataset_with_full_hashes() {
        for name in NAMES {
            let files = files(name).unwrap();
            for f in &files {
                assert_eq!(f.sha256.len(), 64, "{name}/{}", f.local);
                assert_eq!(f.commit.len(), 40, "{name}/{}", f.local);
                assert!(f.bytes > 0 && f.repo.contains('/'), "{name}/{}", f.local);
            }
        }
        assert_eq!(manifest().len(), 29);
        assert!(matches!(files("nope"), Err(DatasetError::Unknown(_))));
    }

    #[test]
    fn urls_name_repository_commit_and_path() {
        let f = &files("stsb").unwrap()[2];
        assert_eq!(
            file_url("http://127.0.0.1:9/", f),
            "http://127.0.0.1:9/zhangzhenhu/Semantic-Texual-Similarity-Toolkits/\
             c55a72f51bd15a8bd75114247c06984b432050f9/data/stsbenchmark/sts-test.csv"
        );
    }
}
