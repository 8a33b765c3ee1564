package agentproto

import (
	"fmt"
	"path"
	"strings"
)

// FileRequest is one file call: Stat, ListDir, Mkdir, Move, Remove,
// Upload, Download or Watch (the frame type says which).
//
// Path is an absolute guest path, resolved inside the guest root: a
// symlink, absolute or not, never leads out of it. With Within set (an
// absolute guest directory), Path must lie in Within, and no symlink may
// lead out of Within either: a sandbox's API confines its callers to the
// sandbox's working directory that way. The call runs with User's file
// permissions (the default sandbox user when empty), and what it creates
// belongs to User.
type FileRequest struct {
	ID     uint32 `json:"id"`
	Path   string `json:"path"`
	Within string `json:"within,omitempty"`
	User   string `json:"user,omitempty"`

	// To is Move's destination (under the same rules as Path).
	To string `json:"to,omitempty"`
	// Depth is how deep ListDir goes: 1 lists the directory itself.
	Depth int `json:"depth,omitempty"`
	// Recursive: Watch watches subdirectories too; Remove removes a
	// directory with everything in it.
	Recursive bool `json:"recursive,omitempty"`
	// Parents: Mkdir creates missing parents (and an existing directory
	// is no error).
	Parents bool `json:"parents,omitempty"`
	// Mode is an upload's permission bits (0644 when zero).
	Mode uint32 `json:"mode,omitempty"`
	// Size is an upload's declared size, -1 if unknown; MaxBytes bounds a
	// download. The agent refuses more than either.
	Size     int64 `json:"size,omitempty"`
	MaxBytes int64 `json:"max_bytes,omitempty"`
}

// Bounds of file calls.
const (
	MaxListDepth    = 16
	MaxListEntries  = 10_000
	MaxTransfer     = 1 << 30 // one upload or download
	MaxWatchedDirs  = 4096    // directories one recursive watch follows
	MaxWatches      = 64      // watches at once
	MaxWatchBatch   = 256     // events in one WatchEvents
	DefaultMaxBytes = 64 << 20
)

// Validate checks a FileRequest of type t.
func (r *FileRequest) Validate(t MsgType) error {
	if err := ValidateGuestPath(r.Path); err != nil {
		return err
	}
	if r.Within != "" {
		if err := ValidateGuestPath(r.Within); err != nil {
			return err
		}
		if !Inside(r.Path, r.Within) {
			return fmt.Errorf("%w: %s is not in %s", ErrMalformed, truncate(r.Path, 80), r.Within)
		}
	}
	if err := ValidateUser(r.User); err != nil {
		return err
	}
	switch t {
	case MsgMove:
		if err := ValidateGuestPath(r.To); err != nil {
			return err
		}
		if r.Within != "" && !Inside(r.To, r.Within) {
			return fmt.Errorf("%w: %s is not in %s", ErrMalformed, truncate(r.To, 80), r.Within)
		}
	case MsgListDir:
		if r.Depth < 1 || r.Depth > MaxListDepth {
			return fmt.Errorf("%w: depth %d, want 1-%d", ErrMalformed, r.Depth, MaxListDepth)
		}
	case MsgUpload:
		if r.Size < -1 || r.Size > MaxTransfer {
			return fmt.Errorf("%w: upload of %d bytes, at most %d", ErrMalformed, r.Size, MaxTransfer)
		}
		if r.Mode&^0o7777 != 0 {
			return fmt.Errorf("%w: mode %#o", ErrMalformed, r.Mode)
		}
	case MsgDownload:
		if r.MaxBytes <= 0 || r.MaxBytes > MaxTransfer {
			return fmt.Errorf("%w: max bytes %d, want 1-%d", ErrMalformed, r.MaxBytes, MaxTransfer)
		}
	}
	return nil
}

// ValidateGuestPath accepts a clean absolute path without NUL bytes.
func ValidateGuestPath(p string) error {
	switch {
	case !path.IsAbs(p):
		return fmt.Errorf("%w: path %q is not absolute", ErrMalformed, truncate(p, 80))
	case len(p) > MaxPathBytes:
		return fmt.Errorf("%w: path of %d bytes", ErrMalformed, len(p))
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("%w: NUL byte in path", ErrMalformed)
	case path.Clean(p) != p:
		return fmt.Errorf("%w: path %q is not clean (want %q)", ErrMalformed, truncate(p, 80), path.Clean(p))
	}
	return nil
}

// Inside reports whether clean absolute path p is dir or lies below it.
func Inside(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// FileType is the type of a directory entry.
type FileType string

// File types.
const (
	TypeFile    FileType = "file"
	TypeDir     FileType = "dir"
	TypeSymlink FileType = "symlink"
	TypeOther   FileType = "other" // device, FIFO, socket
)

// FileInfo describes one file.
type FileInfo struct {
	Name string   `json:"name"`
	Path string   `json:"path"`
	Type FileType `json:"type"`
	Size int64    `json:"size"`
	// Mode is the permission bits with setuid, setgid and sticky (07777).
	Mode  uint32 `json:"mode"`
	UID   int    `json:"uid"`
	GID   int    `json:"gid"`
	Owner string `json:"owner,omitempty"`
	Group string `json:"group,omitempty"`
	// ModUnixNanos is the modification time.
	ModUnixNanos int64 `json:"mtime_ns"`
	// Target is a symlink's target, as written.
	Target string `json:"target,omitempty"`
}

// Entries answers Stat, ListDir, Mkdir, Move (one entry each, or a
// directory's entries, depth first) and Upload and Download (the file).
type Entries struct {
	ID      uint32     `json:"id"`
	Entries []FileInfo `json:"entries"`
}

// WatchOp is what happened to a watched file.
type WatchOp string

// Watch operations.
const (
	OpCreate WatchOp = "create"
	OpWrite  WatchOp = "write"
	OpRemove WatchOp = "remove"
	OpRename WatchOp = "rename"
	OpChmod  WatchOp = "chmod"
)

// WatchEvent is one change in a watched directory. Name is the file's
// path relative to the watched directory.
type WatchEvent struct {
	Name string  `json:"name"`
	Op   WatchOp `json:"op"`
}

// WatchEvents carries events of watch ID. Overflow says the guest's
// kernel dropped events: the watcher should look again.
type WatchEvents struct {
	ID       uint32       `json:"id"`
	Events   []WatchEvent `json:"events"`
	Overflow bool         `json:"overflow,omitempty"`
}
