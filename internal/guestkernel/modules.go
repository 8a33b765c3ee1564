package guestkernel

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// moduleTree indexes a lib/modules/<release> directory.
type moduleTree struct {
	dir     string
	files   map[string]string // normalised name -> path relative to dir
	builtin map[string]bool
}

func normName(n string) string {
	n = strings.TrimSuffix(n, ".xz")
	n = strings.TrimSuffix(n, ".zst")
	n = strings.TrimSuffix(n, ".gz")
	n = strings.TrimSuffix(n, ".ko")
	return strings.ReplaceAll(filepath.Base(n), "-", "_")
}

func loadModuleTree(dir string) (*moduleTree, error) {
	t := &moduleTree{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			rel, _ := filepath.Rel(dir, p)
			t.files[normName(d.Name())] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	if f, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			t.builtin[normName(sc.Text())] = true
		}
		f.Close()
	}
	return t, nil
}

// resolve returns the modules to load for names, dependencies first, each
// once. Built-in modules are skipped.
func (t *moduleTree) resolve(names []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, from string) error
	visit = func(n, from string) error {
		n = normName(n)
		if t.builtin[n] || state[n] == 2 {
			return nil
		}
		if state[n] == 1 {
			return fmt.Errorf("module dependency cycle at %s", n)
		}
		rel, ok := t.files[n]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is neither built in nor in %s", n, from, t.dir)
			}
			return fmt.Errorf("module %s is neither built in nor in %s", n, t.dir)
		}
		state[n] = 1
		deps, err := moduleDepends(filepath.Join(t.dir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, n); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, rel)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".xz") {
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		r = xr
	} else if !strings.HasSuffix(path, ".ko") {
		return nil, fmt.Errorf("read %s: only .ko and .ko.xz modules are supported", path)
	}
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("read %s: no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
