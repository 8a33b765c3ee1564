package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// digestBlockSize is the block size of file digests.
const digestBlockSize = 1 << 20

// A file's digest is the sha256 of the sha256s of its 1 MiB blocks, in
// order (the last block may be shorter; an empty file has no blocks). It
// depends only on the bytes, like a plain sha256, but a block of zeros
// always hashes to zeroBlockSum: the holes of a sparse memory file or
// disk image, which are most of it, are neither read nor hashed.
var (
	zeroBlock    [digestBlockSize]byte
	zeroBlockSum = sha256.Sum256(zeroBlock[:])
)

// digestedBytes counts bytes that went through sha256, for tests that
// check holes and cached digests cost nothing.
var digestedBytes atomic.Int64

// blockHasher computes a file digest from the file's bytes in order.
// Zeros are counted rather than hashed until a block turns out to hold
// data, so Skip (a hole) and Write of zeros cost almost nothing.
type blockHasher struct {
	outer hash.Hash
	blk   hash.Hash
	n     int  // bytes of the current block so far
	data  bool // the current block has non-zero bytes (and its bytes are in blk)
}

func newBlockHasher() *blockHasher {
	return &blockHasher{outer: sha256.New(), blk: sha256.New()}
}

// Reset forgets everything written.
func (h *blockHasher) Reset() {
	h.outer.Reset()
	h.blk.Reset()
	h.n, h.data = 0, false
}

// Write adds p to the digest; it never fails.
func (h *blockHasher) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		c := p[:min(len(p), digestBlockSize-h.n)]
		p = p[len(c):]
		switch {
		case h.data:
			h.hash(c)
		case allZero(c):
			// still only zeros: count them
		default:
			h.hash(zeroBlock[:h.n]) // the zeros counted so far
			h.hash(c)
			h.data = true
		}
		h.n += len(c)
		if h.n == digestBlockSize {
			h.endBlock()
		}
	}
	return total, nil
}

// Skip adds n zero bytes without reading them from anywhere.
func (h *blockHasher) Skip(n int64) {
	for n > 0 {
		c := int(min(n, int64(digestBlockSize-h.n)))
		if h.data {
			h.hash(zeroBlock[:c])
		}
		h.n += c
		n -= int64(c)
		if h.n == digestBlockSize {
			h.endBlock()
		}
	}
}

func (h *blockHasher) hash(b []byte) {
	h.blk.Write(b)
	digestedBytes.Add(int64(len(b)))
}

func (h *blockHasher) endBlock() {
	if h.data {
		h.outer.Write(h.blk.Sum(nil))
	} else if h.n == digestBlockSize {
		h.outer.Write(zeroBlockSum[:])
	} else { // a short last block of zeros
		s := sha256.Sum256(zeroBlock[:h.n])
		h.outer.Write(s[:])
	}
	h.blk.Reset()
	h.n, h.data = 0, false
}

// Sum returns the digest of everything written, as 64 hex digits. It
// must be called once, at the end.
func (h *blockHasher) Sum() string {
	if h.n > 0 {
		h.endBlock()
	}
	return hex.EncodeToString(h.outer.Sum(nil))
}

// digestBytes is the digest of b.
func digestBytes(b []byte) string {
	h := newBlockHasher()
	h.Write(b)
	return h.Sum()
}

// digestFile returns the digest of the file at p and the file's stat,
// which identifies the version digested. It asks the file system where
// the data is (SEEK_DATA, SEEK_HOLE) and reads only that; where the file
// system cannot say, it reads everything.
func digestFile(p string) (os.FileInfo, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	if !fi.Mode().IsRegular() {
		return nil, "", fmt.Errorf("%s: not a regular file", p)
	}
	size := fi.Size()
	h := newBlockHasher()
	buf := make([]byte, 256<<10)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // no data after off: a hole to the end
			data = size
		} else if err != nil { // no SEEK_DATA here: all of it is data
			data = off
		}
		data = min(data, size)
		h.Skip(data - off)
		off = data
		if off == size {
			break
		}
		end := size
		if hole, err := unix.Seek(fd, off, unix.SEEK_HOLE); err == nil {
			end = min(hole, size)
		}
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, off, end-off), buf); err != nil {
			return nil, "", fmt.Errorf("read %s: %w", p, err)
		}
		off = end
	}
	// The file must not have changed under us (a VM still writing).
	if fi2, err := f.Stat(); err != nil || fi2.Size() != size || !fi2.ModTime().Equal(fi.ModTime()) {
		return nil, "", fmt.Errorf("%s changed while it was digested", p)
	}
	return fi, h.Sum(), nil
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
