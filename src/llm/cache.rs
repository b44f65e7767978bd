//! A persistent response cache: an append-only JSON-lines file, one answer per line, keyed by a
//! SHA-256 of what determines the answer (base URL, model, messages, sampling parameters; never
//! the API key or a password in the URL). A line is written whole and flushed before the answer is
//! returned, so a crash loses at most the answer being written. The file is read line by line as
//! bytes: a line that is not valid UTF-8 (a write torn inside a multi-byte character) or not a
//! valid entry (a write torn anywhere else) is skipped and counted in
//! [`ResponseCache::skipped_lines`]; the lines around it stay readable.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::usage::Usage;
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
    /// Whether the server's reply was not valid UTF-8 (the text then holds U+FFFD characters).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid_utf8: bool,
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
        let mut ends_in_newline = true;
        if path.exists() {
            let f = File::open(&path).map_err(|e| io(&path, e))?;
            let mut reader = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| io(&path, e))?;
                if n == 0 {
                    break;
                }
                ends_in_newline = line.last() == Some(&b'\n');
                let Ok(text) = std::str::from_utf8(&line) else {
                    skipped_lines += 1;
                    continue;
                };
                if text.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry>(text) {
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
        // A last line without its newline (a torn write, even one that happens to parse): start
        // on a fresh line so that the next entry stays readable.
        if !ends_in_newline {
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
            invalid_utf8: false,
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

    #[test]
    fn a_line_torn_inside_a_multibyte_character_is_skipped_and_counted() {
        let dir = std::env::temp_dir().join(format!("recforge-cache-utf8-{}", std::process::id()));
        let path = dir.join("c.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        let c = ResponseCache::open(&path).unwrap();
        let e = |k: &str, text: &str| Entry {
            key: k.into(),
            text: text.into(),
            usage: Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            }),
            invalid_utf8: k == "b",
        };
        c.put(e("a", "Amélie, 東京物語")).unwrap();
        c.put(e("b", "\u{fffd}")).unwrap();
        drop(c);
        // A bad byte in the middle of the file, then a write torn inside "東" (3 bytes: E6 9D B1).
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"key\":\"x\",\"text\":\"\xff\"}\n");
        bytes.extend_from_slice(b"{\"key\":\"c\",\"text\":\"\xe6\x9d");
        std::fs::write(&path, &bytes).unwrap();
        let c = ResponseCache::open(&path).unwrap();
        assert_eq!((c.len(), c.skipped_lines), (2, 2));
        assert_eq!(c.get("a").unwrap(), e("a", "Amélie, 東京物語"));
        assert!(c.get("b").unwrap().invalid_utf8);
        c.put(e("d", "ok")).unwrap();
        drop(c);
        let c = ResponseCache::open(&path).unwrap();
        assert_eq!((c.len(), c.skipped_lines), (3, 2));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_whole_entry_torn_before_its_newline_does_not_swallow_the_next() {
        let dir = std::env::temp_dir().join(format!("recforge-cache-nl-{}", std::process::id()));
        let path = dir.join("c.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, b"{\"key\":\"a\",\"text\":\"x\",\"usage\":null}").unwrap();
        let c = ResponseCache::open(&path).unwrap();
        assert_eq!((c.len(), c.skipped_lines), (1, 0));
        c.put(Entry {
            key: "b".into(),
            text: "y".into(),
            usage: None,
            invalid_utf8: false,
        })
        .unwrap();
        drop(c);
        let c = ResponseCache::open(&path).unwrap();
        assert_eq!((c.len(), c.skipped_lines), (2, 0));
        let _ = std::fs::remove_dir_all(dir);
    }
}
