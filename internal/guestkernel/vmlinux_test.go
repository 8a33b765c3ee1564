package guestkernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// fakeELF returns an x86-64 ELF header followed by size bytes of mixed
// compressible and random data.
func fakeELF(size int) []byte {
	b := make([]byte, 64, 64+size)
	copy(b, elfMagic)
	b[4] = 2                                  // ELFCLASS64
	b[5] = 1                                  // little endian
	b[6] = 1                                  // EV_CURRENT
	binary.LittleEndian.PutUint16(b[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(b[18:], 62) // EM_X86_64
	r := rand.New(rand.NewPCG(1, 2))
	for len(b) < 64+size {
		if r.IntN(2) == 0 {
			b = append(b, bytes.Repeat([]byte{byte(r.IntN(256))}, 1+r.IntN(512))...)
		} else {
			for range 1 + r.IntN(512) {
				b = append(b, byte(r.IntN(256)))
			}
		}
	}
	return b[:64+size]
}

func zstdCompress(t *testing.T, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

func junk(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	// Random junk must not hide a zstd magic by chance.
	for i := bytes.Index(b, zstdMagic); i >= 0; i = bytes.Index(b, zstdMagic) {
		b[i] = 0
	}
	return b
}

// bzImage lays out parts one after another.
func bzImage(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestExtractVmlinux(t *testing.T) {
	elf := fakeELF(3<<20 + 123)
	payload := zstdCompress(t, elf)
	decoy := zstdCompress(t, []byte("a small zstd frame that is not a kernel"))
	trailer := append(binary.LittleEndian.AppendUint32(nil, uint32(len(elf))), junk(9, 517)...)

	tests := map[string][]byte{
		"junk, stray magic, payload, trailer": bzImage(
			junk(1, 16<<10), zstdMagic, junk(2, 4000), payload, trailer),
		"stray magic right before the payload": bzImage(
			junk(3, 777), zstdMagic, payload, trailer),
		"decoy frame before the payload": bzImage(
			junk(4, 1000), decoy, junk(5, 99), payload, trailer),
		"payload at the start": bzImage(payload, trailer),
		"no trailer":           bzImage(junk(6, 300), payload),
	}
	for name, img := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ExtractVmlinux(img)
			if err != nil {
				t.Fatalf("ExtractVmlinux: %v", err)
			}
			if !bytes.Equal(got, elf) {
				t.Fatalf("extracted %d bytes differing from the %d-byte kernel", len(got), len(elf))
			}
			if err := checkELF(got); err != nil {
				t.Errorf("checkELF: %v", err)
			}
		})
	}
}

func TestExtractVmlinuxNoPayload(t *testing.T) {
	tests := map[string][]byte{
		"empty":                 nil,
		"junk":                  junk(7, 64<<10),
		"stray magics only":     bzImage(junk(8, 1000), zstdMagic, junk(9, 100), zstdMagic),
		"magic at the very end": bzImage(junk(10, 100), zstdMagic),
		"compressed non-ELF":    bzImage(junk(11, 100), zstdCompress(t, bytes.Repeat([]byte("not a kernel "), 200000))),
		"truncated payload":     bzImage(junk(12, 100), zstdCompress(t, fakeELF(2<<20))[:50000]),
	}
	for name, img := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ExtractVmlinux(img)
			if !errors.Is(err, ErrNoVmlinux) {
				t.Fatalf("ExtractVmlinux = (%d bytes, %v), want ErrNoVmlinux", len(got), err)
			}
		})
	}
}

func TestExtractVmlinuxAlreadyELF(t *testing.T) {
	elf := fakeELF(4096)
	got, err := ExtractVmlinux(elf)
	if err != nil {
		t.Fatalf("ExtractVmlinux(ELF): %v", err)
	}
	if !bytes.Equal(got, elf) {
		t.Fatal("an ELF input did not come back unchanged")
	}
}

func TestCheckELF(t *testing.T) {
	arm := fakeELF(64)
	binary.LittleEndian.PutUint16(arm[18:], 183) // EM_AARCH64
	class32 := fakeELF(64)
	class32[4] = 1
	tests := map[string]struct {
		b  []byte
		ok bool
	}{
		"x86-64":    {fakeELF(64), true},
		"aarch64":   {arm, false},
		"32-bit":    {class32, false},
		"not ELF":   {[]byte("MZ\x90\x00 this is a PE file, not ELF"), false},
		"too short": {elfMagic, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if err := checkELF(tc.b); (err == nil) != tc.ok {
				t.Fatalf("checkELF = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestExtractVmlinuxDebian runs on a real Debian kernel when one is
// unpacked on this machine.
func TestExtractVmlinuxDebian(t *testing.T) {
	vmlinuz, _ := filepath.Glob(filepath.Join(debianKernelRoot, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		t.Skipf("no unpacked Debian kernel package at %s (want boot/vmlinuz-*)", debianKernelRoot)
	}
	bz, err := os.ReadFile(vmlinuz[0])
	if err != nil {
		t.Fatal(err)
	}
	vm, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatalf("ExtractVmlinux(%s): %v", vmlinuz[0], err)
	}
	if err := checkELF(vm); err != nil {
		t.Fatal(err)
	}
	if len(vm) < 4*len(bz)/3 {
		t.Errorf("vmlinux of %d bytes from a %d-byte vmlinuz: not decompressed?", len(vm), len(bz))
	}
}
