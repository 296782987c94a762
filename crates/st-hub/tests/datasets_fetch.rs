//! The dataset fetch against a real HTTP server on 127.0.0.1: refused downloads leave nothing
//! behind, a good one is placed once and not fetched again; the lookup order.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use st_hub::datasets::{self, DataFile, DatasetError, Lookup};

/// What the server answers for one path.
#[derive(Clone)]
enum Reply {
    /// The whole body.
    Body(Vec<u8>),
    /// Announces the whole body's length, sends the first half, then closes the connection.
    CutShort(Vec<u8>),
}

/// Serves `routes` on a fresh loopback port; returns the base URL and a request counter.
fn serve(routes: HashMap<String, Reply>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            answer(stream, &routes);
        }
    });
    (base, count)
}

fn answer(mut stream: TcpStream, routes: &HashMap<String, Reply>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    // Skip the headers up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 2 {
        line.clear();
    }
    let path = request.split(' ').nth(1).unwrap_or("").to_string();
    let (body, sent) = match routes.get(&path) {
        Some(Reply::Body(b)) => (b.clone(), b.len()),
        Some(Reply::CutShort(b)) => (b.clone(), b.len() / 2),
        None => {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
    // Dropping the stream closes the connection, mid-body for CutShort.
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(origin: &str, local: &str, content: &[u8]) -> DataFile {
    DataFile {
        repo: "owner/repo".into(),
        commit: "c".repeat(40),
        origin: origin.into(),
        local: local.into(),
        bytes: content.len() as u64,
        sha256: sha256(content),
    }
}

fn route(f: &DataFile) -> String {
    format!("/{}/{}/{}", f.repo, f.commit, f.origin)
}

/// Whatever is in `cache`, by name: a refused fetch must leave it empty.
fn entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn quiet() -> impl FnMut(&str) {
    |_: &str| {}
}

#[test]
fn a_checksum_mismatch_is_refused_and_nothing_is_placed() {
    let good = file("data/a.txt", "a.txt", b"the expected bytes\n");
    // Same length, different bytes: only the hash can tell.
    let routes = HashMap::from([(route(&good), Reply::Body(b"the EXPECTED bytes\n".to_vec()))]);
    let (base, _) = serve(routes);
    let cache = tempfile::tempdir().unwrap();
    let err = datasets::fetch("toy", &[good], &base, cache.path(), &mut quiet()).unwrap_err();
    assert!(matches!(err, DatasetError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("data/a.txt"), "{err}");
    assert_eq!(entries(cache.path()), Vec::<String>::new());
}

#[test]
fn an_interrupted_download_is_refused_and_leaves_no_temporary_files() {
    let first = file("data/first.txt", "first.txt", b"complete file\n");
    let body = vec![b'x'; 10_000];
    let second = file("data/second.txt", "sub/second.txt", &body);
    let routes = HashMap::from([
        (route(&first), Reply::Body(b"complete file\n".to_vec())),
        (route(&second), Reply::CutShort(body)),
    ]);
    let (base, _) = serve(routes);
    let cache = tempfile::tempdir().unwrap();
    let err =
        datasets::fetch("toy", &[first, second], &base, cache.path(), &mut quiet()).unwrap_err();
    assert!(matches!(err, DatasetError::Download { .. }), "{err}");
    assert!(err.to_string().contains("second.txt"), "{err}");
    // Not the dataset folder, not the file that did arrive, not the temporary folder.
    assert_eq!(entries(cache.path()), Vec::<String>::new());
}

#[test]
fn a_good_download_is_placed_once_and_not_fetched_again() {
    let a = file("data/x/a.txt", "a.txt", b"alpha\n");
    let b = file("data/x/train/b.txt", "train/b.txt", b"beta\nbeta\n");
    let routes = HashMap::from([
        (route(&a), Reply::Body(b"alpha\n".to_vec())),
        (route(&b), Reply::Body(b"beta\nbeta\n".to_vec())),
    ]);
    let (base, count) = serve(routes);
    let cache = tempfile::tempdir().unwrap();
    let files = [a, b];
    let mut log = Vec::new();
    let dir = datasets::fetch("toy", &files, &base, cache.path(), &mut |m: &str| {
        log.push(m.to_string())
    })
    .unwrap();
    assert_eq!(dir, cache.path().join("toy"));
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(dir.join("train/b.txt")).unwrap(),
        b"beta\nbeta\n"
    );
    let source = std::fs::read_to_string(dir.join("SOURCE.txt")).unwrap();
    assert!(source.contains("owner/repo") && source.contains(&files[0].sha256));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(entries(cache.path()), vec!["toy".to_string()]);
    assert!(log.iter().any(|m| m.contains("/data/x/a.txt")), "{log:?}");

    let again = datasets::fetch("toy", &files, &base, cache.path(), &mut quiet()).unwrap();
    assert_eq!(again, dir);
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "the second call fetched again"
    );
}

#[test]
fn folders_left_by_killed_fetches_are_cleaned_up() {
    let a = file("a.txt", "a.txt", b"alpha\n");
    let (base, _) = serve(HashMap::from([(
        route(&a),
        Reply::Body(b"alpha\n".to_vec()),
    )]));
    let cache = tempfile::tempdir().unwrap();
    // PIDs are below 2^22 on Linux: no live process has this one.
    let stale = cache.path().join(".fetch-toy-99999999-abc");
    std::fs::create_dir_all(stale.join("sub")).unwrap();
    datasets::fetch("toy", &[a], &base, cache.path(), &mut quiet()).unwrap();
    if cfg!(target_os = "linux") {
        assert_eq!(entries(cache.path()), vec!["toy".to_string()]);
    }
}

/// A stand-in dataset folder: files of the right sizes, which is what the lookup checks.
fn fake_dataset(root: &Path, name: &str) {
    for f in datasets::files(name).unwrap() {
        let path = root.join(name).join(&f.local);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(&path)
            .unwrap()
            .set_len(f.bytes)
            .unwrap();
    }
}

#[test]
fn lookup_order_is_st_datasets_then_shared_then_cache() {
    let (explicit, shared, cache) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // Nothing listens on port 9 of the loopback: any fetch attempt fails at once.
    let lookup = Lookup {
        explicit: Some(explicit.path().into()),
        shared: Some(shared.path().into()),
        cache: cache.path().into(),
        base_url: "http://127.0.0.1:9".into(),
    };
    fake_dataset(cache.path(), "trec");
    let found = lookup.dataset("trec", &mut quiet()).unwrap();
    assert_eq!(found, cache.path().join("trec"));
    fake_dataset(shared.path(), "trec");
    let found = lookup.dataset("trec", &mut quiet()).unwrap();
    assert_eq!(found, shared.path().join("trec"));
    fake_dataset(explicit.path(), "trec");
    let found = lookup.dataset("trec", &mut quiet()).unwrap();
    assert_eq!(found, explicit.path().join("trec"));

    // A root holding several datasets: ST_DATASETS lacks sst2, ../shared has both.
    fake_dataset(shared.path(), "sst2");
    let root = lookup.root(&["trec", "sst2"], &mut quiet()).unwrap();
    assert_eq!(root, shared.path());
}

#[test]
fn when_no_route_works_the_error_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let lookup = Lookup {
        explicit: None,
        shared: Some(cache.path().join("no-such-shared")),
        cache: cache.path().into(),
        base_url: "http://127.0.0.1:9".into(),
    };
    let err = lookup
        .dataset("stsb", &mut quiet())
        .unwrap_err()
        .to_string();
    for needle in [
        "cargo xtask datasets",
        "ST_DATASETS",
        "no-such-shared",
        "sts-train.csv",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert_eq!(entries(cache.path()), Vec::<String>::new());
}
