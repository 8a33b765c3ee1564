package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// refDigest is the file digest computed the plain way, independently of
// blockHasher: the sha256 of the sha256s of the 1 MiB blocks.
func refDigest(b []byte) string {
	return refDigestBlocks(int64(len(b)), func(off int64, n int) []byte { return b[off : off+int64(n)] })
}

// refDigestBlocks is refDigest of a file of size bytes whose block at off
// (n bytes long) block returns; nil stands for n zero bytes, whose hash
// is computed once.
func refDigestBlocks(size int64, block func(off int64, n int) []byte) string {
	outer := sha256.New()
	zeros := map[int][32]byte{}
	for off := int64(0); off < size; off += digestBlockSize {
		n := int(min(digestBlockSize, size-off))
		b := block(off, n)
		if b == nil {
			if _, ok := zeros[n]; !ok {
				zeros[n] = sha256.Sum256(make([]byte, n))
			}
			s := zeros[n]
			outer.Write(s[:])
			continue
		}
		s := sha256.Sum256(b)
		outer.Write(s[:])
	}
	return hex.EncodeToString(outer.Sum(nil))
}

// zeroRunBytes returns n reproducible bytes with runs of zeros in them,
// as memory files have.
func zeroRunBytes(seed uint64, n int) []byte {
	b := remoteTestBytes(seed, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i < 8 && n > 0; i++ {
		off := r.IntN(n)
		clear(b[off:min(n, off+r.IntN(3*digestBlockSize))])
	}
	return b
}

func TestDigestMatchesReference(t *testing.T) {
	empty := sha256.Sum256(nil)
	if got := digestBytes(nil); got != hex.EncodeToString(empty[:]) {
		t.Errorf("digest of nothing = %s, want sha256 of no blocks %x", got, empty)
	}
	for _, size := range []int{1, 4096, digestBlockSize - 1, digestBlockSize, digestBlockSize + 1, 3*digestBlockSize + 12345, 7 * digestBlockSize} {
		for seed, data := range map[uint64][]byte{1: remoteTestBytes(1, size), 2: zeroRunBytes(2, size), 3: make([]byte, size)} {
			want := refDigest(data)
			if got := digestBytes(data); got != want {
				t.Errorf("size %d seed %d: one Write gives %s, want %s", size, seed, got, want)
			}
			// Odd-sized writes, with zeros sometimes given as Skip.
			h := newBlockHasher()
			r := rand.New(rand.NewPCG(uint64(size), seed))
			for off := 0; off < len(data); {
				n := min(len(data)-off, 1+r.IntN(300000))
				if allZero(data[off:off+n]) && r.IntN(2) == 0 {
					h.Skip(int64(n))
				} else {
					h.Write(data[off : off+n])
				}
				off += n
			}
			if got := h.Sum(); got != want {
				t.Errorf("size %d seed %d: piecewise gives %s, want %s", size, seed, got, want)
			}
		}
	}
}

// A sparse file is digested without reading or hashing its holes, and to
// the same digest as its bytes read in full.
func TestDigestFileSkipsHoles(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	data := zeroRunBytes(5, 9*digestBlockSize+77)
	if err := os.WriteFile(small, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, got, err := digestFile(small); err != nil || got != refDigest(data) {
		t.Fatalf("digestFile(dense) = %s, %v; want %s", got, err, refDigest(data))
	}

	// 16 GiB apparent, three 100 KiB extents of data: one across a block
	// boundary, one in the last (short) block.
	const size = 16<<30 + 5000
	extents := map[int64][]byte{
		3 << 20:                    remoteTestBytes(6, 100<<10),
		5<<30 - 50<<10:             remoteTestBytes(7, 100<<10),
		size - 5000 - 100<<10 + 20: remoteTestBytes(8, 100<<10),
	}
	big := filepath.Join(dir, "disk.img")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	for off, b := range extents {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	block := func(off int64, n int) []byte {
		var b []byte
		for eoff, e := range extents {
			lo, hi := max(off, eoff), min(off+int64(n), eoff+int64(len(e)))
			if lo < hi {
				if b == nil {
					b = make([]byte, n)
				}
				copy(b[lo-off:hi-off], e[lo-eoff:hi-eoff])
			}
		}
		return b
	}
	want := refDigestBlocks(size, block)
	before := digestedBytes.Load()
	fi, got, err := digestFile(big)
	hashed := digestedBytes.Load() - before
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size || got != want {
		t.Fatalf("digestFile(sparse) = %d bytes, %s; want %d, %s", fi.Size(), got, int64(size), want)
	}
	// Five blocks hold data (two extents span two each), the last of
	// them short; only they are hashed.
	if hashed > 4*digestBlockSize+5000 {
		t.Errorf("digesting 16 GiB with 300 KiB of data hashed %d MiB: holes were not skipped", hashed>>20)
	}
}

func TestAllZero(t *testing.T) {
	b := make([]byte, 3*digestBlockSize)
	if !allZero(b) || !allZero(nil) {
		t.Fatal("zeros not seen as zeros")
	}
	b[len(b)-1] = 1
	if allZero(b) {
		t.Fatal("a one at the end of 3 MiB was missed")
	}
}
