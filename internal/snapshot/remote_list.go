package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
)

// List returns the snapshots in the bucket stored under their key (not
// hibernations), sorted by key. A key without a manifest (a push in
// progress or a delete half done) or with an invalid one is not listed.
// Signatures are not checked: a listing restores nothing.
func (r *Remote) List(ctx context.Context) ([]RemoteEntry, error) {
	prefix := ""
	if r.cfg.Prefix != "" {
		prefix = r.cfg.Prefix + "/"
	}
	var keys []string
	err := r.retry(ctx, "list "+r.cfg.String(), func(ctx context.Context) error {
		keys = keys[:0]
		for obj := range r.client.ListObjectsIter(ctx, r.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix}) {
			if obj.Err != nil {
				return obj.Err
			}
			key, ok := strings.CutSuffix(strings.TrimPrefix(obj.Key, prefix), "/")
			if ok && ValidKey(key) {
				keys = append(keys, key)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", r.cfg, err)
	}

	var entries []RemoteEntry
	for _, key := range keys {
		raw, mod, err := r.getSmall(ctx, r.object(key, manifestFile), maxManifestBytes)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		var m *Manifest
		if err == nil {
			m, err = ParseManifest(raw)
		}
		if err == nil && m.Key != key {
			err = fmt.Errorf("%w: manifest is for key %q", ErrInvalid, m.Key)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			return nil, fmt.Errorf("list %s: %w", r.cfg, err)
		}
		if err != nil {
			r.opts.log.WarnContext(ctx, "skipping invalid remote snapshot", "op", "list", "key", key, "err", err)
			continue
		}
		e := RemoteEntry{Key: key, Size: int64(len(raw)) + m.Size(), Created: mod}
		if !m.Created.IsZero() {
			e.Created = m.Created
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	return entries, nil
}

// Delete removes snapshot key; see DeleteDir.
func (r *Remote) Delete(ctx context.Context, key string) error {
	if !ValidKey(key) {
		return fmt.Errorf("delete: %w: key %q", ErrInvalid, key)
	}
	return r.DeleteDir(ctx, key)
}

// DeleteDir removes the snapshot stored under name: its manifest first,
// so that no reader sees a snapshot whose files are going, then the other
// objects directly under the name (never deeper: deleting "a" leaves
// "a/b" alone). It returns ErrNotFound if there was nothing there.
func (r *Remote) DeleteDir(ctx context.Context, name string) error {
	if err := validateName(name); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	manifest := r.object(name, manifestFile)
	info, err := r.stat(ctx, manifest)
	if err == nil && info != nil {
		err = r.remove(ctx, manifest)
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	found := info != nil
	prefix := r.namePrefix(name)
	err = r.retry(ctx, "delete "+prefix, func(ctx context.Context) error {
		var objects []minio.ObjectInfo
		for obj := range r.client.ListObjectsIter(ctx, r.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix}) {
			if obj.Err != nil {
				return fmt.Errorf("list: %w", obj.Err)
			}
			if !strings.HasSuffix(obj.Key, "/") { // a deeper "directory"
				objects = append(objects, obj)
			}
		}
		if len(objects) == 0 {
			return nil
		}
		found = true
		results, err := r.client.RemoveObjectsWithIter(ctx, r.cfg.Bucket, func(yield func(minio.ObjectInfo) bool) {
			for _, o := range objects {
				if !yield(o) {
					return
				}
			}
		}, minio.RemoveObjectsOptions{})
		if err != nil {
			return err
		}
		var errs []error
		for res := range results {
			if res.Err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", res.ObjectName, res.Err))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if !found {
		return fmt.Errorf("delete %s: %w in %s", name, ErrNotFound, r.cfg)
	}
	return nil
}
