//! Record boundaries, with the CSV rules of the `csv` crate (double-quote
//! quoting, LF / CRLF / CR line ends, blank lines are not records).
//!
//! [`RecordSplitter`] streams a large file and hands out each record's raw
//! bytes verbatim, which is what the chunker copies into chunk objects. It
//! knows the absolute byte offset after every record, so the chunker can
//! resume a file exactly where a previous run stopped. [`RawRecords`] walks
//! a chunk already in memory and yields fields, raw bytes and line numbers
//! for the parser and the quarantine.

use std::io::{self, Read};

use csv_core::ReadRecordResult;

const READ_BLOCK: usize = 256 * 1024;

/// Streams records out of a reader. Blank lines are dropped; every other
/// byte is kept, so concatenating the records re-creates the file minus its
/// blank lines.
pub struct RecordSplitter<R> {
    source: R,
    csv: csv_core::Reader,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Absolute offset of `buf[start]` in the source.
    offset: u64,
    source_done: bool,
    scratch_out: Vec<u8>,
    scratch_ends: Vec<usize>,
    /// Take plain lines (no double quote, no lone CR) without the CSV
    /// state machine; they are records as they stand.
    plain_lines: bool,
}

impl<R: Read> RecordSplitter<R> {
    /// `offset` is the absolute position of the reader's first byte (0 for a
    /// file read from the beginning); it must be a record boundary.
    pub fn new(source: R, offset: u64) -> Self {
        RecordSplitter {
            source,
            csv: csv_core::Reader::new(),
            buf: vec![0; READ_BLOCK],
            start: 0,
            end: 0,
            offset,
            source_done: false,
            scratch_out: vec![0; 64 * 1024],
            scratch_ends: vec![0; 1024],
            plain_lines: true,
        }
    }

    /// Every record through the CSV state machine (the reference the fast
    /// path is tested against).
    #[cfg(test)]
    fn csv_only(mut self) -> Self {
        self.plain_lines = false;
        self
    }

    /// The next record if it is a plain line wholly in the buffer; blank
    /// lines before it are skipped. `None` when the CSV state machine must
    /// decide.
    fn next_plain_line(&mut self, out: &mut Vec<u8>) -> io::Result<Option<bool>> {
        loop {
            if self.start == self.end {
                if self.source_done {
                    return Ok(None);
                }
                self.fill()?;
                if self.start == self.end {
                    return Ok(None);
                }
            }
            let window = &self.buf[self.start..self.end];
            let Some(newline) = memchr::memchr(b'\n', window) else {
                return Ok(None);
            };
            let line = &window[..newline];
            let content = line.strip_suffix(b"\r").unwrap_or(line);
            if !content.is_empty() {
                if memchr::memchr2(b'"', b'\r', content).is_some() {
                    return Ok(None);
                }
                out.extend_from_slice(&window[..=newline]);
            }
            self.start += newline + 1;
            self.offset += newline as u64 + 1;
            if !content.is_empty() {
                return Ok(Some(true));
            }
        }
    }

    /// Absolute offset just after the last record handed out.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends the next record (with its line terminator, if it has one) to
    /// `out`. Returns `false` at the end of the input.
    pub fn next_record(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        if self.plain_lines
            && let Some(found) = self.next_plain_line(out)?
        {
            return Ok(found);
        }
        let mark = out.len();
        let mut in_record = false;
        loop {
            if self.start == self.end && !self.source_done {
                self.fill()?;
            }
            let input = &self.buf[self.start..self.end];
            let (result, consumed, _, _) =
                self.csv
                    .read_record(input, &mut self.scratch_out, &mut self.scratch_ends);
            let mut taken = &input[..consumed];
            if !in_record {
                // Leading line ends are blank lines or the LF of a CRLF that
                // the previous record already accounted for.
                let lead = taken
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                taken = &taken[lead..];
                in_record = !taken.is_empty();
            }
            out.extend_from_slice(taken);
            self.start += consumed;
            self.offset += consumed as u64;
            match result {
                ReadRecordResult::Record => {
                    if out.len() > mark && out.last() == Some(&b'\r') && self.peek()? == Some(b'\n')
                    {
                        out.push(b'\n');
                        self.start += 1;
                        self.offset += 1;
                    }
                    if out.len() > mark {
                        return Ok(true);
                    }
                    in_record = false;
                }
                ReadRecordResult::End => return Ok(out.len() > mark),
                ReadRecordResult::InputEmpty
                | ReadRecordResult::OutputFull
                | ReadRecordResult::OutputEndsFull => {}
            }
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.start == self.end && !self.source_done {
            self.fill()?;
        }
        Ok(self.buf[self.start..self.end].first().copied())
    }

    fn fill(&mut self) -> io::Result<()> {
        self.start = 0;
        self.end = 0;
        loop {
            match self.source.read(&mut self.buf) {
                Ok(0) => {
                    self.source_done = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Cuts a master file into chunk bodies: the header line, then up to
/// `rows` records copied verbatim.
pub struct ChunkCutter<R> {
    splitter: RecordSplitter<R>,
    header: Vec<u8>,
}

/// One chunk body and where the master file continues after it.
pub struct Cut {
    pub body: Vec<u8>,
    pub rows: u64,
    pub end_offset: u64,
}

impl<R: Read> ChunkCutter<R> {
    /// `source` is positioned at `offset`, a record boundary after the
    /// header; `header` is the header record as it appears in the file.
    pub fn new(source: R, offset: u64, header: Vec<u8>) -> Self {
        let mut header = header;
        if !header.ends_with(b"\n") && !header.ends_with(b"\r") {
            header.extend_from_slice(b"\r\n");
        }
        ChunkCutter {
            splitter: RecordSplitter::new(source, offset),
            header,
        }
    }

    pub fn cut(&mut self, rows: u64) -> io::Result<Cut> {
        let mut body = self.header.clone();
        let mut taken = 0;
        while taken < rows && self.splitter.next_record(&mut body)? {
            taken += 1;
        }
        Ok(Cut {
            body,
            rows: taken,
            end_offset: self.splitter.offset(),
        })
    }
}

/// Reads the header record of a file: its raw bytes and the offset of the
/// first data row. `None` for an empty file.
pub fn read_header<R: Read>(source: R) -> io::Result<Option<(Vec<u8>, u64)>> {
    let mut splitter = RecordSplitter::new(source, 0);
    let mut header = Vec::new();
    if splitter.next_record(&mut header)? {
        Ok(Some((header, splitter.offset())))
    } else {
        Ok(None)
    }
}

/// One record of an in-memory CSV document.
pub struct RawRecord<'a> {
    /// 1-based line on which the record starts.
    pub line: u64,
    /// The record's bytes without its line terminator.
    pub raw: &'a [u8],
}

/// Walks an in-memory document record by record, reusing one
/// [`csv::ByteRecord`] for the fields so that no row allocates.
pub struct RawRecords<'a> {
    data: &'a [u8],
    reader: csv::Reader<&'a [u8]>,
    /// Line number at byte `counted_to`.
    line: u64,
    counted_to: usize,
}

impl<'a> RawRecords<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(data);
        RawRecords {
            data,
            reader,
            line: 1,
            counted_to: 0,
        }
    }

    /// Byte offset just after the last record read.
    pub fn offset(&self) -> usize {
        self.reader.position().byte() as usize
    }

    /// Reads the next record's fields into `fields`; `None` at the end.
    pub fn next_into(&mut self, fields: &mut csv::ByteRecord) -> Option<RawRecord<'a>> {
        // Reading from a slice cannot fail with an I/O error, and invalid
        // UTF-8 is only checked by string records, so errors are impossible.
        match self.reader.read_byte_record(fields) {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        let begin = fields.position().map_or(0, |p| p.byte() as usize);
        let end = self.reader.position().byte() as usize;
        let span = &self.data[begin..end.min(self.data.len())];
        let lead = span
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let start = begin + lead;
        self.line += memchr::memchr_iter(b'\n', &self.data[self.counted_to..start]).count() as u64;
        self.counted_to = start;
        let mut raw = &self.data[start..end.min(self.data.len())];
        while let [rest @ .., b'\r' | b'\n'] = raw {
            raw = rest;
        }
        Some(RawRecord {
            line: self.line,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8], block: usize) -> Vec<String> {
        let mut splitter = RecordSplitter::new(Chunky { data, block }, 0);
        let mut records = Vec::new();
        let mut out = Vec::new();
        while splitter.next_record(&mut out).unwrap() {
            records.push(String::from_utf8(std::mem::take(&mut out)).unwrap());
        }
        assert_eq!(splitter.offset(), data.len() as u64);
        records
    }

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

    mod plain_lines_equal_csv {
        use super::*;
        use proptest::prelude::*;

        fn piece() -> impl Strategy<Value = &'static [u8]> {
            prop::sample::select(vec![
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
            ])
        }

        fn records(mut splitter: RecordSplitter<Chunky<'_>>) -> (Vec<Vec<u8>>, u64) {
            let mut out = Vec::new();
            let mut all = Vec::new();
            while splitter.next_record(&mut out).unwrap() {
                all.push(std::mem::take(&mut out));
            }
            (all, splitter.offset())
        }

        proptest! {
            #[test]
            fn on_random_input(pieces in prop::collection::vec(piece(), 0..60), block in 1usize..40) {
                let data: Vec<u8> = pieces.concat();
                let fast = records(RecordSplitter::new(Chunky { data: &data, block }, 0));
                let slow = records(RecordSplitter::new(Chunky { data: &data, block }, 0).csv_only());
                prop_assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn resumes_at_a_recorded_offset() {
        let data = b"h\r\n1\r\n2\r\n3\r\n";
        let mut splitter = RecordSplitter::new(&data[..], 0);
        let mut out = Vec::new();
        splitter.next_record(&mut out).unwrap();
        splitter.next_record(&mut out).unwrap();
        let offset = splitter.offset();
        assert_eq!(offset, 6);
        let mut resumed = RecordSplitter::new(&data[offset as usize..], offset);
        out.clear();
        assert!(resumed.next_record(&mut out).unwrap());
        assert_eq!(out, b"2\r\n");
    }

    #[test]
    fn cuts_chunks_with_the_header_repeated() {
        let data = b"h\r\n1\r\n2\r\n\r\n3\r\n4";
        let (header, offset) = read_header(&data[..]).unwrap().unwrap();
        assert_eq!((header.as_slice(), offset), (&b"h\r\n"[..], 3));
        let mut cutter = ChunkCutter::new(&data[offset as usize..], offset, header);
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
    fn empty_and_blank_inputs_have_no_records() {
        assert!(split(b"", 10).is_empty());
        assert!(split(b"\r\n\n\r\n", 10).is_empty());
    }

    #[test]
    fn raw_records_report_lines_and_raw_bytes() {
        let data = b"h1,h2\r\n\r\na,\"b\nc\"\r\nd,e\r\n\n f \n";
        let mut records = RawRecords::new(data);
        let mut fields = csv::ByteRecord::new();
        let mut seen = Vec::new();
        while let Some(record) = records.next_into(&mut fields) {
            seen.push((
                record.line,
                String::from_utf8_lossy(record.raw).into_owned(),
                fields.len(),
            ));
        }
        assert_eq!(
            seen,
            vec![
                (1, "h1,h2".to_string(), 2),
                (3, "a,\"b\nc\"".to_string(), 2),
                (5, "d,e".to_string(), 2),
                (7, " f ".to_string(), 1),
            ]
        );
    }
}
