package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Remote is an S3-compatible bucket holding snapshots under a prefix:
// <prefix>/<key>/manifest.json and <prefix>/<key>/<file>.
//
// The manifest is uploaded after every file it lists and removed before
// them, so a reader that finds a manifest finds a complete snapshot.
// Every file carries its sha256 as user metadata, which lets Push skip
// what is already there; Pull trusts nothing it downloads until it has
// checked size and digest against the manifest.
type Remote struct {
	cfg    RemoteConfig
	client *minio.Client
	opts   remoteOptions
}

// RemoteConfig says where a Remote is and how to sign requests to it. It
// is what ParseRemoteURL makes of a URL and the AWS_* variables.
type RemoteConfig struct {
	// Bucket is the bucket name.
	Bucket string
	// Prefix is the object name prefix, without leading or trailing "/";
	// empty puts snapshots at the root of the bucket.
	Prefix string
	// Endpoint is host[:port] of the S3 API.
	Endpoint string
	// Secure is true for an https endpoint.
	Secure bool
	// Region is the bucket's region; empty lets the client ask the server.
	Region string
	// AccessKeyID, SecretAccessKey and SessionToken sign requests.
	AccessKeyID     string
	SecretAccessKey string `json:"-"`
	SessionToken    string `json:"-"`
}

// String describes the remote without its secrets, for logs and errors.
func (c RemoteConfig) String() string {
	scheme := "http"
	if c.Secure {
		scheme = "https"
	}
	u := "s3://" + c.Bucket
	if c.Prefix != "" {
		u += "/" + c.Prefix
	}
	return fmt.Sprintf("%s (endpoint %s://%s)", u, scheme, c.Endpoint)
}

// RemoteEntry is one snapshot in a Remote, as List reports it.
type RemoteEntry struct {
	// Key is the snapshot key.
	Key string
	// Size is the total size of the snapshot's files and manifest, in bytes.
	Size int64
	// Created is the manifest's "created" time, else when the manifest was
	// uploaded.
	Created time.Time
}

// Progress reports how far the transfer of one file has got.
type Progress struct {
	// File is the file's name in the snapshot (e.g. "memory").
	File string
	// Done and Total are bytes transferred so far and the file's size.
	Done, Total int64
}

// RemoteOption changes how a Remote behaves; see the WithRemote* functions.
type RemoteOption func(*remoteOptions)

type remoteOptions struct {
	attempts     int
	backoff      time.Duration
	maxBackoff   time.Duration
	stallTimeout time.Duration
	transport    http.RoundTripper
	log          *slog.Logger
	getenv       func(string) string
}

// WithRemoteRetry bounds retries of each request or file transfer: at most
// attempts tries, waiting backoff, doubling up to maxBackoff, in between.
// The default is 8 attempts, 250ms, 8s: about 25 s of outage is survived.
// The caller's context bounds the total time.
func WithRemoteRetry(attempts int, backoff, maxBackoff time.Duration) RemoteOption {
	return func(o *remoteOptions) {
		o.attempts = max(attempts, 1)
		o.backoff = max(backoff, time.Millisecond)
		o.maxBackoff = max(maxBackoff, o.backoff)
	}
}

// WithRemoteStallTimeout abandons (and retries) a download that received
// no byte for d, so a server that hangs without closing the connection
// cannot stall Pull until the caller's deadline. The default is 30s.
func WithRemoteStallTimeout(d time.Duration) RemoteOption {
	return func(o *remoteOptions) { o.stallTimeout = d }
}

// WithRemoteTransport sets the HTTP transport, e.g. to trust a private CA.
func WithRemoteTransport(rt http.RoundTripper) RemoteOption {
	return func(o *remoteOptions) { o.transport = rt }
}

// WithRemoteLogger sets the logger for retries and skipped entries.
func WithRemoteLogger(l *slog.Logger) RemoteOption {
	return func(o *remoteOptions) { o.log = l }
}

// WithRemoteEnv replaces os.Getenv for reading the AWS_* variables.
func WithRemoteEnv(getenv func(string) string) RemoteOption {
	return func(o *remoteOptions) { o.getenv = getenv }
}

const (
	remoteManifestName = "manifest.json"
	// A manifest is a few hundred bytes; the limit stops a hostile bucket
	// from making us read gigabytes into memory.
	remoteMaxManifest = 1 << 20
	remoteMaxFiles    = 256
	remoteMaxFileSize = 1 << 40
	remoteMetaSHA256  = "Sha256"
	remoteCopyBuffer  = 256 << 10
	// Temporary names start with '.', which no valid file name does, so
	// they cannot collide with a file of the snapshot.
	remotePartSuffix = ".part"
)

var (
	remoteKeyRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)
	remoteFileRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	remoteSHA256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	remoteBucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	remotePrefixRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// ParseRemoteURL parses "s3://bucket/optional/prefix" and reads the
// endpoint and credentials from the usual AWS variables:
// AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL; default https://s3.amazonaws.com),
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
// AWS_REGION (or AWS_DEFAULT_REGION). An http:// endpoint means no TLS.
func ParseRemoteURL(rawURL string) (RemoteConfig, error) {
	return parseRemoteURL(rawURL, os.Getenv)
}

func parseRemoteURL(rawURL string, getenv func(string) string) (RemoteConfig, error) {
	var cfg RemoteConfig
	rest, ok := strings.CutPrefix(rawURL, "s3://")
	if !ok {
		return cfg, fmt.Errorf("remote URL %q: want s3://bucket[/prefix]", rawURL)
	}
	if strings.ContainsAny(rest, "?#@\\ ") {
		return cfg, fmt.Errorf("remote URL %q: query, fragment, user info, backslash and spaces are not allowed", rawURL)
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if !remoteBucketRE.MatchString(bucket) || strings.Contains(bucket, "..") {
		return cfg, fmt.Errorf("remote URL %q: bad bucket name %q (3-63 characters: a-z, 0-9, '.', '-')", rawURL, bucket)
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix != "" {
		for _, seg := range strings.Split(prefix, "/") {
			if !remotePrefixRE.MatchString(seg) {
				return cfg, fmt.Errorf("remote URL %q: bad prefix segment %q (want A-Z, a-z, 0-9, '.', '_', '-', not starting with '.')", rawURL, seg)
			}
		}
	}
	cfg.Bucket, cfg.Prefix = bucket, prefix

	endpoint := getenv("AWS_ENDPOINT_URL_S3")
	if endpoint == "" {
		endpoint = getenv("AWS_ENDPOINT_URL")
	}
	if endpoint == "" {
		endpoint = "https://s3.amazonaws.com"
	}
	eu, err := url.Parse(endpoint)
	if err != nil {
		return cfg, fmt.Errorf("remote %s: parse endpoint %q: %w", rawURL, endpoint, err)
	}
	switch {
	case eu.Scheme != "http" && eu.Scheme != "https":
		return cfg, fmt.Errorf("remote %s: endpoint %q: want http:// or https://", rawURL, endpoint)
	case eu.Host == "":
		return cfg, fmt.Errorf("remote %s: endpoint %q has no host", rawURL, endpoint)
	case eu.Path != "" && eu.Path != "/", eu.RawQuery != "", eu.User != nil:
		return cfg, fmt.Errorf("remote %s: endpoint %q: want scheme://host[:port] only", rawURL, endpoint)
	}
	cfg.Endpoint, cfg.Secure = eu.Host, eu.Scheme == "https"

	cfg.Region = getenv("AWS_REGION")
	if cfg.Region == "" {
		cfg.Region = getenv("AWS_DEFAULT_REGION")
	}
	cfg.AccessKeyID = getenv("AWS_ACCESS_KEY_ID")
	cfg.SecretAccessKey = getenv("AWS_SECRET_ACCESS_KEY")
	cfg.SessionToken = getenv("AWS_SESSION_TOKEN")
	var missing []string
	if cfg.AccessKeyID == "" {
		missing = append(missing, "AWS_ACCESS_KEY_ID")
	}
	if cfg.SecretAccessKey == "" {
		missing = append(missing, "AWS_SECRET_ACCESS_KEY")
	}
	if len(missing) > 0 {
		return cfg, fmt.Errorf("remote %s: missing credentials: set %s", rawURL, strings.Join(missing, " and "))
	}
	return cfg, nil
}

// NewRemote returns the Remote that url (s3://bucket/prefix) names; see
// ParseRemoteURL for the environment it reads. It does not contact the
// server.
func NewRemote(url string, opts ...RemoteOption) (*Remote, error) {
	o := remoteOptions{
		attempts:     8,
		backoff:      250 * time.Millisecond,
		maxBackoff:   8 * time.Second,
		stallTimeout: 30 * time.Second,
		log:          slog.Default(),
		getenv:       os.Getenv,
	}
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := parseRemoteURL(url, o.getenv)
	if err != nil {
		return nil, err
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken),
		Secure:    cfg.Secure,
		Region:    cfg.Region,
		Transport: o.transport,
		// Retries are ours (remote.retry): one policy, bounded and logged,
		// and a download resumes where it stopped instead of starting over.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("remote %s: %w", cfg, err)
	}
	return &Remote{cfg: cfg, client: client, opts: o}, nil
}

// core gives the lower-level calls: GetObject with the response headers
// (Content-Range) that a resumed download checks.
func (r *Remote) core() minio.Core { return minio.Core{Client: r.client} }

// Config returns where the Remote is (its String hides the secrets).
func (r *Remote) Config() RemoteConfig { return r.cfg }

// remoteManifest is the part of manifest.json a Remote needs. The store
// owns the format; unknown fields are ignored here and kept byte for byte
// when the manifest is copied.
type remoteManifest struct {
	Key     string                    `json:"key"`
	Files   map[string]remoteFileInfo `json:"files"`
	Created json.RawMessage           `json:"created"`
}

type remoteFileInfo struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// names returns the file names in a stable order.
func (m *remoteManifest) names() []string {
	names := make([]string, 0, len(m.Files))
	for name := range m.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// parseRemoteManifest decodes and validates manifest.json. It comes from
// an untrusted bucket: every file name must be a plain name.
func parseRemoteManifest(data []byte) (*remoteManifest, error) {
	var m remoteManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w: %w", ErrInvalid, err)
	}
	if err := validateRemoteKey(m.Key); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if len(m.Files) == 0 || len(m.Files) > remoteMaxFiles {
		return nil, fmt.Errorf("manifest %s: %w: %d files, want 1 to %d", m.Key, ErrInvalid, len(m.Files), remoteMaxFiles)
	}
	for name, f := range m.Files {
		if !remoteFileRE.MatchString(name) || name == remoteManifestName {
			return nil, fmt.Errorf("manifest %s: %w: file name %q is not a plain name", m.Key, ErrInvalid, name)
		}
		if f.Size < 0 || f.Size > remoteMaxFileSize {
			return nil, fmt.Errorf("manifest %s: %w: file %s has size %d", m.Key, ErrInvalid, name, f.Size)
		}
		if !remoteSHA256RE.MatchString(f.SHA256) {
			return nil, fmt.Errorf("manifest %s: %w: file %s has sha256 %q, want 64 lowercase hex digits", m.Key, ErrInvalid, name, f.SHA256)
		}
	}
	return &m, nil
}

// created returns the manifest's "created" time, if it has a usable one.
func (m *remoteManifest) created() (time.Time, bool) {
	var t time.Time
	if len(m.Created) == 0 || json.Unmarshal(m.Created, &t) != nil || t.IsZero() {
		return time.Time{}, false
	}
	return t, true
}

func validateRemoteKey(key string) error {
	if !remoteKeyRE.MatchString(key) {
		return fmt.Errorf("%w: key %q (want %s)", ErrInvalid, key, remoteKeyRE)
	}
	return nil
}

// object returns the object name of a snapshot's file.
func (r *Remote) object(key, file string) string {
	return path.Join(r.cfg.Prefix, key, file)
}

// keyPrefix returns the object name prefix of a snapshot, "/"-terminated
// so that key "a" does not match "ab".
func (r *Remote) keyPrefix(key string) string {
	return path.Join(r.cfg.Prefix, key) + "/"
}

// Push uploads the snapshot in dir: every file that dir/manifest.json
// lists, after checking all their sizes and sha256s locally, then
// manifest.json last. Files already in the bucket with the same size and sha256 are
// skipped. progress, if not nil, is called as bytes are uploaded.
func (r *Remote) Push(ctx context.Context, dir string, progress func(Progress)) error {
	raw, err := readRemoteFileLimited(filepath.Join(dir, remoteManifestName), remoteMaxManifest)
	if err != nil {
		return fmt.Errorf("push %s: read manifest: %w", dir, err)
	}
	m, err := parseRemoteManifest(raw)
	if err != nil {
		return fmt.Errorf("push %s: %w", dir, err)
	}
	// Check everything before sending anything: a damaged local snapshot
	// leaves the bucket as it was.
	for _, name := range m.names() {
		if err := checkRemoteLocalFile(filepath.Join(dir, name), m.Files[name]); err != nil {
			return fmt.Errorf("push %s: %w", m.Key, err)
		}
	}
	for _, name := range m.names() {
		if err := r.pushObject(ctx, m.Key, name, filepath.Join(dir, name), m.Files[name], progress); err != nil {
			return fmt.Errorf("push %s: %w", m.Key, err)
		}
	}
	sum := sha256.Sum256(raw)
	manifest := remoteFileInfo{Size: int64(len(raw)), SHA256: hex.EncodeToString(sum[:])}
	if err := r.pushManifest(ctx, m.Key, raw, manifest); err != nil {
		return fmt.Errorf("push %s: %w", m.Key, err)
	}
	return nil
}

// checkRemoteLocalFile checks a local file's size and sha256.
func checkRemoteLocalFile(p string, want remoteFileInfo) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("check %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("check %s: %w", p, err)
	}
	if n != want.Size {
		return fmt.Errorf("check %s: %w: size %d, manifest says %d", p, ErrCorrupt, n, want.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("check %s: %w: sha256 %s, manifest says %s", p, ErrCorrupt, got, want.SHA256)
	}
	return nil
}

// remoteHas reports whether object exists with the given size and sha256.
func (r *Remote) remoteHas(ctx context.Context, object string, want remoteFileInfo) (bool, error) {
	var has bool
	err := r.retry(ctx, "stat "+object, func(ctx context.Context) error {
		info, err := r.client.StatObject(ctx, r.cfg.Bucket, object, minio.StatObjectOptions{})
		if isRemoteNotFound(err) {
			has = false
			return nil
		}
		if err != nil {
			return err
		}
		has = info.Size == want.Size && remoteMeta(info.UserMetadata, remoteMetaSHA256) == want.SHA256
		return nil
	})
	return has, err
}

// pushObject uploads one file unless the bucket already has it.
func (r *Remote) pushObject(ctx context.Context, key, name, p string, want remoteFileInfo, progress func(Progress)) error {
	object := r.object(key, name)
	has, err := r.remoteHas(ctx, object, want)
	if err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if has {
		r.opts.log.DebugContext(ctx, "snapshot file already in remote", "op", "push", "key", key, "file", name)
		remoteReport(progress, Progress{File: name, Done: want.Size, Total: want.Size})
		return nil
	}
	err = r.retry(ctx, "upload "+object, func(ctx context.Context) error {
		f, err := os.Open(p)
		if err != nil {
			return remotePermanent(fmt.Errorf("open %s: %w", p, err))
		}
		defer f.Close()
		// Hash what is really sent: a file that changed since it was
		// checked must not stay in the bucket under the checked digest.
		// (This also hides ReaderAt from minio-go: parts go one by one.)
		h := sha256.New()
		src := &remoteProgressReader{r: io.TeeReader(f, h), p: Progress{File: name, Total: want.Size}, fn: progress}
		_, err = r.client.PutObject(ctx, r.cfg.Bucket, object, src, want.Size, minio.PutObjectOptions{
			UserMetadata: map[string]string{remoteMetaSHA256: want.SHA256},
			ContentType:  "application/octet-stream",
		})
		if err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
			rmErr := r.client.RemoveObject(context.WithoutCancel(ctx), r.cfg.Bucket, object, minio.RemoveObjectOptions{})
			return remotePermanent(errors.Join(fmt.Errorf("%w: %s changed during upload (sha256 %s, manifest says %s)", ErrCorrupt, p, got, want.SHA256), rmErr))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upload %s: %w", name, err)
	}
	return nil
}

// pushManifest uploads manifest.json unless the bucket has the same bytes.
func (r *Remote) pushManifest(ctx context.Context, key string, raw []byte, info remoteFileInfo) error {
	object := r.object(key, remoteManifestName)
	has, err := r.remoteHas(ctx, object, info)
	if err == nil && !has {
		err = r.retry(ctx, "upload "+object, func(ctx context.Context) error {
			_, err := r.client.PutObject(ctx, r.cfg.Bucket, object, bytes.NewReader(raw), int64(len(raw)), minio.PutObjectOptions{
				UserMetadata: map[string]string{remoteMetaSHA256: info.SHA256},
				ContentType:  "application/json",
			})
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("upload manifest: %w", err)
	}
	return nil
}

// Pull downloads snapshot key into destDir, which it creates (its parent
// must exist); destDir may exist if it is empty. The manifest comes first,
// then each file, into a temporary name that is renamed once its size and
// sha256 match; manifest.json is written last. A failed transfer resumes
// with a Range request after a backoff (see WithRemoteRetry); ctx bounds
// the whole. On failure Pull removes everything it wrote.
func (r *Remote) Pull(ctx context.Context, key, destDir string, progress func(Progress)) (err error) {
	if err := validateRemoteKey(key); err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	raw, _, err := r.getManifest(ctx, key)
	if err != nil {
		return fmt.Errorf("pull %s: %w", key, err)
	}
	m, err := parseRemoteManifest(raw)
	if err != nil {
		return fmt.Errorf("pull %s: %w", key, err)
	}
	if m.Key != key {
		return fmt.Errorf("pull %s: %w: manifest is for key %q", key, ErrInvalid, m.Key)
	}

	created, err := makeRemoteDestDir(destDir)
	if err != nil {
		return fmt.Errorf("pull %s: %w", key, err)
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
		for _, name := range written {
			_ = os.Remove(filepath.Join(destDir, name))
		}
	}()

	for _, name := range m.names() {
		written = append(written, remotePartName(name), name)
		if err := r.pullFile(ctx, key, name, destDir, m.Files[name], progress); err != nil {
			return fmt.Errorf("pull %s: %w", key, err)
		}
	}
	written = append(written, remotePartName(remoteManifestName), remoteManifestName)
	if err := writeRemoteFileAtomic(destDir, remoteManifestName, raw); err != nil {
		return fmt.Errorf("pull %s: %w", key, err)
	}
	if err := syncRemoteDir(destDir); err != nil {
		return fmt.Errorf("pull %s: %w", key, err)
	}
	return nil
}

// makeRemoteDestDir creates dir, or accepts it if it exists and is empty;
// created says which.
func makeRemoteDestDir(dir string) (created bool, err error) {
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

// getManifest fetches a snapshot's manifest.json and when it was uploaded.
func (r *Remote) getManifest(ctx context.Context, key string) ([]byte, time.Time, error) {
	object := r.object(key, remoteManifestName)
	var raw []byte
	var mod time.Time
	err := r.retry(ctx, "get "+object, func(ctx context.Context) error {
		body, info, _, err := r.core().GetObject(ctx, r.cfg.Bucket, object, minio.GetObjectOptions{})
		if err != nil {
			if isRemoteNotFound(err) {
				return remotePermanent(fmt.Errorf("%w: no %s in %s", ErrNotFound, object, r.cfg))
			}
			return err
		}
		defer body.Close()
		raw, err = io.ReadAll(io.LimitReader(body, remoteMaxManifest+1))
		if err != nil {
			return err
		}
		if len(raw) > remoteMaxManifest {
			return remotePermanent(fmt.Errorf("%w: larger than %d bytes", ErrInvalid, remoteMaxManifest))
		}
		mod = info.LastModified
		return nil
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("get manifest: %w", err)
	}
	return raw, mod, nil
}

// pullFile downloads one file into destDir/.name.part, resuming after
// failures, then checks it and renames it to destDir/name.
func (r *Remote) pullFile(ctx context.Context, key, name, destDir string, want remoteFileInfo, progress func(Progress)) error {
	object := r.object(key, name)
	part := filepath.Join(destDir, remotePartName(name))
	f, err := os.OpenFile(part, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("pull file %s: %w", name, err)
	}
	defer f.Close()

	d := remoteDownload{
		r: r, object: object, f: f, want: want,
		h:  sha256.New(),
		p:  Progress{File: name, Total: want.Size},
		fn: progress,
	}
	if err := r.retry(ctx, "download "+object, d.attempt); err != nil {
		return fmt.Errorf("download %s: %w", name, err)
	}
	if got := hex.EncodeToString(d.h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("download %s: %w: sha256 %s, manifest says %s", name, ErrCorrupt, got, want.SHA256)
	}
	if err := f.Truncate(want.Size); err != nil { // trailing zeros were skipped, not written
		return fmt.Errorf("pull file %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pull file %s: %w", name, err)
	}
	if err := os.Rename(part, filepath.Join(destDir, name)); err != nil {
		return fmt.Errorf("pull file %s: %w", name, err)
	}
	return nil
}

// remoteDownload is the state of one file's download that survives a
// failed attempt: the bytes on disk, their digest and the object's ETag.
type remoteDownload struct {
	r      *Remote
	object string
	f      *os.File
	want   remoteFileInfo
	h      hash.Hash
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
			} else if _, err := d.f.Write(buf[:n]); err != nil {
				return remotePermanent(fmt.Errorf("write %s: %w", d.f.Name(), err))
			}
			d.h.Write(buf[:n])
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

// List returns the snapshots in the bucket, sorted by key. A key without
// a manifest (a push in progress or a delete half done) is not listed.
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
			if ok && remoteKeyRE.MatchString(key) {
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
		raw, mod, err := r.getManifest(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		var m *remoteManifest
		if err == nil {
			m, err = parseRemoteManifest(raw)
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
		e := RemoteEntry{Key: key, Size: int64(len(raw)), Created: mod}
		for _, f := range m.Files {
			e.Size += f.Size
		}
		if t, ok := m.created(); ok {
			e.Created = t
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	return entries, nil
}

// Delete removes snapshot key: its manifest first, so that no reader sees
// a snapshot whose files are going, then everything else under the key.
// It returns ErrNotFound if there was nothing under the key.
func (r *Remote) Delete(ctx context.Context, key string) error {
	if err := validateRemoteKey(key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	manifest := r.object(key, remoteManifestName)
	found := false
	err := r.retry(ctx, "delete "+manifest, func(ctx context.Context) error {
		_, err := r.client.StatObject(ctx, r.cfg.Bucket, manifest, minio.StatObjectOptions{})
		if isRemoteNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		return r.client.RemoveObject(ctx, r.cfg.Bucket, manifest, minio.RemoveObjectOptions{})
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	err = r.retry(ctx, "delete "+r.keyPrefix(key), func(ctx context.Context) error {
		var objects []minio.ObjectInfo
		for obj := range r.client.ListObjectsIter(ctx, r.cfg.Bucket, minio.ListObjectsOptions{Prefix: r.keyPrefix(key), Recursive: true}) {
			if obj.Err != nil {
				return fmt.Errorf("list: %w", obj.Err)
			}
			objects = append(objects, obj)
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
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if !found {
		return fmt.Errorf("delete %s: %w in %s", key, ErrNotFound, r.cfg)
	}
	return nil
}

// errRemoteStalled is the cause of an attempt cancelled for lack of bytes.
var errRemoteStalled = errors.New("no data received within the stall timeout")

// remoteStallCause says so when err comes from the stall watchdog.
func remoteStallCause(actx context.Context, err error) error {
	if cause := context.Cause(actx); errors.Is(cause, errRemoteStalled) && !errors.Is(err, errRemoteStalled) {
		return fmt.Errorf("%w (%w)", errRemoteStalled, err)
	}
	return err
}

// remotePermanentError marks an error that a retry cannot fix.
type remotePermanentError struct{ err error }

func (e remotePermanentError) Error() string { return e.err.Error() }
func (e remotePermanentError) Unwrap() error { return e.err }

func remotePermanent(err error) error { return remotePermanentError{err} }

// retry runs fn until it succeeds, fails for good, or the attempts or ctx
// run out, waiting a growing backoff between attempts.
func (r *Remote) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	delay := r.opts.backoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %w)", context.Cause(ctx), err)
		}
		if !isRemoteRetryable(err) {
			return err
		}
		if attempt >= r.opts.attempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		r.opts.log.WarnContext(ctx, "remote snapshot request failed, retrying",
			"op", what, "attempt", attempt, "of", r.opts.attempts, "delay", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %w)", context.Cause(ctx), err)
		case <-t.C:
		}
		delay = min(2*delay, r.opts.maxBackoff)
	}
}

// isRemoteRetryable: network trouble and server-side errors are worth
// another try; answers about the request or the data are not.
func isRemoteRetryable(err error) bool {
	var p remotePermanentError
	if errors.As(err, &p) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) {
		return false
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case resp.StatusCode >= 500, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout:
			return true
		case resp.StatusCode == 0:
			// minio-go reports some transport failures without a status.
			return resp.Code == "" || resp.Code == "RequestTimeout" || resp.Code == "SlowDown"
		}
		return false
	}
	var pe *fs.PathError
	return !errors.As(err, &pe)
}

func isRemoteNotFound(err error) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	return resp.Code == minio.NoSuchKey || resp.StatusCode == http.StatusNotFound && resp.Code != minio.NoSuchBucket
}

func isRemotePreconditionFailed(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && resp.StatusCode == http.StatusPreconditionFailed
}

// remoteMeta looks up user metadata whatever the case of its key.
func remoteMeta(m map[string]string, key string) string {
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

func remoteReport(fn func(Progress), p Progress) {
	if fn != nil {
		fn(p)
	}
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

// readRemoteFileLimited reads a file of at most limit bytes.
func readRemoteFileLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", p, ErrInvalid, limit)
	}
	return data, nil
}

// writeRemoteFileAtomic writes dir/name through a temporary name.
func writeRemoteFileAtomic(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, remotePartName(name))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func syncRemoteDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
