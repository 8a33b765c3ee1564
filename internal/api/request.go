// This file holds request parts shared by the native and Piston APIs: files, encodings, limits.

package api

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"

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

// capDefault sets the wall-clock limit a request left to the default
// (the language's, else the agent's) to the server's maximum when that
// default is longer.
func (s *Server) capDefault(l agentproto.Limits, e *image.Entry) agentproto.Limits {
	if l.WallMillis != 0 {
		return l
	}
	def := agentproto.DefaultLimits.WallMillis
	if e != nil && e.Limits.WallMillis > 0 {
		def = e.Limits.WallMillis
	}
	if maxWall := s.cfg.MaxTimeout.Milliseconds(); def > maxWall {
		l.WallMillis = maxWall
	}
	return l
}

// vmMemoryBytes is the memory of the default VM shape: no program can use
// more.
func (s *Server) vmMemoryBytes() int64 { return int64(s.mgr.Config().MemoryMiB) << 20 }
