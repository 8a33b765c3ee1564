// This file holds request parts shared by the native and Piston APIs: files, encodings, limits.

package api

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"unicode/utf8"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// FileIn is a file in a request. Content is text unless Encoding says
// base64 or hex.
type FileIn struct {
	Path     string `json:"path"`
	Content  string `json:"content"`
	Encoding string `json:"encoding,omitempty"`
}

func decodeContent(i int, content, enc string) ([]byte, error) {
	switch enc {
	case "", "utf8", "utf-8":
		return []byte(content), nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(content)
		if err != nil {
			return nil, fmt.Errorf("%w: files[%d].content is not valid base64: %v", sandbox.ErrBadRequest, i, err)
		}
		return b, nil
	case "hex":
		b, err := hex.DecodeString(content)
		if err != nil {
			return nil, fmt.Errorf("%w: files[%d].content is not valid hex: %v", sandbox.ErrBadRequest, i, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: files[%d].encoding %q: want utf8, base64 or hex", sandbox.ErrBadRequest, i, enc)
}

// filesIn converts and checks request files; the first may have no path
// (it is the program and gets the language's file name).
func filesIn(in []FileIn, firstMayBeUnnamed bool) ([]agentproto.File, error) {
	if len(in) > sandbox.MaxRunFiles {
		return nil, fmt.Errorf("%w: %d files, at most %d", sandbox.ErrBadRequest, len(in), sandbox.MaxRunFiles)
	}
	out := make([]agentproto.File, len(in))
	for i, f := range in {
		if !(i == 0 && firstMayBeUnnamed && f.Path == "") {
			if err := agentproto.ValidateRelPath(f.Path); err != nil {
				return nil, fmt.Errorf("%w: files[%d].path: %w", sandbox.ErrBadRequest, i, err)
			}
		}
		b, err := decodeContent(i, f.Content, f.Encoding)
		if err != nil {
			return nil, err
		}
		out[i] = agentproto.File{Path: f.Path, Content: b}
	}
	return out, nil
}

// placeMain makes sure the program (the first file) is where the
// language's run command looks for it: a first file named otherwise is
// also written under the language's file name, unless another file
// already has that name.
func placeMain(files []agentproto.File, e *image.Entry) []agentproto.File {
	if len(files) == 0 || files[0].Path == "" || files[0].Path == e.File {
		return files
	}
	for _, f := range files[1:] {
		if f.Path == e.File {
			return files
		}
	}
	return append(files, agentproto.File{Path: e.File, Content: files[0].Content})
}

// LimitsIn are limits a request may ask for. Zero means the default.
type LimitsIn struct {
	TimeoutMillis int64 `json:"timeout_ms,omitempty"`
	MemoryBytes   int64 `json:"memory_bytes,omitempty"`
	OutputBytes   int64 `json:"output_bytes,omitempty"`
	Procs         int64 `json:"procs,omitempty"`
}

// limits checks l against the server's caps; what is zero becomes the
// default (capped too).
func (s *Server) limits(field string, l LimitsIn, memCapBytes int64) (agentproto.Limits, error) {
	maxWall := s.cfg.MaxTimeout.Milliseconds()
	for _, c := range []struct {
		name     string
		v, limit int64
	}{
		{"timeout_ms", l.TimeoutMillis, maxWall},
		{"memory_bytes", l.MemoryBytes, memCapBytes},
		{"output_bytes", l.OutputBytes, s.cfg.MaxOutput},
		{"procs", l.Procs, agentproto.MaxLimits.Procs},
	} {
		if c.v < 0 {
			return agentproto.Limits{}, fmt.Errorf("%w: %s.%s is %d: must not be negative", sandbox.ErrBadRequest, field, c.name, c.v)
		}
		if c.v > c.limit {
			return agentproto.Limits{}, fmt.Errorf("%w: %s.%s is %d: this server allows at most %d", sandbox.ErrBadRequest, field, c.name, c.v, c.limit)
		}
	}
	out := agentproto.Limits{WallMillis: l.TimeoutMillis, MemoryBytes: l.MemoryBytes, OutputBytes: l.OutputBytes, Procs: l.Procs}
	return s.capDefault(out, nil), nil
}

// localLimits checks l as a request over the owner-only unix socket gets
// it checked: against the agent's maxima only, as for a run the same user
// makes in-process. serve's own caps (--max-timeout, the output cap) are
// for its TCP clients; the CLI goes through the socket and must accept
// the limits it accepts without a serve.
func localLimits(field string, l LimitsIn, _ int64) (agentproto.Limits, error) {
	m := agentproto.MaxLimits
	for _, c := range []struct {
		name     string
		v, limit int64
	}{
		{"timeout_ms", l.TimeoutMillis, m.WallMillis},
		{"memory_bytes", l.MemoryBytes, m.MemoryBytes},
		{"output_bytes", l.OutputBytes, m.OutputBytes},
		{"procs", l.Procs, m.Procs},
	} {
		if c.v < 0 {
			return agentproto.Limits{}, fmt.Errorf("%w: %s.%s is %d: must not be negative", sandbox.ErrBadRequest, field, c.name, c.v)
		}
		if c.v > c.limit {
			return agentproto.Limits{}, fmt.Errorf("%w: %s.%s is %d: at most %d", sandbox.ErrBadRequest, field, c.name, c.v, c.limit)
		}
	}
	return agentproto.Limits{WallMillis: l.TimeoutMillis, MemoryBytes: l.MemoryBytes, OutputBytes: l.OutputBytes, Procs: l.Procs}, nil
}

// capDefault sets the wall-clock limit a request left to the default
// (the language's, else the agent's) to the server's maximum when that
// default is longer.
func (s *Server) capDefault(l agentproto.Limits, e *image.Entry) agentproto.Limits {
	if l.WallMillis != 0 {
		return l
	}
	def := agentproto.DefaultLimits.WallMillis
	if e != nil {
		// The language's default, scaled to this host's accelerator.
		def = e.StepLimits(s.mgr.Slowdown(context.Background(), e)).WallMillis
	}
	if maxWall := s.cfg.MaxTimeout.Milliseconds(); def > maxWall {
		l.WallMillis = maxWall
	}
	return l
}

// vmMemoryBytes is the memory of the default VM shape: no program can use
// more.
func (s *Server) vmMemoryBytes() int64 { return int64(s.mgr.Config().MemoryMiB) << 20 }

// runFits checks, before a VM is taken, that req's exec requests fit the
// agent protocol: argument counts and sizes, and the frame that carries
// the program, its files and stdin. Without it a program of a few MiB
// took a VM and then failed with a 500.
func runFits(req sandbox.RunRequest, e *image.Entry) error {
	files := append([]agentproto.File(nil), req.Files...)
	if len(files) > 0 && files[0].Path == "" {
		files[0].Path = e.File
	}
	run := agentproto.ExecRequest{Argv: append(append([]string{}, e.Run...), req.Args...), Env: e.Env, Dir: "/tmp/box",
		Stdin: req.Stdin, Files: files, Limits: req.RunLimits}
	if len(e.Compile) > 0 {
		compile := agentproto.ExecRequest{Argv: e.Compile, Env: e.Env, Dir: "/tmp/box", Files: files, Limits: req.CompileLimits}
		if err := execFits(compile); err != nil {
			return err
		}
		run.Files = nil // the compile step put them in place
	}
	return execFits(run)
}

// execFits checks one exec request against the agent protocol's bounds
// before it is sent: 400 for too many or too long arguments, 413 for more
// data than one request carries.
func execFits(req agentproto.ExecRequest) error {
	if len(req.Argv) > 0 && req.Argv[0] != "" {
		if err := req.Validate(); err != nil {
			return fmt.Errorf("%w: %w", sandbox.ErrBadRequest, err)
		}
	}
	if n := encodedSize(req); n > agentproto.MaxPayload {
		return fmt.Errorf("%w: the program's files, arguments and stdin take %d bytes on the way to the VM; one request carries at most %d (about %d bytes of file contents and stdin): upload large files to a sandbox instead",
			errTooLarge, n, agentproto.MaxPayload, agentproto.MaxPayload*3/4-4096)
	}
	return nil
}

// encodedSize is the length of req encoded as the agent protocol sends it
// (JSON, byte contents in base64), or a little more.
func encodedSize(req agentproto.ExecRequest) int {
	n := 1024 // field names, limits, numbers, punctuation
	for _, f := range req.Files {
		n += 32 + jsonStringLen(f.Path) + base64.StdEncoding.EncodedLen(len(f.Content))
	}
	for _, s := range append(append([]string{req.Dir}, req.Argv...), req.Env...) {
		n += 1 + jsonStringLen(s)
	}
	return n + base64.StdEncoding.EncodedLen(len(req.Stdin))
}

// jsonStringLen is the length of s as encoding/json writes it, quotes and
// HTML escapes included.
func jsonStringLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
				n += 2
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				n += 6
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 6
		case r == '\u2028' || r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}
