//! Random access into multi-block xz: decode only the blocks an unpack needs, on all cores.
//!
//! dpkg-deb (≥ 1.21) and `xz -T` cut data.tar.xz into independently compressed blocks and
//! list them in the stream's index. Most of what the strip recipe removes (system-probe,
//! static libraries, ...) are big files whose contents cover whole blocks: when the tar
//! reader skips such a file, [`BlockReader`] seeks past it and those blocks are never
//! decompressed. The blocks that are needed are decoded ahead by a pool of worker threads,
//! in order, so decompression overlaps writing.
//!
//! A stream still being downloaded is read the same way before its index (at the end) has
//! arrived: blocks are found by walking their headers, which record their sizes when the
//! encoder was multi-threaded (dpkg-deb, `xz -T`), and each block is decoded once its bytes
//! are in. Where the headers do not say enough, the reader waits for the index.
//!
//! Only a single stream whose index describes exactly the member's bytes is read this way;
//! anything else (one block, concatenated streams, padding, blocks too big to hold in
//! memory) is left to the sequential decoder. Block checks (CRC64, about a tenth of the
//! decoding time) are verified unless the caller says the bytes are verified by SHA-256
//! against a signed index (or will be, before anything unpacked from them is kept).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use liblzma::stream::{Action, IGNORE_CHECK, Status, Stream};

use crate::fetch::{FileRange, Progress};

/// Blocks bigger than this are not held in memory: the sequential decoder streams them.
const MAX_BLOCK: u64 = 32 << 20;
/// Memory for blocks in flight, at most (at least one block ahead is always allowed).
const MEMORY: u64 = 128 << 20;
/// Blocks read block by block, at most (their list is held in memory; a real package has a
/// few dozen). A stream with more, or a bigger index, is left to the sequential decoder.
const MAX_BLOCKS: usize = 1 << 16;
const MAX_INDEX: u64 = 1 << 20;
const HEADER_LEN: u64 = 12;

/// One block of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Offset of the block header from the start of the stream.
    pub offset: u64,
    /// Block header, compressed data, padding and check.
    pub len: u64,
    /// Offset of the block's first byte in the uncompressed data.
    pub uncompressed_offset: u64,
    pub uncompressed_len: u64,
}

/// The blocks of the xz stream held in `file` at `start..start + len`, if it is a single
/// stream that this module can read block by block.
pub fn blocks(file: &File, start: u64, len: u64) -> Option<Vec<Block>> {
    if len < 2 * HEADER_LEN {
        return None;
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, start).ok()?;
    let mut footer = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut footer, start + len - HEADER_LEN).ok()?;
    if &header[..6] != b"\xfd7zXZ\0" || &footer[10..] != b"YZ" || header[6..8] != footer[8..10] {
        return None;
    }
    if crc32(&header[6..8]) != u32::from_le_bytes(header[8..12].try_into().ok()?)
        || crc32(&footer[4..10]) != u32::from_le_bytes(footer[..4].try_into().ok()?)
    {
        return None;
    }
    let index_len = (u64::from(u32::from_le_bytes(footer[4..8].try_into().ok()?)) + 1) * 4;
    let index_start = len.checked_sub(HEADER_LEN + index_len)?;
    if index_start < HEADER_LEN || index_len > MAX_INDEX {
        return None;
    }
    let mut index = vec![0u8; index_len as usize];
    file.read_exact_at(&mut index, start + index_start).ok()?;
    let records = parse_index(&index)?;
    if records.len() > MAX_BLOCKS {
        return None;
    }
    let mut out = Vec::with_capacity(records.len());
    let (mut offset, mut uncompressed_offset) = (HEADER_LEN, 0u64);
    for (unpadded, uncompressed) in records {
        let padded = unpadded.checked_add(3)? & !3;
        out.push(Block { offset, len: padded, uncompressed_offset, uncompressed_len: uncompressed });
        offset = offset.checked_add(padded)?;
        uncompressed_offset = uncompressed_offset.checked_add(uncompressed)?;
    }
    // The index must account for every byte: otherwise there is more than one stream.
    if offset != index_start || out.len() < 2 || out.iter().any(|b| b.uncompressed_len > MAX_BLOCK || b.len > MAX_BLOCK + 4096) {
        return None;
    }
    Some(out)
}

/// The (unpadded size, uncompressed size) records of an xz index.
fn parse_index(index: &[u8]) -> Option<Vec<(u64, u64)>> {
    let (body, crc) = index.split_at(index.len().checked_sub(4)?);
    if crc32(body) != u32::from_le_bytes(crc.try_into().ok()?) || body.first() != Some(&0) {
        return None;
    }
    let mut pos = 1;
    let count = varint(body, &mut pos)?;
    let mut records = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let unpadded = varint(body, &mut pos)?;
        let uncompressed = varint(body, &mut pos)?;
        records.push((unpadded, uncompressed));
    }
    // What is left is padding to a multiple of four, all zero.
    if body.len() - pos > 3 || body[pos..].iter().any(|&b| b != 0) {
        return None;
    }
    Some(records)
}

/// xz's variable-length integer: seven bits per byte, least significant first.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// Sets `buf` to `len` bytes, reusing its memory: only bytes beyond what it held before are
/// zeroed (fresh memory costs page faults and zeroing; blocks are mostly the same size).
fn reuse(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
}

/// Where the stream is, and whether its blocks' checks are verified.
#[derive(Clone, Copy)]
struct Source<'a> {
    file: &'a File,
    /// Offset of the stream in `file`.
    start: u64,
    checks: bool,
    /// Set while the file is still being downloaded: reads wait for their bytes.
    growing: Option<&'a Progress>,
}

impl Source<'_> {
    /// Fills `buf` from `offset` in the stream, waiting for the bytes if they are still
    /// being downloaded.
    fn read_at(&self, mut buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut at = self.start + offset;
        let Some(progress) = self.growing else { return self.file.read_exact_at(buf, at) };
        while !buf.is_empty() {
            let n = progress.read_at(self.file, buf, at)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the download ended inside data.tar.xz"));
            }
            buf = &mut buf[n..];
            at += n as u64;
        }
        Ok(())
    }

    /// Whether `len` bytes from `offset` in the stream are on disk (without waiting).
    fn arrived(&self, offset: u64, len: u64) -> bool {
        self.growing.is_none_or(|p| p.written() >= self.start + offset + len)
    }
}

/// How a [`BlockReader`] learns the blocks of its stream.
pub enum Layout<'a> {
    /// All of them, from the stream's index: the whole stream is on disk.
    Indexed(Vec<Block>),
    /// From their headers, one after the other as the download brings them, so that
    /// decoding starts long before the index (at the end) arrives. liblzma's multi-threaded
    /// encoder, which dpkg-deb and `xz -T` use, writes every block's sizes in its header.
    Arriving { progress: &'a Progress, check_len: u64 },
}

/// The layout of the xz stream of `len` bytes still being downloaded into `file` at
/// `start` (waiting for its 12-byte header), if the header is that of an xz stream.
pub fn arriving<'a>(file: &File, start: u64, len: u64, progress: &'a Progress) -> io::Result<Option<Layout<'a>>> {
    if len < 2 * HEADER_LEN {
        return Ok(None);
    }
    let source = Source { file, start, checks: false, growing: Some(progress) };
    let mut header = [0u8; HEADER_LEN as usize];
    source.read_at(&mut header, 0)?;
    if &header[..6] != b"\xfd7zXZ\0" || header[6] != 0 || header[7] > 0x0f {
        return Ok(None);
    }
    if crc32(&header[6..8]) != u32::from_le_bytes([header[8], header[9], header[10], header[11]]) {
        return Ok(None);
    }
    // Check sizes by check ID (xz file format, section 3.4).
    const CHECK_LEN: [u64; 16] = [0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64];
    Ok(Some(Layout::Arriving { progress, check_len: CHECK_LEN[usize::from(header[7])] }))
}

/// The compressed and uncompressed sizes a block header records, if it records both (and
/// its CRC32 is right).
fn header_sizes(header: &[u8]) -> Option<(u64, u64)> {
    let (body, crc) = header.split_at(header.len().checked_sub(4)?);
    if crc32(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let flags = *body.get(1)?;
    // Reserved bits set, or a size missing.
    if flags & 0x3c != 0 || flags & 0xc0 != 0xc0 {
        return None;
    }
    let mut pos = 2;
    let compressed = varint(body, &mut pos)?;
    let uncompressed = varint(body, &mut pos)?;
    (compressed > 0).then_some((compressed, uncompressed))
}

/// Decodes block `index` of `source` into `out`, reading it through `input`. Gives up
/// early, returning `false`, once `wanted` says the reader has moved past this block.
fn decode_block(source: &Source<'_>, block: &Block, index: usize, wanted: &AtomicUsize, input: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<bool> {
    reuse(input, (HEADER_LEN + block.len) as usize);
    // The stream header is needed too: it says how big the block checks are.
    source.read_at(&mut input[..HEADER_LEN as usize], 0)?;
    source.read_at(&mut input[HEADER_LEN as usize..], block.offset)?;
    // A stream decoder fed the stream header and this one block decodes exactly this block;
    // it would then expect the index, which it is never given.
    let flags = if source.checks { 0 } else { IGNORE_CHECK };
    let mut stream = Stream::new_stream_decoder(crate::unpack::tarstream::XZ_MEMLIMIT, flags).map_err(io::Error::other)?;
    let bad = |e: liblzma::stream::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let total = block.uncompressed_len as usize;
    reuse(out, total);
    let (mut consumed, mut produced) = (0usize, 0usize);
    while produced < total {
        if wanted.load(Ordering::Relaxed) > index {
            return Ok(false);
        }
        // A megabyte at a time, so that a block nobody wants any more is dropped quickly.
        let end = (produced + (1 << 20)).min(total);
        let (before_in, before_out) = (stream.total_in(), stream.total_out());
        let status = stream.process(&input[consumed..], &mut out[produced..end], Action::Run).map_err(bad)?;
        let taken = (stream.total_in() - before_in) as usize;
        consumed += taken;
        let made = (stream.total_out() - before_out) as usize;
        produced += made;
        // No progress at all, or no input left to make the rest from: the block is short.
        if made == 0 && (taken == 0 || consumed == input.len() || status == Status::StreamEnd) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "xz block ended before its recorded size"));
        }
    }
    // The rest of the block (padding, check) has to go through the decoder for the check to
    // be verified; more output than recorded is an error too.
    while consumed < input.len() {
        let (before_in, before_out) = (stream.total_in(), stream.total_out());
        let mut spare = [0u8; 1];
        stream.process(&input[consumed..], &mut spare, Action::Run).map_err(bad)?;
        if stream.total_out() != before_out {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "xz block is longer than its recorded size"));
        }
        if stream.total_in() == before_in {
            break;
        }
        consumed += (stream.total_in() - before_in) as usize;
    }
    Ok(true)
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    /// The lowest block the reader may still need; workers drop anything below it.
    wanted: AtomicUsize,
    /// Blocks decoded to the end (some ahead of need, then skipped over).
    decoded: AtomicUsize,
    /// Buffers of blocks the reader is done with, for the workers to decode into again.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    /// Keeps the buffer of a block nobody reads any more (unless it is still shared).
    fn recycle(&self, block: Arc<Vec<u8>>) {
        if let Ok(buf) = Arc::try_unwrap(block) {
            self.give_back(buf);
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(buf);
        }
    }

    fn spare_buffer(&self) -> Vec<u8> {
        self.spare.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    queue: BTreeMap<usize, Block>,
    decoding: BTreeSet<usize>,
    done: BTreeMap<usize, Result<Arc<Vec<u8>>, String>>,
    shutdown: bool,
}

/// Finding blocks by their headers (see [`Layout::Arriving`]).
struct Walk {
    /// Where the next block header starts, in the stream.
    next: u64,
    /// Where the next block's data starts, in the uncompressed data.
    uncompressed: u64,
    check_len: u64,
}

/// A `Read + Seek` over the uncompressed data of a multi-block xz stream. Seeks go forward
/// only (as a tar reader skipping contents does); blocks a seek jumps over are not decoded.
/// Its worker threads run in the scope given to [`BlockReader::new`].
pub struct BlockReader<'a> {
    source: Source<'a>,
    /// Length of the stream.
    len: u64,
    /// The blocks known so far (all of them, unless `walk` is still finding them).
    blocks: Vec<Block>,
    walk: Option<Walk>,
    /// The stream turned out not to be one indexed stream after all (more streams,
    /// padding, blocks too big): what follows the known blocks is read from a sequential
    /// decoder, `tail`, made when the reader gets there.
    sequential_rest: bool,
    tail: Option<ForwardSeek<liblzma::read::XzDecoder<FileRange<'a>>>>,
    shared: Arc<Shared>,
    ahead: usize,
    /// Position in the uncompressed data.
    pos: u64,
    /// While walking: where to look for newly arrived blocks next.
    top_up_at: u64,
    current: Option<(usize, Arc<Vec<u8>>)>,
    /// Blocks handed to the reader.
    used: usize,
}

/// How much of a stream a [`BlockReader`] decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub blocks: usize,
    /// Blocks whose data the reader used.
    pub used: usize,
    /// Blocks decoded in full, including ones decoded ahead and then seeked over.
    pub decoded: usize,
}

impl<'a> BlockReader<'a> {
    /// Reads the stream of `len` bytes at `start` in `file`, verifying each block's check
    /// if `checks`. Decoding runs on threads of `scope`.
    pub fn new<'scope>(
        scope: &'scope std::thread::Scope<'scope, 'a>,
        file: &'a File,
        start: u64,
        len: u64,
        layout: Layout<'a>,
        checks: bool,
    ) -> BlockReader<'a> {
        let threads = crate::fsat::workers();
        let (blocks, walk, growing, biggest) = match layout {
            Layout::Indexed(blocks) => {
                let biggest = blocks.iter().map(|b| b.uncompressed_len.max(b.len)).max().unwrap_or(1);
                (blocks, None, None, biggest)
            }
            // Block sizes are known only as they arrive: plan for blocks of half the most
            // this module holds in memory (bigger ones are rare; they only cost memory).
            Layout::Arriving { progress, check_len } => {
                (Vec::new(), Some(Walk { next: HEADER_LEN, uncompressed: 0, check_len }), Some(progress), MAX_BLOCK / 2)
            }
        };
        // Each block ahead holds its compressed and decoded bytes, plus the one being read:
        // keep that under MEMORY whatever the core count.
        let ahead = threads.min(((MEMORY / biggest.max(1)).saturating_sub(1) / 2).max(1) as usize);
        let source = Source { file, start, checks, growing };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            wanted: AtomicUsize::new(0),
            decoded: AtomicUsize::new(0),
            spare: Mutex::new(Vec::new()),
        });
        for _ in 0..ahead {
            let shared = shared.clone();
            scope.spawn(move || work(source, &shared));
        }
        BlockReader { source, len, blocks, walk, sequential_rest: false, tail: None, shared, ahead, pos: 0, top_up_at: 0, current: None, used: 0 }
    }

    pub fn stats(&self) -> BlockStats {
        BlockStats { blocks: self.blocks.len(), used: self.used, decoded: self.shared.decoded.load(Ordering::Relaxed) }
    }

    /// The end of the known blocks, in the uncompressed data.
    fn known_end(&self) -> u64 {
        self.blocks.last().map_or(0, |b| b.uncompressed_offset + b.uncompressed_len)
    }

    /// The block holding uncompressed offset `pos`.
    fn block_at(&self, pos: u64) -> usize {
        self.blocks.partition_point(|b| b.uncompressed_offset + b.uncompressed_len <= pos)
    }

    /// Reads the next block header (waiting for it to arrive) and adds the block, or ends
    /// the walk where the headers stop saying enough.
    fn walk_one(&mut self) -> io::Result<()> {
        let Some(walk) = &self.walk else { return Ok(()) };
        let mut first = [0u8; 1];
        self.source.read_at(&mut first, walk.next)?;
        // 0 starts the index: every block has been seen.
        if first[0] == 0 {
            return self.end_walk();
        }
        let header_len = (u64::from(first[0]) + 1) * 4;
        let mut header = vec![0u8; header_len as usize];
        self.source.read_at(&mut header, walk.next)?;
        let Some((compressed, uncompressed)) = header_sizes(&header) else { return self.end_walk() };
        let block_len = (header_len + compressed + walk.check_len + 3) & !3;
        let block = Block { offset: walk.next, len: block_len, uncompressed_offset: walk.uncompressed, uncompressed_len: uncompressed };
        // Room is left for the index and footer; a block too big to hold goes to the index.
        if block.offset + block.len + 2 * HEADER_LEN > self.len
            || uncompressed > MAX_BLOCK
            || block.len > MAX_BLOCK + 4096
            || self.blocks.len() >= MAX_BLOCKS
        {
            return self.end_walk();
        }
        self.blocks.push(block);
        self.walk = Some(Walk { next: block.offset + block.len, uncompressed: block.uncompressed_offset + uncompressed, ..*walk });
        Ok(())
    }

    /// Adds the blocks whose headers have already arrived, up to block `upto`.
    fn walk_arrived(&mut self, upto: usize) -> io::Result<()> {
        // A block header is at most 1024 bytes.
        while self.blocks.len() <= upto
            && let Some(walk) = &self.walk
            && (self.source.arrived(walk.next, 1024) || self.source.arrived(self.len, 0))
        {
            self.walk_one()?;
        }
        Ok(())
    }

    /// The headers said all they could: the rest of the layout comes from the index, once
    /// the whole stream is on disk. A stream that is not described by one index (several
    /// streams, padding, blocks too big) is read on from a sequential decoder instead.
    fn end_walk(&mut self) -> io::Result<()> {
        self.walk = None;
        self.source.read_at(&mut [0u8; 1], self.len - 1)?;
        match blocks(self.source.file, self.source.start, self.len) {
            Some(all) if all.starts_with(&self.blocks) => self.blocks = all,
            _ => self.sequential_rest = true,
        }
        Ok(())
    }

    /// Switches to the sequential decoder, from the start of the stream up to `pos`.
    fn start_tail(&mut self) -> io::Result<()> {
        let range = FileRange { file: self.source.file, pos: self.source.start, end: self.source.start + self.len, growing: None };
        let stream = liblzma::stream::Stream::new_stream_decoder(crate::unpack::tarstream::XZ_MEMLIMIT, liblzma::stream::CONCATENATED)
            .map_err(io::Error::other)?;
        let mut tail = ForwardSeek::new(liblzma::read::XzDecoder::new_stream(range, stream));
        tail.seek(SeekFrom::Start(self.pos))?;
        self.tail = Some(tail);
        Ok(())
    }

    /// Queues the known blocks from `index` up to (not including) `upto` that are not
    /// decoding or decoded yet, and drops what is below `index`.
    fn queue(&self, index: usize, upto: usize, state: &mut State) {
        state.queue.retain(|&b, _| b >= index);
        let passed: Vec<usize> = state.done.range(..index).map(|(&b, _)| b).collect();
        for b in passed {
            if let Some(Ok(data)) = state.done.remove(&b) {
                self.shared.recycle(data);
            }
        }
        for b in index..upto.min(self.blocks.len()) {
            if !state.decoding.contains(&b) && !state.done.contains_key(&b) {
                state.queue.insert(b, self.blocks[b]);
            }
        }
        self.shared.ready.notify_all();
    }

    /// Waits for block `index`, queueing it and the next few, and dropping earlier ones.
    fn fetch(&mut self, index: usize) -> io::Result<Arc<Vec<u8>>> {
        self.walk_arrived(index + self.ahead)?;
        self.shared.wanted.store(index, Ordering::Relaxed);
        let mut state = self.shared.state.lock().map_err(|_| io::Error::other("xz worker panicked"))?;
        self.queue(index, index + self.ahead, &mut state);
        loop {
            if let Some(result) = state.done.remove(&index) {
                return result.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            state = self.shared.ready.wait(state).map_err(|_| io::Error::other("xz worker panicked"))?;
        }
    }

    /// While blocks are still arriving: queues those that came in since the reader last
    /// moved to a new block (checked once per megabyte read).
    fn top_up(&mut self, index: usize) -> io::Result<()> {
        if self.walk.is_none() || self.pos < self.top_up_at {
            return Ok(());
        }
        self.top_up_at = self.pos + (1 << 20);
        let known = self.blocks.len();
        self.walk_arrived(index + self.ahead)?;
        if self.blocks.len() > known {
            let mut state = self.shared.state.lock().map_err(|_| io::Error::other("xz worker panicked"))?;
            self.queue(index + 1, index + self.ahead, &mut state);
        }
        Ok(())
    }
}

fn work(source: Source<'_>, shared: &Shared) {
    let mut input = Vec::new();
    loop {
        let (index, block) = {
            let Ok(mut state) = shared.state.lock() else { return };
            loop {
                if state.shutdown {
                    return;
                }
                if let Some((index, block)) = state.queue.pop_first() {
                    state.decoding.insert(index);
                    break (index, block);
                }
                state = match shared.ready.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        let mut out = shared.spare_buffer();
        let result = decode_block(&source, &block, index, &shared.wanted, &mut input, &mut out);
        let Ok(mut state) = shared.state.lock() else { return };
        state.decoding.remove(&index);
        match result {
            Ok(true) => {
                shared.decoded.fetch_add(1, Ordering::Relaxed);
                state.done.insert(index, Ok(Arc::new(out)));
            }
            Ok(false) => shared.give_back(out),
            Err(e) => {
                state.done.insert(index, Err(format!("xz block {index} of data.tar.xz cannot be decoded ({e}): the package is damaged; fetch it again")));
            }
        }
        shared.ready.notify_all();
    }
}

impl Read for BlockReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.tail.is_none() && self.pos >= self.known_end() {
            if self.sequential_rest {
                self.start_tail()?;
            } else if self.walk.is_none() {
                return Ok(0);
            } else {
                self.walk_one()?;
            }
        }
        if let Some(tail) = &mut self.tail {
            let n = tail.read(buf)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let index = self.block_at(self.pos);
        let data = match &self.current {
            Some((i, data)) if *i == index => data.clone(),
            _ => {
                if let Some((_, done)) = self.current.take() {
                    self.shared.recycle(done);
                }
                let data = self.fetch(index)?;
                self.used += 1;
                self.current = Some((index, data.clone()));
                data
            }
        };
        self.top_up(index)?;
        let from = (self.pos - self.blocks[index].uncompressed_offset) as usize;
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlockReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        if let Some(tail) = &mut self.tail {
            self.pos = tail.seek(to)?;
            return Ok(self.pos);
        }
        let len = (self.walk.is_none() && !self.sequential_rest).then(|| self.known_end());
        self.pos = forward_target(self.pos, len, to)?;
        Ok(self.pos)
    }
}

impl Drop for BlockReader<'_> {
    fn drop(&mut self) {
        // The workers are joined by the scope they run in.
        self.shared.wanted.store(usize::MAX, Ordering::Relaxed);
        if let Ok(mut state) = self.shared.state.lock() {
            state.shutdown = true;
        }
        self.shared.ready.notify_all();
    }
}

/// Where a seek from `pos` lands, if it goes forward (`len`, when known, allows seeking
/// from the end); backward seeks are refused.
fn forward_target(pos: u64, len: Option<u64>, to: SeekFrom) -> io::Result<u64> {
    let target = match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
        SeekFrom::End(d) => len.and_then(|l| l.checked_add_signed(d)),
    };
    target
        .filter(|&p| p >= pos)
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "this reader seeks forward only"))
}

/// A forward-only `Seek` for a plain stream: seeking reads and discards.
pub struct ForwardSeek<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> ForwardSeek<R> {
    pub fn new(inner: R) -> Self {
        ForwardSeek { inner, pos: 0 }
    }
}

impl<R: Read> Read for ForwardSeek<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for ForwardSeek<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = forward_target(self.pos, None, to)?;
        let want = target - self.pos;
        let skipped = io::copy(&mut (&mut self.inner).take(want), &mut io::sink())?;
        self.pos += skipped;
        if skipped != want {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended while skipping"));
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Deterministic, partly compressible bytes.
    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x2545f491u32;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 { (x & 0xff) as u8 } else { (i / 7) as u8 }
            })
            .collect()
    }

    fn xz_multiblock(bytes: &[u8], block_size: u64) -> Vec<u8> {
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(2)
            .block_size(block_size)
            .preset(1)
            .check(liblzma::stream::Check::Crc64)
            .encoder()
            .unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn in_file(prefix: &[u8], xz: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(prefix).unwrap();
        f.write_all(xz).unwrap();
        (f, prefix.len() as u64)
    }

    #[test]
    fn index_lists_every_block() {
        let plain = data(1_000_000);
        let xz = xz_multiblock(&plain, 100_000);
        let (f, start) = in_file(b"ar header bytes", &xz);
        let blocks = blocks(f.as_file(), start, xz.len() as u64).expect("a multi-block stream");
        assert_eq!(blocks.len(), 10);
        assert_eq!(blocks.iter().map(|b| b.uncompressed_len).sum::<u64>(), plain.len() as u64);
        assert_eq!(blocks[0].offset, HEADER_LEN);
    }

    #[test]
    fn reads_everything_and_seeks_forward_across_blocks() {
        let plain = data(1_000_000);
        let xz = xz_multiblock(&plain, 100_000);
        let (f, start) = in_file(b"0123456", &xz);
        let list = blocks(f.as_file(), start, xz.len() as u64).unwrap();
        let len = xz.len() as u64;
        let mut all = Vec::new();
        with_reader(f.as_file(), start, len, Layout::Indexed(list.clone()), true, |r| r.read_to_end(&mut all).unwrap());
        assert!(all == plain, "sequential read differs");
        let stats = with_reader(f.as_file(), start, len, Layout::Indexed(list), false, |r| jump_around(r, &plain));
        // Blocks 0, 4, 5, 6 and 9 were read; 1-3, 7 and 8 were jumped over.
        assert_eq!((stats.blocks, stats.used), (10, 5));
        // Decoding ahead may have finished a block that was then jumped over, never fewer.
        assert!(stats.decoded >= stats.used && stats.decoded <= stats.blocks, "{stats:?}");
    }

    /// Runs `f` on a reader of the stream, in a scope for its workers.
    fn with_reader<T>(file: &File, start: u64, len: u64, layout: Layout<'_>, checks: bool, f: impl FnOnce(&mut BlockReader) -> T) -> T {
        std::thread::scope(|scope| f(&mut BlockReader::new(scope, file, start, len, layout, checks)))
    }

    /// Reads parts of the million bytes of `plain` with forward seeks across blocks.
    fn jump_around(r: &mut BlockReader, plain: &[u8]) -> BlockStats {
        let mut got = vec![0u8; 1000];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, plain[..1000]);
        // Jump over several whole blocks, then read across a block boundary.
        r.seek(SeekFrom::Current(450_000)).unwrap();
        let mut got = vec![0u8; 150_000];
        r.read_exact(&mut got).unwrap();
        assert!(got == plain[451_000..601_000]);
        assert!(r.seek(SeekFrom::Start(10)).is_err(), "backward seeks are refused");
        r.seek(SeekFrom::Start(999_990)).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, plain[999_990..]);
        r.stats()
    }

    /// Writes `bytes` into `file` in small pieces from another thread, telling `progress`,
    /// while `read` runs.
    fn arriving<T>(bytes: &[u8], read: impl FnOnce(&File, &Progress) -> T) -> T {
        let f = tempfile::NamedTempFile::new().unwrap();
        let progress = Progress::default();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut out = f.reopen().unwrap();
                for (i, piece) in bytes.chunks(7_919).enumerate() {
                    out.write_all(piece).unwrap();
                    progress.set_written((i * 7_919 + piece.len()) as u64);
                    if i % 8 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                progress.finish(true);
            });
            read(f.as_file(), &progress)
        })
    }

    fn read_arriving(file: &File, progress: &Progress, len: u64) -> (Vec<u8>, BlockStats) {
        let layout = super::arriving(file, 0, len, progress).unwrap().expect("an xz stream header");
        let mut all = Vec::new();
        let stats = with_reader(file, 0, len, layout, false, |r| {
            r.read_to_end(&mut all).unwrap();
            r.stats()
        });
        (all, stats)
    }

    #[test]
    fn blocks_are_found_and_decoded_while_the_stream_arrives() {
        let plain = data(1_000_000);
        let xz = xz_multiblock(&plain, 100_000);
        let len = xz.len() as u64;
        let (all, stats) = arriving(&xz, |file, progress| read_arriving(file, progress, len));
        assert!(all == plain, "the arriving stream decodes to the input");
        assert_eq!((stats.blocks, stats.used), (10, 10));
        // Seeking over blocks that have not arrived yet finds them by their headers.
        let stats = arriving(&xz, |file, progress| {
            let layout = super::arriving(file, 0, len, progress).unwrap().unwrap();
            with_reader(file, 0, len, layout, false, |r| jump_around(r, &plain))
        });
        assert_eq!((stats.blocks, stats.used), (10, 5));
    }

    #[test]
    fn arriving_streams_the_headers_cannot_describe_are_still_read_whole() {
        // One block, with no sizes in its header: decoded once the stream is complete.
        let plain = data(300_000);
        let mut single = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new(&mut single, 1);
        enc.write_all(&plain).unwrap();
        enc.finish().unwrap();
        let len = single.len() as u64;
        let (all, _) = arriving(&single, |file, progress| read_arriving(file, progress, len));
        assert!(all == plain, "a single-block stream");

        // Two multi-block streams one after the other: the second comes from the sequential
        // decoder once the first one's index shows that it does not cover the member.
        let (a, b) = (data(400_000), data(250_000));
        let mut two = xz_multiblock(&a, 100_000);
        two.extend(xz_multiblock(&b, 100_000));
        let len = two.len() as u64;
        let (all, _) = arriving(&two, |file, progress| read_arriving(file, progress, len));
        assert_eq!(all.len(), a.len() + b.len());
        assert!(all[..a.len()] == a[..] && all[a.len()..] == b[..], "both streams, in order");
    }

    #[test]
    fn a_download_that_starts_over_under_the_reader_is_followed() {
        let plain = data(400_000);
        let xz = xz_multiblock(&plain, 100_000);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().write_all_at(&xz, 0).unwrap();
        let progress = Progress::default();
        progress.set_written(xz.len() as u64);
        let layout = super::arriving(f.as_file(), 0, xz.len() as u64, &progress).unwrap().unwrap();
        // The moment a restarted download truncated the file, before it says so: reads
        // come up short although the progress says the bytes are there.
        f.as_file().set_len(0).unwrap();
        let all = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                f.as_file().write_all_at(&xz, 0).unwrap();
                progress.finish(true);
            });
            let mut all = Vec::new();
            with_reader(f.as_file(), 0, xz.len() as u64, layout, false, |r| r.read_to_end(&mut all).unwrap());
            all
        });
        assert!(all == plain, "the bytes written again were read");
    }

    #[test]
    fn a_failed_download_fails_the_arriving_reader() {
        let plain = data(400_000);
        let xz = xz_multiblock(&plain, 100_000);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().write_all_at(&xz[..xz.len() / 2], 0).unwrap();
        let progress = Progress::default();
        progress.set_written(xz.len() as u64 / 2);
        let layout = super::arriving(f.as_file(), 0, xz.len() as u64, &progress).unwrap().unwrap();
        progress.finish(false);
        let mut all = Vec::new();
        let err = with_reader(f.as_file(), 0, xz.len() as u64, layout, false, |r| r.read_to_end(&mut all).unwrap_err());
        assert!(err.to_string().contains("download"), "{err}");
    }

    #[test]
    fn single_block_and_corrupt_indexes_are_left_to_the_stream_decoder() {
        let plain = data(200_000);
        let single = xz_multiblock(&plain, 1 << 30);
        let (f, start) = in_file(b"", &single);
        assert_eq!(blocks(f.as_file(), start, single.len() as u64), None);

        let mut xz = xz_multiblock(&plain, 50_000);
        let at = xz.len() - 20;
        xz[at] ^= 0x55;
        let (f, start) = in_file(b"", &xz);
        assert_eq!(blocks(f.as_file(), start, xz.len() as u64), None);
    }

    #[test]
    fn a_damaged_block_header_is_an_error() {
        let plain = data(400_000);
        let mut xz = xz_multiblock(&plain, 100_000);
        let (f, start) = in_file(b"", &xz);
        let list = blocks(f.as_file(), start, xz.len() as u64).unwrap();
        // The block flags byte of the second block: its header's CRC32 no longer matches.
        xz[list[1].offset as usize + 1] ^= 0x01;
        let (f, start) = in_file(b"", &xz);
        let mut all = Vec::new();
        let err = with_reader(f.as_file(), start, xz.len() as u64, Layout::Indexed(list), false, |r| r.read_to_end(&mut all).unwrap_err());
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(all.len() <= 100_000, "nothing past the damaged block was returned");
    }

    #[test]
    fn a_wrong_check_fails_only_when_checks_are_asked_for() {
        let plain = data(400_000);
        let mut xz = xz_multiblock(&plain, 100_000);
        let (f, start) = in_file(b"", &xz);
        let list = blocks(f.as_file(), start, xz.len() as u64).unwrap();
        // The last byte of a block is the last byte of its CRC64.
        xz[(list[2].offset + list[2].len - 1) as usize] ^= 0x01;
        let (f, start) = in_file(b"", &xz);
        let len = xz.len() as u64;
        let mut all = Vec::new();
        let err = with_reader(f.as_file(), start, len, Layout::Indexed(list.clone()), true, |r| r.read_to_end(&mut all).unwrap_err());
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let mut all = Vec::new();
        with_reader(f.as_file(), start, len, Layout::Indexed(list), false, |r| r.read_to_end(&mut all).unwrap());
        assert!(all == plain, "without checks the (intact) data still decodes");
    }

    #[test]
    fn forward_seek_skips_by_reading() {
        let plain = data(10_000);
        let mut r = ForwardSeek::new(&plain[..]);
        r.seek(SeekFrom::Current(1234)).unwrap();
        let mut b = [0u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b, plain[1234..1244]);
        assert!(r.seek(SeekFrom::Start(0)).is_err());
        assert!(r.seek(SeekFrom::Current(100_000)).is_err());
    }
}
