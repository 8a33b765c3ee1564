// This file holds the guard for requests that need no key (loopback
// without --api-key): a web page the user visits must not be able to use
// the API through the user's browser.

package api

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// guardBrowser refuses a request without a key that a browser may have
// sent on behalf of some web page:
//
//   - DNS rebinding: a page on evil.example whose name now resolves to
//     127.0.0.1 sends Host: evil.example. The Host must be a loopback
//     name or address, the listen address, or an allowed host.
//   - Cross-origin pages: a browser names the page's origin (Origin, and
//     Sec-Fetch-Site on modern browsers). Only the server's own origin
//     and allowed origins pass.
//   - CSRF without preflight: a form or a text/plain fetch needs no CORS
//     preflight. A state-changing request that shows any sign of a
//     browser must be application/json, which browsers only send
//     cross-origin after a preflight this server never grants.
//
// Clients that are not browsers send none of these signs; piston-client,
// for one, posts JSON as text/plain without an Origin, and keeps working.
func (s *Server) guardBrowser(r *http.Request) error {
	host := hostOnly(r.Host)
	if !s.hostAllowed(host) {
		return fmt.Errorf("%w: Host %q does not name this server; without an API key it must be reached by a loopback address (a guard against DNS rebinding); allow another name with --allowed-host",
			errForbidden, r.Host)
	}
	site := r.Header.Get("Sec-Fetch-Site")
	origin := r.Header.Get("Origin")
	if origin != "" && !s.originAllowed(origin, r.Host) {
		return fmt.Errorf("%w: requests from the web page at %q are refused: without an API key only this server's own pages may call it; allow an origin with --allowed-origin",
			errForbidden, origin)
	}
	if origin == "" && site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("%w: a %s browser request is refused (Sec-Fetch-Site)", errForbidden, site)
	}
	browser := origin != "" || site != "" || r.Header.Get("Sec-Fetch-Mode") != ""
	if browser && changesState(r.Method) {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt != "application/json" {
			return fmt.Errorf("%w: a browser's %s must send Content-Type: application/json (got %q)", errMediaType, r.Method, r.Header.Get("Content-Type"))
		}
	}
	return nil
}

func changesState(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return true
}

// hostOnly is a Host header's name or address, without port or brackets,
// lower-cased and without a trailing dot.
func hostOnly(hostport string) string {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
	return strings.ToLower(h)
}

func (s *Server) hostAllowed(host string) bool {
	if host == "" {
		return false // HTTP/1.1 requires a Host; a browser always sends one
	}
	if IsLoopback(host) || slices.ContainsFunc(s.cfg.AllowedHosts, func(h string) bool { return strings.EqualFold(hostOnly(h), host) }) {
		return true
	}
	listen, _, _ := net.SplitHostPort(s.cfg.Listen)
	return listen != "" && strings.EqualFold(hostOnly(listen), host)
}

// originAllowed says whether a page of origin may call the server at
// host (the request's Host): its own pages (same scheme-less host and
// port, on a loopback name) or an allowed origin.
func (s *Server) originAllowed(origin, host string) bool {
	o, err := parseOrigin(origin)
	if err != nil {
		return false // "null" (sandboxed frames, files, redirects) included
	}
	for _, a := range s.cfg.AllowedOrigins {
		if ao, err := parseOrigin(a); err == nil && ao == o {
			return true
		}
	}
	return o.Scheme == "http" && strings.EqualFold(o.Host, host) && IsLoopback(hostOnly(o.Host))
}

// parseOrigin parses a serialized origin: scheme://host[:port], nothing
// more.
func parseOrigin(s string) (url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return url.URL{}, err
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return url.URL{}, fmt.Errorf("not an origin: want http(s)://host[:port]")
	}
	return url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host)}, nil
}
