package guestkernel

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

var (
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	elfMagic  = []byte{0x7f, 'E', 'L', 'F'}
)

// ErrNoVmlinux means no compressed ELF kernel was found in an image.
var ErrNoVmlinux = errors.New("guestkernel: no zstd-compressed ELF kernel found in vmlinuz")

// ExtractVmlinux finds the zstd payload inside a bzImage (vmlinuz) and
// returns the ELF kernel it holds. Debian compresses its kernels with zstd;
// the payload follows the setup code and decompressor at an offset we find
// by scanning for the zstd magic.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	if bytes.HasPrefix(bzImage, elfMagic) {
		return bzImage, nil // already a vmlinux
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(1<<30), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	for off := 0; ; {
		i := bytes.Index(bzImage[off:], zstdMagic)
		if i < 0 {
			return nil, ErrNoVmlinux
		}
		off += i
		if err := dec.Reset(bytes.NewReader(bzImage[off:])); err == nil {
			// Read the first frame only: the bzImage has trailing bytes
			// (the decompressed size, padding) after the frame.
			out, err := io.ReadAll(io.LimitReader(dec, 1<<30))
			if len(out) > 1<<20 && bytes.HasPrefix(out, elfMagic) {
				return out, nil
			}
			_ = err
		}
		off += len(zstdMagic)
	}
}

// checkELF makes sure b looks like an x86-64 kernel ELF.
func checkELF(b []byte) error {
	if len(b) < 20 || !bytes.HasPrefix(b, elfMagic) {
		return fmt.Errorf("guestkernel: not an ELF file")
	}
	if b[4] != 2 /* ELFCLASS64 */ || b[18] != 62 /* EM_X86_64 */ {
		return fmt.Errorf("guestkernel: ELF is not x86-64")
	}
	return nil
}
