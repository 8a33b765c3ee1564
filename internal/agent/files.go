package agent

import (
	"fmt"
	"io"
	"path"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

func (c *Config) writeFilesRequest(r *agentproto.WriteFilesRequest) error {
	if err := r.Validate(); err != nil {
		return err
	}
	d, err := c.openDir(r.Dir, true)
	if err != nil {
		return err
	}
	defer d.Close()
	return c.writeFiles(d, r.Files)
}

// readFile reads a regular file inside the command's root, never through
// a symlink that leads out of it.
func (c *Config) readFile(r *agentproto.ReadFileRequest) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	d, err := c.openDir(path.Dir(r.Path), false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, err := d.Open(path.Base(r.Path))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: not a regular file", r.Path)
	}
	if fi.Size() > r.MaxBytes {
		return nil, fmt.Errorf("read %s: %d bytes, more than the %d allowed: %w", r.Path, fi.Size(), r.MaxBytes, errTooLarge)
	}
	b, err := io.ReadAll(io.LimitReader(f, r.MaxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > r.MaxBytes {
		return nil, fmt.Errorf("read %s: grew past the %d allowed: %w", r.Path, r.MaxBytes, errTooLarge)
	}
	return b, nil
}
