package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Spec is everything a snapshot depends on. A snapshot restores only on a
// host whose Spec is identical: the VMM (and its version), the guest kernel
// and initramfs, the image, the machine shape and the agent protocol.
type Spec struct {
	Language      string `json:"language"`
	Driver        string `json:"driver"`
	DriverVersion string `json:"driver_version"`
	// Machine is driver-specific detail that changes the saved CPU state,
	// e.g. QEMU's accelerator ("tcg" and "kvm" snapshots do not mix).
	Machine       string `json:"machine,omitempty"`
	KernelID      string `json:"kernel_id"`
	ImageID       string `json:"image_id"`
	VCPUs         int    `json:"vcpus"`
	MemoryMiB     int    `json:"memory_mib"`
	AgentProtocol int    `json:"agent_protocol"`
	// Runtime names the prewarmed runtime running in the snapshot, if any.
	Runtime string `json:"runtime,omitempty"`
}

// Key is the snapshot's name: the language and a digest of the Spec.
func (s Spec) Key() string {
	b, _ := json.Marshal(s)
	h := sha256.Sum256(b)
	return s.Language + "-" + hex.EncodeToString(h[:8])
}

// diff describes how two specs differ, for error messages.
func (s Spec) diff(host Spec) string {
	var d []string
	add := func(what string, snap, h any) {
		if snap != h {
			d = append(d, fmt.Sprintf("%s %v (this host: %v)", what, snap, h))
		}
	}
	add("language", s.Language, host.Language)
	add("driver", s.Driver, host.Driver)
	add("driver version", s.DriverVersion, host.DriverVersion)
	add("machine", s.Machine, host.Machine)
	add("kernel", s.KernelID, host.KernelID)
	add("image", s.ImageID, host.ImageID)
	add("vcpus", s.VCPUs, host.VCPUs)
	add("memory MiB", s.MemoryMiB, host.MemoryMiB)
	add("agent protocol", s.AgentProtocol, host.AgentProtocol)
	add("runtime", s.Runtime, host.Runtime)
	return strings.Join(d, ", ")
}

// FileInfo is one file of a snapshot.
type FileInfo struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes a snapshot (manifest.json in its directory).
type Manifest struct {
	Key     string              `json:"key"`
	Spec    Spec                `json:"spec"`
	Files   map[string]FileInfo `json:"files"`
	Created time.Time           `json:"created"`
}

var (
	keyRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)
	fileRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)
	hexRe  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidKey reports whether k can name a snapshot.
func ValidKey(k string) bool { return keyRe.MatchString(k) }

// ParseManifest decodes and checks a manifest: it comes from disk or a
// bucket, so its key and file names are untrusted.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrInvalid, err)
	}
	if !ValidKey(m.Key) {
		return nil, fmt.Errorf("%w: manifest key %q", ErrInvalid, m.Key)
	}
	if m.Key != m.Spec.Key() {
		return nil, fmt.Errorf("%w: manifest key %s does not match its spec (%s)", ErrInvalid, m.Key, m.Spec.Key())
	}
	if len(m.Files) == 0 {
		return nil, fmt.Errorf("%w: manifest lists no files", ErrInvalid)
	}
	for name, f := range m.Files {
		if !fileRe.MatchString(name) || name == "manifest.json" {
			return nil, fmt.Errorf("%w: manifest file name %q", ErrInvalid, name)
		}
		if f.Size < 0 || !hexRe.MatchString(f.SHA256) {
			return nil, fmt.Errorf("%w: manifest entry for %s: size %d sha256 %q", ErrInvalid, name, f.Size, f.SHA256)
		}
	}
	return &m, nil
}

func jsonMarshal(m *Manifest) ([]byte, error) { return json.MarshalIndent(m, "", "  ") }
