package agentproto

import (
	"bytes"
	"errors"
	"path"
	"strings"
	"testing"
)

// FuzzReadFrame: any byte stream either yields frames within the bounds
// or fails cleanly, and whatever a frame holds, decoding it as any
// message and validating it never panics.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, MsgExec, []byte(`{"id":1,"argv":["sh"],"limits":{}}`)))
	f.Add(AppendFrame(nil, MsgOutput, []byte{0, 0, 0, 1, 1, 'x'}))
	f.Add(AppendFrame(nil, MsgChunk, []byte{0, 0, 0, 2, ChunkEOF}))
	f.Add(AppendFrame(nil, MsgUpload, []byte(`{"id":3,"path":"/home/sandbox/a","size":-1}`)))
	f.Add([]byte{0xF5, 0x5B, ProtocolVersion, byte(MsgPing), 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("a frame of %d bytes passed", len(fr.Payload))
			}
			_, _, _, _ = DecodeOutput(fr.Payload)
			if _, _, data, err := DecodeChunk(fr.Payload); err == nil && len(data) > MaxChunk {
				t.Fatalf("a chunk of %d bytes passed", len(data))
			}
			var e ExecRequest
			if DecodeJSON(fr, &e) == nil {
				_ = e.Validate()
			}
			var fq FileRequest
			if DecodeJSON(fr, &fq) == nil {
				for _, mt := range []MsgType{MsgStat, MsgListDir, MsgMove, MsgUpload, MsgDownload} {
					if fq.Validate(mt) == nil && (!path.IsAbs(fq.Path) || strings.Contains(fq.Path, "\x00")) {
						t.Fatalf("%s accepted path %q", mt, fq.Path)
					}
				}
			}
			var s StdinRequest
			if DecodeJSON(fr, &s) == nil {
				_ = s.Validate()
			}
			var sg SignalRequest
			if DecodeJSON(fr, &sg) == nil {
				_ = sg.Validate()
			}
		}
	})
}

// FuzzGuestPaths: a path the validators accept stays where they promise:
// an accepted relative path never climbs, an accepted absolute path is
// clean, and Inside agrees with a plain prefix check on clean paths.
func FuzzGuestPaths(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "/home/sandbox/x", "/home/sandbox/../etc", "a//b", "/", "/home/sandboxx"} {
		f.Add(s, "/home/sandbox")
	}
	f.Fuzz(func(t *testing.T, p, dir string) {
		if ValidateRelPath(p) == nil {
			if path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
				t.Fatalf("ValidateRelPath accepted %q", p)
			}
			if j := path.Join("/base", p); !strings.HasPrefix(j, "/base/") {
				t.Fatalf("%q joined onto /base leaves it: %q", p, j)
			}
		}
		if ValidateGuestPath(p) == nil && ValidateGuestPath(dir) == nil && Inside(p, dir) {
			if rel := strings.TrimPrefix(p, dir); dir != "/" && rel != "" && rel[0] != '/' {
				t.Fatalf("Inside(%q, %q) but %q is a sibling", p, dir, p)
			}
		}
		if err := ValidateMountDir(p); err == nil && strings.IndexFunc(p, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == ',' }) >= 0 {
			t.Fatalf("ValidateMountDir accepted %q", p)
		} else if err != nil && !errors.Is(err, ErrBadBoot) {
			t.Fatalf("ValidateMountDir(%q) = %v, not ErrBadBoot", p, err)
		}
	})
}
