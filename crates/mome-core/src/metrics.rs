//! `metrics.jsonl`: one JSON object per line, flushed per line.
//!
//! Train lines: `{"kind":"train","step":N,"loss":..,"lr":..,"tokens_per_s":..,
//! "grad_norm":..,"elapsed_s":..}`; eval lines: `{"kind":"eval","step":N,...}` with
//! the fields the evaluation returned. On resume from step `S`, lines with
//! `step > S` (written after that checkpoint by the interrupted run) are removed, so
//! the file never holds a step twice. The file is rewritten atomically on open, which
//! also removes the `metrics.jsonl.tmp-<pid>` files of writers that are gone (a run
//! killed mid-rewrite); those of a live process are left alone.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mome_data::fsutil;

use crate::{Error, Result};

/// One training log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Optimizer step (1-based).
    pub step: u64,
    /// Mean loss over the steps since the previous log line.
    pub loss: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Tokens per second since the previous log line.
    pub tokens_per_s: f64,
    /// Gradient norm of this step, before clipping.
    pub grad_norm: f64,
    /// Training wall time so far (all sessions), in seconds.
    pub elapsed_s: f64,
}

/// Appends JSON lines to a metrics file.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    lines: u64,
}

/// Reads every JSON line of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line)?);
    }
    Ok(out)
}

impl MetricsWriter {
    /// Opens `path`. With `resume_step: None` the file is started afresh; with
    /// `Some(s)` existing lines with a `step` greater than `s` are dropped (an
    /// unparsable trailing line from a crash is dropped too) and writing appends.
    /// Stale temporaries of `path` left by killed writers are removed
    /// ([`fsutil::write_atomic`]).
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        let mut lines = 0u64;
        match resume_step {
            None => fsutil::write_atomic(path, b"")?,
            Some(s) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let mut kept = String::new();
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue;
                    };
                    if v.get("step")
                        .and_then(|x| x.as_u64())
                        .is_some_and(|st| st > s)
                    {
                        continue;
                    }
                    kept.push_str(line);
                    kept.push('\n');
                    lines += 1;
                }
                fsutil::write_atomic(path, kept.as_bytes())?;
            }
            Some(_) => fsutil::write_atomic(path, b"")?,
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            lines,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines in the file.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Appends one JSON value as a line and flushes.
    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Appends a `"kind":"train"` line.
    pub fn train(&mut self, r: &TrainRecord) -> Result<()> {
        let mut v = serde_json::to_value(r)?;
        v.as_object_mut()
            .expect("record is an object")
            .insert("kind".into(), "train".into());
        self.write(&v)
    }

    /// Appends a `"kind":"eval"` line with `step` and the fields of `values` (an
    /// object; any other value is stored under `"value"`).
    pub fn eval(&mut self, step: u64, values: &serde_json::Value) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("kind".into(), "eval".into());
        obj.insert("step".into(), step.into());
        match values {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k != "kind" && k != "step" {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
            other => {
                obj.insert("value".into(), other.clone());
            }
        }
        self.write(&serde_json::Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64) -> TrainRecord {
        TrainRecord {
            step,
            loss: 1.0 / step as f64,
            lr: 0.1,
            tokens_per_s: 5.0,
            grad_norm: 2.0,
            elapsed_s: step as f64,
        }
    }

    #[test]
    fn resume_truncates_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&p, None).unwrap();
        for s in 1..=5 {
            w.train(&rec(s)).unwrap();
        }
        w.eval(4, &serde_json::json!({"val_loss": 0.5})).unwrap();
        drop(w);
        // crash mid-line
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"kind\":\"tr")
            .unwrap();
        let mut w = MetricsWriter::open(&p, Some(3)).unwrap();
        assert_eq!(w.lines(), 3);
        w.train(&rec(4)).unwrap();
        let v = read_metrics(&p).unwrap();
        let steps: Vec<u64> = v.iter().map(|x| x["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        assert_eq!(v[0]["kind"], "train");
        assert_eq!(v[0]["loss"].as_f64().unwrap(), 1.0);
        assert_eq!(v[2]["loss"].as_f64().unwrap(), 1.0 / 3.0);
        // fresh start empties the file
        drop(w);
        let _ = MetricsWriter::open(&p, None).unwrap();
        assert!(read_metrics(&p).unwrap().is_empty());
    }

    #[test]
    fn open_removes_temporaries_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let stale = dir.path().join(format!("metrics.jsonl.tmp-{dead}"));
        let live = dir
            .path()
            .join(format!("metrics.jsonl.tmp-{}", sleeper.id()));
        std::fs::write(&stale, b"{}").unwrap();
        std::fs::write(&live, b"{}").unwrap();
        for resume in [Some(3), None] {
            std::fs::write(&stale, b"{}").unwrap();
            drop(MetricsWriter::open(&p, resume).unwrap());
            assert!(
                !stale.exists(),
                "{resume:?}: a dead writer's temporary is removed"
            );
            assert!(
                live.exists(),
                "{resume:?}: a live writer's temporary is kept"
            );
        }
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }

    #[test]
    fn eval_lines_carry_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut w = MetricsWriter::open(&p, None).unwrap();
        w.eval(10, &serde_json::json!({"val_loss": 2.5, "ppl": 12.2}))
            .unwrap();
        w.eval(11, &serde_json::json!(3.0)).unwrap();
        let v = read_metrics(&p).unwrap();
        assert_eq!(v[0]["kind"], "eval");
        assert_eq!(v[0]["step"], 10);
        assert_eq!(v[0]["val_loss"], 2.5);
        assert_eq!(v[1]["value"], 3.0);
    }
}
