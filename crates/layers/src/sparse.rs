//! Sparse files, kept sparse on their way out of a workspace: the data
//! segments of a file (`SEEK_DATA` / `SEEK_HOLE`), a GNU sparse tar entry
//! made of them, and writes that leave holes where there are only zeros.
//! A 2 GiB file with nothing in it costs nothing on disk in a workspace and
//! must cost nothing in an export either.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The most segments a tar entry lists; past them, the rest of the file is
/// one data segment, so a file of many small holes cannot make the map of
/// holes itself large.
const MAX_SEGMENTS: usize = 1 << 16;

/// Segments listed in the main GNU header, and in each extension block.
const MAIN_SEGMENTS: usize = 4;
const EXTENSION_SEGMENTS: usize = 21;

/// A run of data at `offset`, `len` bytes long; what lies between runs
/// reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// The data segments of the first `size` bytes of `file`, at most
/// [`MAX_SEGMENTS`]. A file system without `SEEK_DATA` shows one segment.
/// The file's offset is back at its start afterwards.
pub fn segments(file: &File, size: u64) -> io::Result<Vec<Segment>> {
    let out = find_segments(file, size)?;
    rustix::fs::seek(file, rustix::fs::SeekFrom::Start(0))?;
    Ok(out)
}

fn find_segments(file: &File, size: u64) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(data) => data,
            // No data past `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if out.is_empty() => {
                out.push(Segment {
                    offset: 0,
                    len: size,
                });
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        if out.len() + 1 == MAX_SEGMENTS {
            out.push(Segment {
                offset: data,
                len: size - data,
            });
            break;
        }
        let hole = match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        out.push(Segment {
            offset: data,
            len: hole - data,
        });
        at = hole;
    }
    Ok(out)
}

/// Whether segments leave holes in a file of `size` bytes.
pub fn has_holes(segments: &[Segment], size: u64) -> bool {
    segments.iter().map(|s| s.len).sum::<u64>() < size
}

/// Fills `header` (a GNU header with path and metadata set) as a sparse
/// entry of a `size`-byte file with `segments`, and returns what follows
/// the header in the archive: the extension blocks of the map, then the
/// segments' data read from `file`. By hand because the `tar` crate writes
/// sparse entries only from a file's own metadata, and an export's owners
/// are the ids inside the workspace.
pub fn entry(
    header: &mut tar::Header,
    file: File,
    size: u64,
    mut segments: Vec<Segment>,
    rel: &Path,
) -> io::Result<impl Read + use<>> {
    if segments.is_empty() {
        // All hole: one empty segment at the end says how long.
        segments.push(Segment {
            offset: size,
            len: 0,
        });
    }
    let on_disk: u64 = segments.iter().map(|s| s.len).sum();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_size(on_disk);
    let gnu = header
        .as_gnu_mut()
        .ok_or_else(|| io::Error::other("a sparse entry needs a GNU header"))?;
    gnu.set_real_size(size);
    for (slot, segment) in gnu.sparse.iter_mut().zip(&segments) {
        slot.set_offset(segment.offset);
        slot.set_length(segment.len);
    }
    gnu.set_is_extended(segments.len() > MAIN_SEGMENTS);
    let mut extensions = Vec::new();
    let rest: Vec<&[Segment]> = segments
        .get(MAIN_SEGMENTS..)
        .unwrap_or_default()
        .chunks(EXTENSION_SEGMENTS)
        .collect();
    for (i, chunk) in rest.iter().enumerate() {
        let mut block = tar::GnuExtSparseHeader::new();
        for (slot, segment) in block.sparse.iter_mut().zip(chunk.iter()) {
            slot.set_offset(segment.offset);
            slot.set_length(segment.len);
        }
        block.set_is_extended(i + 1 < rest.len());
        extensions.extend_from_slice(block.as_bytes());
    }
    let data = SegmentReader {
        file,
        segments: segments.into_iter(),
        left: 0,
        rel: rel.to_path_buf(),
    };
    Ok(io::Cursor::new(extensions).chain(data))
}

/// Reads the segments' bytes one after another, each exactly as long as
/// the map says: a file that shrank meanwhile is an error, not a shorter
/// entry that would leave the archive unreadable.
struct SegmentReader {
    file: File,
    segments: std::vec::IntoIter<Segment>,
    left: u64,
    rel: PathBuf,
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            let Some(next) = self.segments.next() else {
                return Ok(0);
            };
            self.file.seek(SeekFrom::Start(next.offset))?;
            self.left = next.len;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(crate::changes::changed(&self.rel));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads exactly `len` bytes of `inner`; fewer is an error naming `rel`.
pub struct Exactly<R> {
    inner: R,
    left: u64,
    rel: PathBuf,
}

impl<R: Read> Exactly<R> {
    pub fn new(inner: R, len: u64, rel: &Path) -> Self {
        Exactly {
            inner,
            left: len,
            rel: rel.to_path_buf(),
        }
    }
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(crate::changes::changed(&self.rel));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Copies the `size`-byte file `from` into the empty file `to`, data
/// segments only: holes stay holes.
pub fn copy(from: &mut File, to: &mut File, size: u64, rel: &Path) -> io::Result<()> {
    for segment in segments(from, size)? {
        from.seek(SeekFrom::Start(segment.offset))?;
        to.seek(SeekFrom::Start(segment.offset))?;
        io::copy(&mut Exactly::new(&mut *from, segment.len, rel), to)?;
    }
    to.set_len(size)
}

/// Writes all of `from` into the empty file `to`, seeking over blocks of
/// zeros instead of writing them, so what was sparse before it was
/// archived is sparse again. Returns the bytes written.
pub fn write_holey(from: &mut impl Read, to: &mut File) -> io::Result<u64> {
    const BLOCK: usize = 64 * 1024;
    let zeros = vec![0u8; BLOCK];
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let n = read_block(from, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n] == zeros[..n] {
            to.seek(SeekFrom::Current(n as i64))?;
        } else {
            to.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    to.set_len(total)?;
    Ok(total)
}

/// Fills `buf` as far as `from` goes.
fn read_block(from: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
