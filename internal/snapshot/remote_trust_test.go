package snapshot

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRemoteRefusesForgedSnapshots performs the attacks of someone who
// can write to the bucket but does not hold a trusted signing key. Before
// signatures, a forged manifest plus a forged memory file was pulled,
// adopted and restored.
func TestRemoteRefusesForgedSnapshots(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var requests remoteRequestLog
	r := s.Remote("trust", WithRemoteTransport(requests.wrap(t)))

	files := map[string][]byte{"memory": remoteTestBytes(30, 1<<20), "vmstate": remoteTestBytes(31, 5000)}
	srcA, srcB := t.TempDir(), t.TempDir()
	keyA := writeRemoteTestSnapshot(t, srcA, "python-a", files)
	keyB := writeRemoteTestSnapshot(t, srcB, "python-b", map[string][]byte{"memory": remoteTestBytes(32, 1<<20), "vmstate": remoteTestBytes(33, 5000)})
	for _, src := range []string{srcA, srcB} {
		if err := r.Push(ctx, src, nil); err != nil {
			t.Fatalf("Push: %v", err)
		}
	}
	legitManifest := s.get(t, "trust/"+keyA+"/manifest.json")
	legitSig := s.get(t, "trust/"+keyA+"/manifest.sig")
	restore := func() {
		s.plant(t, "trust/"+keyA, string(legitManifest), legitSig)
		s.put(t, "trust/"+keyA+"/memory", files["memory"])
	}

	// The attacker's memory file, and a manifest that vouches for it.
	evilMemory := remoteTestBytes(66, 1<<20)
	forged := remoteTestManifestJSON(t, "python-a", map[string]FileInfo{
		"memory":  {Size: int64(len(evilMemory)), Digest: refDigest(evilMemory)},
		"vmstate": {Size: int64(len(files["vmstate"])), Digest: refDigest(files["vmstate"])},
	})
	attacker := newTestSigner()
	huge := remoteTestManifestJSON(t, "python-a", map[string]FileInfo{
		"memory":  {Size: 1 << 40, Digest: refDigest(evilMemory)},
		"vmstate": {Size: int64(len(files["vmstate"])), Digest: refDigest(files["vmstate"])},
	})

	for name, tc := range map[string]struct {
		plant      func()
		want       error
		says       string
		downloaded bool // the refusal may come after a download (digests)
	}{
		"forged manifest and memory file": {
			plant: func() { s.plant(t, "trust/"+keyA, forged, legitSig); s.put(t, "trust/"+keyA+"/memory", evilMemory) },
			want:  ErrSignature, says: "does not match its manifest",
		},
		"forged memory file only": {
			plant: func() { s.put(t, "trust/"+keyA+"/memory", evilMemory) },
			want:  ErrCorrupt, says: "digest", downloaded: true,
		},
		"missing signature": {
			plant: func() { s.plant(t, "trust/"+keyA, forged, nil); s.put(t, "trust/"+keyA+"/memory", evilMemory) },
			want:  ErrUnsigned, says: "no manifest.sig",
		},
		"signed by the attacker's key": {
			plant: func() {
				s.plant(t, "trust/"+keyA, forged, attacker.Sign(keyA, []byte(forged)))
				s.put(t, "trust/"+keyA+"/memory", evilMemory)
			},
			want: ErrSignature, says: "not a trusted key",
		},
		"signature of another snapshot": {
			plant: func() {
				s.plant(t, "trust/"+keyA, forged, s.get(t, "trust/"+keyB+"/manifest.sig"))
				s.put(t, "trust/"+keyA+"/memory", evilMemory)
			},
			want: ErrSignature, says: "signature of \"" + keyB + "\"",
		},
		"another snapshot, manifest and signature": {
			plant: func() {
				s.plant(t, "trust/"+keyA, string(s.get(t, "trust/"+keyB+"/manifest.json")), s.get(t, "trust/"+keyB+"/manifest.sig"))
			},
			want: ErrSignature, says: "signature of \"" + keyB + "\"",
		},
		"oversized declared file, trusted signature": {
			// Even a trusted signer (a compromised builder, a bug) cannot
			// make a host download a terabyte for a 512 MiB VM.
			plant: func() { s.plant(t, "trust/"+keyA, huge, remoteTestSigner.Sign(keyA, []byte(huge))) },
			want:  ErrInvalid, says: "more than its spec allows",
		},
	} {
		t.Run(name, func(t *testing.T) {
			defer restore()
			tc.plant()
			requests.reset()
			parent := t.TempDir()
			dest := filepath.Join(parent, "pulled")
			err := r.Pull(ctx, keyA, dest, nil)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Pull = %v, want %v saying %q", err, tc.want, tc.says)
			}
			requireRemoteTestAbsent(t, dest)
			if got := requests.ranges("/" + keyA + "/memory"); !tc.downloaded && len(got) > 0 {
				t.Errorf("memory was downloaded before the refusal:\n%s", &requests)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("a refused pull left %v", ents)
			}
		})
	}

	// The legitimate snapshot still pulls, adopts and serves.
	st := NewStore(t.TempDir(), 0, WithTrust(remoteTestTrust))
	tmp, _ := st.TempDir()
	if err := r.Pull(ctx, keyA, filepath.Join(tmp, keyA), nil); err != nil {
		t.Fatalf("Pull of the legitimate snapshot: %v", err)
	}
	if _, err := st.Adopt(filepath.Join(tmp, keyA)); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if _, err := st.Get(remoteTestSpec("python-a")); err != nil {
		t.Fatalf("Get: %v", err)
	}

	t.Run("trust off", func(t *testing.T) {
		defer restore()
		s.plant(t, "trust/"+keyA, forged, nil)
		s.put(t, "trust/"+keyA+"/memory", evilMemory)
		off := s.Remote("trust", WithRemoteTrust(NewTrust(nil, true)), WithRemoteSigner(nil))
		// Turned off explicitly, an unsigned snapshot pulls...
		store := NewStore(t.TempDir(), 0, WithTrust(remoteTestTrust))
		tmp, _ := store.TempDir()
		dest := filepath.Join(tmp, keyA)
		if err := off.Pull(ctx, keyA, dest, nil); err != nil {
			t.Fatalf("Pull with trust off: %v", err)
		}
		// ...but a store that trusts keys does not take it...
		if _, err := store.Adopt(dest); !errors.Is(err, ErrUnsigned) {
			t.Fatalf("Adopt of an unsigned pull into a trusting store = %v, want ErrUnsigned", err)
		}
		// ...and sizes are bounded all the same.
		s.plant(t, "trust/"+keyA, huge, nil)
		requests.reset()
		if err := off.Pull(ctx, keyA, filepath.Join(t.TempDir(), "x"), nil); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Pull of an oversized snapshot with trust off = %v, want ErrInvalid", err)
		}
	})

	t.Run("no trust configured", func(t *testing.T) {
		none := s.Remote("trust", WithRemoteTrust(nil))
		if err := none.Pull(ctx, keyA, filepath.Join(t.TempDir(), "x"), nil); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "no trusted keys") {
			t.Fatalf("Pull without trusted keys = %v, want ErrSignature saying no keys are trusted", err)
		}
	})
}

// TestPullAndStoreAgree: a pull accepts exactly the manifests the store
// accepts. (The remote once allowed 128-character file names and unknown
// fields, so a pull could succeed and its Adopt then fail.)
func TestPullAndStoreAgree(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := s.Remote("agree")
	data := []byte("memory contents")
	fi := FileInfo{Size: int64(len(data)), Digest: refDigest(data)}
	n64, n65, n100 := strings.Repeat("m", 64), strings.Repeat("m", 65), strings.Repeat("m", 100)
	for name, tc := range map[string]struct {
		files    map[string]FileInfo
		edit     func(string) string
		accepted bool
	}{
		"valid":                    {files: map[string]FileInfo{"memory": fi}, accepted: true},
		"64-character file name":   {files: map[string]FileInfo{n64: fi}, accepted: true},
		"65-character file name":   {files: map[string]FileInfo{n65: fi}},
		"100-character file name":  {files: map[string]FileInfo{n100: fi}},
		"unknown field":            {files: map[string]FileInfo{"memory": fi}, edit: func(m string) string { return strings.Replace(m, `"created"`, `"extra": true, "created"`, 1) }},
		"unknown spec field":       {files: map[string]FileInfo{"memory": fi}, edit: func(m string) string { return strings.Replace(m, `"vcpus"`, `"gpus": 1, "vcpus"`, 1) }},
		"old format":               {files: map[string]FileInfo{"memory": fi}, edit: func(m string) string { return strings.Replace(m, `"version": 2`, `"version": 1`, 1) }},
		"file larger than spec":    {files: map[string]FileInfo{"memory": {Size: 600 << 20, Digest: fi.Digest}}},
		"signature file as a file": {files: map[string]FileInfo{"manifest.sig": fi}},
	} {
		t.Run(name, func(t *testing.T) {
			label := "python-" + strings.ReplaceAll(name, " ", "")
			if len(label) > 60 {
				label = label[:60]
			}
			key := remoteTestKey(label)
			manifest := remoteTestManifestJSON(t, label, tc.files)
			if tc.edit != nil {
				manifest = tc.edit(manifest)
			}
			sig := remoteTestSigner.Sign(key, []byte(manifest))
			// In the bucket, as a pusher (or the bucket's owner) put it...
			for f := range tc.files {
				s.put(t, "agree/"+key+"/"+f, data)
			}
			s.plant(t, "agree/"+key, manifest, sig)
			// ...and the same snapshot as a directory handed to the store.
			st := NewStore(t.TempDir(), 0, WithTrust(remoteTestTrust))
			local, _ := st.TempDir()
			for f := range tc.files {
				if err := os.WriteFile(filepath.Join(local, f), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			writeRemoteTestManifest(t, local, manifest)
			if err := os.WriteFile(filepath.Join(local, signatureFile), sig, 0o644); err != nil {
				t.Fatal(err)
			}

			tmp, _ := st.TempDir()
			pullErr := r.Pull(ctx, key, filepath.Join(tmp, key), nil)
			_, adoptErr := st.Adopt(local)
			if (pullErr == nil) != (adoptErr == nil) {
				t.Fatalf("pull and store disagree: Pull = %v, Adopt = %v", pullErr, adoptErr)
			}
			if (pullErr == nil) != tc.accepted {
				t.Fatalf("Pull = %v, Adopt = %v; want accepted=%v", pullErr, adoptErr, tc.accepted)
			}
			if !tc.accepted {
				if !errors.Is(pullErr, ErrInvalid) || !errors.Is(adoptErr, ErrInvalid) {
					t.Errorf("want ErrInvalid from both: Pull = %v, Adopt = %v", pullErr, adoptErr)
				}
				return
			}
			// What a pull accepts, the store adopts and serves.
			if _, err := st.Adopt(filepath.Join(tmp, key)); err != nil {
				t.Fatalf("Adopt of the pulled snapshot: %v", err)
			}
			if _, err := st.Get(remoteTestSpec(label)); err != nil {
				t.Fatalf("Get of the pulled snapshot: %v", err)
			}
		})
	}
}

// TestRemoteHibernation pushes a hibernated sandbox (memory, state and a
// sparse disk image) under its id and generation, and pulls it on
// another "host", verified as any snapshot.
func TestRemoteHibernation(t *testing.T) {
	s := startMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var requests remoteRequestLog
	r := s.Remote("fleet", WithRemoteTransport(requests.wrap(t)))

	// S3 has no holes: every byte of the disk is sent, so it is small.
	dir := t.TempDir()
	writeHibernationDisk(t, dir, 128)
	spec := hibernationSpecDisk(128)
	if _, err := Seal(dir, spec); err != nil {
		t.Fatal(err)
	}
	name, err := HibernationName("sb-7f3a", 3)
	if err != nil {
		t.Fatal(err)
	}
	if name != "sandboxes/sb-7f3a/3" {
		t.Errorf("HibernationName = %s", name)
	}
	for _, bad := range []string{"", "../x", "a/b", "a b"} {
		if _, err := HibernationName(bad, 1); !errors.Is(err, ErrInvalid) {
			t.Errorf("HibernationName(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if err := r.PushDir(ctx, name, dir, nil); err != nil {
		t.Fatalf("PushDir: %v", err)
	}
	var puts []string
	for _, req := range strings.Split(requests.String(), "\n") {
		if strings.HasPrefix(req, http.MethodPut+" ") {
			puts = append(puts, req)
		}
	}
	if len(puts) == 0 || !strings.Contains(puts[len(puts)-1], "/fleet/sandboxes/sb-7f3a/3/manifest.json") {
		t.Errorf("the manifest was not uploaded last:\n%s", strings.Join(puts, "\n"))
	}

	// Another host: pull, check, and the disk is still sparse.
	dest := filepath.Join(t.TempDir(), "snapshot")
	m, err := r.PullDir(ctx, name, dest, nil)
	if err != nil {
		t.Fatalf("PullDir: %v", err)
	}
	if m.Spec != spec {
		t.Errorf("pulled spec %+v, want %+v", m.Spec, spec)
	}
	checkRemoteTestDir(t, dir, dest)
	if _, err := Check(dest, spec, WithTrust(remoteTestTrust)); err != nil {
		t.Fatalf("Check of the pulled hibernation: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dest, "upper.ext4"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 128<<20 || st.Blocks*512 > 16<<20 {
		t.Errorf("pulled disk: %d bytes, %d MiB on disk; want 128 MiB apparent holding ~2 MiB", st.Size, st.Blocks*512>>20)
	}
	// Its use is checked against trust every time, not only at the pull.
	if _, err := Check(dest, spec); !errors.Is(err, ErrSignature) {
		t.Errorf("Check of a pulled hibernation without trust = %v, want ErrSignature", err)
	}
	revoked := NewTrust([]ed25519.PublicKey{newTestSigner().PublicKey()}, false)
	if _, err := Check(dest, spec, WithTrust(revoked)); !errors.Is(err, ErrSignature) {
		t.Errorf("Check after the signing key was revoked = %v, want ErrSignature", err)
	}
	upgraded := spec
	upgraded.DriverVersion = "10.1.0"
	if _, err := Check(dest, upgraded, WithTrust(remoteTestTrust)); !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "driver version 10.0.2 -> 10.1.0") {
		t.Errorf("Check on an upgraded host = %v, want the version change named", err)
	}

	// A copy of generation 3 planted as generation 4 (a stale or replayed
	// hibernation) is refused: the signature names generation 3.
	gen4, _ := HibernationName("sb-7f3a", 4)
	for _, f := range []string{"memory", "vmstate", "upper.ext4"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		s.put(t, "fleet/"+gen4+"/"+f, b)
	}
	s.plant(t, "fleet/"+gen4, string(s.get(t, "fleet/"+name+"/manifest.json")), s.get(t, "fleet/"+name+"/manifest.sig"))
	if _, err := r.PullDir(ctx, gen4, filepath.Join(t.TempDir(), "x"), nil); !errors.Is(err, ErrSignature) {
		t.Errorf("PullDir of generation 3 planted as 4 = %v, want ErrSignature", err)
	}

	// Hibernations are not snapshots a listing offers, and delete cleanly.
	if list, err := r.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List = %+v, %v; want no snapshots", list, err)
	}
	if err := r.DeleteDir(ctx, name); err != nil {
		t.Fatalf("DeleteDir: %v", err)
	}
	if _, err := r.PullDir(ctx, name, filepath.Join(t.TempDir(), "y"), nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("PullDir after DeleteDir = %v, want ErrNotFound", err)
	}
	if _, err := r.PullDir(ctx, gen4, filepath.Join(t.TempDir(), "z"), nil); !errors.Is(err, ErrSignature) {
		t.Errorf("DeleteDir of generation 3 touched generation 4: %v", err)
	}
}
