//! Record boundaries, with the CSV rules of the `csv` crate (double-quote
//! quoting, LF / CRLF / CR line ends, blank lines are not records), and a
//! bound on the size of one record.
//!
//! [`RecordSplitter`] streams any reader and hands out each record's raw
//! bytes verbatim, which is what the chunker copies into chunk objects. It
//! knows the absolute byte offset after every record, so the chunker can
//! resume a file exactly where a previous run stopped. [`ChunkCutter`]
//! builds chunk bodies from it, and [`RawRecords`] splits the records of a
//! chunk or of the lookup file into fields for the parsers.
//!
//! No record is ever held whole if it is longer than `max_record_bytes`
//! (bytes without its line terminator). When a record grows past the
//! bound, or reaches the end of the input inside a double-quoted field, the
//! splitter hands out only a prefix of it and an [`Oversized`] saying why:
//!
//! * inside a double-quoted field, the quote is taken as unterminated: the
//!   record ends at its first line break, and the lines after it are read
//!   again as records, outside quotes ([`Cause::UnterminatedQuote`]);
//! * otherwise the record is too long: it ends at the first line break
//!   from the point where it passed the bound, quotes no longer counting,
//!   and is skipped without being kept ([`Cause::TooLong`]).
//!
//! Both rules look at the bytes only, so a resumed splitter finds the same
//! records as one that read the file from the start. Memory holds at most
//! one bound of a record (twice, while an unterminated quote's lines are
//! put back to be read again); time is linear in the input, plus up to the
//! bound parsed again for each record cut short.

use std::fmt;
use std::io::{self, Read};

use csv_core::ReadRecordResult;

/// Largest read from the source; reads start smaller and grow to this.
const READ_BLOCK: usize = 256 * 1024;
const FIRST_READ: usize = 8 * 1024;
/// A UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why a record was not handed out whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Longer than the bound outside quotes.
    TooLong,
    /// A double-quoted field ran past the bound or to the end of the input.
    UnterminatedQuote,
}

/// A record of which only a prefix was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oversized {
    pub cause: Cause,
    /// The record's length in bytes, without its line terminator.
    pub length: u64,
    /// The `input.max_record_bytes` that applied.
    pub limit: usize,
}

impl fmt::Display for Oversized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Oversized {
            cause,
            length,
            limit,
        } = self;
        match cause {
            Cause::TooLong => write!(
                f,
                "record of {length} bytes exceeds input.max_record_bytes ({limit})"
            ),
            Cause::UnterminatedQuote => write!(
                f,
                "unterminated quote: no closing quote within input.max_record_bytes \
                 ({limit}) or before the end of the input; the record ends at its first \
                 line break ({length} bytes)"
            ),
        }
    }
}

/// Where a record handed out by [`RecordSplitter::next_record`] was
/// ([`RecordSplitter::last_record`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Absolute offset of its first byte.
    pub start: u64,
    /// Line on which it starts, counting line feeds from where the splitter
    /// started (line 1).
    pub line: u64,
    /// `None`: its bytes were appended whole, line terminator included.
    /// `Some`: only a prefix of at most the bound was appended.
    pub oversized: Option<Oversized>,
}

/// Streams records out of a reader. Blank lines are dropped; every other
/// byte of a record within the bound is kept, so concatenating the records
/// re-creates the file minus its blank lines.
pub struct RecordSplitter<R> {
    source: R,
    csv: csv_core::Reader,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Absolute offset of `buf[start]` in the source.
    offset: u64,
    /// Line number at `buf[start]`.
    line: u64,
    source_done: bool,
    scratch_out: Vec<u8>,
    scratch_ends: Vec<usize>,
    /// Take plain lines (no double quote, no lone CR) without the CSV
    /// state machine; they are records as they stand.
    plain_lines: bool,
    max_record: usize,
    /// The CSV state machine has read nothing since it was made or reset.
    /// It would then take a byte order mark for the file's own and skip it,
    /// which is right only at offset 0 (see [`mid_file_input`]).
    csv_fresh: bool,
    /// The record last handed out.
    last: Record,
}

impl<R: Read> RecordSplitter<R> {
    /// `offset` is the absolute position of the reader's first byte (0 for a
    /// file read from the beginning); it must be a record boundary. Records
    /// longer than `max_record_bytes` are cut short (see the module docs).
    pub fn new(source: R, offset: u64, max_record_bytes: usize) -> Self {
        RecordSplitter {
            source,
            csv: csv_core::Reader::new(),
            buf: Vec::new(),
            start: 0,
            end: 0,
            offset,
            line: 1,
            source_done: false,
            scratch_out: vec![0; 4 * 1024],
            scratch_ends: vec![0; 256],
            plain_lines: true,
            max_record: max_record_bytes.max(1),
            csv_fresh: true,
            last: Record {
                start: offset,
                line: 1,
                oversized: None,
            },
        }
    }

    /// Every record through the CSV state machine (the reference the fast
    /// path is tested against).
    #[cfg(test)]
    fn csv_only(mut self) -> Self {
        self.plain_lines = false;
        self
    }

    /// Absolute offset just after the last record handed out.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends the next record to `out`: its bytes with their line
    /// terminator, or a prefix of an oversized record; [`Self::last_record`]
    /// then says where it was and whether it was cut short. `false` at the
    /// end of the input. (A flag, not the [`Record`]: the chunker's loop
    /// runs once per row, and returning the struct cost it a tenth.)
    #[inline]
    pub fn next_record(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        if self.plain_lines && self.next_plain_line(out)? {
            return Ok(true);
        }
        match self.next_csv_record(out)? {
            Some(record) => {
                self.last = record;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The record last handed out by [`Self::next_record`].
    pub fn last_record(&self) -> Record {
        self.last
    }

    /// Hands out the next record if it is a plain line wholly in the
    /// buffer; blank lines before it are skipped. `false` when the CSV state
    /// machine must decide.
    #[inline]
    fn next_plain_line(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            if self.start == self.end {
                if self.source_done {
                    return Ok(false);
                }
                self.fill()?;
                if self.start == self.end {
                    return Ok(false);
                }
            }
            let window = &self.buf[self.start..self.end];
            let Some(newline) = memchr::memchr(b'\n', window) else {
                return Ok(false);
            };
            let line = &window[..newline];
            let content = line.strip_suffix(b"\r").unwrap_or(line);
            if content.is_empty() {
                self.consume(newline + 1);
                self.line += 1;
                continue;
            }
            // The CSV state machine decides on quotes, lone CRs, and on a
            // byte order mark that starts the file.
            if memchr::memchr2(b'"', b'\r', content).is_some()
                || (self.offset == 0 && content.starts_with(BOM))
            {
                return Ok(false);
            }
            if content.len() > self.max_record {
                self.plain_line_too_long(out, newline);
                return Ok(true);
            }
            self.last = Record {
                start: self.offset,
                line: self.line,
                oversized: None,
            };
            out.extend_from_slice(&window[..=newline]);
            self.consume(newline + 1);
            self.line += 1;
            return Ok(true);
        }
    }

    /// Hands out the prefix of a plain line at the start of the buffer,
    /// ending at `newline`, that is longer than the bound.
    #[cold]
    fn plain_line_too_long(&mut self, out: &mut Vec<u8>, newline: usize) {
        let line = &self.buf[self.start..self.start + newline];
        let length = line.strip_suffix(b"\r").unwrap_or(line).len();
        out.extend_from_slice(&line[..self.max_record]);
        self.last = Record {
            start: self.offset,
            line: self.line,
            oversized: Some(self.oversized(Cause::TooLong, length)),
        };
        self.consume(newline + 1);
        self.line += 1;
    }

    /// The next record by the CSV state machine, fed at most the bound
    /// (plus a CRLF) of one record.
    fn next_csv_record(&mut self, out: &mut Vec<u8>) -> io::Result<Option<Record>> {
        let mark = out.len();
        let hold = self.max_record + 2;
        // Offset and line of the record's first byte, once it has one.
        let mut begun: Option<(u64, u64)> = None;
        loop {
            if self.start == self.end && !self.source_done {
                self.fill()?;
            }
            let at_end = self.start == self.end;
            if let Some((start, line)) = begun
                && (out.len() - mark == hold || (at_end && ends_in_quotes(&out[mark..], start)))
            {
                return self.cut_short(out, mark, start, line).map(Some);
            }
            let input = &self.buf[self.start..self.end];
            let input = &input[..input.len().min(hold - (out.len() - mark))];
            let mid_file = std::mem::take(&mut self.csv_fresh) && self.offset != 0;
            let input = mid_file_input(input, mid_file);
            let (result, consumed, _, _) =
                self.csv
                    .read_record(input, &mut self.scratch_out, &mut self.scratch_ends);
            let mut taken = &input[..consumed];
            if begun.is_none() {
                // Leading line ends are blank lines or the LF of a CRLF that
                // the previous record already accounted for.
                let lead = taken
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                self.line += count_lines(&taken[..lead]);
                self.offset += lead as u64;
                self.start += lead;
                taken = &taken[lead..];
                if !taken.is_empty() {
                    begun = Some((self.offset, self.line));
                }
            }
            out.extend_from_slice(taken);
            self.line += count_lines(taken);
            let taken = taken.len();
            self.consume(taken);
            match result {
                ReadRecordResult::Record => {
                    if out.len() > mark && out.last() == Some(&b'\r') && self.peek()? == Some(b'\n')
                    {
                        out.push(b'\n');
                        self.consume(1);
                        self.line += 1;
                    }
                    if let Some((start, line)) = begun {
                        return Ok(Some(self.whole(out, mark, start, line)));
                    }
                }
                ReadRecordResult::End => {
                    return Ok(begun.map(|(start, line)| self.whole(out, mark, start, line)));
                }
                ReadRecordResult::InputEmpty
                | ReadRecordResult::OutputFull
                | ReadRecordResult::OutputEndsFull => {}
            }
        }
    }

    /// A record the CSV state machine ended: handed out whole, or its
    /// prefix if it is longer than the bound by a byte or two.
    fn whole(&self, out: &mut Vec<u8>, mark: usize, start: u64, line: u64) -> Record {
        let length = without_terminator(&out[mark..]).len();
        let mut record = Record {
            start,
            line,
            oversized: None,
        };
        if length > self.max_record {
            out.truncate(mark + self.max_record);
            record.oversized = Some(self.oversized(Cause::TooLong, length));
        }
        record
    }

    /// Ends a record that has not ended within the bound, or that reached
    /// the end of the input inside quotes, by the rules of the module docs.
    /// `out[mark..]` holds its bytes so far.
    fn cut_short(
        &mut self,
        out: &mut Vec<u8>,
        mark: usize,
        start: u64,
        line: u64,
    ) -> io::Result<Record> {
        let held = &out[mark..];
        let quoted = ends_in_quotes(held, start);
        let first_break = memchr::memchr2(b'\n', b'\r', held).filter(|_| quoted);
        let length = match first_break {
            Some(at) => {
                let after = if held[at..].starts_with(b"\r\n") {
                    at + 2
                } else {
                    at + 1
                };
                let again = held[after..].to_vec();
                self.unread(&again);
                at as u64
            }
            None => held.len() as u64 + self.skip_line()?,
        };
        out.truncate(mark + (length as usize).min(self.max_record));
        self.csv.reset();
        self.csv_fresh = true;
        let cause = if quoted {
            Cause::UnterminatedQuote
        } else {
            Cause::TooLong
        };
        Ok(Record {
            start,
            line,
            oversized: Some(self.oversized(cause, length as usize)),
        })
    }

    fn oversized(&self, cause: Cause, length: usize) -> Oversized {
        Oversized {
            cause,
            length: length as u64,
            limit: self.max_record,
        }
    }

    /// Consumes the rest of the current line and its line break (LF, CR or
    /// CRLF) without keeping them; returns the bytes before the line break.
    fn skip_line(&mut self) -> io::Result<u64> {
        let mut skipped = 0;
        loop {
            if self.start == self.end {
                if self.source_done {
                    return Ok(skipped);
                }
                self.fill()?;
                continue;
            }
            let window = &self.buf[self.start..self.end];
            let Some(at) = memchr::memchr2(b'\n', b'\r', window) else {
                skipped += window.len() as u64;
                self.consume(window.len());
                continue;
            };
            let carriage_return = window[at] == b'\r';
            skipped += at as u64;
            self.consume(at + 1);
            if !carriage_return {
                self.line += 1;
            } else if self.peek()? == Some(b'\n') {
                self.consume(1);
                self.line += 1;
            }
            return Ok(skipped);
        }
    }

    /// Puts `bytes` back in front of the unconsumed input (they were
    /// consumed just before it).
    fn unread(&mut self, bytes: &[u8]) {
        let mut buf = Vec::with_capacity(bytes.len() + self.end - self.start);
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(&self.buf[self.start..self.end]);
        self.end = buf.len();
        self.start = 0;
        buf.resize(buf.len().max(self.buf.len()), 0);
        self.buf = buf;
        self.offset -= bytes.len() as u64;
        self.line -= count_lines(bytes);
    }

    #[inline]
    fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        self.offset += bytes as u64;
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.start == self.end && !self.source_done {
            self.fill()?;
        }
        Ok(self.buf[self.start..self.end].first().copied())
    }

    /// Reads more input once the buffer is consumed. The buffer starts
    /// small (a chunk's header is often all that is read) and doubles up to
    /// [`READ_BLOCK`] while reads fill it. At the start of the file it holds
    /// at least three bytes unless the file is shorter, so that a byte order
    /// mark is seen whole however the reader splits its reads.
    fn fill(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0; FIRST_READ];
        } else if self.end == self.buf.len() && self.buf.len() < READ_BLOCK {
            self.buf = vec![0; self.buf.len() * 2];
        } else if self.buf.len() > READ_BLOCK {
            // Grown by `unread`; back to the usual size.
            self.buf = vec![0; READ_BLOCK];
        }
        self.start = 0;
        self.end = 0;
        let wanted = if self.offset == 0 { BOM.len() } else { 1 };
        while self.end < wanted {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.source_done = true;
                    return Ok(());
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether `record`, the start of a record at offset `start` that has not
/// ended yet, is inside a double-quoted field: whether a line feed after
/// it would be data. It is parsed again by a state machine of its own
/// (csv_core's `Reader` cannot be cloned with its state: its `Clone` builds
/// a fresh transition table), which costs at most the bound, once per
/// record cut short and once at the end of the input.
fn ends_in_quotes(record: &[u8], start: u64) -> bool {
    let mut csv = csv_core::Reader::new();
    let (mut output, mut ends) = ([0u8; 1024], [0usize; 64]);
    let first = mid_file_input(record, start != 0);
    for mut input in [first, &record[first.len()..]] {
        while !input.is_empty() {
            let (result, consumed, _, _) = csv.read_record(input, &mut output, &mut ends);
            if result == ReadRecordResult::Record {
                return false;
            }
            input = &input[consumed..];
        }
    }
    let (result, _, written, _) = csv.read_record(b"\n", &mut output, &mut ends);
    result == ReadRecordResult::InputEmpty && written == 1
}

/// The input for a CSV state machine's first read: csv_core skips a byte
/// order mark at the start of its first input as the file's own. Away from
/// the start of the file it is data, so that first read gets one byte.
fn mid_file_input(input: &[u8], fresh_mid_file: bool) -> &[u8] {
    if fresh_mid_file && input.starts_with(BOM) {
        &input[..1]
    } else {
        input
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// A record's bytes without its line terminator.
fn without_terminator(mut raw: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = raw {
        raw = rest;
    }
    raw
}

/// Cuts a master file into chunk bodies: the header line, then up to
/// `rows` records copied verbatim, or for an oversized record its
/// placeholder line ([`super::placeholder`]).
pub struct ChunkCutter<R> {
    splitter: RecordSplitter<R>,
    header: Vec<u8>,
    /// A chunk body past this size is not cut further (see `Cut::too_large`).
    max_chunk_bytes: usize,
}

/// One chunk body and where the master file continues after it.
pub struct Cut {
    pub body: Vec<u8>,
    pub rows: u64,
    pub end_offset: u64,
    /// The records replaced by placeholders, in order.
    pub oversized: Vec<CutShort>,
    /// The body grew past the cutter's chunk size limit before it held
    /// `rows` rows: cutting stopped there, so memory stays bounded, and the
    /// chunk must not be written.
    pub too_large: bool,
}

/// A record of a chunk that is a placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutShort {
    /// Its index among the chunk's data rows (0 = the first).
    pub row: u64,
    /// The line of the chunk body on which its placeholder starts.
    pub line: u64,
    /// Absolute offset of the record in the master file.
    pub offset: u64,
    pub oversized: Oversized,
}

impl<R: Read> ChunkCutter<R> {
    /// `source` is positioned at `offset`, a record boundary after the
    /// header; `header` is the header record as it appears in the file.
    pub fn new(source: R, offset: u64, header: Vec<u8>, max_record_bytes: usize) -> Self {
        let mut header = header;
        if !header.ends_with(b"\n") && !header.ends_with(b"\r") {
            header.extend_from_slice(b"\r\n");
        }
        ChunkCutter {
            splitter: RecordSplitter::new(source, offset, max_record_bytes),
            header,
            max_chunk_bytes: usize::MAX,
        }
    }

    /// Stops a cut once its body is larger than `limit` (see
    /// [`Cut::too_large`]).
    pub fn with_max_chunk_bytes(mut self, limit: usize) -> Self {
        self.max_chunk_bytes = limit;
        self
    }

    pub fn cut(&mut self, rows: u64) -> io::Result<Cut> {
        let mut body = self.header.clone();
        let mut taken = 0;
        let mut oversized = Vec::new();
        // Lines of `body[..counted]`, for the placeholders' line numbers.
        let (mut lines, mut counted) = (1, 0);
        while taken < rows {
            let mark = body.len();
            if !self.splitter.next_record(&mut body)? {
                break;
            }
            let record = self.splitter.last_record();
            if let Some(cut_short) = record.oversized {
                let prefix = body.split_off(mark);
                super::placeholder::write(&mut body, &cut_short, &prefix);
                lines += count_lines(&body[counted..mark]);
                counted = mark;
                oversized.push(CutShort {
                    row: taken,
                    line: lines,
                    offset: record.start,
                    oversized: cut_short,
                });
            }
            taken += 1;
            if body.len() > self.max_chunk_bytes {
                break;
            }
        }
        Ok(Cut {
            too_large: body.len() > self.max_chunk_bytes,
            body,
            rows: taken,
            end_offset: self.splitter.offset(),
            oversized,
        })
    }
}

/// Reads the master file's header from `reader` (the file from its first
/// byte), checks that it names the columns a transactions file needs, and
/// returns it with the offset of the first data row.
pub fn master_header(
    reader: impl Read,
    location: &str,
    max_record_bytes: usize,
) -> Result<(Vec<u8>, u64), String> {
    let (header, offset) = read_header(reader, max_record_bytes)
        .map_err(|e| format!("cannot read {location}: {e}"))?
        .ok_or_else(|| format!("master file {location} is empty (no header line)"))?;
    let mut fields = csv::ByteRecord::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(header.as_slice());
    reader
        .read_byte_record(&mut fields)
        .map_err(|e| format!("master file {location}: unreadable header: {e}"))?;
    super::transactions::Schema::from_header(&fields)
        .map_err(|e| format!("master file {location}: {e}"))?;
    Ok((header, offset))
}

/// Reads the header record of a file: its raw bytes and the offset of the
/// first data row. `None` for an empty file; an error if the header is
/// oversized.
pub fn read_header<R: Read>(
    source: R,
    max_record_bytes: usize,
) -> io::Result<Option<(Vec<u8>, u64)>> {
    let mut splitter = RecordSplitter::new(source, 0, max_record_bytes);
    let mut header = Vec::new();
    if !splitter.next_record(&mut header)? {
        return Ok(None);
    }
    match splitter.last_record().oversized {
        Some(oversized) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("header: {oversized}"),
        )),
        None => Ok(Some((header, splitter.offset()))),
    }
}

/// One record of a CSV document.
pub struct RawRecord<'a> {
    /// Line on which the record starts (1 = the document's first).
    pub line: u64,
    /// The record's bytes without its line terminator; for an oversized
    /// record, the prefix that was kept.
    pub raw: &'a [u8],
    /// Why only a prefix was kept (then the fields are empty).
    pub oversized: Option<Oversized>,
}

/// Walks a CSV document record by record with a [`RecordSplitter`] and
/// splits each record into fields, reusing one [`csv::ByteRecord`] so that
/// no row allocates.
pub struct RawRecords<R> {
    splitter: RecordSplitter<R>,
    record: Vec<u8>,
    fields: FieldSplitter,
}

impl<R: Read> RawRecords<R> {
    /// `source` is the whole document, from its first byte.
    pub fn new(source: R, max_record_bytes: usize) -> Self {
        RawRecords {
            splitter: RecordSplitter::new(source, 0, max_record_bytes),
            record: Vec::new(),
            fields: FieldSplitter::new(),
        }
    }

    /// Byte offset just after the last record read.
    pub fn offset(&self) -> u64 {
        self.splitter.offset()
    }

    /// Reads the next record's fields into `fields` (none for an oversized
    /// record); `None` at the end.
    pub fn next_into(&mut self, fields: &mut csv::ByteRecord) -> io::Result<Option<RawRecord<'_>>> {
        self.record.clear();
        if !self.splitter.next_record(&mut self.record)? {
            return Ok(None);
        }
        let record = self.splitter.last_record();
        if record.oversized.is_some() {
            fields.clear();
        } else {
            self.fields.split(&self.record, record.start == 0, fields);
        }
        Ok(Some(RawRecord {
            line: record.line,
            raw: without_terminator(&self.record),
            oversized: record.oversized,
        }))
    }
}

/// Splits one whole record (as [`RecordSplitter`] hands it out) into
/// fields with the same CSV state machine.
struct FieldSplitter {
    csv: csv_core::Reader,
    output: Vec<u8>,
    ends: Vec<usize>,
}

impl FieldSplitter {
    fn new() -> Self {
        FieldSplitter {
            csv: csv_core::Reader::new(),
            output: vec![0; 1024],
            ends: vec![0; 32],
        }
    }

    /// `at_start`: the record is the first of its document (where a byte
    /// order mark is the document's, not data).
    fn split(&mut self, record: &[u8], at_start: bool, fields: &mut csv::ByteRecord) {
        fields.clear();
        // Without double quotes (and a byte order mark the state machine
        // would skip) a whole record's fields are the text between commas.
        if memchr::memchr(b'"', record).is_none() && !(at_start && record.starts_with(BOM)) {
            let content = without_terminator(record);
            let mut from = 0;
            for comma in memchr::memchr_iter(b',', content) {
                fields.push_field(&content[from..comma]);
                from = comma + 1;
            }
            fields.push_field(&content[from..]);
            return;
        }
        // A record without a line terminator is the document's last; a line
        // feed ends it as the end of the input would.
        let mut input = mid_file_input(record, !at_start);
        let mut rest = &record[input.len()..];
        let mut terminated = false;
        let (mut written, mut fields_done) = (0, 0);
        loop {
            let (result, consumed, wrote, ended) = self.csv.read_record(
                input,
                &mut self.output[written..],
                &mut self.ends[fields_done..],
            );
            input = &input[consumed..];
            written += wrote;
            fields_done += ended;
            match result {
                ReadRecordResult::Record | ReadRecordResult::End => break,
                ReadRecordResult::OutputFull => {
                    self.output.resize(self.output.len() * 2, 0);
                }
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::InputEmpty if !rest.is_empty() => {
                    input = std::mem::take(&mut rest);
                }
                ReadRecordResult::InputEmpty if !terminated => {
                    terminated = true;
                    input = b"\n";
                }
                // Not reached for a record the splitter handed out whole:
                // it ends outside quotes.
                ReadRecordResult::InputEmpty => {
                    self.csv.reset();
                    break;
                }
            }
        }
        let mut from = 0;
        for &end in &self.ends[..fields_done] {
            fields.push_field(&self.output[from..end]);
            from = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    /// A reader that hands out at most `block` bytes per read.
    struct Chunky<'a> {
        data: &'a [u8],
        block: usize,
    }

    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.block.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// A record's bytes and why it was cut short, if it was.
    type Found = (Vec<u8>, Option<Oversized>);

    /// Every record of `data`, and the final offset.
    fn records(mut splitter: RecordSplitter<Chunky<'_>>) -> (Vec<Found>, u64) {
        let mut out = Vec::new();
        let mut all = Vec::new();
        while splitter.next_record(&mut out).unwrap() {
            all.push((std::mem::take(&mut out), splitter.last_record().oversized));
        }
        (all, splitter.offset())
    }

    fn split(data: &[u8], block: usize) -> Vec<String> {
        let (records, end) = records(RecordSplitter::new(Chunky { data, block }, 0, BIG));
        assert_eq!(end, data.len() as u64);
        records
            .into_iter()
            .map(|(bytes, oversized)| {
                assert_eq!(oversized, None);
                String::from_utf8(bytes).unwrap()
            })
            .collect()
    }

    #[test]
    fn splits_crlf_lf_quotes_and_blank_lines() {
        let data = b"a,b\r\n1,2\r\n\r\n\n\"x\r\ny\",3\r\n4,\"5,6\"\n7,8";
        for block in [1, 2, 3, 7, 1000] {
            assert_eq!(
                split(data, block),
                vec![
                    "a,b\r\n",
                    "1,2\r\n",
                    "\"x\r\ny\",3\r\n",
                    "4,\"5,6\"\n",
                    "7,8"
                ],
                "block size {block}"
            );
        }
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = &'static [u8]> {
        proptest::sample::select(vec![
            &b"a"[..],
            b"bc",
            b",",
            b"\n",
            b"\r\n",
            b"\r",
            b"\"",
            b"\"x,\ny\"",
            b" ",
            b"\xff",
            b"\xef\xbb\xbf",
            b"0123456789",
        ])
    }

    mod plain_lines_equal_csv {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn on_random_input(
                pieces in prop::collection::vec(piece(), 0..60),
                block in 1usize..40,
                limit in prop_oneof![Just(BIG), 1usize..30],
            ) {
                let data: Vec<u8> = pieces.concat();
                let fast = records(RecordSplitter::new(Chunky { data: &data, block }, 0, limit));
                let slow = records(RecordSplitter::new(Chunky { data: &data, block }, 0, limit).csv_only());
                prop_assert_eq!(fast, slow);
            }
        }
    }

    mod bounded {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: no panic, no record past the bound, every byte
            /// accounted for, and without oversized records the records
            /// are the `csv` crate's.
            #[test]
            fn records_never_exceed_the_bound(
                data in prop::collection::vec(any::<u8>(), 0..300),
                pieces in prop::collection::vec(piece(), 0..40),
                block in 1usize..50,
                limit in 1usize..40,
            ) {
                for data in [data, pieces.concat()] {
                    let (found, end) = records(RecordSplitter::new(Chunky { data: &data, block }, 0, limit));
                    prop_assert_eq!(end, data.len() as u64);
                    for (bytes, oversized) in &found {
                        match oversized {
                            None => prop_assert!(without_terminator(bytes).len() <= limit),
                            Some(o) => {
                                prop_assert!(bytes.len() <= limit);
                                prop_assert_eq!(bytes.len() as u64, o.length.min(limit as u64));
                                prop_assert_eq!(o.limit, limit);
                            }
                        }
                    }
                    if found.iter().all(|(_, o)| o.is_none()) && !data.starts_with(BOM) {
                        let mut reader = csv::ReaderBuilder::new()
                            .has_headers(false)
                            .flexible(true)
                            .from_reader(data.as_slice());
                        let theirs: Vec<csv::ByteRecord> =
                            reader.byte_records().map(Result::unwrap).collect();
                        prop_assert_eq!(theirs.len(), found.len());
                    }
                }
            }

            /// A cutter resumed at any chunk's end offset cuts the same
            /// chunks as the one that went on, resynchronisations included.
            #[test]
            fn a_resumed_cutter_cuts_the_same_chunks(
                pieces in prop::collection::vec(piece(), 0..80),
                rows in 1u64..4,
                limit in prop_oneof![Just(BIG), 1usize..25],
                block in 1usize..50,
            ) {
                let mut data = b"h,i\n".to_vec();
                data.extend(pieces.concat());
                let cuts = cut_all(&data, 4, rows, limit, block);
                for (index, (_, offset)) in cuts.iter().enumerate() {
                    let resumed = cut_all(&data, *offset, rows, limit, block);
                    prop_assert_eq!(&resumed[..], &cuts[index + 1..]);
                }
            }
        }

        /// `(body, end offset)` of every chunk from `offset` on.
        fn cut_all(
            data: &[u8],
            offset: u64,
            rows: u64,
            limit: usize,
            block: usize,
        ) -> Vec<(Vec<u8>, u64)> {
            let source = Chunky {
                data: &data[offset as usize..],
                block,
            };
            let mut cutter = ChunkCutter::new(source, offset, b"h,i\n".to_vec(), limit);
            let mut cuts = Vec::new();
            loop {
                let cut = cutter.cut(rows).unwrap();
                if cut.rows == 0 {
                    return cuts;
                }
                cuts.push((cut.body, cut.end_offset));
            }
        }
    }

    #[test]
    fn resumes_at_a_recorded_offset() {
        let data = b"h\r\n1\r\n2\r\n3\r\n";
        let mut splitter = RecordSplitter::new(&data[..], 0, BIG);
        let mut out = Vec::new();
        splitter.next_record(&mut out).unwrap();
        splitter.next_record(&mut out).unwrap();
        let offset = splitter.offset();
        assert_eq!(offset, 6);
        let mut resumed = RecordSplitter::new(&data[offset as usize..], offset, BIG);
        out.clear();
        assert!(resumed.next_record(&mut out).unwrap());
        assert_eq!(
            (out.as_slice(), resumed.last_record().start),
            (&b"2\r\n"[..], 6)
        );
    }

    #[test]
    fn cuts_chunks_with_the_header_repeated() {
        let data = b"h\r\n1\r\n2\r\n\r\n3\r\n4";
        let (header, offset) = read_header(&data[..], BIG).unwrap().unwrap();
        assert_eq!((header.as_slice(), offset), (&b"h\r\n"[..], 3));
        let mut cutter = ChunkCutter::new(&data[offset as usize..], offset, header, BIG);
        let first = cutter.cut(2).unwrap();
        assert_eq!(
            (first.body.as_slice(), first.rows, first.end_offset),
            (&b"h\r\n1\r\n2\r\n"[..], 2, 9)
        );
        let second = cutter.cut(2).unwrap();
        assert_eq!(
            (second.body.as_slice(), second.rows),
            (&b"h\r\n3\r\n4"[..], 2)
        );
        assert_eq!(second.end_offset, data.len() as u64);
        let last = cutter.cut(2).unwrap();
        assert_eq!(last.rows, 0);
    }

    #[test]
    fn a_cut_stops_once_its_body_passes_the_chunk_limit() {
        let row = [b'x'; 99];
        let mut data = b"h\n".to_vec();
        for _ in 0..50 {
            data.extend_from_slice(&row);
            data.push(b'\n');
        }
        let (header, offset) = read_header(&data[..], BIG).unwrap().unwrap();
        let mut cutter = ChunkCutter::new(&data[offset as usize..], offset, header.clone(), BIG)
            .with_max_chunk_bytes(1_000);
        let cut = cutter.cut(50).unwrap();
        assert!(cut.too_large);
        assert_eq!(cut.rows, 10, "stopped at the first row past the limit");
        let mut cutter = ChunkCutter::new(&data[offset as usize..], offset, header, BIG)
            .with_max_chunk_bytes(1_000);
        let small = cutter.cut(5).unwrap();
        assert!(!small.too_large);
        assert_eq!(small.rows, 5);
    }

    #[test]
    fn empty_and_blank_inputs_have_no_records() {
        assert!(split(b"", 10).is_empty());
        assert!(split(b"\r\n\n\r\n", 10).is_empty());
    }

    /// `(bytes, cause, length)` of each record with a bound of `limit`.
    fn bounded(data: &[u8], limit: usize) -> Vec<(String, Option<(Cause, u64)>)> {
        let mut found = Vec::new();
        for block in [1, 3, 64, 1 << 20] {
            let (records, end) = records(RecordSplitter::new(Chunky { data, block }, 0, limit));
            assert_eq!(end, data.len() as u64);
            let records: Vec<_> = records
                .into_iter()
                .map(|(bytes, o)| {
                    (
                        String::from_utf8_lossy(&bytes).into_owned(),
                        o.map(|o| (o.cause, o.length)),
                    )
                })
                .collect();
            if block > 1 {
                assert_eq!(records, found, "block {block}");
            }
            found = records;
        }
        found
    }

    #[test]
    fn a_long_line_is_cut_to_the_bound_with_its_length() {
        let long = "x".repeat(25);
        let data = format!("a,b\n{long}\r\nc,d\n\"{long}\",e\nf\n");
        assert_eq!(
            bounded(data.as_bytes(), 10),
            vec![
                ("a,b\n".to_string(), None),
                ("xxxxxxxxxx".to_string(), Some((Cause::TooLong, 25))),
                ("c,d\n".to_string(), None),
                // Still inside the quote at the bound: unterminated.
                (
                    "\"xxxxxxxxx".to_string(),
                    Some((Cause::UnterminatedQuote, 29))
                ),
                ("f\n".to_string(), None),
            ]
        );
        // Past a closed quote: too long.
        assert_eq!(
            bounded(format!("\"ab\",{long}\nf\n").as_bytes(), 10),
            vec![
                ("\"ab\",xxxxx".to_string(), Some((Cause::TooLong, 30))),
                ("f\n".to_string(), None),
            ]
        );
        // One or two bytes past the bound, whole in the buffer or not.
        assert_eq!(
            bounded(b"12345678901\r\n123456789012\n1234567890\n", 10),
            vec![
                ("1234567890".to_string(), Some((Cause::TooLong, 11))),
                ("1234567890".to_string(), Some((Cause::TooLong, 12))),
                ("1234567890\n".to_string(), None),
            ]
        );
    }

    #[test]
    fn an_unterminated_quote_costs_its_first_line_only() {
        // The quote opened on line 2 never closes: line 2 is cut short and
        // lines 3 and 4 are records again.
        let data = b"a,b\nc,\"d\ne,f\r\ng,h\n";
        for limit in [4, 8, 100] {
            assert_eq!(
                bounded(data, limit),
                vec![
                    ("a,b\n".to_string(), None),
                    ("c,\"d".to_string(), Some((Cause::UnterminatedQuote, 4))),
                    ("e,f\r\n".to_string(), None),
                    ("g,h\n".to_string(), None),
                ],
                "limit {limit}"
            );
        }
        // A quote that closes past the bound is unterminated too.
        let data = b"\"1\n2\n3\n4\n5\",6\n7\n";
        assert_eq!(
            bounded(data, 5),
            vec![
                ("\"1".to_string(), Some((Cause::UnterminatedQuote, 2))),
                ("2\n".to_string(), None),
                ("3\n".to_string(), None),
                ("4\n".to_string(), None),
                ("5\",6\n".to_string(), None),
                ("7\n".to_string(), None),
            ]
        );
        // An open quote on a line longer than the bound, at the end.
        assert_eq!(
            bounded(b"1\n\"abcdefgh", 4),
            vec![
                ("1\n".to_string(), None),
                ("\"abc".to_string(), Some((Cause::UnterminatedQuote, 9))),
            ]
        );
    }

    #[test]
    fn oversized_placeholders_keep_the_chunk_rows_and_offsets() {
        let data = b"h\n1\n\"2\n3\n4444444444\n5";
        let (header, offset) = read_header(&data[..], 6).unwrap().unwrap();
        let mut cutter = ChunkCutter::new(&data[offset as usize..], offset, header, 6);
        let cut = cutter.cut(10).unwrap();
        assert_eq!(cut.rows, 5);
        assert_eq!(cut.end_offset, data.len() as u64);
        let found: Vec<(u64, u64, u64, Cause)> = cut
            .oversized
            .iter()
            .map(|c| (c.row, c.line, c.offset, c.oversized.cause))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, 3, 4, Cause::UnterminatedQuote),
                (3, 5, 9, Cause::TooLong)
            ]
        );
    }

    #[test]
    fn an_oversized_header_is_an_error() {
        let error = read_header(&b"abcdefgh\n1\n"[..], 4).unwrap_err();
        assert_eq!(
            error.to_string(),
            "header: record of 8 bytes exceeds input.max_record_bytes (4)"
        );
    }

    #[test]
    fn a_byte_order_mark_counts_only_at_the_start_of_the_file() {
        let data = b"\xef\xbb\xbf\"h\ni\"\n\xef\xbb\xbf\"x\ny\n";
        let (found, _) = records(RecordSplitter::new(Chunky { data, block: 100 }, 0, BIG));
        let found: Vec<&[u8]> = found.iter().map(|(r, _)| r.as_slice()).collect();
        // At the start the mark is skipped and the quote opens a field;
        // mid-file the mark is data and the quote is literal.
        assert_eq!(
            found,
            vec![&b"\xef\xbb\xbf\"h\ni\"\n"[..], b"\xef\xbb\xbf\"x\n", b"y\n"]
        );
        // A splitter resumed at the second record agrees.
        let (resumed, _) = records(RecordSplitter::new(
            Chunky {
                data: &data[9..],
                block: 100,
            },
            9,
            BIG,
        ));
        let resumed: Vec<&[u8]> = resumed.iter().map(|(r, _)| r.as_slice()).collect();
        assert_eq!(resumed, found[1..]);
    }

    #[test]
    fn raw_records_report_lines_raw_bytes_and_fields() {
        let data = b"h1,h2\r\n\r\na,\"b\nc\"\r\nd,e\r\n\n f \n\"g\nh";
        let mut records = RawRecords::new(&data[..], 1000);
        let mut fields = csv::ByteRecord::new();
        let mut seen = Vec::new();
        while let Some(record) = records.next_into(&mut fields).unwrap() {
            seen.push((
                record.line,
                String::from_utf8_lossy(record.raw).into_owned(),
                fields
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect::<Vec<_>>(),
                record.oversized.map(|o| o.cause),
            ));
        }
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                (1, "h1,h2".to_string(), strings(&["h1", "h2"]), None),
                (3, "a,\"b\nc\"".to_string(), strings(&["a", "b\nc"]), None),
                (5, "d,e".to_string(), strings(&["d", "e"]), None),
                (7, " f ".to_string(), strings(&[" f "]), None),
                (8, "\"g".to_string(), vec![], Some(Cause::UnterminatedQuote)),
                (9, "h".to_string(), strings(&["h"]), None),
            ]
        );
    }
}
