package agent

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// hostPath maps a path inside the command's root to the agent's view.
func (c *Config) hostPath(p string) string {
	if c.Root == "" {
		return p
	}
	return filepath.Join(c.Root, p)
}

// makeRunDir creates a fresh, private working directory for one exec.
func (c *Config) makeRunDir(id uint32) (string, error) {
	base := c.hostPath("/tmp")
	if err := os.MkdirAll(base, 0o1777); err != nil {
		return "", err
	}
	host, err := os.MkdirTemp(base, fmt.Sprintf("run-%d-", id))
	if err != nil {
		return "", fmt.Errorf("make working directory: %w", err)
	}
	if c.UID >= 0 {
		if err := os.Chown(host, c.UID, c.GID); err != nil {
			os.RemoveAll(host)
			return "", err
		}
	}
	return path.Join("/tmp", filepath.Base(host)), nil
}

// openDir opens dir, a path inside the command's root, confined to that
// root: a symlink planted by an earlier command cannot redirect the agent
// (which runs as root, outside the chroot) anywhere else. With create, a
// missing dir is made and given to the command's user.
func (c *Config) openDir(dir string, create bool) (*os.Root, error) {
	top := c.Root
	if top == "" {
		top = "/"
	}
	root, err := os.OpenRoot(top)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	rel := strings.TrimPrefix(path.Clean("/"+dir), "/")
	if rel == "" {
		rel = "."
	}
	if create {
		if _, err := root.Lstat(rel); errors.Is(err, os.ErrNotExist) {
			if err := root.MkdirAll(rel, 0o755); err != nil {
				return nil, fmt.Errorf("create working directory %s: %w", dir, err)
			}
			if c.UID >= 0 {
				if err := root.Lchown(rel, c.UID, c.GID); err != nil {
					return nil, err
				}
			}
		}
	}
	d, err := root.OpenRoot(rel)
	if err != nil {
		return nil, fmt.Errorf("open working directory %s: %w", dir, err)
	}
	return d, nil
}

// writeFiles writes request files under dir, never outside it.
func (c *Config) writeFiles(root *os.Root, files []agentproto.File) error {
	for _, f := range files {
		if d := path.Dir(f.Path); d != "." {
			if err := c.mkdirAllOwned(root, d); err != nil {
				return fmt.Errorf("write %s: %w", f.Path, err)
			}
		}
		mode := os.FileMode(f.Mode & 0o777)
		if mode == 0 {
			mode = 0o644
		}
		if err := c.writeFile(root, f.Path, f.Content, mode); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
	}
	return nil
}

// mkdirAllOwned creates the missing directories of d under root, giving
// only those it created to the commands' user.
func (c *Config) mkdirAllOwned(root *os.Root, d string) error {
	if _, err := root.Lstat(d); err == nil {
		return nil
	}
	if p := path.Dir(d); p != "." {
		if err := c.mkdirAllOwned(root, p); err != nil {
			return err
		}
	}
	if err := root.Mkdir(d, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	if c.UID >= 0 {
		return root.Lchown(d, c.UID, c.GID)
	}
	return nil
}

// writeFile writes one file under root. It opens without blocking (a FIFO
// planted there by guest code fails or opens at once instead of holding
// the agent until someone reads it) and writes only into a regular file.
func (c *Config) writeFile(root *os.Root, name string, content []byte, mode os.FileMode) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|syscall.O_NONBLOCK|syscall.O_NOCTTY, mode)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s: %w", name, fi.Mode().Type(), errNotRegular)
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // the open's mode is masked by umask
		return err
	}
	if c.UID >= 0 {
		return f.Chown(c.UID, c.GID)
	}
	return nil
}

// statInRoot stats p as the command will see it: symlinks, absolute ones
// too (Debian's /usr/bin/php -> /etc/alternatives/php -> ...), resolve
// inside the root, never on the agent's side of the chroot.
func (c *Config) statInRoot(p string) (os.FileInfo, error) {
	if c.Root == "" {
		return os.Stat(p)
	}
	root, err := unix.Open(c.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, strings.TrimPrefix(p, "/"), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return f.Stat()
}

// lookPath resolves argv[0] against PATH inside the command's root: the
// agent's own PATH and filesystem are not the command's.
func (c *Config) lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	p := defaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			p = v
		}
	}
	for _, d := range filepath.SplitList(p) {
		if d == "" || !path.IsAbs(d) {
			continue
		}
		cand := path.Join(d, name)
		if fi, err := c.statInRoot(cand); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return cand, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in the guest (PATH=%s)", name, p)
}
