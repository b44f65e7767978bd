//! A persistent response cache: an append-only JSON-lines file, one answer per line, keyed by a
//! SHA-256 of what determines the answer (base URL, model, messages, sampling parameters; never
//! the API key). A line is written whole and flushed before the answer is returned, so a crash
//! loses at most the answer being written; a torn last line is skipped (and counted) on load.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::Usage;
use crate::error::{RecforgeError, Result};

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Cache key (hex SHA-256).
    pub key: String,
    /// The completion text.
    pub text: String,
    /// Token usage reported when it was answered.
    pub usage: Option<Usage>,
}

/// The cache: entries in memory, appended to the file as they arrive.
#[derive(Debug)]
pub struct ResponseCache {
    path: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    file: Mutex<File>,
    /// Lines that could not be read on load (a write torn by a crash).
    pub skipped_lines: usize,
}

fn io(path: &Path, e: std::io::Error) -> RecforgeError {
    RecforgeError::Io {
        context: path.display().to_string(),
        source: e,
    }
}

/// The hex SHA-256 of `value`'s JSON text (serde_json writes object keys in a fixed order).
pub fn key_of(value: &serde_json::Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ResponseCache {
    /// Opens (or creates) the cache file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut entries = HashMap::new();
        let mut skipped_lines = 0;
        if path.exists() {
            let f = File::open(&path).map_err(|e| io(&path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| io(&path, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => {
                        entries.insert(e.key.clone(), e);
                    }
                    Err(_) => skipped_lines += 1,
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // A torn last line has no newline: start on a fresh line so the next entry stays readable.
        if skipped_lines > 0 {
            file.write_all(b"\n").map_err(|e| io(&path, e))?;
        }
        Ok(Self {
            path,
            entries: Mutex::new(entries),
            file: Mutex::new(file),
            skipped_lines,
        })
    }

    /// The cached answer for `key`.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Number of answers held.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores an answer: appended to the file (one whole line, flushed) unless already held.
    pub fn put(&self, entry: Entry) -> Result<()> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.contains_key(&entry.key) {
            return Ok(());
        }
        let mut line = serde_json::to_string(&entry)
            .map_err(|e| RecforgeError::data(format!("cannot encode a cache entry: {e}")))?;
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(line.as_bytes())
            .and_then(|_| f.flush())
            .map_err(|e| io(&self.path, e))?;
        entries.insert(entry.key.clone(), entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_a_torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("recforge-cache-{}", std::process::id()));
        let path = dir.join("c.jsonl");
        let _ = std::fs::remove_file(&path);
        let c = ResponseCache::open(&path).unwrap();
        let e = |k: &str| Entry {
            key: k.into(),
            text: format!("answer {k}"),
            usage: None,
        };
        c.put(e("a")).unwrap();
        c.put(e("a")).unwrap();
        c.put(e("b")).unwrap();
        drop(c);
        // A crash in the middle of writing a third entry.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"key\":\"c\",\"te")
            .unwrap();
        let c = ResponseCache::open(&path).unwrap();
        assert_eq!((c.len(), c.skipped_lines), (2, 1));
        assert_eq!(c.get("b").unwrap().text, "answer b");
        c.put(e("d")).unwrap();
        drop(c);
        let c = ResponseCache::open(&path).unwrap();
        assert_eq!((c.len(), c.skipped_lines), (3, 1));
        let k1 = key_of(&serde_json::json!({"m": 1, "a": [1, 2]}));
        assert_eq!(k1, key_of(&serde_json::json!({"a": [1, 2], "m": 1})));
        assert_ne!(k1, key_of(&serde_json::json!({"a": [2, 1], "m": 1})));
        let _ = std::fs::remove_dir_all(dir);
    }
}
