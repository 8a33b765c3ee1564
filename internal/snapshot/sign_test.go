package snapshot

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// The tests' signing key, and a trust policy that trusts only it.
var (
	remoteTestSigner = newTestSigner()
	remoteTestTrust  = NewTrust([]ed25519.PublicKey{remoteTestSigner.PublicKey()}, false)
)

func newTestSigner() *Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return NewSigner(k)
}

func TestGenerateAndLoadKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys", "signing.key")
	pub, err := GenerateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("private key has mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(p)); di.Mode().Perm() != 0o700 {
		t.Errorf("key directory has mode %04o, want 0700", di.Mode().Perm())
	}
	if _, err := GenerateKey(p); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateKey over an existing key = %v, want it refused (ErrExist)", err)
	}
	priv, err := LoadPrivateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatal("loaded key does not match the generated public key")
	}
	printed := FormatPublicKey(pub)
	back, err := ParsePublicKey(printed)
	if err != nil || !back.Equal(pub) {
		t.Fatalf("ParsePublicKey(%s) = %v, %v", printed, back, err)
	}
	cfg := Config{TrustedKeys: []string{printed}, SigningKey: p}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := cfg.Signer()
	if err != nil || !s.PublicKey().Equal(pub) {
		t.Fatalf("Config.Signer() = %v, %v", s, err)
	}

	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadPrivateKey of a world-readable key = %v, want it refused", err)
	}
	for _, bad := range []string{"", "ed25519:", "ed25519:AAAA", "rsa:" + base64.StdEncoding.EncodeToString(pub), base64.StdEncoding.EncodeToString(pub)} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
	if err := (Config{TrustedKeys: []string{"ed25519:nope"}}).Validate(); err == nil || !strings.Contains(err.Error(), "trusted_keys") {
		t.Errorf("Validate with a bad trusted key = %v", err)
	}
}

func TestTrustVerify(t *testing.T) {
	manifest := []byte(`{"key":"python-1"}`)
	good := remoteTestSigner.Sign("python-1", manifest)
	other := newTestSigner()
	edit := func(f func(*Signature)) []byte {
		var s Signature
		if err := json.Unmarshal(good, &s); err != nil {
			t.Fatal(err)
		}
		f(&s)
		b, _ := json.Marshal(s)
		return b
	}
	if err := remoteTestTrust.Verify("python-1", manifest, good); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	for name, tc := range map[string]struct {
		trust    *Trust
		name     string
		manifest []byte
		sig      []byte
		want     error
		says     string
	}{
		"missing":          {remoteTestTrust, "python-1", manifest, nil, ErrUnsigned, "no manifest.sig"},
		"altered manifest": {remoteTestTrust, "python-1", []byte(`{"key":"python-2"}`), good, ErrSignature, "does not match"},
		"other name":       {remoteTestTrust, "python-2", manifest, good, ErrSignature, "another snapshot"},
		"name edited":      {remoteTestTrust, "python-2", manifest, edit(func(s *Signature) { s.Name = "python-2" }), ErrSignature, "does not match"},
		"untrusted key":    {remoteTestTrust, "python-1", manifest, other.Sign("python-1", manifest), ErrSignature, "not a trusted key"},
		"key swapped":      {remoteTestTrust, "python-1", manifest, edit(func(s *Signature) { s.PublicKey = FormatPublicKey(other.PublicKey()) }), ErrSignature, "not a trusted key"},
		"garbage":          {remoteTestTrust, "python-1", manifest, []byte("{"), ErrSignature, "manifest.sig"},
		"short signature":  {remoteTestTrust, "python-1", manifest, edit(func(s *Signature) { s.Signature = "AAAA" }), ErrSignature, "does not match"},
		"no trusted keys":  {NewTrust(nil, false), "python-1", manifest, good, ErrSignature, "no trusted keys"},
		"nil trust":        {nil, "python-1", manifest, nil, ErrUnsigned, ""},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.trust.Verify(tc.name, tc.manifest, tc.sig)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Verify = %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
	if err := NewTrust(nil, true).Verify("python-1", []byte("anything"), nil); err != nil {
		t.Errorf("trust off refused an unsigned snapshot: %v", err)
	}
}

// The [snapshots] section of the configuration file decodes into Config.
func TestConfigTOML(t *testing.T) {
	pub := FormatPublicKey(remoteTestSigner.PublicKey())
	var file struct {
		Snapshots Config `toml:"snapshots"`
	}
	md, err := toml.Decode(`
[snapshots]
signing_key = "/etc/firesandbox/snapshot-signing.key"
trusted_keys = ["`+pub+`"]
allow_unsigned = false
`, &file)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) != 0 {
		t.Fatalf("keys not decoded: %v", u)
	}
	want := Config{SigningKey: "/etc/firesandbox/snapshot-signing.key", TrustedKeys: []string{pub}}
	if file.Snapshots.SigningKey != want.SigningKey || len(file.Snapshots.TrustedKeys) != 1 || file.Snapshots.TrustedKeys[0] != pub || file.Snapshots.AllowUnsigned {
		t.Fatalf("decoded %+v, want %+v", file.Snapshots, want)
	}
	trust, err := file.Snapshots.Trust()
	if err != nil {
		t.Fatal(err)
	}
	m := []byte("{}")
	if err := trust.Verify("python-1", m, remoteTestSigner.Sign("python-1", m)); err != nil {
		t.Fatalf("configured trust refused its own key: %v", err)
	}
}
