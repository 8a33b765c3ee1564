package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/minio/minio-go/v7"
)

// Push uploads the snapshot in dir (a Store's, e.g. Snapshot.Dir) under
// its key; see PushDir.
func (r *Remote) Push(ctx context.Context, dir string, progress func(Progress)) error {
	m, _, err := readManifest(dir)
	if err != nil {
		return fmt.Errorf("push %s: %w", dir, err)
	}
	return r.PushDir(ctx, m.Key, dir, progress)
}

// PushDir uploads the snapshot in dir (sealed: see Seal) under name: every
// file its manifest lists, after checking all their sizes and digests
// locally, then the signature, then manifest.json last. If the bucket
// holds another manifest under name, it is removed first, so no reader
// pairs it with the files being replaced. Files already in the bucket
// with the same size and digest are skipped. progress, if not nil, is
// called as bytes are uploaded.
func (r *Remote) PushDir(ctx context.Context, name, dir string, progress func(Progress)) error {
	if err := validateName(name); err != nil {
		return fmt.Errorf("push: %w", err)
	}
	m, raw, err := readManifest(dir)
	if err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	var sig []byte
	switch {
	case r.opts.signer != nil:
		sig = r.opts.signer.Sign(name, raw)
	case !r.opts.trust.AllowsUnsigned():
		return fmt.Errorf("push %s: %w: no signing key (snapshots.signing_key; `firesandbox key generate` makes one)", name, ErrUnsigned)
	}
	// Check everything before sending anything: a damaged local snapshot
	// leaves the bucket as it was.
	for _, file := range m.names() {
		if err := checkLocalFile(filepath.Join(dir, file), m.Files[file]); err != nil {
			return fmt.Errorf("push %s: %w", name, err)
		}
	}
	manifest := FileInfo{Size: int64(len(raw)), Digest: digestBytes(raw)}
	if err := r.retireManifest(ctx, name, manifest); err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	for _, file := range m.names() {
		if err := r.pushFile(ctx, name, file, filepath.Join(dir, file), m.Files[file], progress); err != nil {
			return fmt.Errorf("push %s: %w", name, err)
		}
	}
	if sig != nil {
		err = r.pushBytes(ctx, name, signatureFile, sig, "application/json")
	} else { // an unsigned push must not leave an older signature around
		err = r.remove(ctx, r.object(name, signatureFile))
	}
	if err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	if err := r.pushBytes(ctx, name, manifestFile, raw, "application/json"); err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}
	return nil
}

// checkLocalFile checks a local file's size and digest.
func checkLocalFile(p string, want FileInfo) error {
	fi, digest, err := digestFile(p)
	if err != nil {
		return fmt.Errorf("check %s: %w", p, err)
	}
	if fi.Size() != want.Size {
		return fmt.Errorf("check %s: %w: size %d, manifest says %d", p, ErrCorrupt, fi.Size(), want.Size)
	}
	if digest != want.Digest {
		return fmt.Errorf("check %s: %w: digest %s, manifest says %s", p, ErrCorrupt, digest, want.Digest)
	}
	return nil
}

// retireManifest removes the manifest under name unless it is the one
// about to be pushed.
func (r *Remote) retireManifest(ctx context.Context, name string, manifest FileInfo) error {
	object := r.object(name, manifestFile)
	info, err := r.stat(ctx, object)
	if err != nil {
		return fmt.Errorf("stat manifest: %w", err)
	}
	if info == nil || info.Size == manifest.Size && remoteMeta(info.UserMetadata, remoteMetaDigest) == manifest.Digest {
		return nil
	}
	r.opts.log.InfoContext(ctx, "replacing remote snapshot", "op", "push", "name", name)
	if err := r.remove(ctx, object); err != nil {
		return fmt.Errorf("remove old manifest: %w", err)
	}
	return nil
}

// pushFile uploads one file unless the bucket already has it.
func (r *Remote) pushFile(ctx context.Context, name, file, p string, want FileInfo, progress func(Progress)) error {
	object := r.object(name, file)
	has, err := r.has(ctx, object, want)
	if err != nil {
		return fmt.Errorf("stat %s: %w", file, err)
	}
	if has {
		r.opts.log.DebugContext(ctx, "snapshot file already in remote", "op", "push", "name", name, "file", file)
		remoteReport(progress, Progress{File: file, Done: want.Size, Total: want.Size})
		return nil
	}
	err = r.retry(ctx, "upload "+object, func(ctx context.Context) error {
		f, err := os.Open(p)
		if err != nil {
			return remotePermanent(fmt.Errorf("open %s: %w", p, err))
		}
		defer f.Close()
		// Digest what is really sent: a file that changed since it was
		// checked must not stay in the bucket under the checked digest.
		// (This also hides ReaderAt from minio-go: parts go one by one.)
		h := newBlockHasher()
		src := &remoteProgressReader{r: io.TeeReader(f, h), p: Progress{File: file, Total: want.Size}, fn: progress}
		_, err = r.client.PutObject(ctx, r.cfg.Bucket, object, src, want.Size, minio.PutObjectOptions{
			UserMetadata: map[string]string{remoteMetaDigest: want.Digest},
			ContentType:  "application/octet-stream",
		})
		if err != nil {
			return err
		}
		if got := h.Sum(); got != want.Digest {
			rmErr := r.client.RemoveObject(context.WithoutCancel(ctx), r.cfg.Bucket, object, minio.RemoveObjectOptions{})
			return remotePermanent(errors.Join(fmt.Errorf("%w: %s changed during upload (digest %s, manifest says %s)", ErrCorrupt, p, got, want.Digest), rmErr))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upload %s: %w", file, err)
	}
	return nil
}

// pushBytes uploads a small object unless the bucket has the same bytes.
func (r *Remote) pushBytes(ctx context.Context, name, file string, data []byte, contentType string) error {
	object := r.object(name, file)
	info := FileInfo{Size: int64(len(data)), Digest: digestBytes(data)}
	has, err := r.has(ctx, object, info)
	if err == nil && !has {
		err = r.retry(ctx, "upload "+object, func(ctx context.Context) error {
			_, err := r.client.PutObject(ctx, r.cfg.Bucket, object, bytes.NewReader(data), info.Size, minio.PutObjectOptions{
				UserMetadata: map[string]string{remoteMetaDigest: info.Digest},
				ContentType:  contentType,
			})
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("upload %s: %w", file, err)
	}
	return nil
}

// remoteProgressReader reports bytes as minio-go reads them for upload.
type remoteProgressReader struct {
	r  io.Reader
	p  Progress
	fn func(Progress)
}

func (pr *remoteProgressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	if n > 0 {
		pr.p.Done = min(pr.p.Done+int64(n), pr.p.Total)
		remoteReport(pr.fn, pr.p)
	}
	return n, err
}
