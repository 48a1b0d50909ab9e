//! Where checkpoints are kept between connections and between processes.
//!
//! A checkpoint is the id of the last event before which every event of a stream was settled
//! (see [the crate docs](crate#settlement-and-checkpoints)). The source sends it as
//! `Last-Event-ID` when it reconnects, and saves it to a [`CheckpointStore`] after each
//! settlement that moves it, from a background task (never from the handler's path), so a
//! restarted worker resumes where the last one stopped.
//!
//! Keys are `"<route> <path>"`: two routes reading the same path keep their own checkpoint.
//!
//! ```
//! use asyncworker_core::BoxError;
//! use asyncworker_sse::{CheckpointStore, FileCheckpoints, SseConfig, SseSource};
//!
//! # fn main() -> Result<(), BoxError> {
//! let dir = std::env::temp_dir().join(format!("asyncworker-checkpoints-{}", std::process::id()));
//! let store = FileCheckpoints::new(&dir);
//! store.save("events /v2/events", "42")?; // what the source does after a settlement
//! assert_eq!(store.load("events /v2/events")?.as_deref(), Some("42"));
//!
//! // A source resumes from its stored checkpoints (`Last-Event-ID: 42` here).
//! let config = SseConfig::builder("http://127.0.0.1:8080/").build()?;
//! let source = SseSource::new(&config, ["/v2/events"])?.checkpoint_store(store);
//! # drop(source);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use asyncworker_core::BoxError;

/// Keeps each stream's checkpoint.
///
/// [`load`](CheckpointStore::load) is called once per stream when the source starts, on the
/// thread that starts it, so it should be quick (a small file read is); every
/// [`save`](CheckpointStore::save) runs on a blocking thread (`spawn_blocking`), off the
/// runtime.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The checkpoint saved under `key`, if any.
    ///
    /// # Errors
    ///
    /// When the store cannot be read. The stream then reports
    /// [`SseError::Checkpoint`](crate::SseError::Checkpoint) and does not connect: it calls
    /// `load` again after each [client-error delay](crate::SseConfigBuilder::client_error_delay)
    /// until it succeeds (starting from nothing would lose the position and overwrite it).
    fn load(&self, key: &str) -> Result<Option<String>, BoxError>;

    /// Save `id` as the checkpoint of `key` (an empty `id` means "no id": nothing is sent).
    ///
    /// # Errors
    ///
    /// When the store cannot be written; the error is logged and the next save tries again.
    fn save(&self, key: &str, id: &str) -> Result<(), BoxError>;
}

/// Checkpoints in memory: they survive reconnects, not restarts. The default. Clones share
/// the map, so a test can read what a source saved.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpoints {
    map: Arc<Mutex<HashMap<String, String>>>,
}

impl MemoryCheckpoints {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The checkpoint under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

impl CheckpointStore for MemoryCheckpoints {
    fn load(&self, key: &str) -> Result<Option<String>, BoxError> {
        Ok(self.get(key))
    }

    fn save(&self, key: &str, id: &str) -> Result<(), BoxError> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), id.to_owned());
        Ok(())
    }
}

/// Checkpoints in files, one per key, in a directory: a restarted worker resumes.
///
/// Each save writes a temporary file in the same directory, syncs it and renames it over the
/// old one, so a crash leaves either the old checkpoint or the new one, never half of one.
/// File names are the key with every byte outside `[A-Za-z0-9-]` written as `_XX` (hex); a
/// name longer than 200 bytes is cut there and ends in `~` and a hash of the whole key.
/// A file holds the id alone; a trailing newline (a file edited by hand) is ignored.
#[derive(Clone)]
pub struct FileCheckpoints {
    dir: PathBuf,
}

impl fmt::Debug for FileCheckpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCheckpoints")
            .field("dir", &self.dir)
            .finish()
    }
}

impl FileCheckpoints {
    /// A store in `dir`, created on the first save if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileCheckpoints { dir: dir.into() }
    }

    /// The file holding the checkpoint of `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        let mut name = String::with_capacity(key.len() + 3);
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("_{b:02X}"));
            }
        }
        if name.len() > MAX_NAME {
            // Most file systems stop at 255 bytes: a prefix, then a hash of the whole key
            // after `~`, which the escaping never writes (so no short key's name is the same).
            name.truncate(MAX_NAME - 17);
            name.push_str(&format!("~{:016x}", fnv1a(key.as_bytes())));
        }
        name.push_str(".id");
        self.dir.join(name)
    }
}

/// The longest file name before `.id` (and a save's `.tmp<pid>`): well under 255 bytes.
const MAX_NAME: usize = 200;

/// 64-bit FNV-1a: a hash that stays the same across Rust releases (file names outlive them).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Load `key`'s checkpoint as the stream uses it: empty is no id; a trailing newline (a file
/// written by hand) is dropped; an id that cannot be sent as `Last-Event-ID` is an error.
pub(crate) fn load_id(
    store: &dyn CheckpointStore,
    key: &str,
) -> Result<Option<Arc<str>>, BoxError> {
    let Some(id) = store.load(key)? else {
        return Ok(None);
    };
    let id = id.trim_end_matches(['\r', '\n']);
    if !crate::parse::fits_a_header(id) {
        return Err(format!(
            "the stored checkpoint {id:?} has a control character: it cannot be sent as Last-Event-ID"
        )
        .into());
    }
    Ok((!id.is_empty()).then(|| Arc::from(id)))
}

fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

impl CheckpointStore for FileCheckpoints {
    fn load(&self, key: &str) -> Result<Option<String>, BoxError> {
        match std::fs::read(self.path(key)) {
            Ok(bytes) => Ok(Some(String::from_utf8(bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&self, key: &str, id: &str) -> Result<(), BoxError> {
        Ok(write_atomically(&self.path(key), id.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip_and_names() {
        let dir = std::env::temp_dir().join(format!("asyncworker-sse-ckpt-{}", std::process::id()));
        let store = FileCheckpoints::new(&dir);
        assert_eq!(store.load("route /v2/events").unwrap(), None);
        store.save("route /v2/events", "41").unwrap();
        store.save("route /v2/events", "42").unwrap();
        assert_eq!(
            store.load("route /v2/events").unwrap().as_deref(),
            Some("42")
        );
        assert_eq!(
            store.path("r /a").file_name().unwrap().to_str().unwrap(),
            "r_20_2Fa.id"
        );
        // Distinct keys never share a file.
        assert_ne!(store.path("a_2F"), store.path("a/"));
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_loaded_id_is_checked_and_a_trailing_newline_dropped() {
        let dir =
            std::env::temp_dir().join(format!("asyncworker-sse-ckpt-nl-{}", std::process::id()));
        let store = FileCheckpoints::new(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A file written by hand (`echo 7 > file`).
        std::fs::write(store.path("k"), "7\n").unwrap();
        assert_eq!(load_id(&store, "k").unwrap().as_deref(), Some("7"));
        std::fs::write(store.path("k"), "").unwrap();
        assert_eq!(load_id(&store, "k").unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
        let memory = MemoryCheckpoints::new();
        memory.save("k", "a\u{1}b").unwrap();
        let err = load_id(&memory, "k").unwrap_err();
        assert!(err.to_string().contains("Last-Event-ID"), "{err}");
    }

    #[test]
    fn long_keys_fit_in_a_file_name() {
        let dir =
            std::env::temp_dir().join(format!("asyncworker-sse-ckpt-long-{}", std::process::id()));
        let store = FileCheckpoints::new(&dir);
        let token = "t".repeat(300);
        let (a, b) = (
            format!("r /e?token={token}a"),
            format!("r /e?token={token}b"),
        );
        store.save(&a, "1").unwrap();
        store.save(&b, "2").unwrap();
        assert_eq!(store.load(&a).unwrap().as_deref(), Some("1"));
        assert_eq!(store.load(&b).unwrap().as_deref(), Some("2"));
        let name = store.path(&a).file_name().unwrap().len();
        assert!(name <= 255, "{name}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn memory_store() {
        let store = MemoryCheckpoints::new();
        store.save("k", "1").unwrap();
        assert_eq!(store.clone().load("k").unwrap().as_deref(), Some("1"));
    }
}
