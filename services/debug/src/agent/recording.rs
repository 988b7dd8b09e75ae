//! Session recording in asciinema v2 format: a JSON header line, then one
//! `[seconds, "o", text]` line per chunk of terminal output.

use std::time::Instant;

/// An in-memory asciinema v2 recording.
#[derive(Debug)]
pub struct Recording {
    start: Instant,
    buf: Vec<u8>,
    pending: Vec<u8>,
}

impl Recording {
    /// Starts a recording of a `cols`x`rows` terminal at Unix time `timestamp`.
    pub fn new(cols: u32, rows: u32, timestamp: i64, term: &str, title: &str) -> Recording {
        let header = serde_json::json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": timestamp,
            "title": title,
            "env": { "TERM": term },
        });
        let mut buf = header.to_string().into_bytes();
        buf.push(b'\n');
        Recording {
            start: Instant::now(),
            buf,
            pending: Vec::new(),
        }
    }

    /// Records terminal output (`"o"`), keeping incomplete UTF-8 sequences
    /// for the next chunk.
    pub fn output(&mut self, data: &[u8]) {
        self.event("o", data);
    }

    /// Records a resize (`"r"` event, `COLSxROWS`).
    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.event("r", format!("{cols}x{rows}").as_bytes());
    }

    fn event(&mut self, kind: &str, data: &[u8]) {
        self.pending.extend_from_slice(data);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        if valid == 0 {
            return;
        }
        let rest = self.pending.split_off(valid);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        let t = self.start.elapsed().as_secs_f64();
        let line = serde_json::json!([(t * 1e6).round() / 1e6, kind, text]);
        self.buf.extend_from_slice(line.to_string().as_bytes());
        self.buf.push(b'\n');
    }

    /// The recording so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_asciinema_v2() {
        let mut r = Recording::new(80, 24, 1700000000, "xterm", "t");
        r.output(b"hello ");
        r.output(&[0xc3]); // first half of "é"
        r.output(&[0xa9, b'\n']);
        let text = String::from_utf8(r.bytes().to_vec()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 80);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "hello ");
        assert_eq!(lines[2][2], "é\n");
        assert_eq!(lines.len(), 3);
    }
}
