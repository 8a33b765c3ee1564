package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// errRemoteStalled is the cause of an attempt cancelled for lack of bytes.
var errRemoteStalled = errors.New("no data received within the stall timeout")

// remoteStallCause says so when err comes from the stall watchdog.
func remoteStallCause(actx context.Context, err error) error {
	if cause := context.Cause(actx); errors.Is(cause, errRemoteStalled) && !errors.Is(err, errRemoteStalled) {
		return fmt.Errorf("%w (%w)", errRemoteStalled, err)
	}
	return err
}

// remotePermanentError marks an error that a retry cannot fix.
type remotePermanentError struct{ err error }

func (e remotePermanentError) Error() string { return e.err.Error() }
func (e remotePermanentError) Unwrap() error { return e.err }

func remotePermanent(err error) error { return remotePermanentError{err} }

// retry runs fn until it succeeds, fails for good, or the attempts or ctx
// run out, waiting a growing backoff between attempts.
func (r *Remote) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	delay := r.opts.backoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %w)", context.Cause(ctx), err)
		}
		if !isRemoteRetryable(err) {
			return err
		}
		if attempt >= r.opts.attempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		r.opts.log.WarnContext(ctx, "remote snapshot request failed, retrying",
			"op", what, "attempt", attempt, "of", r.opts.attempts, "delay", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %w)", context.Cause(ctx), err)
		case <-t.C:
		}
		delay = min(2*delay, r.opts.maxBackoff)
	}
}

// isRemoteRetryable: network trouble and server-side errors are worth
// another try; answers about the request or the data are not.
func isRemoteRetryable(err error) bool {
	var p remotePermanentError
	if errors.As(err, &p) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) {
		return false
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case resp.StatusCode >= 500, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout:
			return true
		case resp.StatusCode == 0:
			// minio-go reports some transport failures without a status.
			return resp.Code == "" || resp.Code == "RequestTimeout" || resp.Code == "SlowDown"
		}
		return false
	}
	var pe *fs.PathError
	return !errors.As(err, &pe)
}

func isRemoteNotFound(err error) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	return resp.Code == minio.NoSuchKey || resp.StatusCode == http.StatusNotFound && resp.Code != minio.NoSuchBucket
}

func isRemotePreconditionFailed(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && resp.StatusCode == http.StatusPreconditionFailed
}

// remoteMeta looks up user metadata whatever the case of its key.
func remoteMeta(m map[string]string, key string) string {
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}
