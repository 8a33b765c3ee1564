package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// Pull downloads snapshot key into destDir (see PullDir), for Store.Adopt.
func (r *Remote) Pull(ctx context.Context, key, destDir string, progress func(Progress)) error {
	if !ValidKey(key) {
		return fmt.Errorf("pull: %w: key %q", ErrInvalid, key)
	}
	_, err := r.pull(ctx, key, key, destDir, progress)
	return err
}

// PullDir downloads the snapshot stored under name into destDir, which it
// creates (its parent must exist); destDir may exist if it is empty.
//
// Nothing is downloaded before the manifest's signature is accepted by
// the Remote's trust policy and the manifest passes ParseManifest, which
// bounds the declared file sizes by the Spec (memory, disk and device
// state). Each file then goes to a temporary name that is renamed once
// its size and digest match; manifest.json is written last. A failed
// transfer resumes with a Range request after a backoff (see
// WithRemoteRetry); ctx bounds the whole. On failure PullDir removes
// everything it wrote. The directory is marked as pulled, so Check and
// Store.Get check its signature again on every use.
func (r *Remote) PullDir(ctx context.Context, name, destDir string, progress func(Progress)) (*Manifest, error) {
	return r.pull(ctx, name, "", destDir, progress)
}

func (r *Remote) pull(ctx context.Context, name, wantKey, destDir string, progress func(Progress)) (_ *Manifest, err error) {
	if err := validateName(name); err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	raw, _, err := r.getSmall(ctx, r.object(name, manifestFile), maxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	var sig []byte
	if !r.opts.trust.AllowsUnsigned() {
		sig, _, err = r.getSmall(ctx, r.object(name, signatureFile), maxSignatureBytes)
		if errors.Is(err, ErrNotFound) {
			sig = nil
		} else if err != nil {
			return nil, fmt.Errorf("pull %s: %w", name, err)
		}
	}
	if err := r.opts.trust.Verify(name, raw, sig); err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	if wantKey != "" && m.Key != wantKey {
		return nil, fmt.Errorf("pull %s: %w: manifest is for key %q", name, ErrInvalid, m.Key)
	}

	created, err := makeDestDir(destDir)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	var written []string // names in destDir, for cleanup when it existed
	defer func() {
		if err == nil {
			return
		}
		if created {
			_ = os.RemoveAll(destDir)
			return
		}
		for _, f := range written {
			_ = os.Remove(filepath.Join(destDir, f))
		}
		if ms, _ := filepath.Glob(filepath.Join(destDir, ".*.tmp-*")); len(ms) > 0 {
			for _, f := range ms {
				_ = os.Remove(f)
			}
		}
	}()

	known := map[string]string{} // .verified: the digests were checked on the way in
	for _, file := range m.names() {
		written = append(written, remotePartName(file), file)
		v, err := r.pullFile(ctx, name, file, destDir, m.Files[file], progress)
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", name, err)
		}
		known[file] = v + ":" + m.Files[file].Digest
	}
	written = append(written, verifiedFile)
	vb, _ := json.Marshal(known)
	if err := writeFileAtomic(filepath.Join(destDir, verifiedFile), vb, 0o600); err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	if sig != nil {
		written = append(written, signatureFile)
		if err := writeFileAtomic(filepath.Join(destDir, signatureFile), sig, 0o644); err != nil {
			return nil, fmt.Errorf("pull %s: %w", name, err)
		}
	}
	written = append(written, originFile)
	if err := writeOrigin(destDir, origin{Name: name, Remote: r.cfg.String()}); err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	written = append(written, manifestFile)
	if err := writeFileAtomic(filepath.Join(destDir, manifestFile), raw, 0o644); err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	if err := syncDir(destDir); err != nil {
		return nil, fmt.Errorf("pull %s: %w", name, err)
	}
	return m, nil
}

// makeDestDir creates dir, or accepts it if it exists and is empty;
// created says which.
func makeDestDir(dir string) (created bool, err error) {
	// Snapshot memory may hold whatever the template VM had in RAM.
	err = os.Mkdir(dir, 0o700)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, fmt.Errorf("create destination: %w", err)
	}
	entries, rerr := os.ReadDir(dir)
	if rerr != nil {
		return false, fmt.Errorf("destination %s: %w", dir, rerr)
	}
	if len(entries) > 0 {
		return false, fmt.Errorf("destination %s: %w: not empty", dir, fs.ErrExist)
	}
	return false, nil
}

func remotePartName(name string) string { return "." + name + remotePartSuffix }

// pullFile downloads one file into destDir/.name.part, resuming after
// failures, then checks it and renames it to destDir/name.
// It returns the file's version (see fileVersion), whose digest is known.
func (r *Remote) pullFile(ctx context.Context, snapName, name, destDir string, want FileInfo, progress func(Progress)) (string, error) {
	object := r.object(snapName, name)
	part := filepath.Join(destDir, remotePartName(name))
	f, err := os.OpenFile(part, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("pull file %s: %w", name, err)
	}
	defer f.Close()

	d := remoteDownload{
		r: r, object: object, f: f, want: want,
		h:  newBlockHasher(),
		p:  Progress{File: name, Total: want.Size},
		fn: progress,
	}
	if err := r.retry(ctx, "download "+object, d.attempt); err != nil {
		return "", fmt.Errorf("download %s: %w", name, err)
	}
	if got := d.h.Sum(); got != want.Digest {
		return "", fmt.Errorf("download %s: %w: digest %s, manifest says %s", name, ErrCorrupt, got, want.Digest)
	}
	if err := f.Truncate(want.Size); err != nil { // trailing zeros were skipped, not written
		return "", fmt.Errorf("pull file %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("pull file %s: %w", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("pull file %s: %w", name, err)
	}
	if err := os.Rename(part, filepath.Join(destDir, name)); err != nil {
		return "", fmt.Errorf("pull file %s: %w", name, err)
	}
	return fileVersion(fi), nil
}

// remoteDownload is the state of one file's download that survives a
// failed attempt: the bytes on disk, their digest and the object's ETag.
type remoteDownload struct {
	r      *Remote
	object string
	f      *os.File
	want   FileInfo
	h      *blockHasher
	hashed int64  // bytes of f that are in h
	etag   string // of the object the bytes on disk came from
	p      Progress
	fn     func(Progress)
}

// attempt fetches what is missing of the file, from where the last attempt
// stopped, from the same version of the object.
func (d *remoteDownload) attempt(ctx context.Context) error {
	st, err := d.f.Stat()
	if err != nil {
		return remotePermanent(err)
	}
	off := st.Size()
	if off > d.want.Size {
		return remotePermanent(fmt.Errorf("%w: %s: %d bytes downloaded, manifest says %d", ErrCorrupt, d.object, off, d.want.Size))
	}
	if off != d.hashed {
		// A write failed half way: rehash what is really on disk.
		if err := d.rehash(off); err != nil {
			return remotePermanent(err)
		}
	}
	if off == d.want.Size && d.etag != "" {
		return nil
	}

	// A stalled body read only ends when its context does: cancel the
	// attempt (not the Pull) when no byte came for stallTimeout.
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var stall *time.Timer
	if d.r.opts.stallTimeout > 0 {
		stall = time.AfterFunc(d.r.opts.stallTimeout, func() { cancel(errRemoteStalled) })
		defer stall.Stop()
	}

	var opts minio.GetObjectOptions
	if off > 0 {
		if err := opts.SetRange(off, 0); err != nil {
			return remotePermanent(err)
		}
		if err := opts.SetMatchETag(d.etag); err != nil {
			return remotePermanent(err)
		}
	}
	body, info, hdr, err := d.r.core().GetObject(actx, d.r.cfg.Bucket, d.object, opts)
	if err != nil {
		if isRemoteNotFound(err) {
			return remotePermanent(fmt.Errorf("%w: %s listed in manifest but missing", ErrCorrupt, d.object))
		}
		if isRemotePreconditionFailed(err) {
			// The object changed since the bytes on disk were fetched:
			// they cannot be completed, start over.
			d.r.opts.log.WarnContext(ctx, "snapshot object changed during download, restarting it", "op", "pull", "object", d.object)
			return d.restart()
		}
		return remoteStallCause(actx, err)
	}
	defer body.Close()

	total := info.Size
	if off > 0 {
		total, err = remoteContentRangeTotal(hdr.Get("Content-Range"), off)
		if err != nil {
			return remotePermanent(err)
		}
	}
	if total != d.want.Size {
		return remotePermanent(fmt.Errorf("%w: %s has %d bytes, manifest says %d", ErrCorrupt, d.object, total, d.want.Size))
	}
	d.etag = info.ETag

	if _, err := d.f.Seek(off, io.SeekStart); err != nil {
		return remotePermanent(err)
	}
	buf := make([]byte, remoteCopyBuffer)
	src := io.LimitReader(body, d.want.Size-off)
	d.p.Done = off
	for d.p.Done < d.want.Size {
		n, rerr := src.Read(buf)
		if n > 0 {
			if stall != nil {
				stall.Reset(d.r.opts.stallTimeout)
			}
			// Memory files are mostly zeros: leave holes for them, so a
			// pulled snapshot stays as sparse as the one that was pushed.
			if allZero(buf[:n]) {
				if _, err := d.f.Seek(int64(n), io.SeekCurrent); err != nil {
					return remotePermanent(err)
				}
				d.h.Skip(int64(n))
			} else if _, err := d.f.Write(buf[:n]); err != nil {
				return remotePermanent(fmt.Errorf("write %s: %w", d.f.Name(), err))
			} else {
				d.h.Write(buf[:n])
			}
			d.hashed += int64(n)
			d.p.Done += int64(n)
			remoteReport(d.fn, d.p)
		}
		if rerr == io.EOF && d.p.Done < d.want.Size {
			rerr = io.ErrUnexpectedEOF
		}
		if rerr != nil && rerr != io.EOF {
			return remoteStallCause(actx, fmt.Errorf("read %s at %d of %d: %w", d.object, d.p.Done, d.want.Size, rerr))
		}
	}
	return nil
}

// rehash makes h the digest of the first n bytes on disk.
func (d *remoteDownload) rehash(n int64) error {
	d.h.Reset()
	d.hashed = 0
	if _, err := io.Copy(d.h, io.NewSectionReader(d.f, 0, n)); err != nil {
		return fmt.Errorf("rehash %s: %w", d.f.Name(), err)
	}
	d.hashed = n
	return nil
}

// restart throws away the bytes downloaded so far; the caller retries.
func (d *remoteDownload) restart() error {
	if err := d.f.Truncate(0); err != nil {
		return remotePermanent(err)
	}
	d.h.Reset()
	d.hashed, d.etag = 0, ""
	return fmt.Errorf("%s changed during download", d.object)
}

// remoteContentRangeTotal returns the complete length from
// "bytes <off>-<last>/<total>", checking that the range starts at off.
func remoteContentRangeTotal(cr string, off int64) (int64, error) {
	rng, ok := strings.CutPrefix(cr, "bytes ")
	first, rest, ok2 := strings.Cut(rng, "-")
	_, total, ok3 := strings.Cut(rest, "/")
	start, err1 := strconv.ParseInt(first, 10, 64)
	n, err2 := strconv.ParseInt(total, 10, 64)
	if !ok || !ok2 || !ok3 || err1 != nil || err2 != nil || start != off {
		return 0, fmt.Errorf("ranged download from %d: bad Content-Range %q", off, cr)
	}
	return n, nil
}
