package main

import (
	"io"
	"os"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// guestWriter is where a program's output goes on its way to f: straight
// through to a file or pipe (the bytes are the program's), escaped on a
// terminal so that no escape sequence from the guest reaches it. flush
// writes what an unfinished character held back.
func guestWriter(f *os.File) (w io.Writer, flush func()) {
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return f, func() {}
	}
	tw := agentproto.NewTerminalWriter(f)
	return tw, func() { _ = tw.Flush() }
}
