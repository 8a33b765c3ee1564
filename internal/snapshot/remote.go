package snapshot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Remote is an S3-compatible bucket holding snapshots under a prefix, each
// under a name: <prefix>/<name>/manifest.json, manifest.sig and <file>. A
// snapshot's name is its key (Push, Pull); a hibernated sandbox's is
// HibernationName(id, generation) (PushDir, PullDir).
//
// The manifest is uploaded after every file it lists and after its
// signature, and removed before them, so a reader that finds a manifest
// finds a complete snapshot. Every file carries its digest as user
// metadata, which lets a push skip what is already there. A pull trusts
// nothing the bucket says until the manifest's signature is accepted by
// the Remote's trust policy (WithRemoteTrust); it then checks the sizes
// the manifest declares against its Spec before downloading anything,
// and every file's size and digest before keeping it.
type Remote struct {
	cfg    RemoteConfig
	client *minio.Client
	opts   remoteOptions
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
	signer       *Signer
	trust        *Trust
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

// WithRemoteSigner signs every push. Without a signer a push fails,
// unless the trust policy is off (then pushes go unsigned).
func WithRemoteSigner(s *Signer) RemoteOption {
	return func(o *remoteOptions) { o.signer = s }
}

// WithRemoteTrust sets whose signatures a pull accepts. Without it, every
// pull is refused.
func WithRemoteTrust(t *Trust) RemoteOption {
	return func(o *remoteOptions) { o.trust = t }
}

const (
	remoteMetaDigest = "Digest"
	remoteCopyBuffer = 256 << 10
	// Temporary names start with '.', which no valid file name does, so
	// they cannot collide with a file of the snapshot.
	remotePartSuffix = ".part"
	// maxNameSegments bounds a name's depth: sandboxes/<id>/<generation>.
	maxNameSegments = 4
)

// nameSegmentRE is one "/"-separated part of a name; a key is one.
var nameSegmentRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// validateName checks a name a snapshot is stored under in a Remote.
func validateName(name string) error {
	segs := strings.Split(name, "/")
	if len(segs) > maxNameSegments {
		return fmt.Errorf("%w: name %q has more than %d parts", ErrInvalid, name, maxNameSegments)
	}
	for _, s := range segs {
		if !nameSegmentRE.MatchString(s) {
			return fmt.Errorf("%w: name %q (want up to %d parts of A-Z, a-z, 0-9, '.', '_', '-', separated by '/')", ErrInvalid, name, maxNameSegments)
		}
	}
	return nil
}

// HibernationName is the name a hibernated sandbox's snapshot has in a
// Remote: sandboxes/<id>/<generation>. Each generation has its own, so a
// stale owner's late push never overwrites a newer one, and a signature
// made for one generation is refused for another.
func HibernationName(id string, generation int64) (string, error) {
	if !nameSegmentRE.MatchString(id) || generation < 0 {
		return "", fmt.Errorf("%w: hibernation of sandbox %q generation %d", ErrInvalid, id, generation)
	}
	return "sandboxes/" + id + "/" + strconv.FormatInt(generation, 10), nil
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

// object returns the object name of a snapshot's file.
func (r *Remote) object(name, file string) string {
	return path.Join(r.cfg.Prefix, name, file)
}

// namePrefix returns the object name prefix of a snapshot, "/"-terminated
// so that key "a" does not match "ab".
func (r *Remote) namePrefix(name string) string {
	return path.Join(r.cfg.Prefix, name) + "/"
}

// stat returns an object's info, or nil if there is no such object.
func (r *Remote) stat(ctx context.Context, object string) (*minio.ObjectInfo, error) {
	var info *minio.ObjectInfo
	err := r.retry(ctx, "stat "+object, func(ctx context.Context) error {
		i, err := r.client.StatObject(ctx, r.cfg.Bucket, object, minio.StatObjectOptions{})
		if isRemoteNotFound(err) {
			info = nil
			return nil
		}
		if err != nil {
			return err
		}
		info = &i
		return nil
	})
	return info, err
}

// has reports whether object exists with the given size and digest.
func (r *Remote) has(ctx context.Context, object string, want FileInfo) (bool, error) {
	info, err := r.stat(ctx, object)
	if err != nil || info == nil {
		return false, err
	}
	return info.Size == want.Size && remoteMeta(info.UserMetadata, remoteMetaDigest) == want.Digest, nil
}

// getSmall fetches a small object (a manifest, a signature) whole, and
// when it was uploaded; ErrNotFound if there is none.
func (r *Remote) getSmall(ctx context.Context, object string, limit int64) ([]byte, time.Time, error) {
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
		raw, err = io.ReadAll(io.LimitReader(body, limit+1))
		if err != nil {
			return err
		}
		if int64(len(raw)) > limit {
			return remotePermanent(fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, object, limit))
		}
		mod = info.LastModified
		return nil
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("get %s: %w", path.Base(object), err)
	}
	return raw, mod, nil
}

func (r *Remote) remove(ctx context.Context, object string) error {
	return r.retry(ctx, "remove "+object, func(ctx context.Context) error {
		return r.client.RemoveObject(ctx, r.cfg.Bucket, object, minio.RemoveObjectOptions{})
	})
}

func remoteReport(fn func(Progress), p Progress) {
	if fn != nil {
		fn(p)
	}
}
