package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"syscall"
	"time"
)

// PortDialer dials a TCP port inside a sandbox. *VM is one (DialGuest).
type PortDialer interface {
	DialGuest(ctx context.Context, port int) (net.Conn, error)
}

// PortProxyConfig configures PortProxy.
type PortProxyConfig struct {
	// DropHeaders are removed before a request enters the sandbox, so the
	// owner's credentials never reach guest code. Default: Authorization,
	// X-API-Key, X-Access-Token and E2B's routing and traffic-token headers.
	DropHeaders []string
	// ResponseHeaderTimeout bounds the wait for the guest server's answer
	// (default 60s). WebSocket and streaming bodies are not bounded.
	ResponseHeaderTimeout time.Duration
}

var defaultDropHeaders = []string{"Authorization", "X-Api-Key", "X-Access-Token", "E2b-Sandbox-Id", "E2b-Sandbox-Port", "X-E2b-Traffic-Access-Token"}

// PortProxy returns an HTTP reverse proxy to port of the sandbox behind d,
// WebSocket (and any Upgrade) included. It forwards the request's path and
// query unchanged: mount it behind http.StripPrefix for
// /v1/sandboxes/{id}/ports/{port}. Authorisation is the caller's job; a
// guest that does not listen gets 502 with a message that says so.
func PortProxy(d PortDialer, port int, cfg PortProxyConfig) http.Handler {
	drop := cfg.DropHeaders
	if drop == nil {
		drop = defaultDropHeaders
	}
	rht := cfg.ResponseHeaderTimeout
	if rht == 0 {
		rht = 60 * time.Second
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialGuest(ctx, port)
		},
		ResponseHeaderTimeout: rht,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		DisableCompression:    true,
	}
	target := "127.0.0.1:" + strconv.Itoa(port) // only names the connection; DialContext picks the guest
	return &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = target
			pr.Out.Host = pr.In.Host
			for _, h := range drop {
				pr.Out.Header.Del(h)
			}
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status, msg := http.StatusBadGateway, fmt.Sprintf("cannot reach port %d in the sandbox: %v", port, err)
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				msg = fmt.Sprintf("nothing listens on port %d in the sandbox (a server must listen on 0.0.0.0 or the guest's address, not only 127.0.0.1)", port)
			case errors.Is(err, ErrClosed):
				msg = "the sandbox's network is closed"
			case errors.Is(err, context.DeadlineExceeded):
				status = http.StatusGatewayTimeout
			}
			http.Error(w, msg, status)
		},
	}
}
