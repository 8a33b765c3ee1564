package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Config configures a Node. Every host of one cluster must use the same
// URL, TTL and Remote. Zero fields take the defaults noted.
type Config struct {
	// URL is the PostgreSQL connection string of the directory:
	// postgres://user:password@host:5432/db?sslmode=verify-full. It holds
	// a password, so it is never logged or marshalled.
	URL string `json:"-" toml:"url"`
	// HostID names this host in the directory. It must stay the same
	// across restarts (a restarted host keeps what it owns), and differ
	// between hosts; default: generated once and kept in HostIDFile.
	HostID string `json:"host_id" toml:"host_id"`
	// HostIDFile keeps a generated HostID (e.g. <data-dir>/host-id).
	HostIDFile string `json:"host_id_file" toml:"host_id_file"`
	// Address is the base URL the other hosts reach this host's API at,
	// e.g. http://10.0.0.5:7070. Required.
	Address string `json:"address" toml:"address"`
	// Capacity is the most sandboxes with a VM (creating, running,
	// resuming, hibernating, forking) the directory admits on this host.
	Capacity int `json:"capacity" toml:"capacity"`
	// Heartbeat is how often the host renews its lease; default 2s.
	Heartbeat time.Duration `json:"heartbeat" toml:"heartbeat"`
	// TTL is how old a heartbeat may be before the host counts as dead
	// and its sandboxes are taken over; default 5 x Heartbeat. The same
	// on every host.
	TTL time.Duration `json:"ttl" toml:"ttl"`
	// QueryTimeout bounds each directory query; default 3s.
	QueryTimeout time.Duration `json:"query_timeout" toml:"query_timeout"`
	// SyncEvery is how often the host compares its sandboxes with the
	// directory (and retries what failed); default 5 x Heartbeat.
	SyncEvery time.Duration `json:"sync_every" toml:"sync_every"`
}

var hostIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func (c *Config) setDefaults() {
	if c.Heartbeat == 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.TTL == 0 {
		c.TTL = 5 * c.Heartbeat
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = 3 * time.Second
	}
	if c.SyncEvery == 0 {
		c.SyncEvery = 5 * c.Heartbeat
	}
}

// Validate checks a Config without contacting anything.
func (c *Config) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(f, a...)) }
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return bad("cluster URL: want postgres://user:password@host:port/database")
	}
	if c.HostID != "" && !hostIDRe.MatchString(c.HostID) {
		return bad("host id %q: 1-63 of a-z, 0-9, '.', '_', '-'", c.HostID)
	}
	if c.HostID == "" && c.HostIDFile == "" {
		return bad("set a host id or a file to keep a generated one in")
	}
	a, err := url.Parse(c.Address)
	if err != nil || (a.Scheme != "http" && a.Scheme != "https") || a.Host == "" || (a.Path != "" && a.Path != "/") || a.RawQuery != "" {
		return bad("address %q: want the base URL other hosts reach this one at, e.g. http://10.0.0.5:7070", c.Address)
	}
	if h := a.Hostname(); h == "0.0.0.0" || h == "::" || h == "" {
		return bad("address %q: a wildcard is not reachable; name this host's own address", c.Address)
	}
	if c.Capacity < 1 || c.Capacity > 100000 {
		return bad("capacity %d: want 1-100000", c.Capacity)
	}
	if c.Heartbeat < 0 || c.TTL < 0 || c.QueryTimeout < 0 || c.SyncEvery < 0 {
		return bad("durations must not be negative")
	}
	d := *c
	d.setDefaults()
	if d.TTL < 2*d.Heartbeat {
		return bad("ttl %s: at least twice the heartbeat (%s), or hosts count as dead between two beats", d.TTL, d.Heartbeat)
	}
	return nil
}

// hostID returns the configured host id, or the one kept in HostIDFile,
// generating it on first use.
func (c *Config) hostID() (string, error) {
	if c.HostID != "" {
		return c.HostID, nil
	}
	b, err := os.ReadFile(c.HostIDFile)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !hostIDRe.MatchString(id) {
			return "", fmt.Errorf("%w: %s holds %q, not a host id", ErrInvalidConfig, c.HostIDFile, id)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read host id: %w", err)
	}
	host, _ := os.Hostname()
	host = strings.ToLower(host)
	if !hostIDRe.MatchString(host) || len(host) > 40 {
		host = "host"
	}
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	id := host + "-" + hex.EncodeToString(r)
	if err := os.MkdirAll(filepath.Dir(c.HostIDFile), 0o700); err != nil {
		return "", fmt.Errorf("write host id: %w", err)
	}
	tmp := c.HostIDFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write host id: %w", err)
	}
	if err := os.Rename(tmp, c.HostIDFile); err != nil {
		return "", fmt.Errorf("write host id: %w", err)
	}
	return id, nil
}
