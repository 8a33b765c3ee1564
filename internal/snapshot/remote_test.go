package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestParseRemoteURL(t *testing.T) {
	creds := map[string]string{"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "SECRET"}
	with := func(extra map[string]string) map[string]string {
		env := map[string]string{}
		for k, v := range creds {
			env[k] = v
		}
		for k, v := range extra {
			env[k] = v
		}
		return env
	}
	tests := map[string]struct {
		url     string
		env     map[string]string
		want    RemoteConfig
		wantErr string
	}{
		"bucket only, AWS by default": {
			url:  "s3://snaps",
			env:  creds,
			want: RemoteConfig{Bucket: "snaps", Endpoint: "s3.amazonaws.com", Secure: true, AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		"prefix, trailing slash dropped": {
			url:  "s3://snaps/fleet/prod/",
			env:  creds,
			want: RemoteConfig{Bucket: "snaps", Prefix: "fleet/prod", Endpoint: "s3.amazonaws.com", Secure: true, AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		"http endpoint means no TLS": {
			url:  "s3://snaps/p",
			env:  with(map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-3", "AWS_SESSION_TOKEN": "TOK"}),
			want: RemoteConfig{Bucket: "snaps", Prefix: "p", Endpoint: "127.0.0.1:9000", Region: "eu-west-3", AccessKeyID: "AKID", SecretAccessKey: "SECRET", SessionToken: "TOK"},
		},
		"service endpoint wins over the general one": {
			url:  "s3://snaps",
			env:  with(map[string]string{"AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_S3": "https://s3.example.com/", "AWS_DEFAULT_REGION": "us-west-2"}),
			want: RemoteConfig{Bucket: "snaps", Endpoint: "s3.example.com", Secure: true, Region: "us-west-2", AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		"AWS_REGION wins over AWS_DEFAULT_REGION": {
			url:  "s3://snaps",
			env:  with(map[string]string{"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}),
			want: RemoteConfig{Bucket: "snaps", Endpoint: "s3.amazonaws.com", Secure: true, Region: "a", AccessKeyID: "AKID", SecretAccessKey: "SECRET"},
		},
		"not s3 scheme":         {url: "https://snaps/p", env: creds, wantErr: "want s3://bucket[/prefix]"},
		"no bucket":             {url: "s3://", env: creds, wantErr: "bad bucket name"},
		"upper-case bucket":     {url: "s3://Snaps", env: creds, wantErr: "bad bucket name"},
		"bucket too short":      {url: "s3://ab", env: creds, wantErr: "bad bucket name"},
		"bucket with ..":        {url: "s3://a..b", env: creds, wantErr: "bad bucket name"},
		"dot-dot in prefix":     {url: "s3://snaps/a/../b", env: creds, wantErr: "bad prefix segment"},
		"empty prefix segment":  {url: "s3://snaps/a//b", env: creds, wantErr: "bad prefix segment"},
		"query":                 {url: "s3://snaps/p?x=1", env: creds, wantErr: "not allowed"},
		"user info":             {url: "s3://me@snaps", env: creds, wantErr: "not allowed"},
		"endpoint bad scheme":   {url: "s3://snaps", env: with(map[string]string{"AWS_ENDPOINT_URL": "ftp://x"}), wantErr: "want http:// or https://"},
		"endpoint without host": {url: "s3://snaps", env: with(map[string]string{"AWS_ENDPOINT_URL": "http://"}), wantErr: "has no host"},
		"endpoint with path":    {url: "s3://snaps", env: with(map[string]string{"AWS_ENDPOINT_URL": "http://h:1/x"}), wantErr: "scheme://host[:port] only"},
		"no credentials":        {url: "s3://snaps", env: map[string]string{}, wantErr: "missing credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"},
		"no secret":             {url: "s3://snaps", env: map[string]string{"AWS_ACCESS_KEY_ID": "AKID"}, wantErr: "missing credentials: set AWS_SECRET_ACCESS_KEY"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseRemoteURL(tt.url, func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseRemoteURL(%q) error = %v, want one containing %q", tt.url, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRemoteURL(%q): %v", tt.url, err)
			}
			if got != tt.want {
				t.Fatalf("parseRemoteURL(%q) =\n %#v, want\n %#v", tt.url, got, tt.want)
			}
			if s := got.String(); strings.Contains(s, "SECRET") || strings.Contains(s, "TOK") {
				t.Errorf("String() leaks a secret: %s", s)
			}
		})
	}
}

func TestNewRemoteMissingCredentials(t *testing.T) {
	_, err := NewRemote("s3://snaps", WithRemoteEnv(func(string) string { return "" }))
	if err == nil || !strings.Contains(err.Error(), "missing credentials") {
		t.Fatalf("NewRemote without credentials: %v, want a missing credentials error", err)
	}
}

// TestRemotePushRefusesBadLocalSnapshot needs no server: Push checks the
// local snapshot before it sends anything.
func TestRemotePushRefusesBadLocalSnapshot(t *testing.T) {
	env := map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1"}
	r, err := NewRemote("s3://snaps", WithRemoteEnv(func(k string) string { return env[k] }), WithRemoteRetry(1, time.Millisecond, time.Millisecond),
		WithRemoteSigner(remoteTestSigner), WithRemoteTrust(remoteTestTrust))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	evil := t.TempDir()
	writeRemoteTestManifest(t, evil, remoteTestManifestJSON(t, "python-k1", map[string]FileInfo{"../evil": {Size: 1, Digest: strings.Repeat("0", 64)}}))
	if err := r.Push(ctx, evil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Push of a manifest listing ../evil = %v, want ErrInvalid", err)
	}

	dir := t.TempDir()
	writeRemoteTestSnapshot(t, dir, "python-k1", map[string][]byte{"memory": []byte("hello")})
	if err := os.WriteFile(filepath.Join(dir, "memory"), []byte("HELLO"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Push(ctx, dir, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Push of a file that does not match its manifest = %v, want ErrCorrupt", err)
	}

	// Without a signing key a push is refused, unless trust is off.
	unsigned, err := NewRemote("s3://snaps", WithRemoteEnv(func(k string) string { return env[k] }), WithRemoteTrust(remoteTestTrust))
	if err != nil {
		t.Fatal(err)
	}
	good := t.TempDir()
	writeRemoteTestSnapshot(t, good, "python-k1", map[string][]byte{"memory": []byte("hello")})
	if err := unsigned.Push(ctx, good, nil); !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), "key generate") {
		t.Errorf("Push without a signing key = %v, want ErrUnsigned that says how to make a key", err)
	}
}

// TestRemoteS3 runs the Remote against a real MinIO server.
func TestRemoteS3(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("PushPullListDelete", func(t *testing.T) {
		var requests remoteRequestLog
		r := s.Remote("fleet/test", WithRemoteTransport(requests.wrap(t)))
		files := map[string][]byte{"memory": remoteTestBytes(1, 20<<20), "vmstate": remoteTestBytes(2, 70000)}
		src := t.TempDir()
		writeRemoteTestSnapshot(t, src, "python-1a2b3c4d5e6f7a8b", files)

		var pushed sync.Map // file -> last Progress
		if err := r.Push(ctx, src, func(p Progress) { pushed.Store(p.File, p) }); err != nil {
			t.Fatalf("Push: %v", err)
		}
		for name, data := range files {
			p, _ := pushed.Load(name)
			if p != (Progress{File: name, Done: int64(len(data)), Total: int64(len(data))}) {
				t.Errorf("last push progress of %s = %+v, want all %d bytes", name, p, len(data))
			}
		}
		if n := requests.count(http.MethodPut); n < 3 {
			t.Errorf("first push made %d PUT requests, want at least 3 (two files and the manifest)", n)
		}
		requests.reset()
		if err := r.Push(ctx, src, nil); err != nil {
			t.Fatalf("second Push: %v", err)
		}
		if n := requests.count(http.MethodPut) + requests.count(http.MethodPost); n != 0 {
			t.Errorf("second push uploaded: %d PUT/POST requests, want none:\n%s", n, &requests)
		}

		dest := filepath.Join(t.TempDir(), "pulled")
		if err := r.Pull(ctx, remoteTestKey("python-1a2b3c4d5e6f7a8b"), dest, nil); err != nil {
			t.Fatalf("Pull: %v", err)
		}
		checkRemoteTestDir(t, src, dest)

		// An empty existing directory is fine, a non-empty one is not.
		empty := t.TempDir()
		if err := r.Pull(ctx, remoteTestKey("python-1a2b3c4d5e6f7a8b"), empty, nil); err != nil {
			t.Fatalf("Pull into an empty directory: %v", err)
		}
		checkRemoteTestDir(t, src, empty)
		if err := r.Pull(ctx, remoteTestKey("python-1a2b3c4d5e6f7a8b"), empty, nil); !errors.Is(err, fs.ErrExist) {
			t.Errorf("Pull into a non-empty directory = %v, want fs.ErrExist", err)
		}

		list, err := r.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		manifest, _ := os.ReadFile(filepath.Join(src, "manifest.json"))
		wantSize := int64(len(files["memory"]) + len(files["vmstate"]) + len(manifest))
		if len(list) != 1 || list[0].Key != remoteTestKey("python-1a2b3c4d5e6f7a8b") || list[0].Size != wantSize || !list[0].Created.Equal(remoteTestCreated) {
			t.Errorf("List = %+v, want one entry %s of %d bytes created %v", list, remoteTestKey("python-1a2b3c4d5e6f7a8b"), wantSize, remoteTestCreated)
		}

		// A second snapshot; another prefix in the same bucket stays apart.
		src2 := t.TempDir()
		writeRemoteTestSnapshot(t, src2, "go-0000000000000001", map[string][]byte{"memory": []byte("m"), "vmstate": []byte("v")})
		if err := r.Push(ctx, src2, nil); err != nil {
			t.Fatalf("Push second snapshot: %v", err)
		}
		if err := s.Remote("other").Push(ctx, src2, nil); err != nil {
			t.Fatalf("Push to another prefix: %v", err)
		}
		list, err = r.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got := remoteEntryKeys(list); got != remoteTestKey("go-0000000000000001")+","+remoteTestKey("python-1a2b3c4d5e6f7a8b") {
			t.Errorf("List keys = %s", got)
		}

		if err := r.Delete(ctx, remoteTestKey("python-1a2b3c4d5e6f7a8b")); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if err := r.Delete(ctx, remoteTestKey("python-1a2b3c4d5e6f7a8b")); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Delete = %v, want ErrNotFound", err)
		}
		if err := r.Pull(ctx, remoteTestKey("python-1a2b3c4d5e6f7a8b"), filepath.Join(t.TempDir(), "x"), nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("Pull after Delete = %v, want ErrNotFound", err)
		}
		for obj := range s.Client().ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: "fleet/test/python-", Recursive: true}) {
			t.Errorf("left after Delete: %s", obj.Key)
		}
		list, err = r.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got := remoteEntryKeys(list); got != remoteTestKey("go-0000000000000001") {
			t.Errorf("List keys after Delete = %s", got)
		}
	})

	t.Run("PullUnknownKey", func(t *testing.T) {
		r := s.Remote("")
		dest := filepath.Join(t.TempDir(), "pulled")
		err := r.Pull(ctx, "python-ffffffffffffffff", dest, nil)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Pull of an unknown key = %v, want ErrNotFound", err)
		}
		if !strings.Contains(err.Error(), "python-ffffffffffffffff") {
			t.Errorf("error does not name the key: %v", err)
		}
		requireRemoteTestAbsent(t, dest)
		if err := r.Pull(ctx, "../etc", dest, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("Pull of key ../etc = %v, want ErrInvalid", err)
		}
	})

	t.Run("PullCorruptObject", func(t *testing.T) {
		r := s.Remote("corrupt")
		files := map[string][]byte{"memory": remoteTestBytes(3, 1<<20), "vmstate": remoteTestBytes(4, 1000)}
		src := t.TempDir()
		writeRemoteTestSnapshot(t, src, "python-0000000000000003", files)
		if err := r.Push(ctx, src, nil); err != nil {
			t.Fatalf("Push: %v", err)
		}
		// Same size and even the same digest metadata: only the bytes lie.
		bad := remoteTestBytes(5, 1<<20)
		if _, err := s.Client().PutObject(ctx, s.bucket, "corrupt/"+remoteTestKey("python-0000000000000003")+"/memory", bytes.NewReader(bad), int64(len(bad)),
			minio.PutObjectOptions{UserMetadata: map[string]string{"digest": refDigest(files["memory"])}}); err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(t.TempDir(), "pulled")
		err := r.Pull(ctx, remoteTestKey("python-0000000000000003"), dest, nil)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "digest") {
			t.Fatalf("Pull of a corrupt object = %v, want ErrCorrupt about its digest", err)
		}
		requireRemoteTestAbsent(t, dest)

		// A truncated object is caught by its size, before any download.
		if _, err := s.Client().PutObject(ctx, s.bucket, "corrupt/"+remoteTestKey("python-0000000000000003")+"/memory", bytes.NewReader(bad[:100]), 100, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := r.Pull(ctx, remoteTestKey("python-0000000000000003"), dest, nil); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Pull of a truncated object = %v, want ErrCorrupt", err)
		}
		requireRemoteTestAbsent(t, dest)

		// Push repairs it: the remote object no longer matches the digest.
		if err := r.Push(ctx, src, nil); err != nil {
			t.Fatalf("Push: %v", err)
		}
		if err := r.Pull(ctx, remoteTestKey("python-0000000000000003"), dest, nil); err != nil {
			t.Fatalf("Pull after repair: %v", err)
		}
		checkRemoteTestDir(t, src, dest)
	})

	t.Run("PullRefusesEvilManifest", func(t *testing.T) {
		// Each manifest is signed by a trusted key, so what refuses it is
		// the manifest rule (the same one the Store applies), not trust.
		r := s.Remote("evil")
		key := remoteTestKey("python-0000000000000004")
		one := map[string]FileInfo{"memory": {Size: 1, Digest: digestBytes([]byte("x"))}}
		valid := remoteTestManifestJSON(t, "python-0000000000000004", one)
		for name, manifest := range map[string]string{
			"parent":         remoteTestManifestJSON(t, "python-0000000000000004", map[string]FileInfo{"../evil": one["memory"]}),
			"long file name": remoteTestManifestJSON(t, "python-0000000000000004", map[string]FileInfo{strings.Repeat("m", 100): one["memory"]}),
			"unknown field":  strings.Replace(valid, `"created"`, `"pad": 1, "created"`, 1),
			"wrong key":      remoteTestManifestJSON(t, "python-0000000000000005", one),
			"huge":           `{"key":"` + key + `","pad":"` + strings.Repeat("x", 2<<20) + `"}`,
			"not a json":     `<html>`,
		} {
			t.Run(name, func(t *testing.T) {
				s.plant(t, "evil/"+key, manifest, remoteTestSigner.Sign(key, []byte(manifest)))
				parent := t.TempDir()
				dest := filepath.Join(parent, "pulled")
				if err := r.Pull(ctx, key, dest, nil); !errors.Is(err, ErrInvalid) {
					t.Fatalf("Pull = %v, want ErrInvalid", err)
				}
				requireRemoteTestAbsent(t, dest)
				requireRemoteTestAbsent(t, filepath.Join(parent, "evil"))
			})
		}
		// List skips what it cannot trust instead of failing.
		if list, err := r.List(ctx); err != nil || len(list) != 0 {
			t.Errorf("List = %+v, %v, want nothing", list, err)
		}
	})
}

// TestRemotePullResumesAfterServerRestart takes MinIO away in the middle
// of a download and brings it back a second later: Pull must resume with
// a Range request and finish with the right bytes.
func TestRemotePullResumesAfterServerRestart(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var requests remoteRequestLog
	r := s.Remote("", WithRemoteRetry(30, 100*time.Millisecond, time.Second), WithRemoteTransport(requests.wrap(t)))
	files := map[string][]byte{"memory": remoteTestBytes(6, 20<<20), "vmstate": remoteTestBytes(7, 70000)}
	src := t.TempDir()
	writeRemoteTestSnapshot(t, src, "python-0000000000000006", files)
	if err := r.Push(ctx, src, nil); err != nil {
		t.Fatalf("Push: %v", err)
	}

	restarted := make(chan error, 1)
	var stoppedAt, last int64
	var timer *time.Timer
	dest := filepath.Join(t.TempDir(), "pulled")
	err := r.Pull(ctx, remoteTestKey("python-0000000000000006"), dest, func(p Progress) {
		if p.File != "memory" {
			return
		}
		if p.Done < last {
			t.Errorf("progress went back from %d to %d: the download restarted instead of resuming", last, p.Done)
		}
		last = p.Done
		if stoppedAt == 0 && p.Done < p.Total {
			stoppedAt = p.Done
			s.Stop()
			// The outage itself, not a wait for something: the server
			// is down for a second while Pull retries.
			timer = time.AfterFunc(time.Second, func() { restarted <- s.start() })
		}
	})
	if timer == nil {
		t.Fatal("the server was never stopped: no progress before the end of memory")
	}
	select {
	case rerr := <-restarted:
		if rerr != nil {
			t.Fatalf("restart MinIO: %v", rerr)
		}
	case <-ctx.Done():
		t.Fatal("MinIO restart did not finish")
	}
	if err != nil {
		t.Fatalf("Pull across a server restart: %v", err)
	}
	checkRemoteTestDir(t, src, dest)
	ranges := requests.ranges("/" + remoteTestKey("python-0000000000000006") + "/memory")
	if len(ranges) == 0 {
		t.Fatalf("no Range request for memory after the server stopped at byte %d:\n%s", stoppedAt, &requests)
	}
	t.Logf("stopped the server at byte %d; resumed with %v", stoppedAt, ranges)
}

// TestRemotePullResumesAfterServerHang freezes MinIO mid-download: the
// connection stays open but silent, so only the stall timeout can notice.
// Pull must abandon the attempt, retry, and finish once the server thaws.
func TestRemotePullResumesAfterServerHang(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var requests remoteRequestLog
	r := s.Remote("", WithRemoteRetry(30, 100*time.Millisecond, time.Second),
		WithRemoteStallTimeout(300*time.Millisecond), WithRemoteTransport(requests.wrap(t)))
	files := map[string][]byte{"memory": remoteTestBytes(10, 20<<20), "vmstate": remoteTestBytes(11, 1000)}
	src := t.TempDir()
	writeRemoteTestSnapshot(t, src, "python-000000000000000a", files)
	if err := r.Push(ctx, src, nil); err != nil {
		t.Fatalf("Push: %v", err)
	}

	thawed := make(chan error, 1)
	var timer *time.Timer
	dest := filepath.Join(t.TempDir(), "pulled")
	start := time.Now()
	err := r.Pull(ctx, remoteTestKey("python-000000000000000a"), dest, func(p Progress) {
		if timer == nil && p.File == "memory" && p.Done < p.Total {
			if err := s.Freeze(); err != nil {
				t.Fatal(err)
			}
			// The hang itself: the server is silent for 1.5s.
			timer = time.AfterFunc(1500*time.Millisecond, func() { thawed <- s.Thaw() })
		}
	})
	if timer == nil {
		t.Fatal("the server was never frozen")
	}
	if terr := <-thawed; terr != nil {
		t.Fatal(terr)
	}
	if err != nil {
		t.Fatalf("Pull across a server hang: %v", err)
	}
	checkRemoteTestDir(t, src, dest)
	if ranges := requests.ranges("/" + remoteTestKey("python-000000000000000a") + "/memory"); len(ranges) == 0 {
		t.Errorf("no Range request for memory after the hang:\n%s", &requests)
	}
	t.Logf("pulled across a 1.5s hang in %v", time.Since(start))
}

// TestRemotePullServerGone: with the server gone for good, Pull gives up
// within its bounds and leaves nothing behind.
func TestRemotePullServerGone(t *testing.T) {
	s := startMinIO(t)
	ctx := context.Background()
	files := map[string][]byte{"memory": remoteTestBytes(8, 20<<20), "vmstate": remoteTestBytes(9, 100)}
	src := t.TempDir()
	writeRemoteTestSnapshot(t, src, "python-0000000000000008", files)
	if err := s.Remote("").Push(ctx, src, nil); err != nil {
		t.Fatalf("Push: %v", err)
	}

	t.Run("BoundedAttempts", func(t *testing.T) {
		r := s.Remote("", WithRemoteRetry(4, 50*time.Millisecond, 200*time.Millisecond))
		dest := filepath.Join(t.TempDir(), "pulled")
		start := time.Now()
		err := r.Pull(ctx, remoteTestKey("python-0000000000000008"), dest, func(p Progress) {
			if p.Done < p.Total {
				s.Stop() // and never again
			}
		})
		elapsed := time.Since(start)
		if err == nil {
			t.Fatal("Pull succeeded with the server gone")
		}
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) {
			t.Errorf("Pull = %v, want a transport error, not a verdict on the data", err)
		}
		if !strings.Contains(err.Error(), "after 4 attempts") {
			t.Errorf("Pull = %v, want it to say it gave up after 4 attempts", err)
		}
		if elapsed > 15*time.Second {
			t.Errorf("Pull took %v to give up, want well under 15s", elapsed)
		}
		requireRemoteTestAbsent(t, dest)
		t.Logf("gave up after %v: %v", elapsed, err)
	})

	t.Run("ContextDeadline", func(t *testing.T) {
		r := s.Remote("", WithRemoteRetry(1000, 100*time.Millisecond, time.Second))
		dest := filepath.Join(t.TempDir(), "pulled")
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		start := time.Now()
		err := r.Pull(ctx, remoteTestKey("python-0000000000000008"), dest, nil)
		elapsed := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Pull = %v, want context.DeadlineExceeded", err)
		}
		if elapsed > 5*time.Second {
			t.Errorf("Pull took %v with a 2s deadline", elapsed)
		}
		requireRemoteTestAbsent(t, dest)
	})
}

// remoteTestCreated is the "created" time in test manifests.
var remoteTestCreated = time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC)

// remoteTestSpec is the Spec of the test snapshot called label: a
// language ("python-...") and, in the image id, the label itself.
func remoteTestSpec(label string) Spec {
	lang, _, _ := strings.Cut(label, "-")
	return Spec{Language: lang, Driver: "qemu", DriverVersion: "10.0.2", Machine: "tcg", KernelID: "k1",
		ImageID: label, VCPUs: 1, MemoryMiB: 512, AgentProtocol: 1}
}

// remoteTestKey is the key of the test snapshot called label.
func remoteTestKey(label string) string { return remoteTestSpec(label).Key() }

// remoteTestManifestJSON is the manifest of the test snapshot called
// label listing files, encoded without any check (it may be evil).
func remoteTestManifestJSON(t *testing.T, label string, files map[string]FileInfo) string {
	t.Helper()
	spec := remoteTestSpec(label)
	m := Manifest{Version: ManifestVersion, Key: spec.Key(), Spec: spec, Files: files, Created: remoteTestCreated}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// writeRemoteTestSnapshot writes files and a manifest for them into dir,
// as the test snapshot called label, and returns its key. Digests come
// from refDigest, an implementation independent of the package's.
func writeRemoteTestSnapshot(t *testing.T, dir, label string, files map[string][]byte) string {
	t.Helper()
	infos := map[string]FileInfo{}
	for name, data := range files {
		infos[name] = FileInfo{Size: int64(len(data)), Digest: refDigest(data)}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeRemoteTestManifest(t, dir, remoteTestManifestJSON(t, label, infos))
	return remoteTestKey(label)
}

func writeRemoteTestManifest(t *testing.T, dir, manifest string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
}

// remoteTestBytes returns n reproducible pseudo-random bytes.
func remoteTestBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// checkRemoteTestDir checks that got holds exactly the files of want,
// plus what a pull adds: the signature, the pull record and the digest
// cache.
func checkRemoteTestDir(t *testing.T, want, got string) {
	t.Helper()
	wantEntries, err := os.ReadDir(want)
	if err != nil {
		t.Fatal(err)
	}
	gotEntries, err := os.ReadDir(got)
	if err != nil {
		t.Fatal(err)
	}
	wantNames := map[string]bool{signatureFile: true, originFile: true, verifiedFile: true}
	for _, e := range wantEntries {
		wantNames[e.Name()] = true
	}
	var names []string
	extra := false
	for _, e := range gotEntries {
		names = append(names, e.Name())
		extra = extra || !wantNames[e.Name()]
	}
	if extra || len(gotEntries) < len(wantEntries) {
		t.Errorf("%s holds %v, want the %d files pushed and %s, %s, %s", got, names, len(wantEntries), signatureFile, originFile, verifiedFile)
	}
	for _, e := range wantEntries {
		if strings.HasPrefix(e.Name(), ".") { // caches: per host, per inode
			continue
		}
		w, err := os.ReadFile(filepath.Join(want, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		g, err := os.ReadFile(filepath.Join(got, e.Name()))
		if err != nil {
			t.Errorf("pulled snapshot: %v", err)
			continue
		}
		if !bytes.Equal(g, w) {
			t.Errorf("pulled %s differs from the pushed one (%d bytes, want %d)", e.Name(), len(g), len(w))
		}
	}
}

func requireRemoteTestAbsent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists after a failed Pull (%v)", p, err)
	}
}

func remoteEntryKeys(list []RemoteEntry) string {
	var keys []string
	for _, e := range list {
		keys = append(keys, e.Key)
	}
	return strings.Join(keys, ",")
}

// remoteRequestLog records the requests a Remote sends.
type remoteRequestLog struct {
	mu   sync.Mutex
	reqs []string // "METHOD path range"
}

type remoteTransportFunc func(*http.Request) (*http.Response, error)

func (f remoteTransportFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

func (l *remoteRequestLog) wrap(t *testing.T) http.RoundTripper {
	base, err := minio.DefaultTransport(false /* secure */)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(base.CloseIdleConnections)
	return remoteTransportFunc(func(req *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.reqs = append(l.reqs, req.Method+" "+req.URL.Path+" "+req.Header.Get("Range"))
		l.mu.Unlock()
		return base.RoundTrip(req)
	})
}

func (l *remoteRequestLog) count(method string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.reqs {
		if strings.HasPrefix(r, method+" ") {
			n++
		}
	}
	return n
}

// ranges returns the Range headers of GETs of paths ending in suffix.
func (l *remoteRequestLog) ranges(suffix string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.reqs {
		f := strings.Fields(r)
		if len(f) == 3 && f[0] == http.MethodGet && strings.HasSuffix(f[1], suffix) {
			out = append(out, f[2])
		}
	}
	return out
}

func (l *remoteRequestLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = nil
}

func (l *remoteRequestLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.reqs, "\n")
}

// A memory file is mostly zeros; pulled, it must stay sparse on disk (and
// byte-identical), or every host would pay the guest's full RAM in disk.
func TestRemotePullKeepsMemorySparse(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := s.Remote("")
	mem := make([]byte, 32<<20) // 32 MiB, with 1 MiB of data in the middle and a zero tail
	copy(mem[8<<20:], remoteTestBytes(9, 1<<20))
	files := map[string][]byte{"memory": mem, "vmstate": remoteTestBytes(10, 7000)}
	src := t.TempDir()
	writeRemoteTestSnapshot(t, src, "python-0000000000000009", files)
	if err := r.Push(ctx, src, nil); err != nil {
		t.Fatalf("Push: %v", err)
	}
	dest := filepath.Join(t.TempDir(), "pulled")
	if err := r.Pull(ctx, remoteTestKey("python-0000000000000009"), dest, nil); err != nil {
		t.Fatalf("Pull: %v", err)
	}
	checkRemoteTestDir(t, src, dest)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dest, "memory"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(mem)) {
		t.Fatalf("pulled memory is %d bytes, want %d", st.Size, len(mem))
	}
	if alloc := st.Blocks * 512; alloc > 4<<20 {
		t.Fatalf("pulled memory takes %d MiB on disk for 1 MiB of data: not sparse", alloc>>20)
	}
}
