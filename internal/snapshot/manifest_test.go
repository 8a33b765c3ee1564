package snapshot

import (
	"errors"
	"strings"
	"testing"
)

// TestParseManifestRejectsUntrusted: the one manifest rule, which the
// store, Check and every pull apply alike.
func TestParseManifestRejectsUntrusted(t *testing.T) {
	spec := testSpec()
	d := strings.Repeat("a", 64)
	good := `{"version":2,"key":"` + spec.Key() + `","spec":{"language":"python","driver":"qemu","driver_version":"10.0.2","machine":"tcg","kernel_id":"k1","image_id":"python-abc","vcpus":1,"memory_mib":512,"agent_protocol":1},"files":{"memory":{"size":3,"digest":"` + d + `"}},"created":"2026-01-01T00:00:00Z"}`
	if _, err := ParseManifest([]byte(good)); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	file := func(name string) string { return strings.Replace(good, `"memory":{`, `"`+name+`":{`, 1) }
	for name, bad := range map[string]string{
		"traversal":          file("../evil"),
		"path":               file("a/b"),
		"absolute":           file("/etc/passwd"),
		"dot file":           file(".memory.part"),
		"backslash":          file(`..\\evil`),
		"manifest name":      file("manifest.json"),
		"signature name":     file("manifest.sig"),
		"65-character name":  file(strings.Repeat("m", 65)),
		"128-character name": file(strings.Repeat("m", 128)),
		"bad digest":         strings.Replace(good, d, "zz", 1),
		"upper-case digest":  strings.Replace(good, d, strings.ToUpper(d), 1),
		"old sha256 field":   strings.Replace(good, `"digest"`, `"sha256"`, 1),
		"negative size":      strings.Replace(good, `"size":3`, `"size":-1`, 1),
		"larger than spec":   strings.Replace(good, `"size":3`, `"size":700000000`, 1),
		"huge size":          strings.Replace(good, `"size":3`, `"size":9223372036854775807`, 1),
		"unknown field":      strings.Replace(good, `"created"`, `"extra":1,"created"`, 1),
		"unknown spec field": strings.Replace(good, `"vcpus":1`, `"vcpus":1,"gpus":1`, 1),
		"no files":           strings.Replace(good, `{"memory":{"size":3,"digest":"`+d+`"}}`, `{}`, 1),
		"files wrong type":   strings.Replace(good, `{"memory":{"size":3,"digest":"`+d+`"}}`, `["memory"]`, 1),
		"key not of spec":    strings.Replace(good, spec.Key(), "python-0000000000000000", 1),
		"bad key":            strings.Replace(good, spec.Key(), "../k", 1),
		"no memory in spec":  strings.Replace(strings.Replace(good, `"memory_mib":512`, `"memory_mib":0`, 1), spec.Key(), Spec{Language: "python", Driver: "qemu", DriverVersion: "10.0.2", Machine: "tcg", KernelID: "k1", ImageID: "python-abc", VCPUs: 1, AgentProtocol: 1}.Key(), 1),
		"version 1":          strings.Replace(good, `"version":2,`, ``, 1),
		"version 3":          strings.Replace(good, `"version":2,`, `"version":3,`, 1),
		"trailing data":      good + `{}`,
		"not json":           "{",
		"html":               "<html>",
	} {
		if _, err := ParseManifest([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// The bound is the spec's memory and disk, plus device state.
	withDisk := spec
	withDisk.DiskMiB = 1024
	m := Manifest{Version: ManifestVersion, Key: withDisk.Key(), Spec: withDisk, Files: map[string]FileInfo{
		"memory": {Size: 512 << 20, Digest: d}, "upper.ext4": {Size: 1024 << 20, Digest: d}, "vmstate": {Size: 1 << 20, Digest: d},
	}}
	if _, err := m.marshal(); err != nil {
		t.Errorf("a snapshot of exactly its spec's size: %v", err)
	}
	m.Files["upper.ext4"] = FileInfo{Size: 1024<<20 + deviceStateAllowance, Digest: d}
	if _, err := m.marshal(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "more than its spec allows") {
		t.Errorf("a disk larger than the spec's: %v, want ErrInvalid", err)
	}
}
