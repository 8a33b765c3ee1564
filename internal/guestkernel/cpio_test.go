package guestkernel

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"testing"
)

// cpioEntry is one entry of a newc archive as the kernel would see it.
type cpioEntry struct {
	Name  string
	Ino   uint32
	Mode  uint32
	Nlink uint32
	Data  []byte
}

// readNewc parses a newc archive up to and including its trailer, checking
// the format rules the kernel's initramfs unpacker relies on.
func readNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("entry at offset %d is not 4-byte aligned", off)
		}
		if len(b)-off < 110 {
			t.Fatalf("archive ends at %d without a TRAILER!!! entry", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at offset %d", h[:6], off)
		}
		field := func(i int) uint32 {
			s := string(h[6+8*i : 6+8*i+8])
			v, err := strconv.ParseUint(s, 16, 32)
			if err != nil {
				t.Fatalf("header field %d at offset %d: %q is not hex", i, off, s)
			}
			return uint32(v)
		}
		ino, mode, uid, gid, nlink, mtime := field(0), field(1), field(2), field(3), field(4), field(5)
		size, namesize, check := field(6), field(11), field(12)
		if uid != 0 || gid != 0 || mtime != 0 || check != 0 {
			t.Errorf("entry at %d: uid %d gid %d mtime %d check %d, want all 0", off, uid, gid, mtime, check)
		}
		off += 110
		if namesize == 0 || off+int(namesize) > len(b) {
			t.Fatalf("entry at %d: bad name size %d", off, namesize)
		}
		nameb := b[off : off+int(namesize)]
		if nameb[len(nameb)-1] != 0 {
			t.Fatalf("name %q is not NUL-terminated", nameb)
		}
		name := string(nameb[:len(nameb)-1])
		off += int(namesize)
		off = pad4(t, b, off)
		if off+int(size) > len(b) {
			t.Fatalf("entry %s: %d bytes of data run past the end", name, size)
		}
		data := b[off : off+int(size)]
		off += int(size)
		off = pad4(t, b, off)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, cpioEntry{Name: name, Ino: ino, Mode: mode, Nlink: nlink, Data: data})
	}
}

// pad4 skips the NUL padding up to the next multiple of 4.
func pad4(t *testing.T, b []byte, off int) int {
	t.Helper()
	for off%4 != 0 {
		if off >= len(b) || b[off] != 0 {
			t.Fatalf("missing or non-zero padding at offset %d", off)
		}
		off++
	}
	return off
}

// buildArchive writes a fixed set of entries; name lengths and data sizes
// vary so that every padding length occurs.
func buildArchive(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	cw := &cpioWriter{w: &buf}
	steps := []error{
		cw.Dir("/etc", 0o755),
		cw.Dir("etc/firesandbox", 0o700),
		cw.File("/init", 0o755, []byte("\x7fELF static agent")),
		cw.File("etc/firesandbox/modules", 0o644, []byte("/lib/modules/a.ko\n")),
		cw.File("empty", 0o600, nil),
		cw.File("ab", 0o644, []byte("1")),
		cw.File("abc", 0o644, []byte("12")),
		cw.File("abcd", 0o644, []byte("123")),
		cw.Symlink("sbin/init", "/init"),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

func TestCpioRoundTrip(t *testing.T) {
	b := buildArchive(t)
	if len(b)%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", len(b))
	}
	want := []cpioEntry{
		{Name: "etc", Mode: modeDir | 0o755, Nlink: 2},
		{Name: "etc/firesandbox", Mode: modeDir | 0o700, Nlink: 2},
		{Name: "init", Mode: modeFile | 0o755, Nlink: 1, Data: []byte("\x7fELF static agent")},
		{Name: "etc/firesandbox/modules", Mode: modeFile | 0o644, Nlink: 1, Data: []byte("/lib/modules/a.ko\n")},
		{Name: "empty", Mode: modeFile | 0o600, Nlink: 1},
		{Name: "ab", Mode: modeFile | 0o644, Nlink: 1, Data: []byte("1")},
		{Name: "abc", Mode: modeFile | 0o644, Nlink: 1, Data: []byte("12")},
		{Name: "abcd", Mode: modeFile | 0o644, Nlink: 1, Data: []byte("123")},
		{Name: "sbin/init", Mode: modeLink | 0o777, Nlink: 1, Data: []byte("/init")},
	}
	got := readNewc(t, b)
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Mode != w.Mode || g.Nlink != w.Nlink || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("entry %d = {%q %o nlink %d %q}, want {%q %o nlink %d %q}",
				i, g.Name, g.Mode, g.Nlink, g.Data, w.Name, w.Mode, w.Nlink, w.Data)
		}
	}
	// Inode numbers must differ, or the kernel may treat files as hard links.
	inos := map[uint32]string{}
	for _, e := range got {
		if prev, dup := inos[e.Ino]; dup {
			t.Errorf("%s and %s share inode %d", prev, e.Name, e.Ino)
		}
		inos[e.Ino] = e.Name
	}
}

func TestCpioDeterministic(t *testing.T) {
	a, b := buildArchive(t), buildArchive(t)
	if !bytes.Equal(a, b) {
		t.Fatal("the same entries gave different archives")
	}
}

func TestCpioTrailerOnly(t *testing.T) {
	var buf bytes.Buffer
	cw := &cpioWriter{w: &buf}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readNewc(t, buf.Bytes()); len(got) != 0 {
		t.Errorf("empty archive has entries %+v", got)
	}
}

type failAfter struct{ n int }

func (w *failAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

func TestCpioWriteErrorSticks(t *testing.T) {
	cw := &cpioWriter{w: &failAfter{n: 200}}
	var first error
	for i := 0; i < 10 && first == nil; i++ {
		first = cw.File(fmt.Sprintf("f%d", i), 0o644, []byte("data"))
	}
	if first == nil {
		t.Fatal("no error from a failing writer")
	}
	if err := cw.Close(); err == nil {
		t.Error("Close after a write error returned nil")
	}
}
