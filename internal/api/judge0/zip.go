package judge0

import (
	"archive/zip"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// maxZipEntries bounds the entries (files and directories) of an
// additional_files archive.
const maxZipEntries = 1024

// additionalFiles unpacks an additional_files archive into the files of a
// run, refusing what could write outside the working directory (absolute
// names, "..", backslashes, symlinks, devices) and what is too big (more
// than max_extract_size unpacked, more files than a run takes). As
// Judge0's `unzip -n`, the first of two entries with one name wins and
// none replaces the program's own file. It returns the files, or why the
// archive is refused.
func (h *Handler) additionalFiles(archive []byte, lang *language) ([]agentproto.File, string) {
	if len(archive) == 0 {
		return nil, ""
	}
	limit := int64(h.cfg.MaxExtractSize) << 10
	if int64(len(archive)) > limit+64<<10 {
		return nil, fmt.Sprintf("is a %d-byte archive: at most %d KB", len(archive), h.cfg.MaxExtractSize)
	}
	zr, err := zip.NewReader(bytes.NewReader(archive), int64(len(archive)))
	if err != nil {
		return nil, "is not a valid zip archive: " + err.Error()
	}
	if len(zr.File) > maxZipEntries {
		return nil, fmt.Sprintf("has %d entries: at most %d", len(zr.File), maxZipEntries)
	}
	seen := map[string]bool{}
	if lang != nil && lang.Entry != nil {
		seen[lang.Entry.File] = true // the program is written first; unzip -n keeps it
	}
	maxFiles := sandbox.MaxRunFiles - 1
	var files []agentproto.File
	var total int64
	for _, f := range zr.File {
		name := f.Name
		if strings.Contains(name, `\`) {
			return nil, fmt.Sprintf("entry %q: a backslash in a name", name)
		}
		mode := f.Mode()
		isDir := strings.HasSuffix(name, "/") || mode.IsDir()
		clean := strings.TrimSuffix(name, "/")
		if err := agentproto.ValidateRelPath(clean); err != nil {
			return nil, fmt.Sprintf("entry %q: the name must stay inside the working directory", name)
		}
		switch {
		case isDir:
			continue // directories come with the files in them
		case !mode.IsRegular(): // a symlink, device, pipe or socket
			return nil, fmt.Sprintf("entry %q: only regular files and directories may be unpacked (no links or devices)", name)
		case f.Flags&0x1 != 0:
			return nil, fmt.Sprintf("entry %q is encrypted", name)
		}
		if seen[clean] {
			continue
		}
		seen[clean] = true
		if len(files) == maxFiles {
			return nil, fmt.Sprintf("has more than %d files", maxFiles)
		}
		rc, err := f.Open()
		if err != nil {
			return nil, fmt.Sprintf("entry %q: %v", name, err)
		}
		content, err := io.ReadAll(io.LimitReader(rc, limit-total+1))
		rc.Close()
		if err != nil {
			return nil, fmt.Sprintf("entry %q: %v", name, err)
		}
		total += int64(len(content))
		if total > limit {
			return nil, fmt.Sprintf("unpacks to more than %d KB", h.cfg.MaxExtractSize)
		}
		files = append(files, agentproto.File{Path: clean, Content: content, Mode: uint32(mode.Perm() & 0o755)})
	}
	// A file cannot also be a directory of another.
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for i := 1; i < len(files); i++ {
		if strings.HasPrefix(files[i].Path, files[i-1].Path+"/") {
			return nil, fmt.Sprintf("entry %q is both a file and a directory", files[i-1].Path)
		}
	}
	return files, ""
}

// projectLanguage picks the image a multi-file program runs in: the
// installed language whose program files are most of the archive's (by
// extension), else Config.MultiFileLanguage.
func (h *Handler) projectLanguage(files []agentproto.File) *image.Entry {
	count := map[string]int{}
	for _, f := range files {
		if ext := extension(path.Base(f.Path)); ext != "" {
			count[strings.ToLower(ext)]++
		}
	}
	var best *image.Entry
	bestN := 0
	exts := make([]string, 0, len(count))
	for ext := range count {
		exts = append(exts, ext)
	}
	sort.Strings(exts)
	for _, ext := range exts {
		if e := h.langs.byExtension(ext); e != nil && count[ext] > bestN {
			best, bestN = e, count[ext]
		}
	}
	if best == nil {
		best = h.langs.byName(h.cfg.MultiFileLanguage)
	}
	return best
}
