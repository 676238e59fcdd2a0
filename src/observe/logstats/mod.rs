//! `sekisho logstats`: statistics drawn from access logs in sekisho's own
//! formats, to answer an operator's questions (how many clients still use
//! TLS 1.0, which ciphers, which status classes, hosts, clients and
//! response times).
//!
//! Inputs are plain, gzip or bzip2 files (recognised by their first bytes)
//! or standard input. Each line is read by the reader of the preset that
//! wrote it ([`parse`]), counted ([`stats`]) and the report is rendered
//! ([`output`]). Memory grows with the distinct keys only: lines are not
//! kept, response times go into a fixed-size histogram.

pub mod output;
pub mod parse;
pub mod stats;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use parse::{ParseOptions, Preset};
use stats::Stats;

/// The text output on standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Csv,
}

/// What `sekisho logstats` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// Files to read; `-` (or no file at all) is standard input.
    pub inputs: Vec<PathBuf>,
    /// Read every line as this preset instead of detecting it per line.
    pub preset: Option<Preset>,
    pub output: Output,
    /// Also write the HTML page here; `-` writes it to standard output
    /// instead of the `output` report.
    pub html: Option<PathBuf>,
    /// How many hosts and clients to list.
    pub top: usize,
    /// Progress on standard error: `Some(true)` always, `None` when
    /// standard error is a terminal.
    pub progress: Option<bool>,
    pub parse: ParseOptions,
}

/// Lines longer than this are not understood (and not kept whole).
const MAX_LINE: usize = 1 << 20;
/// How many places of lines not understood are named on standard error.
const SHOW_BAD: usize = 5;

/// Reads the inputs, prints the report. Problems go to standard error;
/// returns false when an input could not be read whole or the report
/// could not be written.
pub fn run(opts: &Options) -> bool {
    let progress_on = opts.progress.unwrap_or_else(|| io::stderr().is_terminal());
    let mut reader = LineReader {
        stats: Stats::default(),
        opts,
        last: opts.preset,
        bad: Vec::new(),
        progress: Progress::new(progress_on),
        buf: Vec::with_capacity(4096),
    };
    let mut ok = true;
    let stdin_only = [PathBuf::from("-")];
    let inputs = if opts.inputs.is_empty() {
        &stdin_only[..]
    } else {
        &opts.inputs
    };
    let mut names = Vec::new();
    for path in inputs {
        let name = path.display().to_string();
        let result = if name == "-" {
            reader.read(&name, io::stdin().lock())
        } else {
            File::open(path).and_then(|f| reader.read(&name, f))
        };
        if let Err(e) = result {
            reader.progress.clear();
            eprintln!("sekisho logstats: {name}: {e}");
            ok = false;
        }
        names.push(name);
    }
    reader.progress.finish();
    let n = reader.stats.not_understood;
    if n > 0 {
        eprintln!(
            "sekisho logstats: {n} {} not understood, first at {}",
            if n == 1 { "line" } else { "lines" },
            reader.bad.join(", ")
        );
    }

    let mut report = reader.stats.report(opts.top);
    report.inputs = names;
    let html_to_stdout = opts.html.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if let Some(path) = opts.html.as_ref().filter(|_| !html_to_stdout)
        && let Err(e) = std::fs::write(path, output::render_html(&report))
    {
        eprintln!("sekisho logstats: cannot write {}: {e}", path.display());
        ok = false;
    }
    let text = if html_to_stdout {
        output::render_html(&report)
    } else {
        match opts.output {
            Output::Table => output::render_table(&report),
            Output::Json => output::render_json(&report),
            Output::Csv => output::render_csv(&report),
        }
    };
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("sekisho logstats: cannot write the report: {e}");
        }
        ok = false;
    }
    ok
}

struct LineReader<'o> {
    stats: Stats,
    opts: &'o Options,
    /// The preset of the last line understood: tried first on the next one.
    last: Option<Preset>,
    /// `input:line` of the first lines not understood.
    bad: Vec<String>,
    progress: Progress,
    buf: Vec<u8>,
}

impl LineReader<'_> {
    fn read(&mut self, name: &str, raw: impl Read) -> io::Result<()> {
        let counted = Counted {
            inner: raw,
            bytes: self.progress.bytes.clone(),
        };
        let mut input = decoded(counted)?;
        let mut lineno = 0u64;
        while let Some(whole) = read_line(&mut input, &mut self.buf, MAX_LINE)? {
            lineno += 1;
            self.progress.line();
            let text = String::from_utf8_lossy(&self.buf);
            let line = text.strip_suffix('\r').unwrap_or(&text);
            if line.trim().is_empty() {
                continue;
            }
            let entry = if whole {
                parse::read(line, self.opts.preset, self.last, &self.opts.parse)
            } else {
                None
            };
            match entry {
                Some(e) => {
                    self.last = Some(e.preset);
                    self.stats.add(&e);
                }
                None => {
                    self.stats.add_not_understood();
                    if self.bad.len() < SHOW_BAD {
                        self.bad.push(format!("{name}:{lineno}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads one line without its `\n` into `buf`, keeping at most `max` bytes.
/// Returns `None` at the end of the input, else whether the line was kept whole.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut whole = true;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if take > room {
            whole = false;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(whole));
        }
    }
}

/// The input with gzip or bzip2 undone, recognised by the magic bytes
/// (`1f 8b`, `BZh`) whatever the file is called. Concatenated members (as
/// `cat a.gz b.gz` makes) are all read.
fn decoded<'a>(mut raw: impl Read + 'a) -> io::Result<Box<dyn BufRead + 'a>> {
    let mut head = [0u8; 3];
    let mut n = 0;
    while n < head.len() {
        match raw.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..n];
    let joined = BufReader::with_capacity(1 << 16, Cursor::new(head.to_vec()).chain(raw));
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(joined),
        ))
    } else if head == b"BZh" {
        Box::new(BufReader::with_capacity(
            1 << 16,
            bzip2::bufread::MultiBzDecoder::new(joined),
        ))
    } else {
        Box::new(joined)
    })
}

/// A reader that counts the bytes read through it (the input's size on
/// disk, before decompression).
struct Counted<R> {
    inner: R,
    bytes: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.set(self.bytes.get() + n as u64);
        Ok(n)
    }
}

/// Lines read and megabytes processed, on standard error about once a
/// second: rewritten in place on a terminal, one line each time otherwise.
struct Progress {
    on: bool,
    tty: bool,
    start: Instant,
    next: Instant,
    lines: u64,
    bytes: Rc<Cell<u64>>,
    /// A line is on the terminal without its newline yet.
    pending: bool,
}

impl Progress {
    fn new(on: bool) -> Progress {
        let now = Instant::now();
        Progress {
            on,
            tty: io::stderr().is_terminal(),
            start: now,
            next: now + Duration::from_secs(1),
            lines: 0,
            bytes: Rc::new(Cell::new(0)),
            pending: false,
        }
    }

    fn line(&mut self) {
        self.lines += 1;
        if self.on && self.lines.is_multiple_of(1024) && Instant::now() >= self.next {
            self.show(false);
            self.next = Instant::now() + Duration::from_secs(1);
        }
    }

    fn show(&mut self, done: bool) {
        let msg = format!(
            "sekisho logstats: {}{} lines, {:.1} MB read, {:.1} s",
            if done { "done: " } else { "" },
            self.lines,
            self.bytes.get() as f64 / 1e6,
            self.start.elapsed().as_secs_f64()
        );
        let mut err = io::stderr().lock();
        let _ = if self.tty {
            self.pending = !done;
            write!(err, "\r{msg}\x1b[K{}", if done { "\n" } else { "" })
        } else {
            writeln!(err, "{msg}")
        };
    }

    /// Ends a line left open on the terminal, before another message.
    fn clear(&mut self) {
        if self.pending {
            eprintln!();
            self.pending = false;
        }
    }

    fn finish(&mut self) {
        if self.on {
            self.show(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(mut r: impl BufRead, max: usize) -> Vec<(String, bool)> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(whole) = read_line(&mut r, &mut buf, max).unwrap() {
            out.push((String::from_utf8_lossy(&buf).into_owned(), whole));
        }
        out
    }

    #[test]
    fn lines_are_bounded() {
        let text = b"one\ntwo is longer\n\nlast without newline";
        // a tiny buffer: lines span several fills
        let got = lines_of(BufReader::with_capacity(3, &text[..]), 8);
        let want = [("one", true), ("two is l", false), ("", true), ("last wit", false)];
        let got: Vec<(&str, bool)> = got.iter().map(|(s, w)| (s.as_str(), *w)).collect();
        assert_eq!(got, want);
        assert!(lines_of(&b""[..], 8).is_empty());
        assert_eq!(lines_of(&b"\n"[..], 8), [(String::new(), true)]);
    }

    fn read_all(r: impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        decoded(r).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn compression_is_recognised_by_its_bytes() {
        let text = b"line 1\nline 2\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&text).unwrap();
        let bz = bz.finish().unwrap();
        assert_eq!(read_all(&text[..]), text);
        assert_eq!(read_all(&gz[..]), text);
        assert_eq!(read_all(&bz[..]), text);
        // concatenated members
        assert_eq!(
            read_all(&[gz.clone(), gz.clone()].concat()[..]),
            [&text[..], &text[..]].concat()
        );
        assert_eq!(
            read_all(&[bz.clone(), bz].concat()[..]),
            [&text[..], &text[..]].concat()
        );
        // short inputs and inputs that arrive a byte at a time
        for short in [&b""[..], b"x", b"BZ", b"\x1f"] {
            assert_eq!(read_all(short), short);
        }
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert_eq!(read_all(Trickle(&gz)), text);
        // a damaged stream is an error, not a panic
        let mut broken = gz.clone();
        broken.truncate(gz.len() / 2);
        let mut out = Vec::new();
        assert!(decoded(&broken[..]).unwrap().read_to_end(&mut out).is_err());
    }
}
