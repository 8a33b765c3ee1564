package snapshot

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
)

var (
	remoteBucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	remotePrefixRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

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
